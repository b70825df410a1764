//! twemproxy's YAML (plus legate's extensions) -> a validated [`Config`].
//!
//! Every top-level key is a pool. Parsing never exits or panics: a reload goes through the same
//! path, so every problem comes back as a [`ConfigError`] naming the pool and the key at fault.

use crate::hash::{name_order, Distribution, HashFn};
use serde_yaml::Value;
use std::fmt;
use std::time::Duration;

/// The wire protocol a pool speaks to clients and servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Memcache,
    Redis,
    /// An L4 pool: the byte stream is forwarded untouched to one server per connection.
    Tcp,
}

impl Protocol {
    /// The name used in config files and logs.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Memcache => "memcache",
            Protocol::Redis => "redis",
            Protocol::Tcp => "tcp",
        }
    }
}

/// How an L4 (`protocol: tcp`) pool picks a server for each client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// The pool's ring (`ketama`, `modula` or `random`), keyed by the client's IP address.
    Ring,
    RoundRobin,
    LeastConnections,
}

/// TLS from legate to a pool's servers (`tls:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM roots that sign the servers' certificates; `None`: the system's roots.
    pub ca_file: Option<String>,
    /// The name sent as SNI and checked against the certificate; `None`: each server's host.
    pub server_name: Option<String>,
    /// legate's own certificate chain and key, for servers that require client certificates.
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    /// `false` accepts any certificate (only with an explicit `verify: false`).
    pub verify: bool,
}

/// TLS on a pool's listener (`listen_tls:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenTlsConfig {
    pub cert_file: String,
    pub key_file: String,
    /// When set, clients must present a certificate signed by one of these roots.
    pub client_ca_file: Option<String>,
    /// A client that has not finished its handshake in this time is closed.
    pub handshake_timeout: Duration,
}

/// Where a pool listens or a server is reached.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Addr {
    /// `host:port`; the host may be a name, resolved when used.
    Tcp { host: String, port: u16 },
    /// A unix-domain socket path, with the listener's file permissions if given.
    Unix { path: String, perm: Option<u32> },
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Addr::Tcp { host, port } => write!(f, "{host}:{port}"),
            Addr::Unix { path, .. } => f.write_str(path),
        }
    }
}

/// One backend server of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub addr: Addr,
    pub weight: u32,
    /// The optional alias after the address (`host:port:weight alias`).
    pub alias: Option<String>,
    /// The name the ring hashes: the alias, else `host:port`, else `host` when the port is 11211.
    pub name: String,
}

/// Default `max_pinned_connections`: below Redis's own default `maxclients` (10000).
pub const DEFAULT_MAX_PINNED: usize = 4096;

/// Where a pool's servers' addresses come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `servers:` as listed (twemproxy).
    Static,
    /// `sentinels:` (legate): each server is a master name, and its address is whatever the
    /// sentinels say that master's is now.
    Sentinel(SentinelConfig),
    /// `cluster:` (legate): a Redis Cluster, whose masters and slots are learned from its nodes.
    Cluster(ClusterConfig),
}

/// A Redis Cluster pool's seed nodes and how often its slot table is refreshed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Nodes asked for the slot table at start (and when no known master answers).
    pub seeds: Vec<Addr>,
    /// How often the slot table is refreshed besides after a MOVED (`cluster_refresh`, ms).
    pub refresh: Duration,
    /// Where read-only commands go (`read_from`).
    pub read_from: ReadFrom,
}

/// `read_from` (legate): where a cluster or Sentinel pool's read-only commands go. Writes, and
/// anything legate does not know to be read-only, always go to the key's master.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadFrom {
    #[default]
    Master,
    /// A replica of the key's master (an error when it has none up).
    Replica,
    /// A replica of the key's master, or the master when it has none up.
    PreferReplica,
}

/// Default `cluster_refresh`.
pub const DEFAULT_CLUSTER_REFRESH: Duration = Duration::from_secs(10);

/// A Sentinel pool's sentinels and how they are asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelConfig {
    /// The sentinels, in the order they are tried.
    pub sentinels: Vec<Addr>,
    /// How often every master is re-checked with the sentinels (`sentinel_interval`, ms),
    /// besides following `+switch-master` as it is announced.
    pub interval: Duration,
    /// The sentinels' password (`sentinel_auth`): their `requirepass`, or `sentinel_user`'s.
    pub auth: Option<String>,
    /// The ACL user legate is on the sentinels (`sentinel_user`; needs `sentinel_auth`).
    pub user: Option<String>,
    /// Whether the sentinels are reached over the pool's `tls:` (`sentinel_tls`; on by default
    /// when the pool has `tls:`).
    pub tls: bool,
    /// Where read-only commands go (`read_from`): a replica the sentinels list as up.
    pub read_from: ReadFrom,
}

/// Default `sentinel_interval`.
pub const DEFAULT_SENTINEL_INTERVAL: Duration = Duration::from_secs(5);

