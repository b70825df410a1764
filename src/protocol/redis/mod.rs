//! Redis RESP2 and inline commands: request parser, reply scanner and the command table.
//!
//! Requests parse into argument offsets into the caller's buffer. Replies are scanned with a
//! resumable state (no recursion, so nesting depth costs no stack) to find where each ends.

mod command;

pub use command::{has_block_option, pattern_key_part, sort_patterns};
pub use command::{
    key_positions, lookup, BadKeys, Begin, Command, Fan, Find, KeySpec, Keys, Merge, Route, Unknown, COMMANDS,
};

use super::{find_lf, parse_i64, Need, Parse, MAX_LINE_BYTES, MAX_VALUE_BYTES};
use smallvec::SmallVec;
use std::ops::Range;

/// Most arguments one request may carry (Redis's own multibulk limit).
pub const MAX_ARGS: usize = 1024 * 1024;

/// Deepest array nesting accepted in a server reply.
pub const MAX_REPLY_DEPTH: usize = 512;

/// A parsed request: argument offsets into the bytes it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Bytes the request occupies.
    pub len: usize,
    pub args: SmallVec<[Range<usize>; 4]>,
    /// Sent as an inline command: must be re-encoded as RESP before it is forwarded.
    pub inline: bool,
}

/// A request the parser refused. Redis closes the connection after a protocol error, and so do
/// we: the stream cannot be resynchronised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Protocol error: {0}")]
pub struct RequestError(pub String);

impl RequestError {
    /// The `-ERR` line to send before closing.
    pub fn reply(&self) -> String {
        format!("-ERR {self}\r\n")
    }
}

fn perr(m: impl Into<String>) -> RequestError {
    RequestError(m.into())
}

/// Parse one request from the front of `buf`. Empty inline lines are skipped and reported as a
/// request with no arguments, so the caller can drop them.
///
/// # Errors
/// Malformed RESP, lengths over the limits, or an unbalanced quote in an inline command.
pub fn parse_request(buf: &[u8]) -> Result<Parse<Request>, RequestError> {
    if buf.is_empty() {
        return Ok(Parse::Incomplete(Need::Line));
    }
    if buf[0] != b'*' {
        return parse_inline(buf);
    }
    let Some((count, mut at)) = header_line(buf, 0)? else {
        return Ok(Parse::Incomplete(Need::Line));
    };
    if count > MAX_ARGS as i64 {
        return Err(perr("invalid multibulk length"));
    }
    let mut args = SmallVec::new();
    if count <= 0 {
        return Ok(Parse::Complete(Request {
            len: at,
            args,
            inline: false,
        }));
    }
    for _ in 0..count {
        if at >= buf.len() {
            return Ok(Parse::Incomplete(Need::Line));
        }
        if buf[at] != b'$' {
            return Err(perr(format!("expected '$', got '{}'", buf[at].escape_ascii())));
        }
        let Some((n, data)) = header_line(buf, at)? else {
            return Ok(Parse::Incomplete(Need::Line));
        };
        if n < 0 || n as usize > MAX_VALUE_BYTES {
            return Err(perr("invalid bulk length"));
        }
        let end = data + n as usize;
        if buf.len() < end + 2 {
            return Ok(Parse::Incomplete(Need::Bytes(end + 2)));
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(perr("bulk string not terminated by CRLF"));
        }
        args.push(data..end);
        at = end + 2;
    }
    Ok(Parse::Complete(Request {
        len: at,
        args,
        inline: false,
    }))
}

/// Parse a `<type><integer>\r\n` header at `at`; returns the integer and the offset after it.
fn header_line(buf: &[u8], at: usize) -> Result<Option<(i64, usize)>, RequestError> {
    let Some(lf) = find_lf(&buf[at..]) else {
        if buf.len() - at > MAX_LINE_BYTES {
            return Err(perr("too big header line"));
        }
        return Ok(None);
    };
    let lf = at + lf;
    if lf == at || buf[lf - 1] != b'\r' {
        return Err(perr("header not terminated by CRLF"));
    }
    let n = parse_i64(&buf[at + 1..lf - 1]).ok_or_else(|| {
        perr(if buf[at] == b'*' {
            "invalid multibulk length"
        } else {
            "invalid bulk length"
        })
    })?;
    Ok(Some((n, lf + 1)))
}

