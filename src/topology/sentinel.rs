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

use super::control::{Control, Credentials, Value};
use super::{HealthEvents, SharedTopology, Topology};
use crate::config::{Addr, PoolConfig, SentinelConfig};
use crate::tls::PoolTls;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// The masters' addresses by name, as last learned. Its lock also serialises every rebuild of
/// a Sentinel pool's topology (reloads and failovers), so one never undoes the other.
pub type Masters = Arc<Mutex<HashMap<String, Addr>>>;

/// How long one sentinel gets to connect and answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause before re-subscribing to a sentinel that closed or failed.
const RESUBSCRIBE: Duration = Duration::from_secs(1);

/// One sentinel's view of one master.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    addr: Addr,
    epoch: i64,
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

/// Ask one sentinel about every name (`SENTINEL MASTER`, pipelined on one connection).
/// `None` for a name it does not monitor.
async fn ask(sentinel: Addr, with: Credentials, names: Arc<Vec<String>>) -> Result<Vec<Option<Seen>>, String> {
    let mut c = Control::connect(&sentinel, ASK_TIMEOUT, &with).await?;
    let mut out = Vec::with_capacity(names.len());
    for name in names.iter() {
        let v = c.call(&[b"SENTINEL", b"MASTER", name.as_bytes()]).await?;
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

/// Every name's address according to the sentinels (all asked at once; per name the answer
/// with the highest config epoch). Names no reachable sentinel knows are missing; the errors
/// say which sentinels could not be asked.
async fn ask_all(cfg: &SentinelConfig, with: &Credentials, names: &[String]) -> (HashMap<String, Addr>, Vec<String>) {
    let names = Arc::new(names.to_vec());
    let mut set = JoinSet::new();
    for s in &cfg.sentinels {
        set.spawn(ask(s.clone(), with.clone(), names.clone()));
    }
    let mut best: Vec<Option<Seen>> = vec![None; names.len()];
    let mut errors = Vec::new();
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(seen)) => {
                for (b, s) in best.iter_mut().zip(seen) {
                    if let Some(s) = s {
                        if b.as_ref().is_none_or(|b| s.epoch > b.epoch) {
                            *b = Some(s);
                        }
                    }
                }
            }
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(e.to_string()),
        }
    }
    let found = names
        .iter()
        .zip(best)
        .filter_map(|(n, b)| Some((n.clone(), b?.addr)))
        .collect();
    (found, errors)
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
    let (found, errors) = ask_all(cfg, &credentials(cfg, tls), &missing).await;
    for n in &missing {
        match found.get(n) {
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
    /// A subscription (re)started: messages may have been missed.
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
    tick.tick().await;
    loop {
        let recheck = tokio::select! {
            _ = tick.tick() => true,
            e = rx.recv() => match e {
                Some(Event::Switch(name, addr)) => {
                    switch(&topo, &masters, &events, &name, addr, "+switch-master");
                    false
                }
                Some(Event::Recheck) => true,
                None => return,
            },
        };
        if recheck {
            let (pool, with) = {
                let t = topo.load();
                (t.pool.clone(), credentials(&cfg, &t.tls))
            };
            let (found, errors) = ask_all(&cfg, &with, &names(&pool)).await;
            if found.is_empty() && !errors.is_empty() {
                if let Some(suppressed) = crate::log_limit::allow(&format!("sentinels {}", pool.name)) {
                    tracing::warn!(pool = %pool.name, suppressed, "no sentinel answered: {}", errors.join("; "));
                }
            }
            for (name, addr) in found {
                switch(&topo, &masters, &events, &name, addr, "re-check");
            }
        }
    }
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

/// Subscribe to `+switch-master` on one sentinel for as long as the pool lives, reconnecting
/// after failures (with the TLS material of the pool's topology at the time).
async fn subscribe(sentinel: Addr, cfg: SentinelConfig, topo: SharedTopology, tx: mpsc::UnboundedSender<Event>) {
    loop {
        let result = async {
            let with = credentials(&cfg, &topo.load().tls);
            let mut c = Control::connect(&sentinel, ASK_TIMEOUT, &with).await?;
            c.send(&[b"SUBSCRIBE", b"+switch-master"]).await?;
            loop {
                let v = c.read().await?;
                let event = match switch_message(&v) {
                    Some(Ok((name, addr))) => Some(Event::Switch(name, addr)),
                    Some(Err(e)) => return Err(e),
                    // The subscription is confirmed: anything missed before it is re-checked.
                    None if is_subscribed(&v) => Some(Event::Recheck),
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
}