/// One pool: a listener and the servers its keys are spread over.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub name: String,
    pub listen: Addr,
    pub protocol: Protocol,
    pub hash: HashFn,
    pub hash_tag: Option<[u8; 2]>,
    pub distribution: Distribution,
    /// Per-request timeout; `None` waits forever.
    pub timeout: Option<Duration>,
    pub backlog: u32,
    /// Max concurrent clients; 0 = unlimited.
    pub client_connections: u32,
    pub redis_auth: Option<String>,
    /// `redis_user` (legate): the ACL user legate's connections to the servers (static shards,
    /// Sentinel-resolved masters, cluster nodes) authenticate as, `AUTH <user> <redis_auth>`;
    /// clients may name it too. Without it, the `default` user.
    pub redis_user: Option<String>,
    /// `user:password` (or `password`, any user) that memcache clients must give by binary SASL
    /// PLAIN before anything else is served (legate); text clients are refused.
    pub memcache_auth: Option<String>,
    pub redis_db: u32,
    /// `redis_admin_commands: true` (legate): CONFIG SET / REWRITE and the DEBUG subcommands that
    /// administer a server are sent to every shard (DEBUG OBJECT and the like to the key's shard)
    /// instead of refused; for operators who own every server of the pool.
    pub redis_admin_commands: bool,
    pub preconnect: bool,
    pub auto_eject_hosts: bool,
    pub server_connections: u32,
    pub server_retry_timeout: Duration,
    pub server_failure_limit: u32,
    pub tcpkeepalive: bool,
    pub reuseport: bool,
    /// Largest request accepted (line plus data), checked when the header is read (legate).
    pub max_request_bytes: usize,
    /// Largest reply accepted from a server, checked at the header that declares it (legate);
    /// a larger one closes that server connection.
    pub max_reply_bytes: usize,
    /// Redis: most connections of its own one server holds for clients in a transaction, a
    /// blocking command or pub/sub (over all workers), idle ones kept for reuse included.
    pub max_pinned_connections: usize,
    /// Close a client with nothing outstanding after this long without a request (legate);
    /// `None`: never.
    pub client_idle_timeout: Option<Duration>,
    /// How an L4 pool picks a server per connection (`distribution:`); `Ring` for other pools.
    pub balance: Balance,
    /// TLS to the servers.
    pub tls: Option<TlsConfig>,
    /// TLS on the listener.
    pub listen_tls: Option<ListenTlsConfig>,
    /// Servers in nutcracker's order (sorted by name), which modula depends on. In a Sentinel
    /// pool each is a master name (`name:weight`); its address is filled in when resolved.
    pub servers: Vec<ServerConfig>,
    /// Static servers, or master names followed through Sentinel.
    pub source: Source,
}

/// A whole validated config file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub pools: Vec<PoolConfig>,
}

/// Why a config was refused; names the pool and key when there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub pool: Option<String>,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.pool, &self.key) {
            (Some(p), Some(k)) => write!(f, "pool '{p}', key '{k}': {}", self.message),
            (Some(p), None) => write!(f, "pool '{p}': {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

fn err(pool: &str, key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        pool: Some(pool.to_string()),
        key: Some(key.to_string()),
        message: message.into(),
    }
}

/// Default `max_request_bytes`: a 512 MB value plus its command line.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = crate::protocol::MAX_VALUE_BYTES + 64 * 1024;

const KEYS: &[&str] = &[
    "listen",
    "hash",
    "hash_tag",
    "distribution",
    "timeout",
    "backlog",
    "client_connections",
    "redis",
    "redis_auth",
    "redis_user",
    "memcache_auth",
    "redis_db",
    "redis_admin_commands",
    "preconnect",
    "auto_eject_hosts",
    "server_connections",
    "server_retry_timeout",
    "server_failure_limit",
    "tcpkeepalive",
    "reuseport",
    "servers",
    "protocol",
    "max_request_bytes",
    "max_reply_bytes",
    "max_pinned_connections",
    "client_idle_timeout",
    "tls",
    "listen_tls",
    "sentinels",
    "sentinel_interval",
    "sentinel_auth",
    "sentinel_user",
    "sentinel_tls",
    "cluster",
    "cluster_refresh",
    "read_from",
];

const TLS_KEYS: &[&str] = &["ca_file", "server_name", "cert_file", "key_file", "verify"];
const LISTEN_TLS_KEYS: &[&str] = &["cert_file", "key_file", "client_ca_file", "handshake_timeout"];

/// Default `listen_tls.handshake_timeout`.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl Config {
    /// Parse and validate a config file's text.
    ///
    /// # Errors
    /// Any YAML error, unknown or repeated key, bad value or cross-pool conflict.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let doc: Value = serde_yaml::from_str(text).map_err(|e| ConfigError {
            pool: None,
            key: None,
            message: format!("invalid YAML: {e}"),
        })?;
        let top = match doc {
            Value::Mapping(m) => m,
            Value::Null => {
                return Err(ConfigError {
                    pool: None,
                    key: None,
                    message: "the file has no pools".into(),
                })
            }
            _ => {
                return Err(ConfigError {
                    pool: None,
                    key: None,
                    message: "the top level must map pool names to pools".into(),
                })
            }
        };
        let mut pools = Vec::with_capacity(top.len());
        for (k, v) in top {
            let name = scalar_string(&k).ok_or_else(|| ConfigError {
                pool: None,
                key: None,
                message: format!("pool name must be a string, got {k:?}"),
            })?;
            pools.push(parse_pool(&name, v)?);
        }
        if pools.is_empty() {
            return Err(ConfigError {
                pool: None,
                key: None,
                message: "the file has no pools".into(),
            });
        }
        for (i, a) in pools.iter().enumerate() {
            for b in &pools[..i] {
                if a.listen == b.listen {
                    return Err(err(
                        &a.name,
                        "listen",
                        format!("{} is also the listen address of pool '{}'", a.listen, b.name),
                    ));
                }
            }
        }
        Ok(Config { pools })
    }

    /// Read and parse a file.
    ///
    /// # Errors
    /// The file cannot be read, or [`Config::parse`] refuses it.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            pool: None,
            key: None,
            message: format!("cannot read {}: {e}", path.display()),
        })?;
        Config::parse(&text)
    }
}

fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn parse_pool(name: &str, v: Value) -> Result<PoolConfig, ConfigError> {
    let map = match v {
        Value::Mapping(m) => m,
        _ => {
            return Err(ConfigError {
                pool: Some(name.into()),
                key: None,
                message: "a pool must be a mapping of settings".into(),
            })
        }
    };
    let mut get = std::collections::HashMap::new();
    for (k, v) in map {
        let key = scalar_string(&k).unwrap_or_default();
        if !KEYS.contains(&key.as_str()) {
            return Err(err(name, &key, "unknown key"));
        }
        get.insert(key, v);
    }
    let s = |key: &str| -> Result<Option<String>, ConfigError> {
        match get.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => scalar_string(v)
                .map(Some)
                .ok_or_else(|| err(name, key, "expected a string")),
        }
    };
    let num = |key: &str, default: i64, min: i64| -> Result<i64, ConfigError> {
        match get.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(x) if x >= min => Ok(x),
                _ => Err(err(name, key, format!("expected an integer >= {min}, got {n}"))),
            },
            Some(other) => Err(err(name, key, format!("expected a number, got {other:?}"))),
        }
    };
    let boolean = |key: &str| -> Result<bool, ConfigError> {
        match get.get(key) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(err(name, key, format!("expected true or false, got {other:?}"))),
        }
    };

    let listen = s("listen")?.ok_or_else(|| err(name, "listen", "is required"))?;
    let listen = parse_listen(&listen).map_err(|m| err(name, "listen", m))?;

    let hash = match s("hash")? {
        None => HashFn::Fnv1a64,
        Some(h) => h
            .parse()
            .map_err(|_| err(name, "hash", format!("unknown hash function '{h}'")))?,
    };
    let hash_tag = match s("hash_tag")? {
        None => None,
        Some(t) if t.len() == 2 => {
            let b = t.as_bytes();
            Some([b[0], b[1]])
        }
        Some(t) => {
            return Err(err(
                name,
                "hash_tag",
                format!("must be exactly 2 characters, got '{t}'"),
            ))
        }
    };
    let redis = boolean("redis")?;
    let protocol = match s("protocol")?.as_deref() {
        None => {
            if redis {
                Protocol::Redis
            } else {
                Protocol::Memcache
            }
        }
        Some("redis") => Protocol::Redis,
        Some("memcache") | Some("memcached") => Protocol::Memcache,
        Some("tcp") => Protocol::Tcp,
        Some(p) => {
            return Err(err(
                name,
                "protocol",
                format!("unknown protocol '{p}' (memcache, redis or tcp)"),
            ))
        }
    };
    if protocol == Protocol::Tcp && redis {
        return Err(err(name, "protocol", "contradicts 'redis'"));
    }
    let (distribution, balance) = match (s("distribution")?.as_deref(), protocol) {
        (None, _) => (Distribution::Ketama, Balance::Ring),
        (Some("round_robin"), Protocol::Tcp) => (Distribution::Random, Balance::RoundRobin),
        (Some("least_connections"), Protocol::Tcp) => (Distribution::Random, Balance::LeastConnections),
        (Some(d @ ("round_robin" | "least_connections")), _) => {
            return Err(err(
                name,
                "distribution",
                format!("'{d}' is only valid in a 'protocol: tcp' pool"),
            ))
        }
        (Some(d), _) => (
            Distribution::parse(d).ok_or_else(|| err(name, "distribution", format!("unknown distribution '{d}'")))?,
            Balance::Ring,
        ),
    };
    let section = |key: &str, allowed: &[&str]| -> Result<Option<serde_yaml::Mapping>, ConfigError> {
        match get.get(key) {
            None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(None),
            Some(Value::Bool(true)) => Ok(Some(serde_yaml::Mapping::new())),
            Some(Value::Mapping(m)) => {
                for k in m.keys() {
                    let k = scalar_string(k).unwrap_or_default();
                    if !allowed.contains(&k.as_str()) {
                        return Err(err(name, &format!("{key}.{k}"), "unknown key"));
                    }
                }
                Ok(Some(m.clone()))
            }
            Some(other) => Err(err(name, key, format!("expected a mapping of settings, got {other:?}"))),
        }
    };
    let field = |section: &str, m: &serde_yaml::Mapping, key: &str| -> Result<Option<String>, ConfigError> {
        match m.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => scalar_string(v)
                .map(Some)
                .ok_or_else(|| err(name, &format!("{section}.{key}"), "expected a string")),
        }
    };
    let tls = match section("tls", TLS_KEYS)? {
        None => None,
        Some(m) => {
            let verify = match m.get("verify") {
                None | Some(Value::Null) => true,
                Some(Value::Bool(b)) => *b,
                Some(other) => {
                    return Err(err(
                        name,
                        "tls.verify",
                        format!("expected true or false, got {other:?}"),
                    ))
                }
            };
            let t = TlsConfig {
                ca_file: field("tls", &m, "ca_file")?,
                server_name: field("tls", &m, "server_name")?,
                cert_file: field("tls", &m, "cert_file")?,
                key_file: field("tls", &m, "key_file")?,
                verify,
            };
            if t.cert_file.is_some() != t.key_file.is_some() {
                return Err(err(
                    name,
                    "tls",
                    "cert_file and key_file go together (client certificate)",
                ));
            }
            Some(t)
        }
    };
    let listen_tls = match section("listen_tls", LISTEN_TLS_KEYS)? {
        None => None,
        Some(m) => {
            let need = |k: &str| {
                field("listen_tls", &m, k)?.ok_or_else(|| err(name, &format!("listen_tls.{k}"), "is required"))
            };
            let handshake_timeout = match m.get("handshake_timeout") {
                None | Some(Value::Null) => DEFAULT_HANDSHAKE_TIMEOUT,
                Some(Value::Number(n)) if n.as_u64().is_some_and(|ms| ms > 0) => {
                    Duration::from_millis(n.as_u64().unwrap_or_default())
                }
                Some(other) => {
                    return Err(err(
                        name,
                        "listen_tls.handshake_timeout",
                        format!("expected milliseconds > 0, got {other:?}"),
                    ))
                }
            };
            Some(ListenTlsConfig {
                cert_file: need("cert_file")?,
                key_file: need("key_file")?,
                client_ca_file: field("listen_tls", &m, "client_ca_file")?,
                handshake_timeout,
            })
        }
    };
    if get.contains_key("redis") && redis != (protocol == Protocol::Redis) && get.contains_key("protocol") {
        return Err(err(name, "protocol", "contradicts 'redis'"));
    }
    let redis_auth = s("redis_auth")?;
    if redis_auth.is_some() && protocol != Protocol::Redis {
        return Err(err(name, "redis_auth", "is only valid in a redis pool"));
    }
    let redis_user = s("redis_user")?;
    if redis_user.is_some() && redis_auth.is_none() {
        return Err(err(name, "redis_user", "needs redis_auth (the user's password)"));
    }
    let redis_admin_commands = boolean("redis_admin_commands")?;
    if redis_admin_commands && protocol != Protocol::Redis {
        return Err(err(name, "redis_admin_commands", "is only valid in a redis pool"));
    }
    let memcache_auth = s("memcache_auth")?;
    if memcache_auth.is_some() && protocol != Protocol::Memcache {
        return Err(err(name, "memcache_auth", "is only valid in a memcache pool"));
    }
    let timeout = num("timeout", -1, i64::MIN)?;
    let server_connections = num("server_connections", 1, 1)?;
    let addr_list = |key: &str, v: &Value| -> Result<Vec<Addr>, ConfigError> {
        let Value::Sequence(list) = v else {
            return Err(err(name, key, "must be a list of 'host:port'"));
        };
        let mut out = Vec::with_capacity(list.len());
        for item in list {
            let a = scalar_string(item).ok_or_else(|| err(name, key, "each entry must be a string"))?;
            out.push(parse_host_port(a.trim()).map_err(|m| err(name, key, m))?);
        }
        if out.is_empty() {
            return Err(err(name, key, "must list at least one 'host:port'"));
        }
        Ok(out)
    };
    // Cluster and Sentinel pools only.
    let read_from = match s("read_from")?.as_deref() {
        None | Some("master") => ReadFrom::Master,
        Some("replica") => ReadFrom::Replica,
        Some("prefer_replica") => ReadFrom::PreferReplica,
        Some(_) => return Err(err(name, "read_from", "must be master, replica or prefer_replica")),
    };
    let cluster = match get.get("cluster") {
        None | Some(Value::Null) => {
            if get.contains_key("cluster_refresh") {
                return Err(err(name, "cluster_refresh", "is only valid with 'cluster'"));
            }
            if get.contains_key("read_from") && matches!(get.get("sentinels"), None | Some(Value::Null)) {
                return Err(err(name, "read_from", "is only valid with 'cluster' or 'sentinels'"));
            }
            None
        }
        Some(v) => {
            if protocol != Protocol::Redis {
                return Err(err(name, "cluster", "is only valid in a redis pool"));
            }
            // A key's slot is the cluster's: CRC16 of its {hash tag}.
            for key in ["servers", "sentinels", "hash", "hash_tag", "distribution"] {
                if get.contains_key(key) {
                    return Err(err(
                        name,
                        key,
                        "is not valid with 'cluster' (the cluster's nodes and slots decide where keys go)",
                    ));
                }
            }
            if boolean("auto_eject_hosts")? {
                return Err(err(
                    name,
                    "auto_eject_hosts",
                    "is not valid with 'cluster' (the cluster fails over by itself)",
                ));
            }
            if num("redis_db", 0, 0)? != 0 {
                return Err(err(name, "redis_db", "a Redis Cluster has database 0 only"));
            }
            Some(ClusterConfig {
                seeds: addr_list("cluster", v)?,
                refresh: Duration::from_millis(
                    num("cluster_refresh", DEFAULT_CLUSTER_REFRESH.as_millis() as i64, 100)? as u64,
                ),
                read_from,
            })
        }
    };
    let source = match get.get("sentinels") {
        _ if cluster.is_some() => Source::Cluster(cluster.clone().expect("checked")),
        None | Some(Value::Null) => {
            for key in ["sentinel_interval", "sentinel_auth", "sentinel_user", "sentinel_tls"] {
                if get.contains_key(key) {
                    return Err(err(name, key, "is only valid with 'sentinels'"));
                }
            }
            Source::Static
        }
        Some(v) => {
            if protocol != Protocol::Redis {
                return Err(err(name, "sentinels", "is only valid in a redis pool"));
            }
            if boolean("auto_eject_hosts")? {
                return Err(err(
                    name,
                    "auto_eject_hosts",
                    "a Sentinel pool follows failovers instead: ejecting a master name would move its keys",
                ));
            }
            let user = s("sentinel_user")?;
            let auth = s("sentinel_auth")?;
            if user.is_some() && auth.is_none() {
                return Err(err(name, "sentinel_user", "needs sentinel_auth (the user's password)"));
            }
            let sentinel_tls = match get.get("sentinel_tls") {
                None => tls.is_some(),
                Some(_) => boolean("sentinel_tls")?,
            };
            if sentinel_tls && tls.is_none() {
                return Err(err(
                    name,
                    "sentinel_tls",
                    "needs 'tls' (the sentinels are reached with the pool's TLS settings)",
                ));
            }
            let sentinels = addr_list("sentinels", v)?;
            Source::Sentinel(SentinelConfig {
                sentinels,
                interval: Duration::from_millis(num(
                    "sentinel_interval",
                    DEFAULT_SENTINEL_INTERVAL.as_millis() as i64,
                    100,
                )? as u64),
                auth,
                user,
                tls: sentinel_tls,
                read_from,
            })
        }
    };
    let servers = match source {
        Source::Static => parse_servers(name, get.get("servers"))?,
        Source::Sentinel(_) => parse_master_names(name, get.get("servers"))?,
        // Learned from the cluster.
        Source::Cluster(_) => Vec::new(),
    };

    Ok(PoolConfig {
        name: name.to_string(),
        listen,
        protocol,
        hash,
        hash_tag,
        distribution,
        timeout: (timeout > 0).then(|| Duration::from_millis(timeout as u64)),
        backlog: num("backlog", 512, 1)? as u32,
        client_connections: num("client_connections", 0, 0)? as u32,
        redis_auth,
        redis_user,
        memcache_auth,
        redis_db: num("redis_db", 0, 0)? as u32,
        redis_admin_commands,
        preconnect: boolean("preconnect")?,
        auto_eject_hosts: boolean("auto_eject_hosts")?,
        server_connections: server_connections as u32,
        server_retry_timeout: Duration::from_millis(num("server_retry_timeout", 30_000, 0)? as u64),
        server_failure_limit: num("server_failure_limit", 2, 1)? as u32,
        max_request_bytes: num("max_request_bytes", DEFAULT_MAX_REQUEST_BYTES as i64, 64)? as usize,
        max_reply_bytes: num("max_reply_bytes", crate::protocol::DEFAULT_MAX_REPLY_BYTES as i64, 1024)? as usize,
        max_pinned_connections: num("max_pinned_connections", DEFAULT_MAX_PINNED as i64, 1)? as usize,
        client_idle_timeout: match num("client_idle_timeout", 0, 0)? {
            0 => None,
            ms => Some(Duration::from_millis(ms as u64)),
        },
        tcpkeepalive: boolean("tcpkeepalive")?,
        reuseport: boolean("reuseport")?,
        balance,
        tls,
        listen_tls,
        servers,
        source,
    })
}