fn parse_inline(buf: &[u8]) -> Result<Parse<Request>, RequestError> {
    let Some(lf) = find_lf(buf) else {
        if buf.len() > MAX_LINE_BYTES {
            return Err(perr("too big inline request"));
        }
        return Ok(Parse::Incomplete(Need::Line));
    };
    let end = if lf > 0 && buf[lf - 1] == b'\r' { lf - 1 } else { lf };
    let mut args = SmallVec::new();
    let mut i = 0;
    while i < end {
        while i < end && buf[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= end {
            break;
        }
        if buf[i] == b'"' || buf[i] == b'\'' {
            // Quoted argument: kept only when it needs no unescaping (the common case).
            let q = buf[i];
            let s = i + 1;
            let Some(close) = buf[s..end].iter().position(|&c| c == q) else {
                return Err(perr("unbalanced quotes in request"));
            };
            if buf[s..s + close].contains(&b'\\') {
                return Err(perr("escapes in inline commands are not supported"));
            }
            args.push(s..s + close);
            i = s + close + 1;
            if i < end && !buf[i].is_ascii_whitespace() {
                return Err(perr("unbalanced quotes in request"));
            }
        } else {
            let s = i;
            while i < end && !buf[i].is_ascii_whitespace() {
                i += 1;
            }
            args.push(s..i);
        }
    }
    Ok(Parse::Complete(Request {
        len: lf + 1,
        args,
        inline: true,
    }))
}

/// Append `args` to `out` as a RESP array of bulk strings.
pub fn encode_command<'a>(out: &mut bytes::BytesMut, args: impl ExactSizeIterator<Item = &'a [u8]>) {
    use bytes::BufMut;
    out.put_u8(b'*');
    put_decimal(out, args.len() as i64);
    out.put_slice(b"\r\n");
    for a in args {
        out.put_u8(b'$');
        put_decimal(out, a.len() as i64);
        out.put_slice(b"\r\n");
        out.put_slice(a);
        out.put_slice(b"\r\n");
    }
}

/// Append a decimal integer.
pub fn put_decimal(out: &mut bytes::BytesMut, v: i64) {
    let mut b = itoa::Buffer::new();
    out.extend_from_slice(b.format(v).as_bytes());
}

