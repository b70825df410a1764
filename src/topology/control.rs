//! One-off RESP connections for legate's own control traffic (sentinels, cluster nodes): a
//! command, its reply, parsed into values. Nothing here is on the request path.
//!
//! What a peer sends is checked like any reply: the size is bounded at the header, the nesting
//! depth is bounded, and a reply that is not what was asked for is an error, never a panic.

use crate::config::Addr;
use crate::net::{Plain, Stream};
use crate::protocol::redis;
use crate::tls::Connector;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest control reply accepted (a big cluster's `CLUSTER SHARDS` is well under this).
const CONTROL_REPLY_BYTES: usize = 8 * 1024 * 1024;
/// Deepest nesting parsed (`CLUSTER SHARDS` is 4 levels).
const MAX_DEPTH: usize = 8;

/// A parsed reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A bulk or simple string.
    Str(Bytes),
    Int(i64),
    Nil,
    Error(String),
    /// An array, or a RESP3 map or set flattened (key, value, key, value …).
    Array(Vec<Value>),
}

impl Value {
    /// The string's bytes, or `None` for anything else.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Str(b) => Some(b),
            _ => None,
        }
    }

    /// The string as text (lossy), or `None`.
    pub fn text(&self) -> Option<String> {
        self.bytes().map(|b| String::from_utf8_lossy(b).into_owned())
    }

    /// An integer, or a string holding one.
    pub fn int(&self) -> Option<i64> {
        match self {
            Value::Int(n) => Some(*n),
            Value::Str(b) => crate::protocol::parse_i64(b),
            _ => None,
        }
    }

    pub fn items(&self) -> Option<&[Value]> {
        match self {
            Value::Array(v) => Some(v),
            _ => None,
        }
    }

    /// In a flat key/value array (`SENTINEL MASTER`, a `CLUSTER SHARDS` entry): the value of
    /// `key`.
    pub fn field(&self, key: &str) -> Option<&Value> {
        self.items()?
            .chunks_exact(2)
            .find(|kv| kv[0].bytes() == Some(key.as_bytes()))
            .map(|kv| &kv[1])
    }
}

/// Parse one complete reply (as framed by [`redis::scan_reply`]).
pub fn parse(reply: &Bytes) -> Option<Value> {
    let (v, used) = parse_at(reply, 0, 0)?;
    (used == reply.len()).then_some(v)
}

fn parse_at(buf: &Bytes, at: usize, depth: usize) -> Option<(Value, usize)> {
    if depth > MAX_DEPTH {
        return None;
    }
    let rest = buf.get(at..)?;
    let lf = rest.iter().position(|&c| c == b'\n')?;
    let line = rest[1..lf].strip_suffix(b"\r")?;
    let next = at + lf + 1;
    let num = || crate::protocol::parse_i64(line);
    match rest.first()? {
        b'+' => Some((Value::Str(buf.slice(at + 1..at + 1 + line.len())), next)),
        b'-' => Some((Value::Error(String::from_utf8_lossy(line).into_owned()), next)),
        b':' => Some((Value::Int(num()?), next)),
        b'_' => Some((Value::Nil, next)),
        b'$' | b'=' | b'!' => {
            let n = num()?;
            if n < 0 {
                return Some((Value::Nil, next));
            }
            let end = next.checked_add(n as usize)?;
            if buf.get(end..end + 2)? != b"\r\n" {
                return None;
            }
            let s = buf.slice(next..end);
            match rest[0] {
                b'!' => Some((Value::Error(String::from_utf8_lossy(&s).into_owned()), end + 2)),
                _ => Some((Value::Str(s), end + 2)),
            }
        }
        b'*' | b'~' | b'>' | b'%' => {
            let n = num()?;
            if n < 0 {
                return Some((Value::Nil, next));
            }
            let n = if rest[0] == b'%' { n.checked_mul(2)? } else { n };
            // The count is the peer's word: every element takes at least 3 bytes.
            if n as usize > buf.len() / 3 {
                return None;
            }
            let mut items = Vec::with_capacity(n as usize);
            let mut pos = next;
            for _ in 0..n {
                let (v, p) = parse_at(buf, pos, depth + 1)?;
                items.push(v);
                pos = p;
            }
            Some((Value::Array(items), pos))
        }
        _ => None,
    }
}

/// How legate reaches a control peer: the ACL user and password it authenticates with, and
/// the TLS it speaks (a cluster pool's `redis_user`/`redis_auth`/`tls`; a Sentinel pool's
/// `sentinel_user`/`sentinel_auth` and its `tls` unless `sentinel_tls: false`).
#[derive(Clone, Default)]
pub struct Credentials {
    pub user: Option<String>,
    pub password: Option<String>,
    pub tls: Option<Arc<Connector>>,
}

/// A connection to a sentinel or a cluster node for legate's own commands.
pub struct Control {
    stream: Stream,
    buf: BytesMut,
    scan: redis::ReplyScan,
    timeout: Duration,
}