fn parse_listen(s: &str) -> Result<Addr, String> {
    let s = s.trim();
    if s.starts_with('/') {
        let mut parts = s.split_whitespace();
        let path = parts.next().unwrap_or_default().to_string();
        let perm = match parts.next() {
            None => None,
            Some(p) => {
                Some(u32::from_str_radix(p, 8).map_err(|_| format!("bad permissions '{p}' (octal, e.g. 0666)"))?)
            }
        };
        if parts.next().is_some() {
            return Err(format!("expected '/path [perm]', got '{s}'"));
        }
        return Ok(Addr::Unix { path, perm });
    }
    parse_host_port(s)
}

fn parse_host_port(s: &str) -> Result<Addr, String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("expected host:port, got '{s}'"))?;
    let port: u16 = port.parse().map_err(|_| format!("bad port '{port}' in '{s}'"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("missing host in '{s}'"));
    }
    Ok(Addr::Tcp {
        host: host.to_string(),
        port,
    })
}

fn parse_servers(pool: &str, v: Option<&Value>) -> Result<Vec<ServerConfig>, ConfigError> {
    let list = match v {
        Some(Value::Sequence(l)) => l,
        None | Some(Value::Null) => return Err(err(pool, "servers", "is required and must list at least one server")),
        Some(_) => return Err(err(pool, "servers", "must be a list of 'host:port:weight [name]'")),
    };
    let mut out: Vec<ServerConfig> = Vec::with_capacity(list.len());
    for item in list {
        let line = scalar_string(item).ok_or_else(|| err(pool, "servers", "each server must be a string"))?;
        out.push(parse_server(&line).map_err(|m| err(pool, "servers", m))?);
    }
    if out.is_empty() {
        return Err(err(pool, "servers", "must list at least one server"));
    }
    // nutcracker sorts servers by name and refuses duplicates.
    out.sort_by(|a, b| name_order(&a.name, &b.name));
    for w in out.windows(2) {
        if w[0].name == w[1].name {
            return Err(err(pool, "servers", format!("duplicate server name '{}'", w[0].name)));
        }
    }
    Ok(out)
}