/// A server reply that cannot be framed: the connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed redis reply: {0}")]
pub struct ReplyError(pub &'static str);

/// Resume point of a partly received reply: the offset after the last complete element and
/// the elements still owed by each open array.
#[derive(Debug, Default, Clone)]
pub struct ReplyScan {
    pos: usize,
    open: Vec<i64>,
}

impl ReplyScan {
    /// Forget progress: the next reply starts at the front of the buffer.
    pub fn reset(&mut self) {
        self.pos = 0;
        self.open.clear();
    }
}

/// Find the end of the reply at the front of `buf`. Returns its length when complete.
///
/// # Errors
/// An unknown type byte, a bad length, or nesting over [`MAX_REPLY_DEPTH`].
pub fn scan_reply(buf: &[u8], scan: &mut ReplyScan) -> Result<Option<usize>, ReplyError> {
    loop {
        let at = scan.pos;
        if at >= buf.len() {
            return Ok(None);
        }
        let Some(lf) = find_lf(&buf[at..]) else {
            if buf.len() - at > MAX_LINE_BYTES {
                return Err(ReplyError("line too long"));
            }
            return Ok(None);
        };
        let lf = at + lf;
        let after = lf + 1;
        let int = || -> Result<i64, ReplyError> {
            let end = if buf[lf - 1] == b'\r' { lf - 1 } else { lf };
            parse_i64(&buf[at + 1..end]).ok_or(ReplyError("bad length"))
        };
        let element_end = match buf[at] {
            b'+' | b'-' | b':' => after,
            b'$' => {
                let n = int()?;
                if n < 0 {
                    after
                } else {
                    let end = after + n as usize + 2;
                    if buf.len() < end {
                        return Ok(None);
                    }
                    end
                }
            }
            b'*' => {
                let n = int()?;
                if n > 0 {
                    if scan.open.len() >= MAX_REPLY_DEPTH {
                        return Err(ReplyError("nesting too deep"));
                    }
                    scan.open.push(n);
                    scan.pos = after;
                    continue;
                }
                after
            }
            _ => return Err(ReplyError("unknown type byte")),
        };
        scan.pos = element_end;
        // One element done: close every array it completes.
        loop {
            match scan.open.last_mut() {
                None => {
                    scan.reset();
                    return Ok(Some(element_end));
                }
                Some(left) => {
                    *left -= 1;
                    if *left > 0 {
                        break;
                    }
                    scan.open.pop();
                }
            }
        }
    }
}

/// The byte ranges of the elements of a complete array reply; `None` if it is not an array.
pub fn array_elements(reply: &[u8]) -> Option<Vec<Range<usize>>> {
    if reply.first() != Some(&b'*') {
        return None;
    }
    let lf = find_lf(reply)?;
    let n = parse_i64(reply[1..lf].strip_suffix(b"\r")?)?;
    // The count is the peer's word: reserve only what a real reply of this size could need.
    let mut out = Vec::with_capacity((n.max(0) as usize).min(reply.len() / 4));
    let mut at = lf + 1;
    let mut scan = ReplyScan::default();
    for _ in 0..n.max(0) {
        let len = scan_reply(&reply[at..], &mut scan).ok()??;
        out.push(at..at + len);
        at += len;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(buf: &[u8]) -> Vec<&[u8]> {
        match parse_request(buf).unwrap() {
            Parse::Complete(r) => r.args.iter().map(|a| &buf[a.clone()]).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn resp_and_inline() {
        assert_eq!(args(b"*2\r\n$3\r\nGET\r\n$3\r\nfoo\r\n"), [&b"GET"[..], b"foo"]);
        assert_eq!(args(b"set a 'b c'\r\n"), [&b"set"[..], b"a", b"b c"]);
        assert_eq!(args(b"PING\n"), [&b"PING"[..]]);
        assert!(args(b"\r\n").is_empty());
        let r = b"*2\r\n$3\r\nGET\r\n$3\r\nfoo\r\n";
        for cut in 0..r.len() {
            assert!(matches!(parse_request(&r[..cut]), Ok(Parse::Incomplete(_))), "{cut}");
        }
        assert_eq!(
            parse_request(b"*1\r\n$100\r\nabc"),
            Ok(Parse::Incomplete(Need::Bytes(112)))
        );
    }

    #[test]
    fn bad_lengths_refused_at_the_header() {
        for bad in [
            &b"*2000000000\r\n"[..],
            b"*1\r\n$999999999999\r\n",
            b"*1\r\n$-5\r\n",
            b"*x\r\n",
            b"*1\r\n*1\r\n",
            b"*1\r\n$3\r\nabcde",
        ] {
            assert!(parse_request(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(parse_request(b"*-5\r\n").is_ok());
        assert!(parse_request(b"get 'a\r\n").is_err());
    }

    #[test]
    fn reply_scan_all_types_and_splits() {
        let r = b"*3\r\n$3\r\nfoo\r\n$-1\r\n*2\r\n:1\r\n+OK\r\n";
        let mut s = ReplyScan::default();
        for cut in 0..r.len() {
            assert_eq!(scan_reply(&r[..cut], &mut s), Ok(None), "{cut}");
        }
        assert_eq!(scan_reply(r, &mut s), Ok(Some(r.len())));
        assert_eq!(scan_reply(b"-ERR x\r\n+OK\r\n", &mut s), Ok(Some(8)));
        assert_eq!(scan_reply(b"*0\r\n", &mut s), Ok(Some(4)));
        assert_eq!(scan_reply(b"*-1\r\n", &mut s), Ok(Some(5)));
        assert!(scan_reply(b"!x\r\n", &mut s).is_err());
        s.reset();
        let deep = "*1\r\n".repeat(MAX_REPLY_DEPTH + 1);
        assert!(scan_reply(deep.as_bytes(), &mut s).is_err());
    }
}
