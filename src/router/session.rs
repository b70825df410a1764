//! One Redis client connection's state, and the commands legate answers from it as one Redis
//! 7.0 would: the handshake (`HELLO`, `AUTH`, `CLIENT SETNAME`/`SETINFO`, `SELECT 0`), `RESET`,
//! `ECHO`/`QUIT`, `CLIENT ID|INFO|LIST|REPLY|NO-EVICT|NO-TOUCH`, `READONLY`/`READWRITE`.
//! None of them is forwarded: a shared server connection cannot hold one client's state (see
//! DESIGN.md "Sessions: shared and pinned"). `COMMAND …` is forwarded to one server, whose reply
//! is the answer. `PING` is the servers' to answer (`router/pinned.rs`): a busy one says `-BUSY`.
//!
//! Error texts are Redis 7.0.15's, byte for byte, wherever Redis has one. `CLIENT SETINFO` and
//! `CLIENT NO-TOUCH` (Redis 7.2) are accepted too, since current client libraries send them.

use super::{printable, send_one, Slot};
use crate::metrics::Class;
use crate::protocol::redis;
use crate::replies::Replies;
use crate::topology::Topology;
use crate::upstream::{Framing, Lane, Outbox};
use bytes::{BufMut, Bytes, BytesMut};
use smallvec::smallvec;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// The Redis version legate's handshake reports: the command set it follows.
pub const REDIS_VERSION: &str = "7.0.0";

/// Client ids, unique in the process (`CLIENT ID`, `HELLO`'s `id`).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Whether replies go back to the client (`CLIENT REPLY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum ReplyMode {
    #[default]
    On,
    Off,
    /// The next command's reply is dropped, then replies are on again.
    Skip,
}

/// What a Redis client's connection remembers between requests.
#[derive(Debug)]
pub struct RedisSession {
    /// AUTH succeeded (pools with `redis_auth`).
    pub authed: bool,
    /// Its transaction, blocking command or subscriptions, on connections of its own.
    pub pinning: super::pinned::Pinning,
    /// The client said `HELLO 3`: replies are RESP3, so its requests travel on RESP3 server
    /// connections.
    pub resp3: bool,
    id: u64,
    since: Instant,
    name: Option<Bytes>,
    lib_name: Option<Bytes>,
    lib_ver: Option<Bytes>,
    reply: ReplyMode,
    readonly: bool,
    no_evict: bool,
    no_touch: bool,
}

impl Default for RedisSession {
    fn default() -> Self {
        RedisSession::fresh(NEXT_ID.fetch_add(1, Ordering::Relaxed), Instant::now())
    }
}

impl RedisSession {
    fn fresh(id: u64, since: Instant) -> RedisSession {
        RedisSession {
            authed: false,
            pinning: Default::default(),
            resp3: false,
            id,
            since,
            name: None,
            lib_name: None,
            lib_ver: None,
            reply: ReplyMode::On,
            readonly: false,
            no_evict: false,
            no_touch: false,
        }
    }

    /// The server connections this client's requests travel on: RESP3 ones once it said
    /// `HELLO 3`.
    pub fn lane(&self) -> Lane {
        if self.resp3 {
            Lane::Resp3
        } else {
            Lane::Default
        }
    }

    /// Its `CLIENT ID`.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Back to a new connection's state (`RESET`), keeping the id.
    fn reset(&mut self) {
        *self = RedisSession::fresh(self.id, self.since);
    }

