//! Redis RESP2 and inline commands: request parser, reply scanner (RESP2 and RESP3) and the
//! command table.
//!
//! Requests parse into argument offsets into the caller's buffer. Replies are scanned with a
//! resumable state (an explicit stack, so nesting depth costs no call stack and has no limit
//! but the reply's size) to find where each ends.

mod command;

pub use command::{debug_route, has_block_option, pattern_key_part, sort_patterns, DebugRoute};
pub use command::{
    key_positions, lookup, row_index, BadKeys, Begin, Command, Fan, Find, KeySpec, Keys, Merge, Route, Unknown,
    COMMANDS,
};

use super::{find_lf, parse_i64, Need, Parse, MAX_LINE_BYTES, MAX_VALUE_BYTES};
use smallvec::SmallVec;
use std::ops::Range;

/// Most arguments one request may carry (Redis's own multibulk limit).
pub const MAX_ARGS: usize = 1024 * 1024;

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

/// Append a bulk string (`$len`, the bytes, CRLF).
pub fn put_bulk(out: &mut bytes::BytesMut, v: &[u8]) {
    out.extend_from_slice(b"$");
    put_decimal(out, v.len() as i64);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(v);
    out.extend_from_slice(b"\r\n");
}

/// Append a decimal integer.
pub fn put_decimal(out: &mut bytes::BytesMut, v: i64) {
    let mut b = itoa::Buffer::new();
    out.extend_from_slice(b.format(v).as_bytes());
}

pub use super::ReplyError;

/// Marks an open attribute (`|`) on the scanner's stack: it is not an element of its parent.
const ATTRIBUTE: u32 = 1 << 31;

/// Resume point of a partly received reply: the offset after the last complete element, the
/// elements still owed by each open aggregate, and the largest reply accepted.
///
/// The stack is explicit, so any depth a server sends costs no call stack; every level takes
/// at least four bytes of the reply, so the stack is bounded by the reply's size limit.
#[derive(Debug, Clone)]
pub struct ReplyScan {
    pos: usize,
    open: Vec<u32>,
    need: usize,
    limit: usize,
}

impl Default for ReplyScan {
    fn default() -> Self {
        ReplyScan::with_limit(super::DEFAULT_MAX_REPLY_BYTES)
    }
}

impl ReplyScan {
    /// A scanner refusing replies over `limit` bytes (at the header that declares them).
    pub fn with_limit(limit: usize) -> Self {
        ReplyScan {
            pos: 0,
            open: Vec::new(),
            need: 0,
            limit,
        }
    }

    /// Forget progress: the next reply starts at the front of the buffer. The stack of a deeply
    /// nested reply is given back rather than kept for the connection's life.
    pub fn reset(&mut self) {
        self.pos = 0;
        self.need = 0;
        if self.open.capacity() > 1024 {
            self.open = Vec::new();
        } else {
            self.open.clear();
        }
    }

    /// After an incomplete scan: how many bytes the buffer must hold before the reply can be
    /// complete, when a header said so (0 when only a line is awaited).
    pub fn needs(&self) -> usize {
        self.need
    }
}

fn too_large(declared: u64, limit: usize) -> ReplyError {
    ReplyError::TooLarge { declared, limit }
}

/// A RESP3 double: digits, sign, point, exponent, or inf/-inf/nan.
fn is_double(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|c| c.is_ascii_digit() || b"+-.eEinfa".contains(c))
}

