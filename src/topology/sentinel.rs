//! Sentinel pools: the ring is over master *names*, and each name's address is whatever the
//! sentinels say it is now.
//!
//! The addresses are learned before the pool starts (or before a reload that needs them is
//! applied), then followed: every sentinel is subscribed to `+switch-master`, and every
//! `sentinel_interval` all masters are re-checked. A master that moved gets a new topology
//! snapshot, built and swapped exactly as a reload's: the moved name's server is started at
//! its new address, every other server keeps its connections, and the ring (over the names)
//! does not change, so no key moves to another master name.
//!
//! Sentinels can disagree for a moment after a failover; each answer carries the master's
//! config epoch, and the highest epoch among the sentinels that answer wins.
//!
//! Each master's replicas are learned the same way (`SENTINEL REPLICAS`, pipelined on the
//! same connections) at every check, whatever `read_from` says (the adapter scrapes them). A
//! replica takes reads only while every sentinel that agrees on its master lists it without
//! `s_down`, `o_down` or `disconnected` and with its master link `ok`; the first check runs as
//! the follower starts, and until it has answered reads go to the masters. Besides the
//! periodic re-check, a replica's `+sdown`/`-sdown`, a new `+slave` and a `+switch-master` make
//! the follower re-check at once. A change of a master's replicas builds and swaps a new
//! snapshot like a failover (unchanged servers keep their connections). Between checks, a
//! replica whose connections fail `server_failure_limit` times is ejected from the reads until
//! a probe after `server_retry_timeout` connects ([`super::watch_health`]); a promoted replica
//! stops being a replica the moment its master name switches to it.

use super::control::{Control, Credentials, Value};
use super::{HealthEvents, SharedTopology, Topology};
use crate::config::{Addr, PoolConfig, SentinelConfig};
use crate::tls::PoolTls;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// The masters' addresses by name, as last learned. Held (before the topology's writer lock,
/// [`super::update`]) while a reload or a failover moves a name, so the map and the topology
/// agree.
pub type Masters = Arc<Mutex<HashMap<String, Addr>>>;

/// How long one sentinel gets to connect and answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause before re-subscribing to a sentinel that closed or failed.
const RESUBSCRIBE: Duration = Duration::from_secs(1);

/// Most replicas followed per master name (each takes `server_connections` per worker).
const MAX_REPLICAS: usize = 64;

/// One sentinel's view of one master.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    addr: Addr,
    epoch: i64,
    /// Its replicas, each with what the sentinel says of it.
    replicas: Vec<(Addr, Replica)>,
}

/// A replica as one sentinel lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replica {
    /// Up, and its link to the master `ok`: fit for reads.
    Fit,
    /// Up, but its link to the master was down when the sentinel last looked (Sentinel reads a
    /// replica's INFO every 10 s, so a replica that was just re-pointed and has synced since
    /// looks like this for a while): the replica itself is asked.
    Unsynced,
    /// `s_down`, `o_down` or `disconnected`.
    Down,
}

/// How the sentinels of `cfg` are reached: `sentinel_user`/`sentinel_auth`, and the pool's
/// TLS (as loaded in `tls`) unless `sentinel_tls: false`.
pub fn credentials(cfg: &SentinelConfig, tls: &PoolTls) -> Credentials {
    Credentials {
        user: cfg.user.clone(),
        password: cfg.auth.clone(),
        tls: tls.connector.clone().filter(|_| cfg.tls),
    }
}

/// Ask one sentinel about every name (`SENTINEL MASTER` and `SENTINEL REPLICAS`, pipelined on
/// one connection). `None` for a name it does not monitor.
async fn ask(sentinel: Addr, with: Credentials, names: Arc<Vec<String>>) -> Result<Vec<Option<Seen>>, String> {
    let mut c = Control::connect(&sentinel, ASK_TIMEOUT, &with).await?;
    for name in names.iter() {
        c.send(&[b"SENTINEL", b"MASTER", name.as_bytes()]).await?;
        c.send(&[b"SENTINEL", b"REPLICAS", name.as_bytes()]).await?;
    }
    let mut out = Vec::with_capacity(names.len());
    for name in names.iter() {
        let v = c.reply().await.map_err(|e| format!("{sentinel}: {e}"))?;
        let replicas = replicas_reply(&c.reply().await.map_err(|e| format!("{sentinel}: {e}"))?);
        out.push(match v {
            Value::Array(_) => {
                let host = v.field("ip").and_then(Value::text);
                let port = v.field("port").and_then(Value::int);
                match (host, port) {
                    (Some(host), Some(port)) if (1..=65535).contains(&port) => Some(Seen {
                        addr: Addr::Tcp {
                            host,
                            port: port as u16,
                        },
                        epoch: v.field("config-epoch").and_then(Value::int).unwrap_or(0),
                        replicas,
                    }),
                    _ => {
                        return Err(format!(
                            "{sentinel}: SENTINEL MASTER {name}: no ip and port in the reply"
                        ))
                    }
                }
            }
            // "ERR No such master with that name"
            Value::Error(_) | Value::Nil => None,
            other => return Err(format!("{sentinel}: unexpected reply to SENTINEL MASTER: {other:?}")),
        });
    }
    Ok(out)
}

