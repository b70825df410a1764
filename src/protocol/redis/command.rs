//! The Redis command table: how each command is routed, split or answered locally.
//!
//! The set of keyed commands follows twemproxy's (nc_redis.c) so a twemproxy user's commands
//! keep working; commands that cannot be served correctly over shards are refused with `-ERR`.

/// How the replies of a split command are merged back into one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// MGET: one array element per key, in request key order.
    Array,
    /// DEL, UNLINK, TOUCH, EXISTS: integer replies summed.
    Sum,
    /// MSET: `+OK` when every shard said `+OK`.
    Ok,
}

/// What the proxy does with a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandKind {
    /// Routed by its first key, argument 1.
    Single,
    /// EVAL/EVALSHA: routed by the first key after `numkeys` (argument 3).
    Eval,
    /// Keys split over shards; `step` is 1 for key lists, 2 for key/value pairs.
    Multi {
        merge: Merge,
        step: usize,
    },
    Ping,
    Echo,
    Quit,
    Select,
    Command,
    /// Refused: cannot be served correctly across shards, or unknown.
    Unsupported,
}

const SINGLE: &[&str] = &[
    // keys
    "expire",
    "expireat",
    "pexpire",
    "pexpireat",
    "persist",
    "pttl",
    "ttl",
    "type",
    "sort",
    "sort_ro",
    "dump",
    "restore",
    "object",
    "expiretime",
    "pexpiretime", // strings
    "append",
    "bitcount",
    "bitpos",
    "decr",
    "decrby",
    "get",
    "getbit",
    "getrange",
    "getset",
    "getdel",
    "getex",
    "incr",
    "incrby",
    "incrbyfloat",
    "psetex",
    "set",
    "setbit",
    "setex",
    "setnx",
    "setrange",
    "strlen",
    "substr",
    "bitfield",
    "bitfield_ro",
    "lcs", // hashes
    "hdel",
    "hexists",
    "hget",
    "hgetall",
    "hincrby",
    "hincrbyfloat",
    "hkeys",
    "hlen",
    "hmget",
    "hmset",
    "hset",
    "hsetnx",
    "hvals",
    "hscan",
    "hstrlen",
    "hrandfield", // lists
    "lindex",
    "linsert",
    "llen",
    "lpop",
    "lpos",
    "lpush",
    "lpushx",
    "lrange",
    "lrem",
    "lset",
    "ltrim",
    "rpop",
    "rpoplpush",
    "lmove",
    "rpush",
    "rpushx", // sets
    "sadd",
    "scard",
    "sdiff",
    "sdiffstore",
    "sinter",
    "sinterstore",
    "sismember",
    "smismember",
    "smembers",
    "smove",
    "spop",
    "srandmember",
    "srem",
    "sunion",
    "sunionstore",
    "sscan", // sorted sets
    "zadd",
    "zcard",
    "zcount",
    "zincrby",
    "zinterstore",
    "zlexcount",
    "zrange",
    "zrangebylex",
    "zrangebyscore",
    "zrank",
    "zrem",
    "zremrangebyrank",
    "zremrangebyscore",
    "zremrangebylex",
    "zrevrange",
    "zrevrangebylex",
    "zrevrangebyscore",
    "zrevrank",
    "zscore",
    "zmscore",
    "zunionstore",
    "zscan",
    "zpopmin",
    "zpopmax",
    "zrandmember",
    "zdiff",
    "zdiffstore",
    "zinter",
    "zunion",
    "zrangestore", // hyperloglog
    "pfadd",
    "pfcount",
    "pfmerge", // geo
    "geoadd",
    "geodist",
    "geohash",
    "geopos",
    "georadius",
    "georadiusbymember",
    "georadius_ro",
    "georadiusbymember_ro",
    "geosearch",
    "geosearchstore",
];

/// Look up a command name (any case).
pub fn lookup(name: &[u8]) -> CommandKind {
    let mut lower = [0u8; 24];
    if name.len() > lower.len() {
        return CommandKind::Unsupported;
    }
    for (d, s) in lower.iter_mut().zip(name) {
        *d = s.to_ascii_lowercase();
    }
    let lower = &lower[..name.len()];
    match lower {
        b"mget" => CommandKind::Multi {
            merge: Merge::Array,
            step: 1,
        },
        b"del" | b"unlink" | b"touch" | b"exists" => CommandKind::Multi {
            merge: Merge::Sum,
            step: 1,
        },
        b"mset" => CommandKind::Multi {
            merge: Merge::Ok,
            step: 2,
        },
        b"eval" | b"evalsha" | b"eval_ro" | b"evalsha_ro" => CommandKind::Eval,
        b"ping" => CommandKind::Ping,
        b"echo" => CommandKind::Echo,
        b"quit" => CommandKind::Quit,
        b"select" => CommandKind::Select,
        b"command" => CommandKind::Command,
        _ if SINGLE.iter().any(|c| c.as_bytes() == lower) => CommandKind::Single,
        _ => CommandKind::Unsupported,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_is_case_insensitive_and_refuses_cross_shard_commands() {
        assert_eq!(lookup(b"GET"), CommandKind::Single);
        assert_eq!(lookup(b"zRangeByScore"), CommandKind::Single);
        assert_eq!(
            lookup(b"MSET"),
            CommandKind::Multi {
                merge: Merge::Ok,
                step: 2
            }
        );
        assert_eq!(
            lookup(b"exists"),
            CommandKind::Multi {
                merge: Merge::Sum,
                step: 1
            }
        );
        assert_eq!(lookup(b"EVALSHA"), CommandKind::Eval);
        for refused in [
            "keys",
            "scan",
            "flushall",
            "flushdb",
            "randomkey",
            "multi",
            "exec",
            "watch",
            "blpop",
            "subscribe",
            "config",
            "info",
            "a-very-long-command-name-indeed",
        ] {
            assert_eq!(lookup(refused.as_bytes()), CommandKind::Unsupported, "{refused}");
        }
    }
}