    /// This client's `CLIENT LIST` line (without its newline), in Redis's field order. Fields
    /// that describe a server's buffers have no meaning here and read 0.
    fn info_line(&self, cmd: &str) -> String {
        let text = |b: &Option<Bytes>| {
            b.as_deref()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        let mut flags = String::new();
        if self.pinning.in_multi() {
            flags.push('x');
        }
        if self.readonly {
            flags.push('r');
        }
        if self.no_evict {
            flags.push('e');
        }
        if self.no_touch {
            flags.push('T');
        }
        if flags.is_empty() {
            flags.push('N');
        }
        format!(
            "id={} addr= laddr= fd=-1 name={} age={} idle=0 flags={flags} db=0 sub=0 psub=0 ssub=0 \
             multi=-1 qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 \
             tot-mem=0 events=r cmd={cmd} user=default redir=-1 resp={} lib-name={} lib-ver={}",
            self.id,
            text(&self.name),
            self.since.elapsed().as_secs(),
            if self.resp3 { 3 } else { 2 },
            text(&self.lib_name),
            text(&self.lib_ver),
        )
    }
}

/// The commands this module answers, lower case; longest is 9 bytes.
const NAMES: &[&[u8]] = &[
    b"echo",
    b"quit",
    b"hello",
    b"auth",
    b"client",
    b"select",
    b"reset",
    b"readonly",
    b"readwrite",
    b"command",
];

fn ready(b: &'static [u8]) -> Option<Slot> {
    Some(Slot::Ready(Bytes::from_static(b)))
}

fn err(msg: &str) -> Option<Slot> {
    Some(Slot::Ready(Bytes::from(format!("-ERR {msg}\r\n"))))
}

const OK: &[u8] = b"+OK\r\n";
const WRONGPASS: &[u8] = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n";
const NOAUTH: &[u8] = b"-NOAUTH Authentication required.\r\n";

fn arity(name: &str) -> Option<Slot> {
    err(&format!("wrong number of arguments for '{name}' command"))
}

fn bulk(v: &[u8]) -> Option<Slot> {
    Some(Slot::Ready(super::bulk(v)))
}

/// Text as Redis sends `CLIENT INFO`: a verbatim string in RESP3, a bulk string in RESP2.
fn verbatim(resp3: bool, text: &str) -> Option<Slot> {
    if !resp3 {
        return bulk(text.as_bytes());
    }
    let mut b = BytesMut::with_capacity(text.len() + 24);
    b.put_u8(b'=');
    redis::put_decimal(&mut b, text.len() as i64 + 4);
    b.put_slice(b"\r\ntxt:");
    b.put_slice(text.as_bytes());
    b.put_slice(b"\r\n");
    Some(Slot::Ready(b.freeze()))
}

/// The `HELLO` reply: a map in RESP3, a flat array of its pairs in RESP2.
fn hello_reply(s: &RedisSession) -> Bytes {
    let mut b = BytesMut::with_capacity(160);
    b.put_slice(if s.resp3 { b"%7\r\n" } else { b"*14\r\n" });
    redis::put_bulk(&mut b, b"server");
    redis::put_bulk(&mut b, b"redis");
    redis::put_bulk(&mut b, b"version");
    redis::put_bulk(&mut b, REDIS_VERSION.as_bytes());
    redis::put_bulk(&mut b, b"proto");
    b.put_slice(if s.resp3 { b":3\r\n" } else { b":2\r\n" });
    redis::put_bulk(&mut b, b"id");
    b.put_u8(b':');
    redis::put_decimal(&mut b, s.id as i64);
    b.put_slice(b"\r\n");
    redis::put_bulk(&mut b, b"mode");
    redis::put_bulk(&mut b, b"standalone");
    redis::put_bulk(&mut b, b"role");
    redis::put_bulk(&mut b, b"master");
    redis::put_bulk(&mut b, b"modules");
    b.put_slice(b"*0\r\n");
    b.freeze()
}

/// A name Redis accepts for `CLIENT SETNAME`: printable ASCII without spaces.
fn valid_name(name: &[u8]) -> bool {
    name.iter().all(|&c| (b'!'..=b'~').contains(&c))
}

/// Check `user`/`password` the way Redis checks its `default` user (or the pool's `redis_user`,
/// the same password): legate has no other. With
/// no `redis_auth` the default user has no password and any password is accepted for it.
fn credentials_ok(topo: &Topology, user: &[u8], password: &[u8]) -> bool {
    let named = topo.pool.redis_user.as_ref().is_some_and(|u| u.as_bytes() == user);
    (user == b"default" || named) && topo.pool.redis_auth.as_ref().is_none_or(|p| p.as_bytes() == password)
}

/// Answer the request from the session when it is one of the commands this module serves, or
/// when the session's state decides its answer (not authenticated, inside a refused MULTI);
/// `None`: route it. Also applies `CLIENT REPLY OFF|SKIP` to whatever answers the request.
pub(super) fn answer(
    topo: &Topology,
    q: &Arc<Replies>,
    out: &mut Outbox,
    frame: &Bytes,
    req: &redis::Request,
    session: &mut RedisSession,
) -> Option<Slot> {
    let arg = |i: usize| &frame[req.args[i].clone()];
    let name = arg(0);
    let mut lower = [0u8; 9];
    let lower = match name.len() {
        n @ 4..=9 => {
            for (d, s) in lower.iter_mut().zip(name) {
                *d = s.to_ascii_lowercase();
            }
            let l = &lower[..n];
            NAMES.iter().find(|&&c| c == l).copied()
        }
        _ => None,
    };
    let mute = match session.reply {
        ReplyMode::On => false,
        ReplyMode::Off => true,
        ReplyMode::Skip => {
            session.reply = ReplyMode::On;
            true
        }
    };
    let slot = answer_named(topo, q, out, frame, req, session, lower.unwrap_or(b""));
    // CLIENT REPLY changes the mode of the requests after it; its own reply follows the mode
    // it sets (ON answers, OFF and SKIP do not).
    let mute = match lower {
        Some(b"client") if req.args.len() == 3 && arg(1).eq_ignore_ascii_case(b"reply") => {
            session.reply != ReplyMode::On
        }
        // Pub/sub confirmations are pushes: Redis sends them whatever CLIENT REPLY says.
        _ if is_pubsub_confirmed(name) => false,
        _ => mute,
    };
    if mute {
        q.silence_next();
    }
    if slot.as_ref().is_some_and(|s| !matches!(s, Slot::Queued)) {
        topo.stats.request(Class::Proxy);
    }
    slot
}

/// (UN)SUBSCRIBE, P(UN)SUBSCRIBE, S(UN)SUBSCRIBE.
fn is_pubsub_confirmed(name: &[u8]) -> bool {
    let n = match name.first() {
        Some(b'p' | b'P' | b's' | b'S') if name.len() > 9 => &name[1..],
        _ => name,
    };
    let n = match n {
        [b'u' | b'U', b'n' | b'N', rest @ ..] => rest,
        _ => n,
    };
    n.eq_ignore_ascii_case(b"subscribe")
}

fn answer_named(
    topo: &Topology,
    q: &Arc<Replies>,
    out: &mut Outbox,
    frame: &Bytes,
    req: &redis::Request,
    session: &mut RedisSession,
    lower: &[u8],
) -> Option<Slot> {
    let argc = req.args.len();
    let arg = |i: usize| &frame[req.args[i].clone()];
    let needs_auth = topo.pool.redis_auth.is_some() && !session.authed;
    if needs_auth && !matches!(lower, b"auth" | b"hello" | b"quit" | b"reset") {
        return ready(NOAUTH);
    }
    // Executed at once even inside a transaction, as Redis does.
    if lower == b"reset" {
        session.reset();
        session.authed = topo.pool.redis_auth.is_none();
        return ready(b"+RESET\r\n");
    }
    match lower {
        b"echo" => match argc {
            2 => bulk(arg(1)),
            _ => arity("echo"),
        },
        b"quit" => Some(Slot::Close(Bytes::from_static(OK))),
        b"readonly" | b"readwrite" => match argc {
            1 => {
                session.readonly = lower == b"readonly";
                ready(OK)
            }
            _ => arity(if lower == b"readonly" { "readonly" } else { "readwrite" }),
        },
        b"select" => match argc {
            2 => match crate::protocol::parse_i64(arg(1)) {
                None => err("value is not an integer or out of range"),
                Some(0) => ready(OK),
                Some(n) if !(0..16).contains(&n) => err("DB index is out of range"),
                Some(_) => err("legate serves database 0 only (the pool's redis_db chooses the backend database)"),
            },
            _ => arity("select"),
        },
        b"auth" => auth(topo, session, argc, arg),
        b"hello" => hello(topo, session, argc, arg),
        b"client" if argc >= 2 && arg(1).eq_ignore_ascii_case(b"unblock") => {
            Some(super::pinned::client_unblock(topo, q, out, frame, req, session))
        }
        b"client" => client(session, argc, arg),
        b"command" => {
            // The server's own table (and its reply in this client's protocol) is the answer.
            let server = (0..topo.servers.len())
                .find(|&s| !topo.servers[s].is_ejected())
                .unwrap_or(0);
            if topo.servers.is_empty() {
                return err("no server available");
            }
            let bytes = super::resp_frame(frame.clone(), req);
            Some(send_one(
                topo,
                q,
                out,
                server,
                session.lane(),
                smallvec![bytes],
                Framing::Redis,
            ))
        }
        _ => None,
    }
}

fn auth<'a>(topo: &Topology, session: &mut RedisSession, argc: usize, arg: impl Fn(usize) -> &'a [u8]) -> Option<Slot> {
    let (user, password) = match argc {
        2 => {
            if topo.pool.redis_auth.is_none() {
                return err(
                    "AUTH <password> called without any password configured for the default user. \
                     Are you sure your configuration is correct?",
                );
            }
            (&b"default"[..], arg(1))
        }
        3 => (arg(1), arg(2)),
        1 => return arity("auth"),
        _ => return err("syntax error"),
    };
    if credentials_ok(topo, user, password) {
        session.authed = true;
        ready(OK)
    } else {
        ready(WRONGPASS)
    }
}