/// The replicas in a `SENTINEL REPLICAS` reply (none for an error), each with what the
/// sentinel says of it. Entries without an address are left out.
fn replicas_reply(v: &Value) -> Vec<(Addr, Replica)> {
    let mut out = Vec::new();
    for r in v.items().unwrap_or_default() {
        let host = r.field("ip").and_then(Value::text);
        let port = r.field("port").and_then(Value::int);
        let (Some(host), Some(port)) = (host, port) else {
            continue;
        };
        let Ok(port @ 1..) = u16::try_from(port) else { continue };
        let flags = r.field("flags").and_then(Value::text).unwrap_or_default();
        let down = flags
            .split(',')
            .any(|f| matches!(f, "s_down" | "o_down" | "disconnected"));
        let link_ok = r.field("master-link-status").and_then(Value::bytes) == Some(b"ok");
        if out.len() == MAX_REPLICAS {
            break;
        }
        let state = match (down, link_ok) {
            (true, _) => Replica::Down,
            (false, true) => Replica::Fit,
            (false, false) => Replica::Unsynced,
        };
        out.push((Addr::Tcp { host, port }, state));
    }
    out
}

/// What the sentinels say now: each name's master address (per name the answer with the
/// highest config epoch), its replicas fit for reads (in address order), and those up whose
/// link to the master some sentinel saw down.
#[derive(Debug, Default)]
struct Found {
    masters: HashMap<String, Addr>,
    replicas: HashMap<String, Vec<Addr>>,
    unsynced: HashMap<String, Vec<Addr>>,
}