/// A Sentinel pool's servers: `master-name:weight`, each name as the sentinels monitor it. The
/// ring hashes the names, so a key stays with its master name through every failover.
fn parse_master_names(pool: &str, v: Option<&Value>) -> Result<Vec<ServerConfig>, ConfigError> {
    let list = match v {
        Some(Value::Sequence(l)) if !l.is_empty() => l,
        _ => {
            return Err(err(
                pool,
                "servers",
                "must list the master names the sentinels monitor, as 'name:weight'",
            ))
        }
    };
    let mut out: Vec<ServerConfig> = Vec::with_capacity(list.len());
    for item in list {
        let line = scalar_string(item).ok_or_else(|| err(pool, "servers", "each server must be a string"))?;
        let line = line.trim();
        let (master, weight) = line
            .rsplit_once(':')
            // Sentinel allows these characters in a master name.
            .filter(|(m, _)| !m.is_empty() && m.bytes().all(|c| c.is_ascii_alphanumeric() || b".-_".contains(&c)))
            .ok_or_else(|| {
                err(
                    pool,
                    "servers",
                    format!("expected 'master-name:weight' (a name of letters, digits, '.', '-', '_'), got '{line}'"),
                )
            })?;
        let weight: u32 = weight
            .parse()
            .ok()
            .filter(|w| *w >= 1)
            .ok_or_else(|| err(pool, "servers", format!("weight must be an integer >= 1 in '{line}'")))?;
        out.push(ServerConfig {
            // Not an address: replaced by the master's address once a sentinel gives it.
            addr: Addr::Tcp {
                host: master.to_string(),
                port: 0,
            },
            weight,
            // Metrics and /stats name the server by its master name, whatever its address.
            alias: Some(master.to_string()),
            name: master.to_string(),
        });
    }
    out.sort_by(|a, b| name_order(&a.name, &b.name));
    for w in out.windows(2) {
        if w[0].name == w[1].name {
            return Err(err(pool, "servers", format!("duplicate master name '{}'", w[0].name)));
        }
    }
    Ok(out)
}

