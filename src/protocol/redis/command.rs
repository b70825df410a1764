//! The Redis command table: one row per command (and per subcommand of a container command like
//! `OBJECT` or `SCRIPT`), saying where its keys are and how legate serves it.
//!
//! How the table was made: the name, arity and key specs of every row were printed from a live
//! redis-server 7.0.15 (`COMMAND`, which gives each command's `key_specs`, subcommands included)
//! by a throwaway script, and the route of each row was then chosen by hand. `tests/redis_commands.rs`
//! compares every row with a live server's `COMMAND INFO` and walks the table against `COMMAND
//! GETKEYS`, so a drift in either direction fails a test. Adding a command is adding a row.
//!
//! Keys are found as Redis finds them from its key specs: a spec begins at a fixed index or after a
//! keyword, then takes a range of arguments (`last` relative to the beginning, or counted from the end
//! when negative, or a fraction `limit` of what is left) or reads a key count (`numkeys`) and takes
//! that many. SORT's keys (its STORE target, and its BY/GET patterns) are found by its own rule, as
//! Redis does.

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

/// How the replies of a command sent to every shard are merged into one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fan {
    /// DBSIZE: integers summed.
    Sum,
    /// KEYS: arrays concatenated.
    Concat,
    /// RANDOMKEY: the key of a random shard that has one; nil when every shard is empty.
    AnyKey,
    /// FLUSHDB, SCRIPT FLUSH, FUNCTION DELETE…: `+OK` when every shard said so, else the first error.
    AllOk,
    /// SCRIPT LOAD, FUNCTION LOAD: every shard answers the same (a SHA, a library name).
    Same,
    /// SCRIPT EXISTS: per element, 1 only when every shard has it (EVALSHA works on any shard).
    AllOfArray,
    /// SCRIPT KILL, FUNCTION KILL: a success from any shard, else the first error.
    AnyOk,
    /// INFO: legate's `# Server` and `# Clients`, counters summed over the shards.
    Info,
    /// PUBSUB CHANNELS / SHARDCHANNELS: arrays joined, each name once.
    Union,
    /// PUBSUB NUMSUB / SHARDNUMSUB: `name, count` pairs, counts summed per name, in request order.
    PairSum,
    /// PUBSUB NUMPAT: the largest (every pattern subscription is on every shard).
    Max,
}

/// What legate does with a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Every key on one shard: forwarded there as sent. Keys on several shards: `-CROSSSLOT`.
    /// No keys (EVAL with `numkeys` 0): the first shard.
    Keyed,
    /// As [`Route::Keyed`], but needs a connection of its own when it has a `BLOCK` option (XREAD).
    KeyedUnlessBlock,
    /// Keys split by shard, one request per shard, replies merged (MGET, MSET, DEL…).
    Split(Merge),
    /// Sent to every shard, replies merged.
    FanOut(Fan),
    /// SCAN: one cursor that walks every shard in turn.
    Scan,
    /// No keys, and any shard answers as well as another (TIME, CONFIG GET, FUNCTION LIST, … HELP).
    AnyShard,
    /// Answered by legate itself from the session's state (handshake, CLIENT, COMMAND…).
    Local,
    /// Needs a server connection of its own (transactions, blocking commands, pub/sub, WAIT,
    /// SCRIPT KILL, PING, SYNC): `router/pinned.rs`.
    Pinned,
    /// Refused, with the reason a sharding proxy does not serve it.
    Refused(&'static str),
    /// Administers the servers themselves (CONFIG SET / REWRITE, DEBUG): refused with this reason
    /// unless the pool sets `redis_admin_commands: true` (its operator owns every server); then
    /// CONFIG goes to every shard (`+OK` when every shard said so, else the first error) and
    /// DEBUG as [`debug_route`] says for its subcommand.
    Admin(&'static str),
    /// A container (`OBJECT`, `SCRIPT`, …): the row of `name|subcommand` says.
    Container,
}

/// Where a key spec starts looking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Begin {
    /// At this argument.
    Index(u16),
    /// After this keyword, searched from argument `from` forwards (or from `argc + from`
    /// backwards when negative).
    Keyword { word: &'static str, from: i16 },
}

/// Which arguments a key spec takes from where it begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Find {
    /// From the beginning to `last` (relative to it; `-1` is the last argument, `-2` the one
    /// before), every `step`th; with `limit` > 0, `last` is `-1` and only `1/limit` of what is left
    /// are keys (XREAD's streams, followed by as many ids).
    Range { last: i16, step: u16, limit: u16 },
    /// The beginning holds the number of keys, which follow it.
    KeyNum,
}

/// One of Redis's key specs: where a run of keys is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySpec {
    pub begin: Begin,
    pub find: Find,
    /// Marked `not_key` by Redis (SPUBLISH's shard channel): placed like a key, but no key.
    pub not_key: bool,
}