impl Control {
    /// Connect, run the TLS handshake when `with.tls` is set, and `AUTH` when a password is
    /// given (`AUTH <user> <password>` with a user), each within `timeout`.
    ///
    /// # Errors
    /// The peer cannot be reached, its certificate is refused, it refuses the password, or it
    /// does not answer in time.
    pub async fn connect(addr: &Addr, timeout: Duration, with: &Credentials) -> Result<Control, String> {
        let Addr::Tcp { host, port } = addr else {
            return Err(format!("{addr}: only host:port addresses are supported here"));
        };
        let tcp = tokio::time::timeout(timeout, TcpStream::connect((host.as_str(), *port)))
            .await
            .map_err(|_| format!("{addr}: connect timed out"))?
            .map_err(|e| format!("{addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let stream = match &with.tls {
            None => Stream::Plain(Plain::Tcp(tcp)),
            Some(tls) => tokio::time::timeout(timeout, tls.connect(host, Plain::Tcp(tcp)))
                .await
                .map_err(|_| format!("{addr}: no TLS handshake within {timeout:?} (is this its TLS port?)"))?
                .map_err(|e| format!("{addr}: TLS handshake failed: {e}"))?,
        };
        let mut c = Control {
            stream,
            buf: BytesMut::with_capacity(4096),
            scan: redis::ReplyScan::with_limit(CONTROL_REPLY_BYTES),
            timeout,
        };
        if let Some(pw) = &with.password {
            let said = match &with.user {
                Some(u) => c.call(&[b"AUTH", u.as_bytes(), pw.as_bytes()]).await?,
                None => c.call(&[b"AUTH", pw.as_bytes()]).await?,
            };
            match said {
                Value::Str(_) => {}
                other => return Err(format!("{addr}: AUTH refused: {other:?}")),
            }
        }
        Ok(c)
    }

    /// Send a command without waiting for its reply.
    ///
    /// # Errors
    /// The connection failed.
    pub async fn send(&mut self, args: &[&[u8]]) -> Result<(), String> {
        let mut out = BytesMut::new();
        redis::encode_command(&mut out, args.iter().copied());
        let write = async {
            self.stream.write_all(&out).await?;
            // TLS holds records until flushed.
            self.stream.flush().await
        };
        tokio::time::timeout(self.timeout, write)
            .await
            .map_err(|_| "write timed out".to_string())?
            .map_err(|e| e.to_string())
    }

    /// Send a command and read its reply (within the connection's timeout).
    ///
    /// # Errors
    /// The connection failed, timed out, or the reply cannot be parsed.
    pub async fn call(&mut self, args: &[&[u8]]) -> Result<Value, String> {
        self.send(args).await?;
        self.reply().await
    }

    /// Read the next reply within the connection's timeout (a pipeline's, after
    /// [`Control::send`]s).
    ///
    /// # Errors
    /// As [`Control::read`], or no reply in time.
    pub async fn reply(&mut self) -> Result<Value, String> {
        let timeout = self.timeout;
        tokio::time::timeout(timeout, self.read())
            .await
            .map_err(|_| "no reply in time".to_string())?
    }

    /// Read the next reply, however long it takes (pub/sub messages).
    ///
    /// # Errors
    /// The connection closed or failed, or the reply is malformed or too large.
    pub async fn read(&mut self) -> Result<Value, String> {
        loop {
            if let Some(n) = redis::scan_reply(&self.buf, &mut self.scan).map_err(|e| e.to_string())? {
                let reply = self.buf.split_to(n).freeze();
                return parse(&reply).ok_or_else(|| "reply cannot be parsed".to_string());
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(16 * 1024);
            }
            if self.stream.read_buf(&mut self.buf).await.map_err(|e| e.to_string())? == 0 {
                return Err("connection closed".into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &[u8]) -> Option<Value> {
        parse(&Bytes::copy_from_slice(s))
    }

    #[test]
    fn parses_control_replies() {
        assert_eq!(p(b"+OK\r\n"), Some(Value::Str(Bytes::from_static(b"OK"))));
        assert_eq!(p(b"$-1\r\n"), Some(Value::Nil));
        assert_eq!(p(b"-ERR no\r\n"), Some(Value::Error("ERR no".into())));
        let v = p(b"*4\r\n$4\r\nname\r\n$1\r\na\r\n$4\r\nport\r\n:6379\r\n").unwrap();
        assert_eq!(v.field("name").and_then(Value::text).as_deref(), Some("a"));
        assert_eq!(v.field("port").and_then(Value::int), Some(6379));
        let m = p(b"%1\r\n+k\r\n*1\r\n:1\r\n").unwrap();
        assert_eq!(m.field("k").and_then(Value::items).map(<[Value]>::len), Some(1));
    }

    #[test]
    fn refuses_what_does_not_fit() {
        assert_eq!(p(b"*1000000\r\n:1\r\n"), None, "count larger than the reply");
        assert_eq!(p(b"$3\r\nabcd\r\n"), None);
        assert_eq!(p(b"+OK\r\n+extra\r\n"), None);
        let deep = b"*1\r\n".repeat(20);
        assert_eq!(p(&[&deep[..], b":1\r\n"].concat()), None, "too deep");
    }
}
