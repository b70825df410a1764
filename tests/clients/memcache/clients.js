// Drive one Node memcache client library through the cases of tests/memcache_clients.rs.
//
// Usage: node clients.js <client> <host:port> <key prefix>
// <client>: memjs (binary protocol) | memcached (the `memcached` package, text protocol).
// Prints one JSON object: case name -> result, compared by the test between legate (over several
// memcached shards) and one memcached reached directly.
'use strict';

const [which, addr, prefix] = process.argv.slice(2);
const k = (name) => `${prefix}${name}`;
const text = (v) => (v === null || v === undefined ? null : Buffer.isBuffer(v) ? v.toString('latin1') : String(v));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function memjsClient() {
  const memjs = require('memjs');
  const c = memjs.Client.create(addr, { timeout: 5, retries: 0, conntimeout: 5, logger: { log() {} } });
  return {
    close: () => c.close(),
    set: async (key, v, ttl = 0) => (await c.set(key, v, { expires: ttl })),
    get: async (key) => text((await c.get(key)).value),
    // memjs has no multi-get: concurrent gets are pipelined on its one connection.
    getMulti: async (keys) => {
      const values = await Promise.all(keys.map((key) => c.get(key)));
      const out = {};
      keys.forEach((key, i) => {
        if (values[i].value !== null) out[key] = text(values[i].value);
      });
      return out;
    },
    add: async (key, v) => c.add(key, v),
    replace: async (key, v) => c.replace(key, v),
    append: async (key, v) => c.append(key, v),
    prepend: async (key, v) => c.prepend(key, v),
    delete: async (key) => c.delete(key),
    incr: async (key, n) => (await c.increment(key, n, {})).value,
    decr: async (key, n) => (await c.decrement(key, n, {})).value,
    touch: async (key, ttl) => c.touch(key, ttl),
    cas: async () => null, // memjs 1.3 offers no cas
    // memjs 1.3 has no version call: the version its stats report.
    version: async () =>
      new Promise((resolve, reject) => c.stats((err, server, st) => (err ? reject(err) : resolve(st.version)))),
    stats: () =>
      new Promise((resolve, reject) =>
        c.stats((err, server, st) => (err ? reject(err) : resolve(st)))),
  };
}

function memcachedClient() {
  const Memcached = require('memcached');
  const c = new Memcached(addr, { retries: 0, timeout: 5000, idle: 1000 });
  const call = (fn, ...args) =>
    new Promise((resolve, reject) => c[fn](...args, (err, r) => (err ? reject(err) : resolve(r))));
  const bool = (fn, ...args) => call(fn, ...args).then((r) => r === true, (e) => `error ${e.message}`);
  return {
    close: () => c.end(),
    set: (key, v, ttl = 0) => bool('set', key, v, ttl),
    get: async (key) => text(await call('get', key)),
    getMulti: async (keys) => {
      const r = await call('getMulti', keys);
      const out = {};
      for (const [kk, v] of Object.entries(r)) out[kk] = text(v);
      return out;
    },
    add: (key, v) => bool('add', key, v, 0),
    replace: (key, v) => bool('replace', key, v, 0),
    append: (key, v) => bool('append', key, v),
    prepend: (key, v) => bool('prepend', key, v),
    delete: (key) => bool('del', key),
    incr: (key, n) => call('incr', key, n).then((r) => r, (e) => `error ${e.message}`),
    decr: (key, n) => call('decr', key, n).then((r) => r, (e) => `error ${e.message}`),
    touch: (key, ttl) => bool('touch', key, ttl),
    cas: async (key) => {
      const got = await call('gets', key);
      const ok = await bool('cas', key, 'new', got.cas, 0);
      const stale = await bool('cas', key, 'newer', got.cas, 0);
      return [text(got[key]), ok, stale, text(await call('get', key))];
    },
    version: async () => (await call('version'))[0].version,
    stats: async () => {
      const st = (await call('stats'))[0];
      const out = {};
      for (const [kk, v] of Object.entries(st)) out[kk] = String(v);
      return out;
    },
  };
}

async function main() {
  const c = which === 'memjs' ? memjsClient() : memcachedClient();
  const out = {};
  out['set expiring'] = await c.set(k('exp'), 'soon gone', 2);
  const t0 = Date.now();
  out['get expiring'] = await c.get(k('exp'));
  out['set'] = await c.set(k('a'), 'alpha');
  out['get'] = await c.get(k('a'));
  out['get missing'] = await c.get(k('nope'));
  const keys = [];
  for (let i = 0; i < 40; i++) {
    keys.push(k(`m${i}`));
    if (i % 3) await c.set(k(`m${i}`), `v${i}`);
  }
  out['get_multi'] = Object.entries(await c.getMulti([...keys, k('nope')])).sort();
  out['add existing'] = await c.add(k('a'), 'x');
  out['add new'] = await c.add(k('b'), 'beta');
  out['replace missing'] = await c.replace(k('c'), 'x');
  out['replace'] = await c.replace(k('b'), 'bravo');
  out['append'] = await c.append(k('b'), '!');
  out['prepend'] = await c.prepend(k('b'), '<');
  out['after concat'] = await c.get(k('b'));
  out['delete'] = await c.delete(k('b'));
  out['delete again'] = await c.delete(k('b'));
  out['get deleted'] = await c.get(k('b'));
  await c.set(k('n'), '10');
  out['incr'] = await c.incr(k('n'), 5);
  out['decr'] = await c.decr(k('n'), 20);
  out['incr missing'] = await c.incr(k('nonum'), 1);
  await c.set(k('cas'), 'old');
  out['cas'] = await c.cas(k('cas'));
  out['touch'] = await c.touch(k('a'), 100);
  out['get touched'] = await c.get(k('a'));
  let big = '';
  for (let i = 0; i < 1000 * 1000; i++) big += String.fromCharCode(65 + (i % 26));
  out['set 1MB'] = await c.set(k('big'), big);
  const got = await c.get(k('big'));
  out['get 1MB'] = [got ? got.length : 0, got === big];
  const v = await c.version();
  out['version numeric'] = !!v && /^\d+\./.test(v);
  out['version'] = v;
  const st = await c.stats();
  out['stats have counters'] = ['curr_items', 'get_hits', 'get_misses', 'bytes', 'cmd_get'].every((n) => n in st);
  out['stats curr_items >= 27'] = Number(st.curr_items || 0) >= 27;
  await sleep(Math.max(0, 3100 - (Date.now() - t0)));
  out['get expired'] = await c.get(k('exp'));
  c.close();
  console.log(JSON.stringify(out, Object.keys(out).sort()));
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : e);
  process.exit(1);
});