/// Find the end of the reply at the front of `buf` (RESP2 and RESP3). Returns its length when
/// complete. An attribute (`|`) is part of the reply it precedes; a push (`>`) is framed like
/// any other reply.
///
/// # Errors
/// An unknown type byte, a bad length or line ([`ReplyError::Malformed`]); a bulk length or
/// element count that cannot fit in the scanner's limit ([`ReplyError::TooLarge`]), refused
/// at its header.
pub fn scan_reply(buf: &[u8], scan: &mut ReplyScan) -> Result<Option<usize>, ReplyError> {
    use ReplyError::Malformed;
    loop {
        let at = scan.pos;
        scan.need = 0;
        if at >= buf.len() {
            return Ok(None);
        }
        let Some(lf) = find_lf(&buf[at..]) else {
            if buf.len() - at > MAX_LINE_BYTES {
                return Err(Malformed("line too long"));
            }
            return Ok(None);
        };
        let lf = at + lf;
        if lf < at + 2 || buf[lf - 1] != b'\r' {
            return Err(Malformed("line not terminated by CRLF"));
        }
        let body = &buf[at + 1..lf - 1];
        let after = lf + 1;
        if after > scan.limit {
            return Err(too_large(after as u64, scan.limit));
        }
        let kind = buf[at];
        let element_end = match kind {
            b'+' | b'-' => after,
            b':' => parse_i64(body).map(|_| after).ok_or(Malformed("bad integer"))?,
            b'_' if body.is_empty() => after,
            b'#' if body == b"t" || body == b"f" => after,
            b',' if is_double(body) => after,
            b'(' if big_number(body) => after,
            b'$' | b'=' | b'!' => {
                let n = parse_i64(body).ok_or(Malformed("bad length"))?;
                if n == -1 && kind == b'$' {
                    after // RESP2 null
                } else if n < 0 {
                    return Err(Malformed("bad length"));
                } else {
                    let end = (after as u64).saturating_add(n as u64 + 2);
                    if end > scan.limit as u64 {
                        return Err(too_large(end, scan.limit));
                    }
                    let end = end as usize;
                    if buf.len() < end {
                        scan.need = end;
                        return Ok(None);
                    }
                    if &buf[end - 2..end] != b"\r\n" {
                        return Err(Malformed("bulk string not terminated by CRLF"));
                    }
                    if kind == b'=' && (n < 4 || buf[after + 3] != b':') {
                        return Err(Malformed("verbatim string without its format"));
                    }
                    end
                }
            }
            b'*' | b'~' | b'>' | b'%' | b'|' => {
                let n = parse_i64(body).ok_or(Malformed("bad length"))?;
                if n == -1 && kind == b'*' {
                    after // RESP2 null array
                } else if n < 0 {
                    return Err(Malformed("bad length"));
                } else {
                    let elements = if kind == b'%' || kind == b'|' {
                        n as u64 * 2
                    } else {
                        n as u64
                    };
                    // Each element takes at least three bytes ("_\r\n").
                    let least = (after as u64).saturating_add(elements.saturating_mul(3));
                    if least > scan.limit as u64 || elements >= ATTRIBUTE as u64 {
                        return Err(too_large(least, scan.limit));
                    }
                    let attribute = if kind == b'|' { ATTRIBUTE } else { 0 };
                    scan.pos = after;
                    if elements > 0 {
                        scan.open.push(elements as u32 | attribute);
                        continue;
                    }
                    if attribute != 0 {
                        continue; // an empty attribute: the reply follows
                    }
                    after
                }
            }
            _ => return Err(Malformed("unknown type byte or bad line")),
        };
        scan.pos = element_end;
        // One element done: close every aggregate it completes.
        loop {
            let Some(left) = scan.open.last_mut() else {
                scan.reset();
                return Ok(Some(element_end));
            };
            *left -= 1;
            if *left & !ATTRIBUTE > 0 {
                break;
            }
            let attribute = *left & ATTRIBUTE != 0;
            scan.open.pop();
            if attribute {
                break; // the element the attribute describes comes next
            }
        }
    }
}

/// A RESP3 big number: an optional sign, then digits (any count).
fn big_number(s: &[u8]) -> bool {
    let digits = s.strip_prefix(b"-").or_else(|| s.strip_prefix(b"+")).unwrap_or(s);
    !digits.is_empty() && digits.iter().all(u8::is_ascii_digit)
}

/// The byte ranges of the elements of a complete array reply; `None` if it is not an array.
pub fn array_elements(reply: &[u8]) -> Option<Vec<Range<usize>>> {
    if reply.first() != Some(&b'*') {
        return None;
    }
    aggregate_elements(reply)
}