/// Where a command's keys are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keys {
    /// As Redis's key specs say.
    Specs(&'static [KeySpec]),
    /// SORT / SORT_RO: argument 1, the STORE target, and the BY / GET patterns (which name keys
    /// by substitution; see [`sort_patterns`]).
    Sort,
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command {
    /// Lower case; `container|subcommand` for subcommands, as Redis names them.
    pub name: &'static str,
    /// Redis's arity: the exact argument count (name included), or at least `-arity` when negative.
    pub arity: i16,
    pub keys: Keys,
    pub route: Route,
}

impl Command {
    /// Whether `argc` arguments (name included) satisfy the arity.
    pub fn arity_ok(&self, argc: usize) -> bool {
        let a = self.arity as i64;
        (a >= 0 && argc as i64 == a) || (a < 0 && argc as i64 >= -a)
    }
}

const fn row(name: &'static str, arity: i16, keys: Keys, route: Route) -> Command {
    Command {
        name,
        arity,
        keys,
        route,
    }
}

const fn at(index: u16, last: i16) -> KeySpec {
    at_step(index, last, 1)
}

const fn at_step(index: u16, last: i16, step: u16) -> KeySpec {
    KeySpec {
        begin: Begin::Index(index),
        find: Find::Range { last, step, limit: 0 },
        not_key: false,
    }
}

const fn numkeys(index: u16) -> KeySpec {
    KeySpec {
        begin: Begin::Index(index),
        find: Find::KeyNum,
        not_key: false,
    }
}

const fn keyword(word: &'static str, from: i16, last: i16, limit: u16) -> KeySpec {
    KeySpec {
        begin: Begin::Keyword { word, from },
        find: Find::Range { last, step: 1, limit },
        not_key: false,
    }
}

const fn not_key(mut spec: KeySpec) -> KeySpec {
    spec.not_key = true;
    spec
}

const NO_KEYS: Keys = Keys::Specs(&[]);

const ADMIN: &str = "it administers one server; send it to the servers directly";
const ACL: &str = "users are per server; legate checks clients itself (redis_auth)";
const CLUSTER: &str = "legate shards with its own hash ring, not Redis Cluster";
const CONFIG: &str = "it would change one server of many; configure the servers directly";
const DB0: &str = "legate serves database 0 only";
const DIAGNOSTIC: &str = "it reports on one server of many; ask the servers directly";
const MIGRATE: &str = "legate's hash ring places keys; moving them between servers would hide them";
const MONITOR: &str = "it would watch one server of many; monitor the servers directly";
const REPLICATION: &str = "replication is set up between the servers, not through legate";

/// Every command of Redis 7.0, sorted by name.
pub static COMMANDS: &[Command] = &[
    row("acl", -2, NO_KEYS, Route::Container),
    row("acl|cat", -2, NO_KEYS, Route::Refused(ACL)),
    row("acl|deluser", -3, NO_KEYS, Route::Refused(ACL)),
    row("acl|dryrun", -4, NO_KEYS, Route::Refused(ACL)),
    row("acl|genpass", -2, NO_KEYS, Route::Refused(ACL)),
    row("acl|getuser", 3, NO_KEYS, Route::Refused(ACL)),
    row("acl|help", 2, NO_KEYS, Route::AnyShard),
    row("acl|list", 2, NO_KEYS, Route::Refused(ACL)),
    row("acl|load", 2, NO_KEYS, Route::Refused(ACL)),
    row("acl|log", -2, NO_KEYS, Route::Refused(ACL)),
    row("acl|save", 2, NO_KEYS, Route::Refused(ACL)),
    row("acl|setuser", -3, NO_KEYS, Route::Refused(ACL)),
    row("acl|users", 2, NO_KEYS, Route::Refused(ACL)),
    row("acl|whoami", 2, NO_KEYS, Route::Refused(ACL)),
    row("append", 3, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("asking", 1, NO_KEYS, Route::Refused(CLUSTER)),
    row("auth", -2, NO_KEYS, Route::Local),
    row("bgrewriteaof", 1, NO_KEYS, Route::Refused(ADMIN)),
    row("bgsave", -1, NO_KEYS, Route::Refused(ADMIN)),
    row("bitcount", -2, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("bitfield", -2, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("bitfield_ro", -2, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("bitop", -4, Keys::Specs(&[at(2, 0), at(3, -1)]), Route::Keyed),
    row("bitpos", -3, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("blmove", 6, Keys::Specs(&[at(1, 0), at(2, 0)]), Route::Pinned),
    row("blmpop", -5, Keys::Specs(&[numkeys(2)]), Route::Pinned),
    row("blpop", -3, Keys::Specs(&[at(1, -2)]), Route::Pinned),
    row("brpop", -3, Keys::Specs(&[at(1, -2)]), Route::Pinned),
    row("brpoplpush", 4, Keys::Specs(&[at(1, 0), at(2, 0)]), Route::Pinned),
    row("bzmpop", -5, Keys::Specs(&[numkeys(2)]), Route::Pinned),
    row("bzpopmax", -3, Keys::Specs(&[at(1, -2)]), Route::Pinned),
    row("bzpopmin", -3, Keys::Specs(&[at(1, -2)]), Route::Pinned),
    row("client", -2, NO_KEYS, Route::Container),
    row("client|caching", 3, NO_KEYS, Route::Local),
    row("client|getname", 2, NO_KEYS, Route::Local),
    row("client|getredir", 2, NO_KEYS, Route::Local),
    row("client|help", 2, NO_KEYS, Route::Local),
    row("client|id", 2, NO_KEYS, Route::Local),
    row("client|info", 2, NO_KEYS, Route::Local),
    row("client|kill", -3, NO_KEYS, Route::Local),
    row("client|list", -2, NO_KEYS, Route::Local),
    row("client|no-evict", 3, NO_KEYS, Route::Local),
    row("client|pause", -3, NO_KEYS, Route::Local),
    row("client|reply", 3, NO_KEYS, Route::Local),
    row("client|setname", 3, NO_KEYS, Route::Local),
    row("client|tracking", -3, NO_KEYS, Route::Local),
    row("client|trackinginfo", 2, NO_KEYS, Route::Local),
    row("client|unblock", -3, NO_KEYS, Route::Local),
    row("client|unpause", 2, NO_KEYS, Route::Local),
    row("cluster", -2, NO_KEYS, Route::Container),
    row("cluster|addslots", -3, NO_KEYS, Route::Refused(CLUSTER)),
    row("cluster|addslotsrange", -4, NO_KEYS, Route::Refused(CLUSTER)),
    row("cluster|bumpepoch", 2, NO_KEYS, Route::Refused(CLUSTER)),
    row("cluster|count-failure-reports", 3, NO_KEYS, Route::Refused(CLUSTER)),
    row("cluster|countkeysinslot", 3, NO_KEYS, Route::Refused(CLUSTER)),
    row("cluster|delslots", -3, NO_KEYS, Route::Refused(CLUSTER)),
    row("cluster|delslotsrange", -4, NO_KEYS, Route::Refused(CLUSTER)),
    row("cluster|failover", -2, NO_KEYS, Route::Refused(CLUSTER)),
    row("cluster|flushslots", 2, NO_KEYS, Route::Refused(CLUSTER)),
    row("cluster|forget", 3, NO_KEYS, Route::Refused(CLUSTER)),
    row("cluster|getkeysinslot", 4, NO_KEYS, Route::Refused(CLUSTER)),
    row("cluster|help", 2, NO_KEYS, Route::AnyShard),
    row("cluster|info", 2, NO_KEYS, Route::Refused(CLUSTER)),
    row("cluster|keyslot", 3, NO_KEYS, Route::Refused(CLUSTER)),
    row("cluster|links", 2, NO_KEYS, Route::Refused(CLUSTER)),
    row("cluster|meet", -4, NO_KEYS, Route::Refused(CLUSTER)),
    row("cluster|myid", 2, NO_KEYS, Route::Refused(CLUSTER)),
    row("cluster|nodes", 2, NO_KEYS, Route::Refused(CLUSTER)),
    row("cluster|replicas", 3, NO_KEYS, Route::Refused(CLUSTER)),
    row("cluster|replicate", 3, NO_KEYS, Route::Refused(CLUSTER)),
    row("cluster|reset", -2, NO_KEYS, Route::Refused(CLUSTER)),
    row("cluster|saveconfig", 2, NO_KEYS, Route::Refused(CLUSTER)),
    row("cluster|set-config-epoch", 3, NO_KEYS, Route::Refused(CLUSTER)),
    row("cluster|setslot", -4, NO_KEYS, Route::Refused(CLUSTER)),
    row("cluster|shards", 2, NO_KEYS, Route::Refused(CLUSTER)),
    row("cluster|slaves", 3, NO_KEYS, Route::Refused(CLUSTER)),
    row("cluster|slots", 2, NO_KEYS, Route::Refused(CLUSTER)),
    row("command", -1, NO_KEYS, Route::Container),
    row("command|count", 2, NO_KEYS, Route::Local),
    row("command|docs", -2, NO_KEYS, Route::Local),
    row("command|getkeys", -4, NO_KEYS, Route::Local),
    row("command|getkeysandflags", -4, NO_KEYS, Route::Local),
    row("command|help", 2, NO_KEYS, Route::Local),
    row("command|info", -2, NO_KEYS, Route::Local),
    row("command|list", -2, NO_KEYS, Route::Local),
    row("config", -2, NO_KEYS, Route::Container),
    row("config|get", -3, NO_KEYS, Route::AnyShard),
    row("config|help", 2, NO_KEYS, Route::AnyShard),
    row("config|resetstat", 2, NO_KEYS, Route::FanOut(Fan::AllOk)),
    row("config|rewrite", 2, NO_KEYS, Route::Admin(CONFIG)),
    row("config|set", -4, NO_KEYS, Route::Admin(CONFIG)),
    row("copy", -3, Keys::Specs(&[at(1, 0), at(2, 0)]), Route::Keyed),
    row("dbsize", 1, NO_KEYS, Route::FanOut(Fan::Sum)),
    row("debug", -2, NO_KEYS, Route::Admin(ADMIN)),
    row("decr", 2, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("decrby", 3, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("del", -2, Keys::Specs(&[at(1, -1)]), Route::Split(Merge::Sum)),
    row("discard", 1, NO_KEYS, Route::Pinned),
    row("dump", 2, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("echo", 2, NO_KEYS, Route::Local),
    row("eval", -3, Keys::Specs(&[numkeys(2)]), Route::Keyed),
    row("eval_ro", -3, Keys::Specs(&[numkeys(2)]), Route::Keyed),
    row("evalsha", -3, Keys::Specs(&[numkeys(2)]), Route::Keyed),
    row("evalsha_ro", -3, Keys::Specs(&[numkeys(2)]), Route::Keyed),
    row("exec", 1, NO_KEYS, Route::Pinned),
    row("exists", -2, Keys::Specs(&[at(1, -1)]), Route::Split(Merge::Sum)),
    row("expire", -3, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("expireat", -3, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("expiretime", 2, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("failover", -1, NO_KEYS, Route::Refused(REPLICATION)),
    row("fcall", -3, Keys::Specs(&[numkeys(2)]), Route::Keyed),
    row("fcall_ro", -3, Keys::Specs(&[numkeys(2)]), Route::Keyed),
    row("flushall", -1, NO_KEYS, Route::FanOut(Fan::AllOk)),
    row("flushdb", -1, NO_KEYS, Route::FanOut(Fan::AllOk)),
    row("function", -2, NO_KEYS, Route::Container),
    row("function|delete", 3, NO_KEYS, Route::FanOut(Fan::AllOk)),
    row("function|dump", 2, NO_KEYS, Route::AnyShard),
    row("function|flush", -2, NO_KEYS, Route::FanOut(Fan::AllOk)),
    row("function|help", 2, NO_KEYS, Route::AnyShard),
    row("function|kill", 2, NO_KEYS, Route::Pinned),
    row("function|list", -2, NO_KEYS, Route::AnyShard),
    row("function|load", -3, NO_KEYS, Route::FanOut(Fan::Same)),
    row("function|restore", -3, NO_KEYS, Route::FanOut(Fan::AllOk)),
    row("function|stats", 2, NO_KEYS, Route::AnyShard),
    row("geoadd", -5, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("geodist", -4, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("geohash", -2, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("geopos", -2, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row(
        "georadius",
        -6,
        Keys::Specs(&[at(1, 0), keyword("STORE", 6, 0, 0), keyword("STOREDIST", 6, 0, 0)]),
        Route::Keyed,
    ),
    row("georadius_ro", -6, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row(
        "georadiusbymember",
        -5,
        Keys::Specs(&[at(1, 0), keyword("STORE", 5, 0, 0), keyword("STOREDIST", 5, 0, 0)]),
        Route::Keyed,
    ),
    row("georadiusbymember_ro", -5, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("geosearch", -7, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("geosearchstore", -8, Keys::Specs(&[at(1, 0), at(2, 0)]), Route::Keyed),
    row("get", 2, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("getbit", 3, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("getdel", 2, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("getex", -2, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("getrange", 4, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("getset", 3, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("hdel", -3, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("hello", -1, NO_KEYS, Route::Local),
    row("hexists", 3, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("hget", 3, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("hgetall", 2, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("hincrby", 4, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("hincrbyfloat", 4, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("hkeys", 2, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("hlen", 2, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("hmget", -3, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("hmset", -4, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("hrandfield", -2, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("hscan", -3, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("hset", -4, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("hsetnx", 4, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("hstrlen", 3, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("hvals", 2, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("incr", 2, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("incrby", 3, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("incrbyfloat", 3, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("info", -1, NO_KEYS, Route::FanOut(Fan::Info)),
    row("keys", 2, NO_KEYS, Route::FanOut(Fan::Concat)),
    row("lastsave", 1, NO_KEYS, Route::AnyShard),
    row("latency", -2, NO_KEYS, Route::Container),
    row("latency|doctor", 2, NO_KEYS, Route::Refused(DIAGNOSTIC)),
    row("latency|graph", 3, NO_KEYS, Route::Refused(DIAGNOSTIC)),
    row("latency|help", 2, NO_KEYS, Route::AnyShard),
    row("latency|histogram", -2, NO_KEYS, Route::Refused(DIAGNOSTIC)),
    row("latency|history", 3, NO_KEYS, Route::Refused(DIAGNOSTIC)),
    row("latency|latest", 2, NO_KEYS, Route::Refused(DIAGNOSTIC)),
    row("latency|reset", -2, NO_KEYS, Route::Refused(DIAGNOSTIC)),
    row("lcs", -3, Keys::Specs(&[at(1, 1)]), Route::Keyed),
    row("lindex", 3, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("linsert", 5, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("llen", 2, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("lmove", 5, Keys::Specs(&[at(1, 0), at(2, 0)]), Route::Keyed),
    row("lmpop", -4, Keys::Specs(&[numkeys(1)]), Route::Keyed),
    row("lolwut", -1, NO_KEYS, Route::AnyShard),
    row("lpop", -2, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("lpos", -3, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("lpush", -3, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("lpushx", -3, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("lrange", 4, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("lrem", 4, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("lset", 4, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("ltrim", 4, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("memory", -2, NO_KEYS, Route::Container),
    row("memory|doctor", 2, NO_KEYS, Route::Refused(DIAGNOSTIC)),
    row("memory|help", 2, NO_KEYS, Route::AnyShard),
    row("memory|malloc-stats", 2, NO_KEYS, Route::Refused(DIAGNOSTIC)),
    row("memory|purge", 2, NO_KEYS, Route::Refused(DIAGNOSTIC)),
    row("memory|stats", 2, NO_KEYS, Route::Refused(DIAGNOSTIC)),
    row("memory|usage", -3, Keys::Specs(&[at(2, 0)]), Route::Keyed),
    row("mget", -2, Keys::Specs(&[at(1, -1)]), Route::Split(Merge::Array)),
    row(
        "migrate",
        -6,
        Keys::Specs(&[at(3, 0), keyword("KEYS", -2, -1, 0)]),
        Route::Refused(MIGRATE),
    ),
    row("module", -2, NO_KEYS, Route::Container),
    row("module|help", 2, NO_KEYS, Route::AnyShard),
    row("module|list", 2, NO_KEYS, Route::Refused(ADMIN)),
    row("module|load", -3, NO_KEYS, Route::Refused(ADMIN)),
    row("module|loadex", -3, NO_KEYS, Route::Refused(ADMIN)),
    row("module|unload", 3, NO_KEYS, Route::Refused(ADMIN)),
    row("monitor", 1, NO_KEYS, Route::Refused(MONITOR)),
    row("move", 3, Keys::Specs(&[at(1, 0)]), Route::Refused(DB0)),
    row("mset", -3, Keys::Specs(&[at_step(1, -1, 2)]), Route::Split(Merge::Ok)),
    row("msetnx", -3, Keys::Specs(&[at_step(1, -1, 2)]), Route::Keyed),
    row("multi", 1, NO_KEYS, Route::Pinned),
    row("object", -2, NO_KEYS, Route::Container),
    row("object|encoding", 3, Keys::Specs(&[at(2, 0)]), Route::Keyed),
    row("object|freq", 3, Keys::Specs(&[at(2, 0)]), Route::Keyed),
    row("object|help", 2, NO_KEYS, Route::AnyShard),
    row("object|idletime", 3, Keys::Specs(&[at(2, 0)]), Route::Keyed),
    row("object|refcount", 3, Keys::Specs(&[at(2, 0)]), Route::Keyed),
    row("persist", 2, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("pexpire", -3, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("pexpireat", -3, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("pexpiretime", 2, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("pfadd", -2, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("pfcount", -2, Keys::Specs(&[at(1, -1)]), Route::Keyed),
    row("pfdebug", 3, Keys::Specs(&[at(2, 0)]), Route::Keyed),
    row("pfmerge", -2, Keys::Specs(&[at(1, 0), at(2, -1)]), Route::Keyed),
    row("pfselftest", 1, NO_KEYS, Route::AnyShard),
    row("ping", -1, NO_KEYS, Route::Pinned),
    row("psetex", 4, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("psubscribe", -2, NO_KEYS, Route::Pinned),
    row("psync", -3, NO_KEYS, Route::Pinned),
    row("pttl", 2, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("publish", 3, NO_KEYS, Route::Pinned),
    row("pubsub", -2, NO_KEYS, Route::Container),
    row("pubsub|channels", -2, NO_KEYS, Route::FanOut(Fan::Union)),
    row("pubsub|help", 2, NO_KEYS, Route::AnyShard),
    row("pubsub|numpat", 2, NO_KEYS, Route::FanOut(Fan::Max)),
    row("pubsub|numsub", -2, NO_KEYS, Route::FanOut(Fan::PairSum)),
    row("pubsub|shardchannels", -2, NO_KEYS, Route::FanOut(Fan::Union)),
    row("pubsub|shardnumsub", -2, NO_KEYS, Route::FanOut(Fan::PairSum)),
    row("punsubscribe", -1, NO_KEYS, Route::Pinned),
    row("quit", -1, NO_KEYS, Route::Local),
    row("randomkey", 1, NO_KEYS, Route::FanOut(Fan::AnyKey)),
    row("readonly", 1, NO_KEYS, Route::Local),
    row("readwrite", 1, NO_KEYS, Route::Local),
    row("rename", 3, Keys::Specs(&[at(1, 0), at(2, 0)]), Route::Keyed),
    row("renamenx", 3, Keys::Specs(&[at(1, 0), at(2, 0)]), Route::Keyed),
    row("replconf", -1, NO_KEYS, Route::Refused(REPLICATION)),
    row("replicaof", 3, NO_KEYS, Route::Refused(REPLICATION)),
    row("reset", 1, NO_KEYS, Route::Local),
    row("restore", -4, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("restore-asking", -4, Keys::Specs(&[at(1, 0)]), Route::Refused(CLUSTER)),
    row("role", 1, NO_KEYS, Route::AnyShard),
    row("rpop", -2, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("rpoplpush", 3, Keys::Specs(&[at(1, 0), at(2, 0)]), Route::Keyed),
    row("rpush", -3, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("rpushx", -3, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("sadd", -3, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("save", 1, NO_KEYS, Route::Refused(ADMIN)),
    row("scan", -2, NO_KEYS, Route::Scan),
    row("scard", 2, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("script", -2, NO_KEYS, Route::Container),
    row("script|debug", 3, NO_KEYS, Route::Pinned),
    row("script|exists", -3, NO_KEYS, Route::FanOut(Fan::AllOfArray)),
    row("script|flush", -2, NO_KEYS, Route::FanOut(Fan::AllOk)),
    row("script|help", 2, NO_KEYS, Route::AnyShard),
    row("script|kill", 2, NO_KEYS, Route::Pinned),
    row("script|load", 3, NO_KEYS, Route::FanOut(Fan::Same)),
    row("sdiff", -2, Keys::Specs(&[at(1, -1)]), Route::Keyed),
    row("sdiffstore", -3, Keys::Specs(&[at(1, 0), at(2, -1)]), Route::Keyed),
    row("select", 2, NO_KEYS, Route::Local),
    row("set", -3, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("setbit", 4, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("setex", 4, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("setnx", 3, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("setrange", 4, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("shutdown", -1, NO_KEYS, Route::Refused(ADMIN)),
    row("sinter", -2, Keys::Specs(&[at(1, -1)]), Route::Keyed),
    row("sintercard", -3, Keys::Specs(&[numkeys(1)]), Route::Keyed),
    row("sinterstore", -3, Keys::Specs(&[at(1, 0), at(2, -1)]), Route::Keyed),
    row("sismember", 3, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("slaveof", 3, NO_KEYS, Route::Refused(REPLICATION)),
    row("slowlog", -2, NO_KEYS, Route::Container),
    row("slowlog|get", -2, NO_KEYS, Route::Refused(DIAGNOSTIC)),
    row("slowlog|help", 2, NO_KEYS, Route::AnyShard),
    row("slowlog|len", 2, NO_KEYS, Route::Refused(DIAGNOSTIC)),
    row("slowlog|reset", 2, NO_KEYS, Route::Refused(DIAGNOSTIC)),
    row("smembers", 2, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("smismember", -3, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("smove", 4, Keys::Specs(&[at(1, 0), at(2, 0)]), Route::Keyed),
    row("sort", -2, Keys::Sort, Route::Keyed),
    row("sort_ro", -2, Keys::Sort, Route::Keyed),
    row("spop", -2, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("spublish", 3, Keys::Specs(&[not_key(at(1, 0))]), Route::Pinned),
    row("srandmember", -2, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("srem", -3, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("sscan", -3, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("ssubscribe", -2, Keys::Specs(&[not_key(at(1, -1))]), Route::Pinned),
    row("strlen", 2, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("subscribe", -2, NO_KEYS, Route::Pinned),
    row("substr", 4, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("sunion", -2, Keys::Specs(&[at(1, -1)]), Route::Keyed),
    row("sunionstore", -3, Keys::Specs(&[at(1, 0), at(2, -1)]), Route::Keyed),
    row("sunsubscribe", -1, Keys::Specs(&[not_key(at(1, -1))]), Route::Pinned),
    row("swapdb", 3, NO_KEYS, Route::Refused(DB0)),
    row("sync", 1, NO_KEYS, Route::Pinned),
    row("time", 1, NO_KEYS, Route::AnyShard),
    row("touch", -2, Keys::Specs(&[at(1, -1)]), Route::Split(Merge::Sum)),
    row("ttl", 2, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("type", 2, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("unlink", -2, Keys::Specs(&[at(1, -1)]), Route::Split(Merge::Sum)),
    row("unsubscribe", -1, NO_KEYS, Route::Pinned),
    row("unwatch", 1, NO_KEYS, Route::Pinned),
    row("wait", 3, NO_KEYS, Route::Pinned),
    row("watch", -2, Keys::Specs(&[at(1, -1)]), Route::Pinned),
    row("xack", -4, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("xadd", -5, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("xautoclaim", -6, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("xclaim", -6, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("xdel", -3, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("xgroup", -2, NO_KEYS, Route::Container),
    row("xgroup|create", -5, Keys::Specs(&[at(2, 0)]), Route::Keyed),
    row("xgroup|createconsumer", 5, Keys::Specs(&[at(2, 0)]), Route::Keyed),
    row("xgroup|delconsumer", 5, Keys::Specs(&[at(2, 0)]), Route::Keyed),
    row("xgroup|destroy", 4, Keys::Specs(&[at(2, 0)]), Route::Keyed),
    row("xgroup|help", 2, NO_KEYS, Route::AnyShard),
    row("xgroup|setid", -5, Keys::Specs(&[at(2, 0)]), Route::Keyed),
    row("xinfo", -2, NO_KEYS, Route::Container),
    row("xinfo|consumers", 4, Keys::Specs(&[at(2, 0)]), Route::Keyed),
    row("xinfo|groups", 3, Keys::Specs(&[at(2, 0)]), Route::Keyed),
    row("xinfo|help", 2, NO_KEYS, Route::AnyShard),
    row("xinfo|stream", -3, Keys::Specs(&[at(2, 0)]), Route::Keyed),
    row("xlen", 2, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("xpending", -3, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("xrange", -4, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row(
        "xread",
        -4,
        Keys::Specs(&[keyword("STREAMS", 1, -1, 2)]),
        Route::KeyedUnlessBlock,
    ),
    row(
        "xreadgroup",
        -7,
        Keys::Specs(&[keyword("STREAMS", 4, -1, 2)]),
        Route::KeyedUnlessBlock,
    ),
    row("xrevrange", -4, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("xsetid", -3, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("xtrim", -4, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("zadd", -4, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("zcard", 2, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("zcount", 4, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("zdiff", -3, Keys::Specs(&[numkeys(1)]), Route::Keyed),
    row("zdiffstore", -4, Keys::Specs(&[at(1, 0), numkeys(2)]), Route::Keyed),
    row("zincrby", 4, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("zinter", -3, Keys::Specs(&[numkeys(1)]), Route::Keyed),
    row("zintercard", -3, Keys::Specs(&[numkeys(1)]), Route::Keyed),
    row("zinterstore", -4, Keys::Specs(&[at(1, 0), numkeys(2)]), Route::Keyed),
    row("zlexcount", 4, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("zmpop", -4, Keys::Specs(&[numkeys(1)]), Route::Keyed),
    row("zmscore", -3, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("zpopmax", -2, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("zpopmin", -2, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("zrandmember", -2, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("zrange", -4, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("zrangebylex", -4, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("zrangebyscore", -4, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("zrangestore", -5, Keys::Specs(&[at(1, 0), at(2, 0)]), Route::Keyed),
    row("zrank", 3, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("zrem", -3, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("zremrangebylex", 4, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("zremrangebyrank", 4, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("zremrangebyscore", 4, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("zrevrange", -4, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("zrevrangebylex", -4, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("zrevrangebyscore", -4, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("zrevrank", 3, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("zscan", -3, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("zscore", 3, Keys::Specs(&[at(1, 0)]), Route::Keyed),
    row("zunion", -3, Keys::Specs(&[numkeys(1)]), Route::Keyed),
    row("zunionstore", -4, Keys::Specs(&[at(1, 0), numkeys(2)]), Route::Keyed),
];

/// How a DEBUG subcommand is served in a pool with `redis_admin_commands: true`. DEBUG has no
/// key specs in Redis (`COMMAND GETKEYS DEBUG OBJECT k` finds none), but the subcommands below that
/// name keys act on them, so they go to the shard of those keys, found by these specs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DebugRoute {
    /// OBJECT, SDSLEN, HTSTATS-KEY, LISTPACK, QUICKLIST key; DIGEST-VALUE key…: the keys' shard.
    Keys(&'static [KeySpec]),
    /// RELOAD, LOADAOF, SET-ACTIVE-EXPIRE, QUICKLIST-PACKED-THRESHOLD, SLEEP, …: they change or
    /// reload each server, so every shard; `+OK` when every shard said so.
    Every,
    /// PROTOCOL, HELP, STRINGMATCH-TEST …: every server answers the same; the first shard.
    AnyShard,
    /// DIGEST: the digest of one server's whole dataset; served on a one-server pool only (the
    /// digests of several servers do not combine into the one a single server would give).
    OneServerOnly,
}

const DEBUG_ONE_KEY: &[KeySpec] = &[at(2, 0)];
const DEBUG_KEYS: &[KeySpec] = &[at(2, -1)];

/// How legate serves `DEBUG sub` when the pool allows admin commands; `None` for the subcommands
/// it never sends (those that crash, stop or hang a server, or act on one server's internals:
/// SEGFAULT, PANIC, RESTART, OOM, MALLCTL, POPULATE, CLUSTERLINK …).
pub fn debug_route(sub: &[u8]) -> Option<DebugRoute> {
    const ROUTES: &[(&str, DebugRoute)] = &[
        ("change-repl-id", DebugRoute::Every),
        ("digest", DebugRoute::OneServerOnly),
        ("digest-value", DebugRoute::Keys(DEBUG_KEYS)),
        ("help", DebugRoute::AnyShard),
        ("htstats-key", DebugRoute::Keys(DEBUG_ONE_KEY)),
        ("jmap", DebugRoute::Every),
        ("listpack", DebugRoute::Keys(DEBUG_ONE_KEY)),
        ("loadaof", DebugRoute::Every),
        ("log", DebugRoute::Every),
        ("object", DebugRoute::Keys(DEBUG_ONE_KEY)),
        ("pause-cron", DebugRoute::Every),
        ("protocol", DebugRoute::AnyShard),
        ("quicklist", DebugRoute::Keys(DEBUG_ONE_KEY)),
        ("quicklist-packed-threshold", DebugRoute::Every),
        ("reload", DebugRoute::Every),
        ("replybuffer", DebugRoute::Every),
        ("sdslen", DebugRoute::Keys(DEBUG_ONE_KEY)),
        ("set-active-expire", DebugRoute::Every),
        ("set-disable-deny-scripts", DebugRoute::Every),
        ("set-skip-checksum-validation", DebugRoute::Every),
        ("sleep", DebugRoute::Every),
        ("stringmatch-test", DebugRoute::AnyShard),
        ("structsize", DebugRoute::AnyShard),
    ];
    ROUTES
        .iter()
        .find(|(name, _)| name.as_bytes().eq_ignore_ascii_case(sub))
        .map(|(_, d)| *d)
}

/// Why a command has no row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unknown {
    Command,
    /// A container command with an unknown subcommand.
    Subcommand,
}

fn find(name: &[u8]) -> Option<&'static Command> {
    let mut lower = [0u8; 48];
    if name.len() > lower.len() {
        return None;
    }
    for (d, s) in lower.iter_mut().zip(name) {
        *d = s.to_ascii_lowercase();
    }
    let lower = &lower[..name.len()];
    COMMANDS
        .binary_search_by(|c| c.name.as_bytes().cmp(lower))
        .ok()
        .map(|i| &COMMANDS[i])
}

/// Where `cmd` is in [`COMMANDS`], when it is one of its rows (as [`lookup`] returns them): a
/// per-command metric indexes its array with this instead of looking the name up again.
pub fn row_index(cmd: &Command) -> Option<usize> {
    let at = cmd as *const Command as usize;
    let i = at.wrapping_sub(COMMANDS.as_ptr() as usize) / std::mem::size_of::<Command>();
    COMMANDS.get(i).filter(|row| std::ptr::eq(*row, cmd)).map(|_| i)
}

/// The row of a request, given its first two arguments (`sub` when there is one): a container's
/// subcommand row, or the container's own row when the subcommand is missing (its arity then fails,
/// except for `COMMAND` alone).
///
/// # Errors
/// No such command, or no such subcommand of a container.
/// Commands Redis flags `readonly` that a cluster replica serves after `READONLY` (`read_from`):
/// the common single-key reads. Anything else goes to the master.
const READ_ONLY: &[&str] = &[
    "bitcount",
    "bitpos",
    "dump",
    "exists",
    "get",
    "getbit",
    "getrange",
    "hexists",
    "hget",
    "hgetall",
    "hkeys",
    "hlen",
    "hmget",
    "hrandfield",
    "hstrlen",
    "hvals",
    "lindex",
    "llen",
    "lpos",
    "lrange",
    "pttl",
    "scard",
    "sismember",
    "smembers",
    "smismember",
    "srandmember",
    "strlen",
    "substr",
    "ttl",
    "type",
    "xlen",
    "xrange",
    "xrevrange",
    "zcard",
    "zcount",
    "zlexcount",
    "zmscore",
    "zrandmember",
    "zrange",
    "zrangebylex",
    "zrangebyscore",
    "zrank",
    "zrevrange",
    "zrevrangebylex",
    "zrevrangebyscore",
    "zrevrank",
    "zscore",
];

impl Command {
    /// A read a cluster replica may serve (one of the rows listed in `READ_ONLY`).
    pub fn read_only(&self) -> bool {
        READ_ONLY.contains(&self.name)
    }
}

pub fn lookup(name: &[u8], sub: Option<&[u8]>) -> Result<&'static Command, Unknown> {
    let row = find(name).ok_or(Unknown::Command)?;
    if row.route != Route::Container {
        return Ok(row);
    }
    let Some(sub) = sub else { return Ok(row) };
    if sub.len() + row.name.len() + 1 > 48 || sub.contains(&b'|') {
        return Err(Unknown::Subcommand);
    }
    let mut full = [0u8; 48];
    full[..row.name.len()].copy_from_slice(row.name.as_bytes());
    full[row.name.len()] = b'|';
    full[row.name.len() + 1..row.name.len() + 1 + sub.len()].copy_from_slice(sub);
    find(&full[..row.name.len() + 1 + sub.len()]).ok_or(Unknown::Subcommand)
}

/// The request's keys are not where its row says they should be (a bad or zero `numkeys`, too
/// few arguments after a keyword): the command has no keys (EVAL with `numkeys` 0) or fails with
/// its own error wherever it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadKeys;

/// Append to `out` the argument indexes of the request's keys, in spec order, as Redis finds them.
/// `arg(i)` is argument `i` (0 is the name) for `i < argc`. Specs marked `not_key` are skipped.
///
/// # Errors
/// [`BadKeys`] when a spec does not fit the arguments.
pub fn key_positions<'a>(
    cmd: &Command,
    argc: usize,
    arg: impl Fn(usize) -> &'a [u8],
    out: &mut impl Extend<usize>,
) -> Result<(), BadKeys> {
    let specs = match cmd.keys {
        Keys::Sort => {
            if argc > 1 {
                out.extend(Some(1));
            }
            if cmd.name == "sort" {
                out.extend(sort_options(argc, &arg).store);
            }
            return Ok(());
        }
        Keys::Specs(specs) => specs,
    };
    for spec in specs {
        if spec.not_key {
            continue;
        }
        let first = match spec.begin {
            Begin::Index(i) => i as usize,
            Begin::Keyword { word, from } => {
                let found = if from > 0 {
                    (from as usize..argc.saturating_sub(1)).find(|&i| arg(i).eq_ignore_ascii_case(word.as_bytes()))
                } else {
                    let start = argc as i64 + from as i64;
                    (1..=start.max(0) as usize)
                        .rev()
                        .find(|&i| i < argc && arg(i).eq_ignore_ascii_case(word.as_bytes()))
                };
                match found {
                    Some(i) => i + 1,
                    None => continue,
                }
            }
        };
        if first >= argc {
            return Err(BadKeys);
        }
        let (first, last, step) = match spec.find {
            Find::Range { last, step, limit } => {
                let last = if last >= 0 {
                    first as i64 + last as i64
                } else if limit == 0 {
                    argc as i64 + last as i64
                } else {
                    first as i64 + ((argc - first) / limit as usize) as i64 + last as i64
                };
                (first as i64, last, step.max(1) as usize)
            }
            Find::KeyNum => {
                let n = crate::protocol::parse_i64(arg(first)).ok_or(BadKeys)?;
                // A count of 0 fits no spec, as for Redis: the command has no keys (EVAL) or
                // refuses the count itself (ZUNIONSTORE).
                if n <= 0 {
                    return Err(BadKeys);
                }
                (first as i64 + 1, first as i64 + n, 1)
            }
        };
        if last >= argc as i64 || last < first {
            return Err(BadKeys);
        }
        out.extend((first as usize..=last as usize).step_by(step));
    }
    Ok(())
}

/// What SORT's options say: where its STORE key is, and which arguments are BY / GET patterns.
struct SortOptions {
    store: Option<usize>,
    patterns: Vec<usize>,
}

fn sort_options<'a>(argc: usize, arg: &impl Fn(usize) -> &'a [u8]) -> SortOptions {
    let mut o = SortOptions {
        store: None,
        patterns: Vec::new(),
    };
    let mut i = 2;
    while i < argc {
        let a = arg(i);
        if a.eq_ignore_ascii_case(b"limit") {
            i += 2;
        } else if a.eq_ignore_ascii_case(b"get") || a.eq_ignore_ascii_case(b"by") {
            if i + 1 < argc {
                o.patterns.push(i + 1);
            }
            i += 1;
        } else if a.eq_ignore_ascii_case(b"store") && i + 1 < argc {
            o.store = Some(i + 1);
        }
        i += 1;
    }
    o
}

/// The arguments of a SORT / SORT_RO that are BY or GET patterns naming other keys (with a `*` in
/// their key part; `GET #` and `BY nosort` name none).
pub fn sort_patterns<'a>(argc: usize, arg: impl Fn(usize) -> &'a [u8]) -> Vec<usize> {
    sort_options(argc, &arg)
        .patterns
        .into_iter()
        .filter(|&i| pattern_key_part(arg(i)).contains(&b'*'))
        .collect()
}

/// The part of a SORT BY / GET pattern that names a key: before a `->field` that follows the `*`.
pub fn pattern_key_part(p: &[u8]) -> &[u8] {
    let Some(star) = p.iter().position(|&c| c == b'*') else {
        return p;
    };
    match p[star + 1..].windows(2).position(|w| w == b"->") {
        Some(at) if star + 1 + at + 2 < p.len() => &p[..star + 1 + at],
        _ => p,
    }
}

/// Whether an XREAD / XREADGROUP request has a BLOCK option (before its STREAMS keyword).
pub fn has_block_option<'a>(argc: usize, arg: impl Fn(usize) -> &'a [u8]) -> bool {
    let mut i = 1;
    while i < argc {
        let a = arg(i);
        if a.eq_ignore_ascii_case(b"streams") {
            return false;
        } else if a.eq_ignore_ascii_case(b"block") {
            return true;
        } else if a.eq_ignore_ascii_case(b"group") {
            i += 3;
        } else if a.eq_ignore_ascii_case(b"count") {
            i += 2;
        } else {
            i += 1;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_of(words: &str) -> Result<Vec<usize>, BadKeys> {
        let args: Vec<&[u8]> = words.split(' ').map(str::as_bytes).collect();
        let sub = args.get(1).copied();
        let row = lookup(args[0], sub).unwrap();
        let mut out = Vec::new();
        key_positions(row, args.len(), |i| args[i], &mut out).map(|()| out)
    }

    #[test]
    fn table_is_sorted_and_unique() {
        for w in COMMANDS.windows(2) {
            assert!(w[0].name < w[1].name, "{} before {}", w[0].name, w[1].name);
        }
        assert!(COMMANDS.len() > 350);
    }

    #[test]
    fn lookup_is_case_insensitive_and_knows_subcommands() {
        assert_eq!(lookup(b"GET", None).unwrap().route, Route::Keyed);
        assert_eq!(lookup(b"object", Some(b"ENCODING")).unwrap().name, "object|encoding");
        assert_eq!(lookup(b"object", None).unwrap().name, "object");
        assert_eq!(lookup(b"object", Some(b"nope")), Err(Unknown::Subcommand));
        assert_eq!(lookup(b"nope", None), Err(Unknown::Command));
        assert_eq!(
            lookup(b"a-very-long-command-name-indeed-longer-than-any-row", None),
            Err(Unknown::Command)
        );
        assert_eq!(lookup(b"MGET", None).unwrap().route, Route::Split(Merge::Array));
        assert_eq!(lookup(b"dbsize", None).unwrap().route, Route::FanOut(Fan::Sum));
        assert_eq!(lookup(b"multi", None).unwrap().route, Route::Pinned);
    }

    #[test]
    fn every_row_knows_its_index_and_a_copy_has_none() {
        for (i, row) in COMMANDS.iter().enumerate() {
            assert_eq!(row_index(row), Some(i), "{}", row.name);
        }
        let get = lookup(b"GET", None).unwrap();
        assert_eq!(COMMANDS[row_index(get).unwrap()].name, "get");
        let copy = *get;
        assert_eq!(row_index(&copy), None, "a row that is not in the table");
    }

    #[test]
    fn keys_are_never_words_that_are_not_keys() {
        assert_eq!(keys_of("get k"), Ok(vec![1]));
        assert_eq!(keys_of("object encoding k"), Ok(vec![2]));
        assert_eq!(keys_of("zunion 2 a b weights 1 2"), Ok(vec![2, 3]));
        assert_eq!(keys_of("zunionstore d 2 a b"), Ok(vec![1, 3, 4]));
        assert_eq!(keys_of("eval s 2 a b c"), Ok(vec![3, 4]));
        assert_eq!(keys_of("eval s 0 c"), Err(BadKeys));
        assert_eq!(keys_of("eval s -12 c"), Err(BadKeys));
        assert_eq!(keys_of("eval s 3 a b"), Err(BadKeys));
        assert_eq!(keys_of("xread count 5 streams a b 0 0"), Ok(vec![4, 5]));
        assert_eq!(keys_of("xreadgroup group g c streams a 0"), Ok(vec![5]));
        assert_eq!(keys_of("mset a 1 b 2"), Ok(vec![1, 3]));
        assert_eq!(keys_of("sort a by w_* get # store d"), Ok(vec![1, 7]));
        assert_eq!(keys_of("sort_ro a store d"), Ok(vec![1]));
        assert_eq!(keys_of("georadius g 0 0 1 km store d"), Ok(vec![1, 7]));
        assert_eq!(keys_of("migrate h p \"\" 0 5 keys a b"), Ok(vec![3, 7, 8]));
        assert_eq!(keys_of("blpop a b 0"), Ok(vec![1, 2]));
        assert_eq!(keys_of("spublish ch m"), Ok(vec![]));
        assert_eq!(keys_of("debug object k"), Ok(vec![]));
    }

    #[test]
    fn debug_subcommands_name_their_keys() {
        let keys = |words: &str| {
            let args: Vec<&[u8]> = words.split(' ').map(str::as_bytes).collect();
            let Some(DebugRoute::Keys(specs)) = debug_route(args[1]) else {
                return None;
            };
            let row = row("debug", -3, Keys::Specs(specs), Route::Keyed);
            let mut out = Vec::new();
            key_positions(&row, args.len(), |i| args[i], &mut out).ok()?;
            Some(out)
        };
        assert_eq!(keys("debug OBJECT k"), Some(vec![2]));
        assert_eq!(keys("debug digest-value a b c"), Some(vec![2, 3, 4]));
        assert_eq!(keys("debug quicklist k 1"), Some(vec![2]));
        assert_eq!(keys("debug reload"), None);
        assert_eq!(debug_route(b"SET-ACTIVE-EXPIRE"), Some(DebugRoute::Every));
        assert_eq!(debug_route(b"protocol"), Some(DebugRoute::AnyShard));
        assert_eq!(debug_route(b"segfault"), None);
        assert_eq!(debug_route(b"digest"), Some(DebugRoute::OneServerOnly));
    }

    #[test]
    fn sort_patterns_and_block_options() {
        let args = [
            "sort", "a", "by", "w_*->f", "get", "#", "get", "nostar", "limit", "0", "1",
        ];
        assert_eq!(sort_patterns(args.len(), |i| args[i].as_bytes()), vec![3]);
        assert_eq!(pattern_key_part(b"w_{t}*->f"), b"w_{t}*");
        assert_eq!(pattern_key_part(b"w_*->"), b"w_*->");
        let x = ["xreadgroup", "group", "block", "c", "streams", "s", ">"];
        assert!(!has_block_option(x.len(), |i| x[i].as_bytes()));
        let x = ["xread", "count", "1", "BLOCK", "0", "streams", "s", "$"];
        assert!(has_block_option(x.len(), |i| x[i].as_bytes()));
    }
}