fn parse_server(line: &str) -> Result<ServerConfig, String> {
    let line = line.trim();
    let (pname, alias) = match line.split_once(char::is_whitespace) {
        Some((p, a)) => (p, Some(a.trim().to_string()).filter(|a| !a.is_empty())),
        None => (line, None),
    };
    let (addr_part, weight) = pname
        .rsplit_once(':')
        .ok_or_else(|| format!("expected 'host:port:weight [name]', got '{line}'"))?;
    let weight: u32 = weight
        .parse()
        .ok()
        .filter(|w| *w >= 1)
        .ok_or_else(|| format!("weight must be an integer >= 1 in '{line}'"))?;
    let (addr, default_name) = if addr_part.starts_with('/') {
        (
            Addr::Unix {
                path: addr_part.to_string(),
                perm: None,
            },
            addr_part.to_string(),
        )
    } else {
        let addr = parse_host_port(addr_part)?;
        let Addr::Tcp { host, port } = &addr else {
            unreachable!("parse_host_port returns Tcp")
        };
        let name = if *port == 11211 {
            host.clone()
        } else {
            addr_part.to_string()
        };
        (addr, name)
    };
    Ok(ServerConfig {
        addr,
        weight,
        name: alias.clone().unwrap_or(default_name),
        alias,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWEMPROXY_EXAMPLE: &str = r#"
alpha:
  listen: 127.0.0.1:22121
  hash: fnv1a_64
  distribution: ketama
  auto_eject_hosts: true
  redis: true
  server_retry_timeout: 2000
  server_failure_limit: 1
  servers:
   - 127.0.0.1:6379:1

gamma:
  listen: 127.0.0.1:22123
  hash: fnv1a_64
  distribution: ketama
  timeout: 400
  backlog: 1024
  preconnect: true
  auto_eject_hosts: true
  server_retry_timeout: 2000
  server_failure_limit: 3
  servers:
   - 127.0.0.1:11212:1
   - 127.0.0.1:11213:1

delta:
  listen: /tmp/legate-delta.sock 0666
  hash: crc32a
  hash_tag: "{}"
  distribution: modula
  servers:
   - 127.0.0.1:11214:1 server1
   - 127.0.0.1:11211:2 server2
"#;

    #[test]
    fn twemproxy_example_parses() {
        let c = Config::parse(TWEMPROXY_EXAMPLE).unwrap();
        assert_eq!(c.pools.len(), 3);
        let a = &c.pools[0];
        assert_eq!(a.name, "alpha");
        assert_eq!(a.protocol, Protocol::Redis);
        assert_eq!(a.server_failure_limit, 1);
        assert_eq!(a.timeout, None);
        let g = &c.pools[1];
        assert_eq!(g.protocol, Protocol::Memcache);
        assert_eq!(g.timeout, Some(Duration::from_millis(400)));
        assert_eq!(g.backlog, 1024);
        assert!(g.preconnect);
        assert_eq!(g.servers[0].name, "127.0.0.1:11212");
        let d = &c.pools[2];
        assert_eq!(
            d.listen,
            Addr::Unix {
                path: "/tmp/legate-delta.sock".into(),
                perm: Some(0o666)
            }
        );
        assert_eq!(d.hash_tag, Some(*b"{}"));
        assert_eq!(d.servers[1].weight, 2);
        assert_eq!(d.servers[1].name, "server2");
    }

    #[test]
    fn port_11211_is_dropped_from_the_ring_name() {
        let c =
            Config::parse("p:\n  listen: 127.0.0.1:1\n  servers: ['10.0.0.1:11211:1', '10.0.0.2:11212:1']\n").unwrap();
        let names: Vec<_> = c.pools[0].servers.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["10.0.0.1", "10.0.0.2:11212"]);
    }

    fn refused(yaml: &str) -> ConfigError {
        Config::parse(yaml).expect_err("config should be refused")
    }

    #[test]
    fn errors_name_pool_and_key() {
        let e = refused("p:\n  listen: 127.0.0.1:1\n  hash: nope\n  servers: ['a:1:1']\n");
        assert_eq!((e.pool.as_deref(), e.key.as_deref()), (Some("p"), Some("hash")));
        assert!(e.to_string().contains("pool 'p', key 'hash'"), "{e}");
        let e = refused("p:\n  listen: 127.0.0.1:1\n  redis: true\n  memcache_auth: x\n  servers: ['a:1:1']\n");
        assert_eq!(e.key.as_deref(), Some("memcache_auth"));
        let e = refused("p:\n  listen: 127.0.0.1:1\n  colour: red\n  servers: ['a:1:1']\n");
        assert_eq!(e.key.as_deref(), Some("colour"));
        let e = refused("p:\n  listen: 127.0.0.1:1\n  redis: yes\n  servers: ['a:1:1']\n");
        assert_eq!(e.key.as_deref(), Some("redis"));
        let e = refused("p:\n  listen: 127.0.0.1:1\n  servers: ['a:1:0']\n");
        assert_eq!(e.key.as_deref(), Some("servers"));
        let e = refused("p:\n  listen: 127.0.0.1:1\n  servers: ['a:1:1 x', 'b:1:1 x']\n");
        assert!(e.message.contains("duplicate"), "{e}");
        let e = refused("p:\n  listen: 127.0.0.1:1\n  hash_tag: '{'\n  servers: ['a:1:1']\n");
        assert_eq!(e.key.as_deref(), Some("hash_tag"));
        let e = refused("p:\n  listen: 127.0.0.1:1\n  redis_auth: x\n  servers: ['a:1:1']\n");
        assert_eq!(e.key.as_deref(), Some("redis_auth"));
        let e = refused("p:\n  listen: 127.0.0.1:1\n  redis_admin_commands: true\n  servers: ['a:1:1']\n");
        assert_eq!(e.key.as_deref(), Some("redis_admin_commands"));
        let e = refused(
            "p:\n  listen: 127.0.0.1:1\n  redis: true\n  redis_admin_commands: yes please\n  servers: ['a:1:1']\n",
        );
        assert_eq!(e.key.as_deref(), Some("redis_admin_commands"));
        let ok = "p:\n  listen: 127.0.0.1:1\n  redis: true\n  redis_admin_commands: true\n  servers: ['a:1:1']\n";
        assert!(Config::parse(ok).unwrap().pools[0].redis_admin_commands);
        let e = refused("p:\n  listen: 127.0.0.1:1\n  server_connections: 0\n  servers: ['a:1:1']\n");
        assert_eq!(e.key.as_deref(), Some("server_connections"));
        let e = refused("p:\n  listen: 127.0.0.1:1\n");
        assert_eq!(e.key.as_deref(), Some("servers"));
        let e = refused("p:\n  servers: ['a:1:1']\n");
        assert_eq!(e.key.as_deref(), Some("listen"));
        let e = refused(
            "p:\n  listen: 127.0.0.1:1\n  servers: ['a:1:1']\nq:\n  listen: 127.0.0.1:1\n  servers: ['a:1:1']\n",
        );
        assert_eq!((e.pool.as_deref(), e.key.as_deref()), (Some("q"), Some("listen")));
        let e = refused("p:\n  listen: 127.0.0.1:1\n  protocol: redis\n  redis: false\n  servers: ['a:1:1']\n");
        assert_eq!(e.key.as_deref(), Some("protocol"));
    }

    #[test]
    fn repeated_keys_and_pools_are_refused() {
        refused("p:\n  listen: 127.0.0.1:1\n  listen: 127.0.0.1:2\n  servers: ['a:1:1']\n");
        refused("p:\n  listen: 127.0.0.1:1\n  servers: ['a:1:1']\np:\n  listen: 127.0.0.1:2\n  servers: ['a:1:1']\n");
    }

    #[test]
    fn tls_and_l4_extensions() {
        let c = Config::parse(
            "p:\n  listen: 127.0.0.1:1\n  protocol: tcp\n  distribution: least_connections\n  tls:\n    ca_file: /ca.pem\n    server_name: cache.example\n  listen_tls:\n    cert_file: /c.pem\n    key_file: /c.key\n  servers: ['a:1:1']\n",
        )
        .unwrap();
        let p = &c.pools[0];
        assert_eq!((p.protocol, p.balance), (Protocol::Tcp, Balance::LeastConnections));
        let tls = p.tls.as_ref().unwrap();
        assert_eq!(tls.ca_file.as_deref(), Some("/ca.pem"));
        assert!(tls.verify, "verify is on unless turned off explicitly");
        let l = p.listen_tls.as_ref().unwrap();
        assert_eq!(
            (l.client_ca_file.as_deref(), l.handshake_timeout),
            (None, DEFAULT_HANDSHAKE_TIMEOUT)
        );
        // `tls: true`: the system's roots, the server's host as name.
        let c = Config::parse("p:\n  listen: 127.0.0.1:1\n  redis: true\n  tls: true\n  servers: ['a:1:1']\n").unwrap();
        assert_eq!(
            c.pools[0].tls.as_ref().map(|t| (t.ca_file.clone(), t.verify)),
            Some((None, true))
        );

        let e = refused("p:\n  listen: 127.0.0.1:1\n  distribution: round_robin\n  servers: ['a:1:1']\n");
        assert_eq!(e.key.as_deref(), Some("distribution"));
        let e = refused("p:\n  listen: 127.0.0.1:1\n  tls:\n    cafile: x\n  servers: ['a:1:1']\n");
        assert_eq!(e.key.as_deref(), Some("tls.cafile"));
        let e = refused("p:\n  listen: 127.0.0.1:1\n  tls:\n    cert_file: x\n  servers: ['a:1:1']\n");
        assert_eq!(e.key.as_deref(), Some("tls"));
        let e = refused("p:\n  listen: 127.0.0.1:1\n  tls:\n    verify: no\n  servers: ['a:1:1']\n");
        assert_eq!(e.key.as_deref(), Some("tls.verify"));
        let e = refused("p:\n  listen: 127.0.0.1:1\n  listen_tls:\n    cert_file: x\n  servers: ['a:1:1']\n");
        assert_eq!(e.key.as_deref(), Some("listen_tls.key_file"));
        let e = refused("p:\n  listen: 127.0.0.1:1\n  protocol: tcp\n  redis: true\n  servers: ['a:1:1']\n");
        assert_eq!(e.key.as_deref(), Some("protocol"));
    }

    #[test]
    fn sentinel_pools() {
        let c = Config::parse(
            "p:\n  listen: 127.0.0.1:1\n  redis: true\n  sentinels: ['10.0.0.1:26379', '10.0.0.2:26379']\n  sentinel_interval: 2000\n  servers: ['shard-b:1', 'shard-a:2']\n",
        )
        .unwrap();
        let p = &c.pools[0];
        let Source::Sentinel(s) = &p.source else {
            panic!("not a sentinel pool: {:?}", p.source)
        };
        assert_eq!(s.sentinels.len(), 2);
        assert_eq!(s.interval, Duration::from_millis(2000));
        assert_eq!(s.read_from, ReadFrom::Master);
        let names: Vec<_> = p.servers.iter().map(|s| (s.name.as_str(), s.weight)).collect();
        assert_eq!(names, [("shard-a", 2), ("shard-b", 1)]);

        let base = "p:\n  listen: 127.0.0.1:1\n  redis: true\n  sentinels: ['10.0.0.1:26379']\n";
        let e = refused(&format!("{base}  servers: ['a:1', 'a:2']\n"));
        assert!(e.message.contains("duplicate"), "{e}");
        let e = refused(&format!("{base}  servers: ['a:0']\n"));
        assert_eq!(e.key.as_deref(), Some("servers"));
        let e = refused(&format!("{base}  servers: ['a 1']\n"));
        assert_eq!(e.key.as_deref(), Some("servers"));
        let e = refused(&format!("{base}  auto_eject_hosts: true\n  servers: ['a:1']\n"));
        assert_eq!(e.key.as_deref(), Some("auto_eject_hosts"));
        let c = Config::parse(&format!("{base}  read_from: replica\n  servers: ['a:1']\n")).unwrap();
        assert!(matches!(&c.pools[0].source, Source::Sentinel(s) if s.read_from == ReadFrom::Replica));
        let e = refused(&format!("{base}  read_from: replicas\n  servers: ['a:1']\n"));
        assert_eq!(e.key.as_deref(), Some("read_from"));
        let e = refused(&format!("{base}  sentinel_interval: 5\n  servers: ['a:1']\n"));
        assert_eq!(e.key.as_deref(), Some("sentinel_interval"));
        let e = refused("p:\n  listen: 127.0.0.1:1\n  sentinels: ['10.0.0.1:26379']\n  servers: ['a:1']\n");
        assert_eq!(e.key.as_deref(), Some("sentinels"));
        let e = refused("p:\n  listen: 127.0.0.1:1\n  redis: true\n  sentinels: ['nope']\n  servers: ['a:1']\n");
        assert_eq!(e.key.as_deref(), Some("sentinels"));
        let e = refused("p:\n  listen: 127.0.0.1:1\n  redis: true\n  sentinel_auth: x\n  servers: ['a:1:1']\n");
        assert_eq!(e.key.as_deref(), Some("sentinel_auth"));

        // An ACL user and TLS for the sentinels.
        let sentinel = |extra: &str| {
            let c = Config::parse(&format!("{base}{extra}  servers: ['a:1']\n")).unwrap();
            match &c.pools[0].source {
                Source::Sentinel(s) => (s.user.clone(), s.auth.clone(), s.tls),
                other => panic!("not a sentinel pool: {other:?}"),
            }
        };
        assert_eq!(sentinel(""), (None, None, false));
        assert_eq!(
            sentinel("  sentinel_user: legate\n  sentinel_auth: pw\n"),
            (Some("legate".into()), Some("pw".into()), false)
        );
        assert!(sentinel("  tls: true\n").2, "the pool's tls reaches the sentinels too");
        assert!(!sentinel("  tls: true\n  sentinel_tls: false\n").2);
        for (extra, key) in [
            ("  sentinel_user: legate\n", "sentinel_user"),
            ("  sentinel_tls: true\n", "sentinel_tls"),
        ] {
            let e = refused(&format!("{base}{extra}  servers: ['a:1']\n"));
            assert_eq!(e.key.as_deref(), Some(key), "{extra}: {e}");
        }
        let e = refused("p:\n  listen: 127.0.0.1:1\n  redis: true\n  sentinel_tls: false\n  servers: ['a:1:1']\n");
        assert_eq!(e.key.as_deref(), Some("sentinel_tls"));
    }

    #[test]
    fn cluster_pools() {
        let c = Config::parse(
            "p:\n  listen: 127.0.0.1:1\n  redis: true\n  cluster: ['10.0.0.1:7000', '10.0.0.2:7000']\n  cluster_refresh: 3000\n",
        )
        .unwrap();
        let Source::Cluster(cl) = &c.pools[0].source else {
            panic!("not a cluster pool: {:?}", c.pools[0].source)
        };
        assert_eq!((cl.seeds.len(), cl.refresh), (2, Duration::from_secs(3)));
        assert_eq!(cl.read_from, ReadFrom::Master);
        let c = Config::parse(
            "p:\n  listen: 127.0.0.1:1\n  redis: true\n  cluster: ['10.0.0.1:7000']\n  read_from: prefer_replica\n",
        )
        .unwrap();
        assert!(matches!(&c.pools[0].source, Source::Cluster(cl) if cl.read_from == ReadFrom::PreferReplica));
        let c = Config::parse("p:\n  listen: 127.0.0.1:1\n  redis: true\n  cluster: ['10.0.0.1:7000']\n  tls: true\n")
            .unwrap();
        assert!(c.pools[0].tls.is_some(), "TLS to every node of a cluster");
        let e = refused("p:\n  listen: 127.0.0.1:1\n  redis: true\n  read_from: replica\n  servers: ['a:1:1']\n");
        assert_eq!(e.key.as_deref(), Some("read_from"));
        let base = "p:\n  listen: 127.0.0.1:1\n  redis: true\n  cluster: ['10.0.0.1:7000']\n";
        for (extra, key) in [
            ("  servers: ['a:1:1']\n", "servers"),
            ("  hash: md5\n", "hash"),
            ("  hash_tag: '{}'\n", "hash_tag"),
            ("  auto_eject_hosts: true\n", "auto_eject_hosts"),
            ("  redis_db: 2\n", "redis_db"),
            ("  cluster_refresh: 1\n", "cluster_refresh"),
            ("  read_from: replicas\n", "read_from"),
        ] {
            let e = refused(&format!("{base}{extra}"));
            assert_eq!(e.key.as_deref(), Some(key), "{extra}: {e}");
        }
        let e = refused("p:\n  listen: 127.0.0.1:1\n  cluster: ['10.0.0.1:7000']\n");
        assert_eq!(e.key.as_deref(), Some("cluster"));
        let e = refused("p:\n  listen: 127.0.0.1:1\n  redis: true\n  cluster: []\n");
        assert_eq!(e.key.as_deref(), Some("cluster"));
    }

    #[test]
    fn protocol_is_an_alternative_to_redis_flag() {
        let c = Config::parse("p:\n  listen: 127.0.0.1:1\n  protocol: redis\n  servers: ['a:1:1']\n").unwrap();
        assert_eq!(c.pools[0].protocol, Protocol::Redis);
    }
}