fn hello<'a>(
    topo: &Topology,
    session: &mut RedisSession,
    argc: usize,
    arg: impl Fn(usize) -> &'a [u8],
) -> Option<Slot> {
    let mut resp3 = session.resp3;
    if argc >= 2 {
        match crate::protocol::parse_i64(arg(1)) {
            None => return err("Protocol version is not an integer or out of range"),
            Some(2) => resp3 = false,
            Some(3) => resp3 = true,
            Some(_) => return ready(b"-NOPROTO unsupported protocol version\r\n"),
        }
    }
    let (mut credentials, mut setname) = (None, None);
    let mut j = 2;
    while j < argc {
        let opt = arg(j);
        let more = argc - 1 - j;
        if opt.eq_ignore_ascii_case(b"auth") && more >= 2 {
            credentials = Some((arg(j + 1), arg(j + 2)));
            j += 3;
        } else if opt.eq_ignore_ascii_case(b"setname") && more >= 1 {
            setname = Some(arg(j + 1));
            j += 2;
        } else {
            return err(&format!("Syntax error in HELLO option '{}'", printable(opt)));
        }
    }
    if let Some((user, password)) = credentials {
        if !credentials_ok(topo, user, password) {
            return ready(WRONGPASS);
        }
        session.authed = true;
    }
    if topo.pool.redis_auth.is_some() && !session.authed {
        return ready(
            b"-NOAUTH HELLO must be called with the client already authenticated, otherwise the \
              HELLO AUTH <user> <pass> option can be used to authenticate the client and select \
              the RESP protocol version at the same time\r\n",
        );
    }
    if let Some(name) = setname {
        if !valid_name(name) {
            return err("Client names cannot contain spaces, newlines or special characters.");
        }
        session.name = (!name.is_empty()).then(|| Bytes::copy_from_slice(name));
    }
    session.resp3 = resp3;
    Some(Slot::Ready(hello_reply(session)))
}