/// Every name's master and replicas according to the sentinels (all asked at once). Names no
/// reachable sentinel knows are missing; the errors say which sentinels could not be asked.
async fn ask_all(pool: &str, cfg: &SentinelConfig, with: &Credentials, names: &[String]) -> (Found, Vec<String>) {
    let names = Arc::new(names.to_vec());
    let mut set = JoinSet::new();
    for s in &cfg.sentinels {
        let (s, with, names) = (s.clone(), with.clone(), names.clone());
        set.spawn(async move { (s.clone(), ask(s, with, names).await) });
    }
    let mut answers: Vec<Vec<Option<Seen>>> = Vec::new();
    let mut errors = Vec::new();
    while let Some(r) = set.join_next().await {
        let up = |s: &Addr, up: bool| {
            metrics::gauge!(crate::metrics::SENTINEL_UP, "pool" => pool.to_string(), "sentinel" => s.to_string())
                .set(if up { 1.0 } else { 0.0 })
        };
        match r {
            Ok((s, Ok(seen))) => {
                up(&s, true);
                answers.push(seen)
            }
            Ok((s, Err(e))) => {
                up(&s, false);
                errors.push(e)
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    (merge(&names, &answers), errors)
}

/// Per name, the master with the highest config epoch; its replicas are those listed fit by a
/// sentinel that agrees on that master and epoch, and listed down or unsynced by none of them
/// (those listed unsynced by some and down by none are `unsynced`).
fn merge(names: &[String], answers: &[Vec<Option<Seen>>]) -> Found {
    let mut found = Found::default();
    for (i, name) in names.iter().enumerate() {
        let views: Vec<&Seen> = answers.iter().filter_map(|a| a.get(i)?.as_ref()).collect();
        let Some(best) = views
            .iter()
            .copied()
            .reduce(|b, s| if s.epoch > b.epoch { s } else { b })
        else {
            continue;
        };
        let agree: Vec<&Seen> = views
            .iter()
            .copied()
            .filter(|s| s.epoch == best.epoch && s.addr == best.addr)
            .collect();
        let (mut fit, mut unsynced): (Vec<Addr>, Vec<Addr>) = (Vec::new(), Vec::new());
        for (a, _) in agree.iter().flat_map(|s| &s.replicas) {
            if *a == best.addr || fit.contains(a) || unsynced.contains(a) {
                continue;
            }
            let said = |state| agree.iter().any(|s| s.replicas.contains(&(a.clone(), state)));
            match (said(Replica::Down), said(Replica::Unsynced)) {
                (true, _) => {}
                (false, true) => unsynced.push(a.clone()),
                (false, false) => fit.push(a.clone()),
            }
        }
        fit.sort_by_key(ToString::to_string);
        found.masters.insert(name.clone(), best.addr.clone());
        found.replicas.insert(name.clone(), fit);
        found.unsynced.insert(name.clone(), unsynced);
    }
    found
}

/// The pool's master names.
fn names(pool: &PoolConfig) -> Vec<String> {
    pool.servers.iter().map(|s| s.name.clone()).collect()
}

/// Learn the address of every master of `pool` that `known` does not have yet.
///
/// # Errors
/// Some master is known to no sentinel that answered; the message names it and why.
pub async fn resolve(
    pool: &PoolConfig,
    cfg: &SentinelConfig,
    tls: &PoolTls,
    known: &HashMap<String, Addr>,
) -> Result<HashMap<String, Addr>, String> {
    let mut masters: HashMap<String, Addr> = HashMap::new();
    let mut missing = Vec::new();
    for n in names(pool) {
        match known.get(&n) {
            Some(a) => {
                masters.insert(n, a.clone());
            }
            None => missing.push(n),
        }
    }
    if missing.is_empty() {
        return Ok(masters);
    }
    let (found, errors) = ask_all(&pool.name, cfg, &credentials(cfg, tls), &missing).await;
    for n in &missing {
        match found.masters.get(n) {
            Some(a) => {
                masters.insert(n.clone(), a.clone());
            }
            None if errors.len() == cfg.sentinels.len() => {
                return Err(format!(
                    "pool '{}': no sentinel answered for master '{n}': {}",
                    pool.name,
                    errors.join("; ")
                ))
            }
            None => {
                return Err(format!(
                    "pool '{}': no sentinel monitors a master named '{n}'{}",
                    pool.name,
                    if errors.is_empty() {
                        String::new()
                    } else {
                        format!(" (and {})", errors.join("; "))
                    }
                ))
            }
        }
    }
    tracing::info!(
        "pool {}: masters {}",
        pool.name,
        masters
            .iter()
            .map(|(n, a)| format!("{n}={a}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(masters)
}

/// `pool` with each master name's server at its address in `masters` (names missing there
/// keep what they have).
pub fn resolved(pool: &PoolConfig, masters: &HashMap<String, Addr>) -> PoolConfig {
    let mut p = pool.clone();
    for s in &mut p.servers {
        if let Some(a) = masters.get(&s.name) {
            s.addr = a.clone();
        }
    }
    p
}

/// Follows a Sentinel pool's masters until dropped.
pub struct Follower {
    pub config: SentinelConfig,
    pub masters: Masters,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Follower {
    /// Start following (on the calling runtime) the masters of the pool whose live topology is
    /// `topo`, from the addresses in `masters`.
    pub fn start(config: SentinelConfig, masters: Masters, topo: SharedTopology, events: HealthEvents) -> Follower {
        let task = tokio::spawn(follow(config.clone(), masters.clone(), topo, events));
        Follower { config, masters, task }
    }
}

/// What the subscriptions report.
enum Event {
    /// `+switch-master`: a master name and its new address.
    Switch(String, Addr),
    /// A subscription (re)started (messages may have been missed), or a replica went down, came
    /// back or appeared: ask the sentinels again.
    Recheck,
}

async fn follow(cfg: SentinelConfig, masters: Masters, topo: SharedTopology, events: HealthEvents) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    // Aborted with this task.
    let mut subscriptions = JoinSet::new();
    for s in &cfg.sentinels {
        subscriptions.spawn(subscribe(s.clone(), cfg.clone(), topo.clone(), tx.clone()));
    }
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is now: the replicas are learned as the pool starts. Every event is
    // followed by a check: after a failover the promoted replica's fellows are re-pointed at it.
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            e = rx.recv() => match e {
                Some(Event::Switch(name, addr)) => switch(&topo, &masters, &events, &name, addr, "+switch-master"),
                Some(Event::Recheck) => {}
                None => return,
            },
        }
        // Events that came meanwhile: one check covers them all.
        while let Ok(e) = rx.try_recv() {
            if let Event::Switch(name, addr) = e {
                switch(&topo, &masters, &events, &name, addr, "+switch-master");
            }
        }
        let (pool, with) = {
            let t = topo.load();
            (t.pool.clone(), credentials(&cfg, &t.tls))
        };
        let (found, errors) = ask_all(&pool.name, &cfg, &with, &names(&pool)).await;
        if found.masters.is_empty() && !errors.is_empty() {
            if let Some(suppressed) = crate::log_limit::allow(&format!("sentinels {}", pool.name)) {
                tracing::warn!(pool = %pool.name, suppressed, "no sentinel answered: {}", errors.join("; "));
            }
        }
        for (name, addr) in &found.masters {
            switch(&topo, &masters, &events, name, addr.clone(), "re-check");
        }
        let replicas = synced(&topo, found).await;
        set_replicas(&topo, &masters, &events, &replicas);
    }
}

/// `found`'s replicas fit for reads, with those the sentinels saw unsynced that say themselves
/// (`INFO`, asked as the pool's servers are) that they are replicas of their name's master
/// with the link up.
async fn synced(topo: &SharedTopology, mut found: Found) -> HashMap<String, Vec<Addr>> {
    let t = topo.load_full();
    let mut asks = JoinSet::new();
    for (name, addrs) in &found.unsynced {
        let Some(master) = found.masters.get(name) else {
            continue;
        };
        for a in addrs {
            let (t, name, a, master) = (t.clone(), name.clone(), a.clone(), master.clone());
            asks.spawn(async move {
                let info = crate::upstream::Server::info_at(&t.pool, &a, &t.tls).await;
                let up = info.is_ok_and(|i| replicates(&i, &master));
                (name, a, up)
            });
        }
    }
    while let Some(r) = asks.join_next().await {
        if let Ok((name, a, true)) = r {
            let fit = found.replicas.entry(name).or_default();
            fit.push(a);
            fit.sort_by_key(ToString::to_string);
        }
    }
    found.replicas
}

/// Whether a server's `INFO` says it is a replica of `master` with its link up.
fn replicates(info: &str, master: &Addr) -> bool {
    let field = |k: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix(':'))
            .map(str::trim_end)
    };
    let Addr::Tcp { host, port } = master else { return false };
    field("role") == Some("slave")
        && field("master_link_status") == Some("up")
        && field("master_host") == Some(host.as_str())
        && field("master_port") == Some(port.to_string().as_str())
}

/// Point master `name` at `addr`: a new snapshot with that server moved, swapped in whole.
/// Nothing happens when it is there already or the name is not one of the pool's.
fn switch(topo: &SharedTopology, masters: &Masters, events: &HealthEvents, name: &str, addr: Addr, why: &str) {
    let mut m = masters.lock().unwrap_or_else(|e| e.into_inner());
    let mut from = None;
    let moved = super::update(topo, |current| {
        if m.get(name) == Some(&addr) || !current.pool.servers.iter().any(|s| s.name == name) {
            return None;
        }
        from = m.insert(name.to_string(), addr.clone());
        let pool = resolved(&current.pool, &m);
        Some(Topology::rebuild(
            &pool,
            current.tls.clone(),
            Some(current),
            Some(events),
        ))
    });
    drop(m);
    if !moved {
        return;
    }
    let pool = topo.load().pool.clone();
    metrics::counter!(
        crate::metrics::SENTINEL_FAILOVERS,
        "pool" => pool.name.clone(),
        "master" => name.to_string()
    )
    .increment(1);
    tracing::warn!(
        pool = %pool.name,
        master = %name,
        "master moved from {} to {addr} ({why}); its traffic follows",
        from.map(|a| a.to_string()).unwrap_or_default()
    );
}

/// Give each master name the replicas in `found` (names missing there keep theirs): a new
/// snapshot when that changes anything.
fn set_replicas(topo: &SharedTopology, masters: &Masters, events: &HealthEvents, found: &HashMap<String, Vec<Addr>>) {
    let _m = masters.lock().unwrap_or_else(|e| e.into_inner());
    super::update(topo, |current| {
        let before = current.sentinel_replicas.clone();
        let replicas: Vec<Vec<Addr>> = current
            .pool
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| match found.get(&s.name) {
                Some(r) => r.clone(),
                None => before.as_ref().and_then(|b| b.get(i).cloned()).unwrap_or_default(),
            })
            .collect();
        if before.as_ref() == Some(&replicas) {
            return None;
        }
        let next = Topology::build_sentinel(
            &current.pool,
            current.tls.clone(),
            Some(current),
            Some(events),
            replicas,
        );
        if next.sentinel_replicas == before {
            return None;
        }
        tracing::info!(
            pool = %current.pool.name,
            "replicas {}",
            current
                .pool
                .servers
                .iter()
                .zip(next.sentinel_replicas.iter().flatten())
                .map(|(s, r)| format!(
                    "{}=[{}]",
                    s.name,
                    r.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ")
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Some(next)
    });
}

/// The sentinel channels followed: failovers, and replicas going down, coming back or appearing.
const CHANNELS: [&[u8]; 4] = [b"+switch-master", b"+sdown", b"-sdown", b"+slave"];

/// Subscribe to [`CHANNELS`] on one sentinel for as long as the pool lives, reconnecting after
/// failures (with the TLS material of the pool's topology at the time).
async fn subscribe(sentinel: Addr, cfg: SentinelConfig, topo: SharedTopology, tx: mpsc::UnboundedSender<Event>) {
    loop {
        let result = async {
            let with = credentials(&cfg, &topo.load().tls);
            let mut c = Control::connect(&sentinel, ASK_TIMEOUT, &with).await?;
            let mut subscribe: Vec<&[u8]> = vec![b"SUBSCRIBE"];
            subscribe.extend(CHANNELS);
            c.send(&subscribe).await?;
            loop {
                let v = c.read().await?;
                let event = match switch_message(&v) {
                    Some(Ok((name, addr))) => Some(Event::Switch(name, addr)),
                    Some(Err(e)) => return Err(e),
                    // The subscription is confirmed: anything missed before it is re-checked.
                    None if is_subscribed(&v) || is_replica_event(&v) => Some(Event::Recheck),
                    None => None,
                };
                if let Some(e) = event {
                    if tx.send(e).is_err() {
                        return Ok(());
                    }
                }
            }
        }
        .await;
        match result {
            Ok(()) => return,
            Err(e) => {
                if let Some(suppressed) = crate::log_limit::allow(&format!("subscribe {sentinel} {e}")) {
                    tracing::warn!(%sentinel, suppressed, "sentinel subscription lost: {e}; retrying");
                }
            }
        }
        tokio::time::sleep(RESUBSCRIBE).await;
        if tx.is_closed() {
            return;
        }
    }
}

fn is_subscribed(v: &Value) -> bool {
    v.items()
        .and_then(|i| i.first())
        .and_then(Value::bytes)
        .is_some_and(|k| k.eq_ignore_ascii_case(b"subscribe"))
}

/// A replica's `+sdown`, `-sdown` or `+slave` (`slave <name> <ip> <port> @ <master> …`).
fn is_replica_event(v: &Value) -> bool {
    match v.items() {
        Some([kind, channel, text]) => {
            kind.bytes() == Some(b"message")
                && channel.bytes().is_some_and(|c| CHANNELS[1..].contains(&c))
                && text.bytes().is_some_and(|t| t.starts_with(b"slave "))
        }
        _ => false,
    }
}

/// A `+switch-master` message (`<name> <old-ip> <old-port> <new-ip> <new-port>`): `None` for
/// other messages, an error for one that does not parse.
fn switch_message(v: &Value) -> Option<Result<(String, Addr), String>> {
    let items = v.items()?;
    if items.len() != 3 || items[0].bytes() != Some(b"message") || items[1].bytes() != Some(b"+switch-master") {
        return None;
    }
    let text = items[2].text()?;
    let f: Vec<&str> = text.split(' ').collect();
    Some(match (f.len(), f.get(4).and_then(|p| p.parse::<u16>().ok())) {
        (5, Some(port)) if port > 0 => Ok((
            f[0].to_string(),
            Addr::Tcp {
                host: f[3].to_string(),
                port,
            },
        )),
        _ => Err(format!("malformed +switch-master message '{}'", text.escape_debug())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn s(v: &str) -> Value {
        Value::Str(Bytes::from(v.to_string()))
    }

    #[test]
    fn switch_messages() {
        let m = Value::Array(vec![
            s("message"),
            s("+switch-master"),
            s("a 10.0.0.1 6379 10.0.0.2 6380"),
        ]);
        assert_eq!(
            switch_message(&m),
            Some(Ok((
                "a".into(),
                Addr::Tcp {
                    host: "10.0.0.2".into(),
                    port: 6380
                }
            )))
        );
        let bad = Value::Array(vec![s("message"), s("+switch-master"), s("a 10.0.0.1 6379 10.0.0.2")]);
        assert!(matches!(switch_message(&bad), Some(Err(_))));
        let sub = Value::Array(vec![s("subscribe"), s("+switch-master"), Value::Int(1)]);
        assert_eq!(switch_message(&sub), None);
        assert!(is_subscribed(&sub));
    }

    fn a(port: u16) -> Addr {
        Addr::Tcp {
            host: "10.0.0.1".into(),
            port,
        }
    }

    fn replica(port: u16, flags: &str, link: &str) -> Value {
        Value::Array(
            [
                ("ip", "10.0.0.1".to_string()),
                ("port", port.to_string()),
                ("flags", flags.into()),
                ("master-link-status", link.into()),
            ]
            .iter()
            .flat_map(|(k, v)| [s(k), s(v)])
            .collect(),
        )
    }

    #[test]
    fn replicas_fit_for_reads() {
        let v = Value::Array(vec![
            replica(1, "slave", "ok"),
            replica(2, "s_down,slave,disconnected", "err"),
            replica(3, "slave", "err"),
            replica(4, "slave,disconnected", "ok"),
            replica(0, "slave", "ok"),
            s("junk"),
        ]);
        use Replica::{Down, Fit, Unsynced};
        assert_eq!(
            replicas_reply(&v),
            vec![(a(1), Fit), (a(2), Down), (a(3), Unsynced), (a(4), Down)]
        );
        assert!(replicas_reply(&Value::Error("ERR No such master with that name".into())).is_empty());

        let seen = |port, epoch, replicas: Vec<(Addr, Replica)>| {
            Some(Seen {
                addr: a(port),
                epoch,
                replicas,
            })
        };
        let names = ["m".to_string()];
        // A stale sentinel (epoch 1) still lists the promoted replica; the others agree on
        // 7002 at epoch 2, one of them already sees 7003 down, and one saw 7005's link down.
        let answers = vec![
            vec![seen(7001, 1, vec![(a(7002), Fit), (a(7003), Fit)])],
            vec![seen(
                7002,
                2,
                vec![(a(7003), Fit), (a(7004), Fit), (a(7001), Down), (a(7005), Fit)],
            )],
            vec![seen(
                7002,
                2,
                vec![(a(7003), Down), (a(7004), Fit), (a(7002), Fit), (a(7005), Unsynced)],
            )],
            vec![None],
        ];
        let found = merge(&names, &answers);
        assert_eq!(found.masters["m"], a(7002));
        assert_eq!(found.replicas["m"], vec![a(7004)]);
        assert_eq!(found.unsynced["m"], vec![a(7005)]);
        let info =
            "# Replication\r\nrole:slave\r\nmaster_host:10.0.0.1\r\nmaster_port:7002\r\nmaster_link_status:up\r\n";
        assert!(replicates(info, &a(7002)));
        assert!(!replicates(info, &a(7001)));
        assert!(!replicates(&info.replace(":up", ":down"), &a(7002)));
        assert!(!replicates(&info.replace("role:slave", "role:master"), &a(7002)));
        assert!(merge(&names, &[vec![None]]).masters.is_empty());
    }

    #[test]
    fn replica_events() {
        let m = |ch: &str, text: &str| Value::Array(vec![s("message"), s(ch), s(text)]);
        assert!(is_replica_event(&m(
            "+sdown",
            "slave 10.0.0.1:7 10.0.0.1 7 @ m 10.0.0.1 6"
        )));
        assert!(is_replica_event(&m(
            "-sdown",
            "slave 10.0.0.1:7 10.0.0.1 7 @ m 10.0.0.1 6"
        )));
        assert!(is_replica_event(&m(
            "+slave",
            "slave 10.0.0.1:7 10.0.0.1 7 @ m 10.0.0.1 6"
        )));
        assert!(!is_replica_event(&m("+sdown", "master m 10.0.0.1 6")));
        assert!(!is_replica_event(&m("+switch-master", "slave x")));
    }
}
