// node-redis with its default connection options, driven by tests/redis_clients.rs.
//
// Usage: node node_redis.js PORT PROTOCOL PREFIX. PROTOCOL 3 is node-redis's default (nothing
// is passed); 2 passes RESP: 2. Every case checks its values; each prints one line with what it
// got, so the test can compare a run through legate with a run against one redis-server. Exits
// 1 when a check failed or a case threw.
'use strict';
const assert = require('node:assert/strict');
const { createClient, defineScript } = require('redis');
const { show, runCases } = require('./common');

const [PORT, PROTO, P] = [Number(process.argv[2]), Number(process.argv[3]), process.argv[4]];
const T = `{${P}}`;
const opts = (extra = {}) => ({
  socket: { port: PORT, host: '127.0.0.1', reconnectStrategy: false },
  ...(PROTO === 3 ? {} : { RESP: 2 }),
  ...extra,
});

const LUA = "return {KEYS[1], ARGV[1], redis.call('INCRBY', KEYS[1], ARGV[1])}";
const scripts = {
  incrTwice: defineScript({
    SCRIPT: "return redis.call('INCRBY', KEYS[1], ARGV[1]) * 2",
    NUMBER_OF_KEYS: 1,
    parseCommand(parser, key, by) {
      parser.pushKey(key);
      parser.push(String(by));
    },
    transformReply(reply) {
      return reply;
    },
  }),
};

