// What the node client scripts share: a stable text for any reply, and running the cases.
'use strict';

/** A stable text for a value that shows its type: maps and objects with sorted keys, sets sorted. */
function show(v) {
  if (v === null || v === undefined) return String(v);
  if (v instanceof Error) return `${v.name}: ${v.message}`;
  if (Buffer.isBuffer(v)) return `Buffer(${JSON.stringify(v.toString())})`;
  if (typeof v === 'bigint') return `${v}n`;
  if (v instanceof Map) return `Map${show(Object.fromEntries([...v].map(([k, x]) => [String(k), x])))}`;
  if (v instanceof Set) return `set(${[...v].map(show).sort().join(', ')})`;
  if (Array.isArray(v)) return `[${v.map(show).join(', ')}]`;
  if (typeof v === 'object') {
    const keys = Object.keys(v).sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}: ${show(v[k])}`).join(', ')}}`;
  }
  return JSON.stringify(v);
}

/** Run every case in order, one line each; true when any failed. */
async function runCases(cases) {
  const failed = [];
  for (const [name, fn] of Object.entries(cases)) {
    try {
      console.log(`${name}: ${show(await fn())}`);
    } catch (e) {
      failed.push(name);
      const what = e && e.code === 'ERR_ASSERTION' ? 'CHECK FAILED' : 'ERROR';
      console.log(`${name}: ${what} ${show(e).replace(/\n/g, ' ')}`);
    }
  }
  if (failed.length) console.log(`failed: ${failed.join(', ')}`);
  return failed.length > 0;
}

module.exports = { show, runCases };
