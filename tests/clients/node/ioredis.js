// ioredis with its default connection options, driven by tests/redis_clients.rs.
//
// Usage: node ioredis.js PORT PROTOCOL PREFIX. PROTOCOL 3 is ioredis's default (nothing is
// passed); 2 passes protocol: 2. Every case checks its values; each prints one line with what it
// got, so the test can compare a run through legate with a run against one redis-server. Exits
// 1 when a check failed or a case threw.
'use strict';
const assert = require('node:assert/strict');
const Redis = require('ioredis');
const { show, runCases } = require('./common');

const [PORT, PROTO, P] = [Number(process.argv[2]), Number(process.argv[3]), process.argv[4]];
const T = `{${P}}`;
const opts = (extra = {}) => ({
  port: PORT,
  host: '127.0.0.1',
  ...(PROTO === 3 ? {} : { protocol: 2 }),
  ...extra,
});

const LUA = "return {KEYS[1], ARGV[1], redis.call('INCRBY', KEYS[1], ARGV[1])}";
const toObj = (pairs) => {
  if (!Array.isArray(pairs)) return { ...pairs };
  const o = {};
  for (let i = 0; i < pairs.length; i += 2) o[pairs[i]] = pairs[i + 1];
  return o;
};

async function main() {
  const r = new Redis(opts());
  r.on('error', () => {});
  r.defineCommand('incrTwice', {
    numberOfKeys: 1,
    lua: "return redis.call('INCRBY', KEYS[1], ARGV[1]) * 2",
  });
  const cases = {
    async connect() {
      assert.equal(await r.ping(), 'PONG');
      assert.equal(await r.echo('hi'), 'hi');
      return r.status;
    },
    async client_name_option() {
      const named = new Redis(opts({ connectionName: `app-${P}` }));
      named.on('error', () => {});
      try {
        assert.equal(await named.client('GETNAME'), `app-${P}`);
        assert.equal(await named.set(`${P}:named`, '1'), 'OK');
        return await named.client('GETNAME');
      } finally {
        named.disconnect();
      }
    },
    async strings() {
      const k = `${P}:s`;
      assert.equal(await r.set(k, 'hello'), 'OK');
      assert.equal(await r.get(k), 'hello');
      assert.equal(await r.append(k, ' world'), 11);
      assert.equal(await r.getrange(k, 0, 4), 'hello');
      assert.equal(await r.strlen(k), 11);
      assert.equal(await r.set(k, 'x', 'NX'), null);
      assert.equal(await r.getset(k, 'v2'), 'hello world');
      assert.equal(await r.incr(`${P}:n`), 1);
      assert.equal(await r.incrby(`${P}:n`, 41), 42);
      assert.equal(await r.decr(`${P}:n`), 41);
      assert.equal(Number(await r.incrbyfloat(`${P}:f`, 1.5)), 1.5);
      assert.equal(await r.getdel(`${P}:f`), '1.5');
      assert.equal(await r.get(`${P}:missing`), null);
      assert.equal(await r.setrange(k, 1, '3'), 2);
      return [await r.get(k), await r.get(`${P}:n`)];
    },
    async hashes() {
      const k = `${P}:h`;
      assert.equal(await r.hset(k, { a: '1', b: '2', c: '3' }), 3);
      assert.equal(await r.hget(k, 'b'), '2');
      assert.deepEqual(toObj(await r.hgetall(k)), { a: '1', b: '2', c: '3' });
      assert.equal(await r.hincrby(k, 'a', 9), 10);
      assert.equal(Number(await r.hincrbyfloat(k, 'f', 0.5)), 0.5);
      assert.deepEqual(await r.hmget(k, 'a', 'zz', 'c'), ['10', null, '3']);
      assert.deepEqual((await r.hkeys(k)).sort(), ['a', 'b', 'c', 'f']);
      assert.equal(await r.hlen(k), 4);
      assert.equal(Number(await r.hexists(k, 'c')), 1);
      assert.equal(await r.hdel(k, 'c', 'zz'), 1);
      assert.equal(Number(await r.hsetnx(k, 'a', '0')), 0);
      return toObj(await r.hgetall(k));
    },
    async lists() {
      const k = `${P}:l`;
      assert.equal(await r.rpush(k, 'a', 'b', 'c'), 3);
      assert.equal(await r.lpush(k, 'z'), 4);
      assert.deepEqual(await r.lrange(k, 0, -1), ['z', 'a', 'b', 'c']);
      assert.equal(await r.lindex(k, 1), 'a');
      assert.equal(await r.lset(k, 1, 'A'), 'OK');
      assert.equal(await r.linsert(k, 'BEFORE', 'b', 'ab'), 5);
      assert.equal(await r.lpos(k, 'b'), 3);
      assert.equal(await r.lpop(k), 'z');
      assert.deepEqual(await r.rpop(k, 2), ['c', 'b']);
      assert.equal(await r.llen(k), 2);
      assert.equal(await r.rpush(k, 'x', 'x', 'y'), 5);
      assert.equal(await r.lrem(k, 0, 'x'), 2);
      assert.equal(await r.ltrim(k, 0, 1), 'OK');
      return await r.lrange(k, 0, -1);
    },
    async sets() {
      const k = `${P}:set`;
      assert.equal(await r.sadd(k, 'x', 'y', 'z', 'x'), 3);
      assert.deepEqual([...(await r.smembers(k))].sort(), ['x', 'y', 'z']);
      assert.equal(Number(await r.sismember(k, 'y')), 1);
      assert.deepEqual((await r.smismember(k, 'x', 'nope')).map(Number), [1, 0]);
      assert.equal(await r.scard(k), 3);
      assert.equal(await r.srem(k, 'z', 'nope'), 1);
      assert.ok(['x', 'y'].includes(await r.srandmember(k)));
      return [...(await r.smembers(k))].sort();
    },
    async sorted_sets() {
      const k = `${P}:z`;
      assert.equal(await r.zadd(k, 1, 'one', 2, 'two', 3, 'three'), 3);
      assert.deepEqual(await r.zrange(k, 0, -1), ['one', 'two', 'three']);
      const flat = (x) => x.flat().map(String);
      assert.deepEqual(flat(await r.zrange(k, 0, 1, 'WITHSCORES')), ['one', '1', 'two', '2']);
      assert.equal(Number(await r.zscore(k, 'two')), 2);
      assert.equal(Number(await r.zincrby(k, 2.5, 'one')), 3.5);
      assert.equal(await r.zrank(k, 'one'), 2);
      assert.deepEqual(await r.zrangebyscore(k, 2, 3), ['two', 'three']);
      assert.equal(await r.zcount(k, '-inf', '+inf'), 3);
      assert.deepEqual((await r.zmscore(k, 'two', 'nope')).map((x) => (x === null ? null : Number(x))), [2, null]);
      assert.deepEqual(flat(await r.zpopmin(k)), ['two', '2']);
      assert.equal(await r.zcard(k), 2);
      return flat(await r.zrange(k, 0, -1, 'WITHSCORES'));
    },
    async streams() {
      const k = `${P}:x`;
      assert.equal(await r.xadd(k, '1-1', 'a', '1'), '1-1');
      assert.equal(await r.xadd(k, '1-2', 'b', '2'), '1-2');
      assert.equal(await r.xlen(k), 2);
      assert.deepEqual(await r.xrange(k, '-', '+'), [
        ['1-1', ['a', '1']],
        ['1-2', ['b', '2']],
      ]);
      assert.deepEqual(await r.xrevrange(k, '+', '-', 'COUNT', 1), [['1-2', ['b', '2']]]);
      const rows = (x) => (Array.isArray(x) ? x[0][1] : Object.values(x)[0]);
      assert.deepEqual(rows(await r.xread('STREAMS', k, '1-1')), [['1-2', ['b', '2']]]);
      assert.equal(await r.xgroup('CREATE', k, 'g', '0'), 'OK');
      const group = await r.xreadgroup('GROUP', 'g', 'c1', 'COUNT', 1, 'STREAMS', k, '>');
      assert.deepEqual(rows(group), [['1-1', ['a', '1']]]);
      assert.equal(await r.xack(k, 'g', '1-1'), 1);
      assert.equal(await r.xdel(k, '1-1'), 1);
      return await r.xrange(k, '-', '+');
    },
    async expiry() {
      const k = `${P}:e`;
      assert.equal(await r.set(k, 'v', 'EX', 100), 'OK');
      const ttl = await r.ttl(k);
      assert.ok(ttl > 90 && ttl <= 100, String(ttl));
      assert.equal(await r.persist(k), 1);
      assert.equal(await r.ttl(k), -1);
      assert.equal(await r.pexpire(k, 100000), 1);
      const pttl = await r.pttl(k);
      assert.ok(pttl > 90000 && pttl <= 100000, String(pttl));
      assert.equal(await r.expireat(k, 1), 1);
      assert.equal(await r.exists(k), 0);
      assert.equal(await r.ttl(k), -2);
      assert.equal(await r.set(k, 'v', 'PX', 100000), 'OK');
      assert.equal(await r.getex(k, 'PERSIST'), 'v');
      return [await r.ttl(k), await r.exists(k)];
    },
    async reply_types() {
      // Returned as the client decodes them: RESP3 and RESP2 differ here, and legate must give
      // what one redis-server gives.
      const k = `${P}:types`;
      await r.hset(k, 'f', '1');
      await r.sadd(`${k}:s`, 'm');
      await r.zadd(`${k}:z`, 1.5, 'm');
      await r.xadd(`${k}:x`, '1-1', 'a', '1');
      return [
        await r.hgetall(k),
        await r.hexists(k, 'f'),
        await r.sismember(`${k}:s`, 'm'),
        await r.smembers(`${k}:s`),
        await r.zscore(`${k}:z`, 'm'),
        await r.zrange(`${k}:z`, 0, -1, 'WITHSCORES'),
        await r.incrbyfloat(`${k}:f`, 0.25),
        await r.get(`${k}:missing`),
        await r.xread('STREAMS', `${k}:x`, '0'),
        await r.call('HGETALL', k),
        await r.call('HRANDFIELD', k, '1', 'WITHVALUES'),
        await r.call('OBJECT', 'ENCODING', k),
      ];
    },
    async pipeline_of_300() {
      const pipe = r.pipeline();
      for (let i = 0; i < 100; i++) {
        pipe.set(`${P}:p:${i}`, String(i)).incr(`${P}:p:${i}`).get(`${P}:p:${i}`);
      }
      const got = (await pipe.exec()).map(([err, v]) => (err ? `error: ${err.message}` : v));
      const want = [];
      for (let i = 0; i < 100; i++) want.push('OK', i + 1, String(i + 1));
      assert.deepEqual(got, want);
      return [got.length, got.slice(-3)];
    },
    async lua_eval() {
      const k = `${P}:lua`;
      assert.deepEqual(await r.eval(LUA, 1, k, '5'), [k, '5', 5]);
      assert.equal(await r.eval("return redis.call('GET', KEYS[1])", 1, k), '5');
      return await r.eval(LUA, 1, k, '2');
    },
    async lua_registered_scripts() {
      const k = `${T}:reg`;
      const sha = await r.script('LOAD', LUA);
      assert.deepEqual((await r.script('EXISTS', sha)).map(Number), [1]);
      assert.deepEqual(await r.evalsha(sha, 1, k, '3'), [k, '3', 3]);
      // defineCommand runs EVALSHA, falling back to EVAL on NOSCRIPT.
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
      assert.equal(await r.function('LOAD', 'REPLACE', code), `lib_${lib}`);
      assert.equal(await r.fcall(`incr_${lib}`, 1, `${P}:fn`, '7'), 7);
      assert.equal(await r.fcall_ro(`get_${lib}`, 1, `${P}:fn`), '7');
      return await r.get(`${P}:fn`);
    },
    async scan_to_completion() {
      const want = [];
      const pipe = r.pipeline();
      for (let i = 0; i < 150; i++) {
        want.push(`${P}:scan:${i}`);
        pipe.set(`${P}:scan:${i}`, String(i));
      }
      await pipe.exec();
      const got = [];
      await new Promise((resolve, reject) => {
        const s = r.scanStream({ match: `${P}:scan:*`, count: 20 });
        s.on('data', (keys) => got.push(...keys));
        s.on('end', resolve);
        s.on('error', reject);
      });
      assert.equal(new Set(got).size, got.length, 'a key came twice');
      assert.deepEqual(got.sort(), want.sort());
      return got.length;
    },
    async hash_tagged_multi_key() {
      const [a, b, c, d] = ['a', 'b', 'c', 'd'].map((x) => `${T}:${x}`);
      assert.equal(await r.mset(a, '1', b, '2'), 'OK');
      assert.deepEqual(await r.mget(a, b, c), ['1', '2', null]);
      assert.equal(await r.msetnx(c, '3', a, 'x'), 0);
      assert.equal(await r.exists(a, b, c), 2);
      assert.equal(await r.rename(a, c), 'OK');
      assert.equal(await r.copy(c, d), 1);
      assert.equal(await r.del(b, c, d), 3);
      const [s1, s2, s3] = ['1', '2', '3'].map((x) => `${T}:s${x}`);
      await r.sadd(s1, 'a', 'b', 'c');
      await r.sadd(s2, 'b', 'c', 'd');
      assert.deepEqual([...(await r.sinter(s1, s2))].sort(), ['b', 'c']);
      assert.deepEqual([...(await r.sunion(s1, s2))].sort(), ['a', 'b', 'c', 'd']);
      assert.deepEqual([...(await r.sdiff(s1, s2))], ['a']);
      assert.equal(await r.sinterstore(s3, s1, s2), 2);
      assert.equal(await r.smove(s1, s3, 'a'), 1);
      assert.deepEqual([...(await r.smembers(s3))].sort(), ['a', 'b', 'c']);
      const [l1, l2] = [`${T}:l1`, `${T}:l2`];
      await r.rpush(l1, '1', '2', '3');
      assert.equal(await r.lmove(l1, l2, 'LEFT', 'RIGHT'), '1');
      assert.equal(await r.rpoplpush(l1, l2), '3');
      assert.deepEqual(await r.lrange(l2, 0, -1), ['3', '1']);
      const [z1, z2, z3] = ['1', '2', '3'].map((x) => `${T}:z${x}`);
      await r.zadd(z1, 1, 'a', 2, 'b');
      await r.zadd(z2, 3, 'b', 4, 'c');
      assert.equal(await r.zunionstore(z3, 2, z1, z2), 3);
      assert.deepEqual(await r.zrange(z3, 0, -1), ['a', 'c', 'b']);
      await r.pfadd(`${T}:hll1`, 'a', 'b');
      await r.pfadd(`${T}:hll2`, 'b', 'c');
      assert.equal(await r.pfcount(`${T}:hll1`, `${T}:hll2`), 3);
      return await r.lrange(l2, 0, -1);
    },
    async transaction() {
      const [a, b] = [`${T}:tx:a`, `${T}:tx:b`];
      const got = await r.multi().set(a, '1').incr(a).rpush(b, 'x', 'y').lrange(b, 0, -1).exec();
      assert.deepEqual(got, [
        [null, 'OK'],
        [null, 2],
        [null, 2],
        [null, ['x', 'y']],
      ]);
      return got;
    },
    async watchAborts() {
      const k = `${T}:tx:w`;
      await r.set(k, '1');
      const c = new Redis(opts());
      const other = new Redis(opts());
      await c.watch(k);
      await other.set(k, '2');
      const got = await c.multi().set(k, '3').exec();
      assert.equal(got, null);
      assert.equal(await r.get(k), '2');
      c.disconnect();
      other.disconnect();
      return got;
    },
    async pubsub() {
      const sub = new Redis(opts());
      const got = [];
      const done = new Promise((resolve) => {
        const take = (...args) => {
          got.push(args.slice(-2));
          if (got.length === 3) resolve();
        };
        sub.on('message', take);
        sub.on('pmessage', take);
      });
      assert.equal(await sub.subscribe(`${P}:news`, `${P}:sport`), 2);
      assert.equal(await sub.psubscribe(`${P}:n*`), 3);
      assert.equal(await r.publish(`${P}:news`, 'hello'), 2);
      assert.equal(await r.publish(`${P}:sport`, 'goal'), 1);
      await done;
      sub.disconnect();
      return got.sort();
    },
    async blockingPop() {
      const q = `${T}:queue`;
      assert.equal(await r.blpop(q, 0.2), null);
      const other = new Redis(opts());
      await other.rpush(q, 'job');
      const got = await r.blpop(q, 5);
      assert.deepEqual(got, [q, 'job']);
      other.disconnect();
      return got;
    },
  };
  const failed = await runCases(cases);
  r.disconnect();
  process.exit(failed ? 1 : 0);
}

main().catch((e) => {
  console.log(`fatal: ${show(e)}`);
  process.exit(1);
});