async function main() {
  const r = createClient(opts({ scripts }));
  r.on('error', () => {});
  await r.connect();
  const cases = {
    async connect() {
      assert.equal(await r.ping(), 'PONG');
      assert.equal(await r.echo('hi'), 'hi');
      return 'connected';
    },
    async client_name_option() {
      const named = createClient(opts({ name: `app-${P}` }));
      named.on('error', () => {});
      await named.connect();
      try {
        assert.equal(await named.clientGetName(), `app-${P}`);
        assert.equal(await named.set(`${P}:named`, '1'), 'OK');
        return await named.clientGetName();
      } finally {
        named.destroy();
      }
    },
    async strings() {
      const k = `${P}:s`;
      assert.equal(await r.set(k, 'hello'), 'OK');
      assert.equal(await r.get(k), 'hello');
      assert.equal(await r.append(k, ' world'), 11);
      assert.equal(await r.getRange(k, 0, 4), 'hello');
      assert.equal(await r.strLen(k), 11);
      assert.equal(await r.set(k, 'x', { condition: 'NX' }), null);
      assert.equal(await r.getSet(k, 'v2'), 'hello world');
      assert.equal(await r.incr(`${P}:n`), 1);
      assert.equal(await r.incrBy(`${P}:n`, 41), 42);
      assert.equal(await r.decr(`${P}:n`), 41);
      assert.equal(Number(await r.incrByFloat(`${P}:f`, 1.5)), 1.5);
      assert.equal(await r.getDel(`${P}:f`), '1.5');
      assert.equal(await r.get(`${P}:missing`), null);
      assert.equal(await r.setRange(k, 1, '3'), 2);
      return [await r.get(k), await r.get(`${P}:n`)];
    },
    async hashes() {
      const k = `${P}:h`;
      assert.equal(await r.hSet(k, { a: '1', b: '2', c: '3' }), 3);
      assert.equal(await r.hGet(k, 'b'), '2');
      assert.deepEqual({ ...(await r.hGetAll(k)) }, { a: '1', b: '2', c: '3' });
      assert.equal(await r.hIncrBy(k, 'a', 9), 10);
      assert.equal(Number(await r.hIncrByFloat(k, 'f', 0.5)), 0.5);
      assert.deepEqual(await r.hmGet(k, ['a', 'zz', 'c']), ['10', null, '3']);
      assert.deepEqual((await r.hKeys(k)).sort(), ['a', 'b', 'c', 'f']);
      assert.equal(await r.hLen(k), 4);
      assert.equal(Boolean(await r.hExists(k, 'c')), true);
      assert.equal(await r.hDel(k, ['c', 'zz']), 1);
      assert.equal(Boolean(await r.hSetNX(k, 'a', '0')), false);
      return { ...(await r.hGetAll(k)) };
    },
    async lists() {
      const k = `${P}:l`;
      assert.equal(await r.rPush(k, ['a', 'b', 'c']), 3);
      assert.equal(await r.lPush(k, 'z'), 4);
      assert.deepEqual(await r.lRange(k, 0, -1), ['z', 'a', 'b', 'c']);
      assert.equal(await r.lIndex(k, 1), 'a');
      assert.equal(await r.lSet(k, 1, 'A'), 'OK');
      assert.equal(await r.lInsert(k, 'BEFORE', 'b', 'ab'), 5);
      assert.equal(await r.lPos(k, 'b'), 3);
      assert.equal(await r.lPop(k), 'z');
      assert.deepEqual(await r.rPopCount(k, 2), ['c', 'b']);
      assert.equal(await r.lLen(k), 2);
      assert.equal(await r.rPush(k, ['x', 'x', 'y']), 5);
      assert.equal(await r.lRem(k, 0, 'x'), 2);
      assert.equal(await r.lTrim(k, 0, 1), 'OK');
      return await r.lRange(k, 0, -1);
    },
    async sets() {
      const k = `${P}:set`;
      assert.equal(await r.sAdd(k, ['x', 'y', 'z', 'x']), 3);
      assert.deepEqual([...(await r.sMembers(k))].sort(), ['x', 'y', 'z']);
      assert.equal(Boolean(await r.sIsMember(k, 'y')), true);
      assert.deepEqual((await r.smIsMember(k, ['x', 'nope'])).map(Boolean), [true, false]);
      assert.equal(await r.sCard(k), 3);
      assert.equal(await r.sRem(k, ['z', 'nope']), 1);
      assert.ok(['x', 'y'].includes(await r.sRandMember(k)));
      return [...(await r.sMembers(k))].sort();
    },
    async sorted_sets() {
      const k = `${P}:z`;
      assert.equal(
        await r.zAdd(k, [
          { score: 1, value: 'one' },
          { score: 2, value: 'two' },
          { score: 3, value: 'three' },
        ]),
        3,
      );
      assert.deepEqual(await r.zRange(k, 0, -1), ['one', 'two', 'three']);
      assert.deepEqual(await r.zRangeWithScores(k, 0, 1), [
        { value: 'one', score: 1 },
        { value: 'two', score: 2 },
      ]);
      assert.equal(await r.zScore(k, 'two'), 2);
      assert.equal(await r.zIncrBy(k, 2.5, 'one'), 3.5);
      assert.equal(await r.zRank(k, 'one'), 2);
      assert.deepEqual(await r.zRangeByScore(k, 2, 3), ['two', 'three']);
      assert.equal(await r.zCount(k, '-inf', '+inf'), 3);
      assert.deepEqual(await r.zmScore(k, ['two', 'nope']), [2, null]);
      assert.deepEqual(await r.zPopMin(k), { value: 'two', score: 2 });
      assert.equal(await r.zCard(k), 2);
      return await r.zRangeWithScores(k, 0, -1);
    },
    async streams() {
      const k = `${P}:x`;
      assert.equal(await r.xAdd(k, '1-1', { a: '1' }), '1-1');
      assert.equal(await r.xAdd(k, '1-2', { b: '2' }), '1-2');
      assert.equal(await r.xLen(k), 2);
      const norm = (rows) => rows.map((e) => [e.id, { ...e.message }]);
      assert.deepEqual(norm(await r.xRange(k, '-', '+')), [
        ['1-1', { a: '1' }],
        ['1-2', { b: '2' }],
      ]);
      assert.deepEqual(norm(await r.xRevRange(k, '+', '-', { COUNT: 1 })), [['1-2', { b: '2' }]]);
      const read = await r.xRead({ key: k, id: '1-1' });
      const rows = (x) => (Array.isArray(x) ? x[0].messages : Object.values(x)[0]);
      assert.deepEqual(norm(rows(read)), [['1-2', { b: '2' }]]);
      assert.equal(await r.xGroupCreate(k, 'g', '0'), 'OK');
      const group = await r.xReadGroup('g', 'c1', { key: k, id: '>' }, { COUNT: 1 });
      assert.deepEqual(norm(rows(group)), [['1-1', { a: '1' }]]);
      assert.equal(await r.xAck(k, 'g', '1-1'), 1);
      assert.equal(await r.xDel(k, '1-1'), 1);
      return norm(await r.xRange(k, '-', '+'));
    },
    async expiry() {
      const k = `${P}:e`;
      assert.equal(await r.set(k, 'v', { EX: 100 }), 'OK');
      const ttl = await r.ttl(k);
      assert.ok(ttl > 90 && ttl <= 100, String(ttl));
      assert.equal(Number(await r.persist(k)), 1);
      assert.equal(await r.ttl(k), -1);
      assert.equal(Number(await r.pExpire(k, 100000)), 1);
      const pttl = await r.pTTL(k);
      assert.ok(pttl > 90000 && pttl <= 100000, String(pttl));
      assert.equal(Number(await r.expireAt(k, 1)), 1);
      assert.equal(await r.exists(k), 0);
      assert.equal(await r.ttl(k), -2);
      assert.equal(await r.set(k, 'v', { PX: 100000 }), 'OK');
      assert.equal(await r.getEx(k, { type: 'PERSIST' }), 'v');
      return [await r.ttl(k), await r.exists(k)];
    },
    async reply_types() {
      // Returned as the client decodes them: RESP3 and RESP2 differ here, and legate must give
      // what one redis-server gives.
      const k = `${P}:types`;
      await r.hSet(k, { f: '1' });
      await r.sAdd(`${k}:s`, ['m']);
      await r.zAdd(`${k}:z`, [{ score: 1.5, value: 'm' }]);
      await r.xAdd(`${k}:x`, '1-1', { a: '1' });
      return [
        await r.hGetAll(k),
        await r.hExists(k, 'f'),
        await r.sIsMember(`${k}:s`, 'm'),
        await r.sMembers(`${k}:s`),
        await r.zScore(`${k}:z`, 'm'),
        await r.zRangeWithScores(`${k}:z`, 0, -1),
        await r.incrByFloat(`${k}:f`, 0.25),
        await r.get(`${k}:missing`),
        await r.xRead({ key: `${k}:x`, id: '0' }),
        await r.sendCommand(['HGETALL', k]),
        await r.sendCommand(['ZSCORE', `${k}:z`, 'm']),
        await r.sendCommand(['SMEMBERS', `${k}:s`]),
        await r.sendCommand(['HRANDFIELD', k, '1', 'WITHVALUES']),
        await r.sendCommand(['GET', `${k}:missing`]),
        await r.sendCommand(['OBJECT', 'ENCODING', k]),
      ];
    },
    async pipeline_of_300() {
      // Sent together without waiting (node-redis pipelines commands issued in one tick).
      const calls = [];
      for (let i = 0; i < 100; i++) {
        calls.push(r.set(`${P}:p:${i}`, String(i)), r.incr(`${P}:p:${i}`), r.get(`${P}:p:${i}`));
      }
      const got = await Promise.all(calls);
      const want = [];
      for (let i = 0; i < 100; i++) want.push('OK', i + 1, String(i + 1));
      assert.deepEqual(got, want);
      // And as an explicit non-transactional batch.
      const batch = r.multi();
      for (let i = 0; i < 100; i++) batch.incr(`${P}:p:${i}`);
      const again = await batch.execAsPipeline();
      assert.deepEqual(again, [...Array(100).keys()].map((i) => i + 2));
      return [got.length + again.length, got.slice(-3)];
    },
    async lua_eval() {
      const k = `${P}:lua`;
      assert.deepEqual(await r.eval(LUA, { keys: [k], arguments: ['5'] }), [k, '5', 5]);
      assert.equal(await r.eval("return redis.call('GET', KEYS[1])", { keys: [k] }), '5');
      return await r.eval(LUA, { keys: [k], arguments: ['2'] });
    },
    async lua_registered_scripts() {
      const k = `${T}:reg`;
      const sha = await r.scriptLoad(LUA);
      assert.deepEqual((await r.scriptExists(sha)).map(Boolean), [true]);
      assert.deepEqual(await r.evalSha(sha, { keys: [k], arguments: ['3'] }), [k, '3', 3]);
      // A script defined with the client runs EVALSHA, falling back on NOSCRIPT.
      assert.equal(await r.incrTwice(k, 1), 8);
      assert.equal(await r.incrTwice(`${P}:other`, 10), 20);
      return sha;
    },
    async functions() {
      const lib = P.replace(/[:-]/g, '_');
      const code =
        `#!lua name=lib_${lib}\n` +
        `redis.register_function('incr_${lib}', function(keys, args) return redis.call('INCRBY', keys[1], args[1]) end)\n` +
        `redis.register_function{function_name='get_${lib}', callback=function(keys) return redis.call('GET', keys[1]) end, flags={'no-writes'}}`;
      assert.equal(await r.functionLoad(code, { REPLACE: true }), `lib_${lib}`);
      assert.equal(await r.fCall(`incr_${lib}`, { keys: [`${P}:fn`], arguments: ['7'] }), 7);
      assert.equal(await r.fCallRo(`get_${lib}`, { keys: [`${P}:fn`] }), '7');
      return await r.get(`${P}:fn`);
    },
    async scan_to_completion() {
      const want = [];
      const calls = [];
      for (let i = 0; i < 150; i++) {
        want.push(`${P}:scan:${i}`);
        calls.push(r.set(`${P}:scan:${i}`, String(i)));
      }
      await Promise.all(calls);
      const got = [];
      for await (const keys of r.scanIterator({ MATCH: `${P}:scan:*`, COUNT: 20 })) got.push(...keys);
      assert.equal(new Set(got).size, got.length, 'a key came twice');
      assert.deepEqual(got.sort(), want.sort());
      return got.length;
    },
    async hash_tagged_multi_key() {
      const [a, b, c, d] = ['a', 'b', 'c', 'd'].map((x) => `${T}:${x}`);
      assert.equal(await r.mSet({ [a]: '1', [b]: '2' }), 'OK');
      assert.deepEqual(await r.mGet([a, b, c]), ['1', '2', null]);
      assert.equal(Number(await r.mSetNX({ [c]: '3', [a]: 'x' })), 0);
      assert.equal(await r.exists([a, b, c]), 2);
      assert.equal(await r.rename(a, c), 'OK');
      assert.equal(Number(await r.copy(c, d)), 1);
      assert.equal(await r.del([b, c, d]), 3);
      const [s1, s2, s3] = ['1', '2', '3'].map((x) => `${T}:s${x}`);
      await r.sAdd(s1, ['a', 'b', 'c']);
      await r.sAdd(s2, ['b', 'c', 'd']);
      assert.deepEqual([...(await r.sInter([s1, s2]))].sort(), ['b', 'c']);
      assert.deepEqual([...(await r.sUnion([s1, s2]))].sort(), ['a', 'b', 'c', 'd']);
      assert.deepEqual([...(await r.sDiff([s1, s2]))], ['a']);
      assert.equal(await r.sInterStore(s3, [s1, s2]), 2);
      assert.equal(Number(await r.sMove(s1, s3, 'a')), 1);
      assert.deepEqual([...(await r.sMembers(s3))].sort(), ['a', 'b', 'c']);
      const [l1, l2] = [`${T}:l1`, `${T}:l2`];
      await r.rPush(l1, ['1', '2', '3']);
      assert.equal(await r.lMove(l1, l2, 'LEFT', 'RIGHT'), '1');
      assert.equal(await r.rPopLPush(l1, l2), '3');
      assert.deepEqual(await r.lRange(l2, 0, -1), ['3', '1']);
      const [z1, z2, z3] = ['1', '2', '3'].map((x) => `${T}:z${x}`);
      await r.zAdd(z1, [
        { score: 1, value: 'a' },
        { score: 2, value: 'b' },
      ]);
      await r.zAdd(z2, [
        { score: 3, value: 'b' },
        { score: 4, value: 'c' },
      ]);
      assert.equal(await r.zUnionStore(z3, [z1, z2]), 3);
      assert.deepEqual(await r.zRangeWithScores(z3, 0, -1), [
        { value: 'a', score: 1 },
        { value: 'c', score: 4 },
        { value: 'b', score: 5 },
      ]);
      await r.pfAdd(`${T}:hll1`, ['a', 'b']);
      await r.pfAdd(`${T}:hll2`, ['b', 'c']);
      assert.equal(await r.pfCount([`${T}:hll1`, `${T}:hll2`]), 3);
      return await r.lRange(l2, 0, -1);
    },
    async transaction() {
      const [a, b] = [`${T}:tx:a`, `${T}:tx:b`];
      const got = await r.multi().set(a, '1').incr(a).rPush(b, ['x', 'y']).lRange(b, 0, -1).exec();
      assert.deepEqual(got, ['OK', 2, 2, ['x', 'y']]);
      assert.equal(await r.get(a), '2');
      return got;
    },
    async watchAborts() {
      const k = `${T}:tx:w`;
      await r.set(k, '1');
      const c = await r.duplicate().connect();
      const other = await r.duplicate().connect();
      await c.watch(k);
      await other.set(k, '2');
      let aborted = false;
      try {
        await c.multi().set(k, '3').exec();
      } catch (e) {
        aborted = e.constructor.name;
      }
      assert.ok(aborted, 'EXEC after a watched change must abort');
      assert.equal(await r.get(k), '2');
      c.destroy();
      other.destroy();
      return aborted;
    },
    async pubsub() {
      const sub = r.duplicate();
      sub.on('error', () => {});
      await sub.connect();
      const got = [];
      let resolve;
      const done = new Promise((r) => {
        resolve = r;
      });
      const take = (message, channel) => {
        got.push([channel, message]);
        if (got.length === 3) resolve();
      };
      await sub.subscribe([`${P}:news`, `${P}:sport`], take);
      await sub.pSubscribe(`${P}:n*`, take);
      assert.equal(await r.publish(`${P}:news`, 'hello'), 2);
      assert.equal(await r.publish(`${P}:sport`, 'goal'), 1);
      await done;
      await sub.unsubscribe();
      await sub.pUnsubscribe();
      sub.destroy();
      return got.sort();
    },
    async blockingPop() {
      const q = `${T}:queue`;
      assert.equal(await r.blPop(q, 0.2), null);
      const other = await r.duplicate().connect();
      await other.rPush(q, 'job');
      const got = await r.blPop(q, 5);
      assert.deepEqual(got, { key: q, element: 'job' });
      other.destroy();
      return got;
    },
  };
  const failed = await runCases(cases);
  r.destroy();
  process.exit(failed ? 1 : 0);
}

main().catch((e) => {
  console.log(`fatal: ${show(e)}`);
  process.exit(1);
});