fn on_off(v: &[u8]) -> Option<bool> {
    if v.eq_ignore_ascii_case(b"on") {
        Some(true)
    } else if v.eq_ignore_ascii_case(b"off") {
        Some(false)
    } else {
        None
    }
}

fn client<'a>(session: &mut RedisSession, argc: usize, arg: impl Fn(usize) -> &'a [u8]) -> Option<Slot> {
    if argc < 2 {
        return arity("client");
    }
    let sub = printable(arg(1)).to_ascii_lowercase();
    let want = |n: usize| (argc != n).then(|| arity(&format!("client|{sub}")));
    match sub.as_str() {
        "id" => want(2).unwrap_or_else(|| Some(Slot::Ready(Bytes::from(format!(":{}\r\n", session.id))))),
        "getname" => want(2).unwrap_or_else(|| match &session.name {
            Some(n) => bulk(n),
            None if session.resp3 => ready(b"_\r\n"),
            None => ready(b"$-1\r\n"),
        }),
        "setname" => want(3).unwrap_or_else(|| {
            let name = arg(2);
            if !valid_name(name) {
                return err("Client names cannot contain spaces, newlines or special characters.");
            }
            session.name = (!name.is_empty()).then(|| Bytes::copy_from_slice(name));
            ready(OK)
        }),
        "setinfo" => want(4).unwrap_or_else(|| {
            let (attr, value) = (arg(2), arg(3));
            let field = if attr.eq_ignore_ascii_case(b"lib-name") {
                &mut session.lib_name
            } else if attr.eq_ignore_ascii_case(b"lib-ver") {
                &mut session.lib_ver
            } else {
                return err(&format!("Unrecognized option '{}'", printable(attr)));
            };
            if !valid_name(value) {
                return err(&format!(
                    "{} cannot contain spaces, newlines or special characters.",
                    printable(attr).to_ascii_lowercase()
                ));
            }
            *field = (!value.is_empty()).then(|| Bytes::copy_from_slice(value));
            ready(OK)
        }),
        "info" => want(2).unwrap_or_else(|| verbatim(session.resp3, &(session.info_line("client|info") + "\n"))),
        "list" => {
            // Only this client: legate's other clients are not this connection's business, and
            // the servers' client lists show legate's own connections.
            let mut mine = true;
            let mut j = 2;
            while j < argc {
                if arg(j).eq_ignore_ascii_case(b"type") && j + 1 < argc {
                    mine &= arg(j + 1).eq_ignore_ascii_case(b"normal");
                    j += 2;
                } else if arg(j).eq_ignore_ascii_case(b"id") && j + 1 < argc {
                    let ids = (j + 1..argc).map(|i| crate::protocol::parse_u64(arg(i)));
                    let ids: Option<Vec<u64>> = ids.collect();
                    match ids {
                        Some(ids) => mine &= ids.contains(&session.id),
                        None => return err("Invalid client ID"),
                    }
                    j = argc;
                } else {
                    return err("syntax error");
                }
            }
            let text = if mine {
                session.info_line("client|list") + "\n"
            } else {
                String::new()
            };
            verbatim(session.resp3, &text)
        }
        "reply" => want(3).unwrap_or_else(|| {
            let mode = arg(2);
            session.reply = if mode.eq_ignore_ascii_case(b"on") {
                ReplyMode::On
            } else if mode.eq_ignore_ascii_case(b"off") {
                ReplyMode::Off
            } else if mode.eq_ignore_ascii_case(b"skip") {
                ReplyMode::Skip
            } else {
                return err("syntax error");
            };
            ready(OK)
        }),
        "no-evict" | "no-touch" => want(3).unwrap_or_else(|| {
            let Some(on) = on_off(arg(2)) else {
                return err("syntax error");
            };
            if sub == "no-evict" {
                session.no_evict = on;
            } else {
                session.no_touch = on;
            }
            ready(OK)
        }),
        "kill" | "pause" | "unpause" | "tracking" | "trackinginfo" | "caching" | "getredir" => err(
            &format!(
                "CLIENT {} is not served by legate: it acts on a server's own connections, which legate shares between its clients",
                sub.to_ascii_uppercase()
            ),
        ),
        _ => err(&format!(
            "unknown subcommand '{}'. Try CLIENT HELP.",
            printable(arg(1))
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_reply_is_a_map_in_resp3_and_pairs_in_resp2() {
        let mut s = RedisSession::default();
        let two = hello_reply(&s);
        assert!(two.starts_with(b"*14\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n"));
        assert!(two.ends_with(b"$4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n"));
        s.resp3 = true;
        let three = hello_reply(&s);
        assert!(three.starts_with(b"%7\r\n"));
        let proto = b"$5\r\nproto\r\n:3\r\n";
        assert!(three.windows(proto.len()).any(|w| w == proto));
        assert_eq!(two.len(), three.len() + 1);
    }

    #[test]
    fn reset_keeps_the_id_and_forgets_the_rest() {
        let mut s = RedisSession::default();
        let id = s.id;
        s.resp3 = true;
        s.name = Some(Bytes::from_static(b"n"));
        s.reply = ReplyMode::Off;
        s.reset();
        assert_eq!(s.id, id);
        assert!(!s.resp3 && s.name.is_none() && s.reply == ReplyMode::On);
        assert_ne!(RedisSession::default().id, id);
    }

    #[test]
    fn names_are_printable_without_spaces() {
        assert!(valid_name(b"app-1:worker"));
        assert!(valid_name(b""));
        assert!(!valid_name(b"a b"));
        assert!(!valid_name(b"a\nb"));
        assert!(!valid_name("é".as_bytes()));
    }
}