/// As [`array_elements`], for an array or a RESP3 push (`>`), whose layout is the same.
pub fn aggregate_elements(reply: &[u8]) -> Option<Vec<Range<usize>>> {
    if !matches!(reply.first(), Some(b'*' | b'>')) {
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
    }

    /// Scan `r` whole, and cut at every point (resuming the same state): each time the end is
    /// `r.len()`, and never before the last byte.
    fn frames_whole(r: &[u8]) {
        let mut s = ReplyScan::default();
        assert_eq!(
            scan_reply(r, &mut s),
            Ok(Some(r.len())),
            "{:?}",
            String::from_utf8_lossy(r)
        );
        for cut in 0..r.len() {
            let mut s = ReplyScan::default();
            assert_eq!(scan_reply(&r[..cut], &mut s), Ok(None), "{cut}");
            assert_eq!(scan_reply(r, &mut s), Ok(Some(r.len())), "{cut}");
        }
        // And followed by another reply, it stops at its own end.
        let mut two = r.to_vec();
        two.extend_from_slice(b"+next\r\n");
        assert_eq!(scan_reply(&two, &mut ReplyScan::default()), Ok(Some(r.len())));
    }

    #[test]
    fn resp3_types_each_frame_whole_and_split() {
        for r in [
            &b"%2\r\n+a\r\n:1\r\n+b\r\n*2\r\n:1\r\n:2\r\n"[..],
            b"%0\r\n",
            b"~3\r\n+a\r\n+b\r\n#t\r\n",
            b">3\r\n$10\r\ninvalidate\r\n*1\r\n$3\r\nfoo\r\n_\r\n",
            b"_\r\n",
            b"#f\r\n",
            b",3.14\r\n",
            b",-inf\r\n",
            b",1.5e10\r\n",
            b"(3492890328409238509324850943850943825024385\r\n",
            b"(-12\r\n",
            b"=15\r\ntxt:Some string\r\n",
            b"!21\r\nSYNTAX invalid syntax\r\n",
            b"$0\r\n\r\n",
            // An attribute is part of the reply it precedes, at the top and inside an aggregate.
            b"|1\r\n+key-popularity\r\n%2\r\n$1\r\na\r\n,0.19\r\n$1\r\nb\r\n,0.05\r\n*2\r\n:2039123\r\n:9543892\r\n",
            b"*2\r\n|1\r\n+ttl\r\n:3600\r\n+a\r\n:2\r\n",
            b"|0\r\n+OK\r\n",
        ] {
            frames_whole(r);
        }
        let mut s = ReplyScan::default();
        // An attribute alone is not a reply.
        assert_eq!(scan_reply(b"|1\r\n+a\r\n+b\r\n", &mut s), Ok(None));
        for bad in [
            &b"#x\r\n"[..],
            b"_x\r\n",
            b",1 2\r\n",
            b"(12a\r\n",
            b"=3\r\nabc\r\n",
            b"!-1\r\n",
            b"%-1\r\n",
            b"$3\r\nabcde\r\n",
            b":12\n",
            b"?3\r\n",
        ] {
            assert!(
                scan_reply(bad, &mut ReplyScan::default()).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn nesting_of_any_depth_scans_within_the_size_bound() {
        let depth = 8000;
        let mut r = "*1\r\n".repeat(depth);
        r.push_str("$5\r\nhello\r\n");
        frames_whole(r.as_bytes());
        let maps = "%1\r\n+k\r\n".repeat(depth) + ":1\r\n";
        assert_eq!(
            scan_reply(maps.as_bytes(), &mut ReplyScan::default()),
            Ok(Some(maps.len()))
        );
        // The same nesting over a limit is refused, and so is a count that cannot fit in it.
        let mut small = ReplyScan::with_limit(1000);
        assert!(matches!(
            scan_reply(r.as_bytes(), &mut small),
            Err(ReplyError::TooLarge { .. })
        ));
        assert!(matches!(
            scan_reply(b"*1000\r\n", &mut ReplyScan::with_limit(1000)),
            Err(ReplyError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_bulk_over_the_limit_is_refused_at_its_header() {
        let mut s = ReplyScan::with_limit(1 << 20);
        assert_eq!(
            scan_reply(b"$999999999999\r\n", &mut s),
            Err(ReplyError::TooLarge {
                declared: 999_999_999_999 + 17,
                limit: 1 << 20
            })
        );
        let mut s = ReplyScan::default();
        assert!(matches!(
            scan_reply(b"*2\r\n$1\r\na\r\n$999999999999\r\n", &mut s),
            Err(ReplyError::TooLarge { .. })
        ));
        let mut s = ReplyScan::default();
        assert_eq!(scan_reply(b"$100\r\nabc", &mut s), Ok(None));
        assert_eq!(s.needs(), 108, "the whole bulk and its CRLF");
    }
}
