//! memcache binary protocol: request parser, response encoder and response scanner (pure).
//!
//! Every packet is a 24-byte header followed by extras, key and value, whose lengths the header
//! gives. Requests parse into the header plus the ranges of those three parts in the caller's
//! buffer, so the session forwards the client's bytes untouched. The body length is checked
//! against the limit when the header arrives, before the body is buffered. Responses are
//! scanned, not decoded: the upstream needs to know where a reply ends and whether it answers
//! the request it was sent for (same opcode, same opaque).

use crate::protocol::{Need, Parse, ReplyError, MAX_VALUE_BYTES};
use bytes::{BufMut, Bytes, BytesMut};
use std::ops::Range;

/// Header length of every packet.
pub const HEADER: usize = 24;
/// First byte of a request: how a session tells a binary client from a text one.
pub const REQUEST_MAGIC: u8 = 0x80;
/// First byte of a response.
pub const RESPONSE_MAGIC: u8 = 0x81;
/// Largest body (extras + key + value) accepted in a request or a reply.
pub const MAX_BODY: usize = MAX_VALUE_BYTES + 64 * 1024;

/// Opcodes, as memcached's `protocol_binary.h` numbers them.
pub mod op {
    pub const GET: u8 = 0x00;
    pub const SET: u8 = 0x01;
    pub const ADD: u8 = 0x02;
    pub const REPLACE: u8 = 0x03;
    pub const DELETE: u8 = 0x04;
    pub const INCREMENT: u8 = 0x05;
    pub const DECREMENT: u8 = 0x06;
    pub const QUIT: u8 = 0x07;
    pub const FLUSH: u8 = 0x08;
    pub const GETQ: u8 = 0x09;
    pub const NOOP: u8 = 0x0a;
    pub const VERSION: u8 = 0x0b;
    pub const GETK: u8 = 0x0c;
    pub const GETKQ: u8 = 0x0d;
    pub const APPEND: u8 = 0x0e;
    pub const PREPEND: u8 = 0x0f;
    pub const STAT: u8 = 0x10;
    pub const SETQ: u8 = 0x11;
    pub const ADDQ: u8 = 0x12;
    pub const REPLACEQ: u8 = 0x13;
    pub const DELETEQ: u8 = 0x14;
    pub const INCREMENTQ: u8 = 0x15;
    pub const DECREMENTQ: u8 = 0x16;
    pub const QUITQ: u8 = 0x17;
    pub const FLUSHQ: u8 = 0x18;
    pub const APPENDQ: u8 = 0x19;
    pub const PREPENDQ: u8 = 0x1a;
    pub const VERBOSITY: u8 = 0x1b;
    pub const TOUCH: u8 = 0x1c;
    pub const GAT: u8 = 0x1d;
    pub const GATQ: u8 = 0x1e;
    pub const SASL_LIST_MECHS: u8 = 0x20;
    pub const SASL_AUTH: u8 = 0x21;
    pub const SASL_STEP: u8 = 0x22;
    pub const GATK: u8 = 0x23;
    pub const GATKQ: u8 = 0x24;
}

/// Response statuses.
pub mod status {
    pub const OK: u16 = 0x0000;
    pub const KEY_NOT_FOUND: u16 = 0x0001;
    pub const KEY_EXISTS: u16 = 0x0002;
    pub const TOO_LARGE: u16 = 0x0003;
    pub const INVALID_ARGUMENTS: u16 = 0x0004;
    pub const NOT_STORED: u16 = 0x0005;
    pub const AUTH_ERROR: u16 = 0x0020;
    pub const UNKNOWN_COMMAND: u16 = 0x0081;
    pub const NOT_SUPPORTED: u16 = 0x0083;
    pub const INTERNAL_ERROR: u16 = 0x0084;
    pub const TEMPORARY_FAILURE: u16 = 0x0086;
}

/// What a request asks for, grouped by how legate serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// GET/GETK/GETQ/GETKQ, GAT/GATK/GATQ/GATKQ, TOUCH: one key, read (or touched).
    Read,
    /// SET/ADD/REPLACE/APPEND/PREPEND/DELETE/INCREMENT/DECREMENT (and quiet forms): one key.
    Write,
    Noop,
    Version,
    Stat,
    Flush,
    Quit,
    Verbosity,
    SaslListMechs,
    SaslAuth,
    SaslStep,
}

/// The request's kind, or `None` for an opcode legate does not know.
pub fn kind(opcode: u8) -> Option<Kind> {
    Some(match opcode {
        op::GET | op::GETQ | op::GETK | op::GETKQ | op::GAT | op::GATQ | op::GATK | op::GATKQ | op::TOUCH => Kind::Read,
        op::SET
        | op::ADD
        | op::REPLACE
        | op::SETQ
        | op::ADDQ
        | op::REPLACEQ
        | op::APPEND
        | op::PREPEND
        | op::APPENDQ
        | op::PREPENDQ
        | op::DELETE
        | op::DELETEQ
        | op::INCREMENT
        | op::DECREMENT
        | op::INCREMENTQ
        | op::DECREMENTQ => Kind::Write,
        op::NOOP => Kind::Noop,
        op::VERSION => Kind::Version,
        op::STAT => Kind::Stat,
        op::FLUSH | op::FLUSHQ => Kind::Flush,
        op::QUIT | op::QUITQ => Kind::Quit,
        op::VERBOSITY => Kind::Verbosity,
        op::SASL_LIST_MECHS => Kind::SaslListMechs,
        op::SASL_AUTH => Kind::SaslAuth,
        op::SASL_STEP => Kind::SaslStep,
        _ => return None,
    })
}

/// Quiet opcodes: the server answers only a failure (or, for gets, only a hit).
pub fn is_quiet(opcode: u8) -> bool {
    matches!(
        opcode,
        op::GETQ
            | op::GETKQ
            | op::GATQ
            | op::GATKQ
            | op::SETQ
            | op::ADDQ
            | op::REPLACEQ
            | op::APPENDQ
            | op::PREPENDQ
            | op::DELETEQ
            | op::INCREMENTQ
            | op::DECREMENTQ
            | op::QUITQ
            | op::FLUSHQ
    )
}

/// A packet header, request or response (`status` is the vbucket id in a request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub magic: u8,
    pub opcode: u8,
    pub key_len: u16,
    pub extras_len: u8,
    pub data_type: u8,
    pub status: u16,
    pub body_len: u32,
    pub opaque: u32,
    pub cas: u64,
}

impl Header {
    /// Read the header at the front of `buf` (which holds at least [`HEADER`] bytes).
    pub fn read(buf: &[u8]) -> Header {
        let u16_at = |i: usize| u16::from_be_bytes([buf[i], buf[i + 1]]);
        let u32_at = |i: usize| u32::from_be_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
        Header {
            magic: buf[0],
            opcode: buf[1],
            key_len: u16_at(2),
            extras_len: buf[4],
            data_type: buf[5],
            status: u16_at(6),
            body_len: u32_at(8),
            opaque: u32_at(12),
            cas: (u32_at(16) as u64) << 32 | u32_at(20) as u64,
        }
    }

    /// The whole packet's length.
    pub fn packet_len(&self) -> usize {
        HEADER + self.body_len as usize
    }

    /// Extras and key fit in the body.
    fn consistent(&self) -> bool {
        self.extras_len as usize + self.key_len as usize <= self.body_len as usize
    }
}

/// A parsed request: its header and where its parts are in the bytes it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub header: Header,
    pub kind: Kind,
    /// Bytes the request occupies.
    pub len: usize,
    pub extras: Range<usize>,
    pub key: Range<usize>,
    pub value: Range<usize>,
}

impl Request {
    /// A quiet opcode: only failures (or get hits) are answered.
    pub fn quiet(&self) -> bool {
        is_quiet(self.header.opcode)
    }
}

/// A request the parser refused: the status to answer with, and how much input to drop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    pub status: u16,
    /// The request's opcode and opaque, echoed in the error response.
    pub opcode: u8,
    pub opaque: u32,
    pub consumed: usize,
    /// The stream cannot be resynchronised: close after replying.
    pub fatal: bool,
}

impl RequestError {
    /// The error response to send the client.
    pub fn response(&self) -> Bytes {
        error_response(self.opcode, self.status, self.opaque, status_text(self.status))
    }
}

/// The text memcached sends with an error status.
pub fn status_text(status: u16) -> &'static str {
    match status {
        status::KEY_NOT_FOUND => "Not found",
        status::KEY_EXISTS => "Data exists for key.",
        status::TOO_LARGE => "Too large.",
        status::INVALID_ARGUMENTS => "Invalid arguments",
        status::NOT_STORED => "Not stored.",
        status::AUTH_ERROR => "Auth failure.",
        status::UNKNOWN_COMMAND => "Unknown command",
        status::NOT_SUPPORTED => "Not supported",
        status::TEMPORARY_FAILURE => "Temporary failure",
        _ => "Internal error",
    }
}

/// Parse one request from the front of `buf`.
///
/// # Errors
/// A [`RequestError`] carries the status to answer with and how much input to drop; a body
/// longer than [`MAX_BODY`] or a first byte that is not [`REQUEST_MAGIC`] is fatal.
pub fn parse_request(buf: &[u8]) -> Result<Parse<Request>, RequestError> {
    if buf.len() < HEADER {
        return Ok(Parse::Incomplete(Need::Bytes(HEADER)));
    }
    let h = Header::read(buf);
    let refuse = |status, consumed, fatal| RequestError {
        status,
        opcode: h.opcode,
        opaque: h.opaque,
        consumed,
        fatal,
    };
    if h.magic != REQUEST_MAGIC {
        return Err(refuse(status::INVALID_ARGUMENTS, buf.len(), true));
    }
    if h.body_len as usize > MAX_BODY {
        // Refused at the header: the body is never buffered.
        return Err(refuse(status::TOO_LARGE, buf.len(), true));
    }
    let len = h.packet_len();
    if buf.len() < len {
        return Ok(Parse::Incomplete(Need::Bytes(len)));
    }
    if !h.consistent() || h.data_type != 0 {
        return Err(refuse(status::INVALID_ARGUMENTS, len, false));
    }
    let Some(kind) = kind(h.opcode) else {
        return Err(refuse(status::UNKNOWN_COMMAND, len, false));
    };
    let extras = HEADER..HEADER + h.extras_len as usize;
    let key = extras.end..extras.end + h.key_len as usize;
    let value = key.end..len;
    let (e, k, v) = (extras.len(), key.len(), value.len());
    // The shapes memcached accepts (its process_bin_* checks), so a request legate forwards is
    // one the server understands and a bad one is answered here.
    let shape_ok = match h.opcode {
        op::GET | op::GETQ | op::GETK | op::GETKQ | op::DELETE | op::DELETEQ => e == 0 && k > 0 && v == 0,
        op::GAT | op::GATQ | op::GATK | op::GATKQ | op::TOUCH => e == 4 && k > 0 && v == 0,
        op::SET | op::ADD | op::REPLACE | op::SETQ | op::ADDQ | op::REPLACEQ => e == 8 && k > 0,
        op::APPEND | op::PREPEND | op::APPENDQ | op::PREPENDQ => e == 0 && k > 0,
        op::INCREMENT | op::DECREMENT | op::INCREMENTQ | op::DECREMENTQ => e == 20 && k > 0 && v == 0,
        op::FLUSH | op::FLUSHQ => (e == 0 || e == 4) && k == 0 && v == 0,
        op::VERBOSITY => e == 4 && k == 0 && v == 0,
        op::NOOP | op::VERSION | op::QUIT | op::QUITQ | op::SASL_LIST_MECHS => e == 0 && k == 0 && v == 0,
        op::STAT => e == 0 && v == 0,
        op::SASL_AUTH | op::SASL_STEP => e == 0 && k > 0,
        _ => true,
    };
    if !shape_ok {
        return Err(refuse(status::INVALID_ARGUMENTS, len, false));
    }
    if matches!(kind, Kind::Read | Kind::Write) && k > super::MAX_KEY_BYTES {
        return Err(refuse(status::INVALID_ARGUMENTS, len, false));
    }
    Ok(Parse::Complete(Request {
        header: h,
        kind,
        len,
        extras,
        key,
        value,
    }))
}

/// Encode a packet: a request (`magic` [`REQUEST_MAGIC`], `status` is the vbucket) or a
/// response.
#[allow(clippy::too_many_arguments)]
pub fn encode(
    out: &mut BytesMut,
    magic: u8,
    opcode: u8,
    status: u16,
    opaque: u32,
    cas: u64,
    extras: &[u8],
    key: &[u8],
    value: &[u8],
) {
    let body = extras.len() + key.len() + value.len();
    out.reserve(HEADER + body);
    out.put_u8(magic);
    out.put_u8(opcode);
    out.put_u16(key.len() as u16);
    out.put_u8(extras.len() as u8);
    out.put_u8(0);
    out.put_u16(status);
    out.put_u32(body as u32);
    out.put_u32(opaque);
    out.put_u64(cas);
    out.put_slice(extras);
    out.put_slice(key);
    out.put_slice(value);
}

/// A response with no extras or key.
pub fn response(opcode: u8, status: u16, opaque: u32, value: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(HEADER + value.len());
    encode(&mut b, RESPONSE_MAGIC, opcode, status, opaque, 0, &[], &[], value);
    b.freeze()
}

/// An error response carrying its message, as memcached sends them.
pub fn error_response(opcode: u8, status: u16, opaque: u32, message: &str) -> Bytes {
    response(opcode, status, opaque, message.as_bytes())
}

/// A request with no extras, key or value (NOOP, VERSION, ...), or with a key only (STAT).
pub fn simple_request(opcode: u8, opaque: u32, key: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(HEADER + key.len());
    encode(&mut b, REQUEST_MAGIC, opcode, 0, opaque, 0, &[], key, &[]);
    b.freeze()
}

/// How the reply to a forwarded request ends, and what it must echo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyFrame {
    pub opcode: u8,
    pub opaque: u32,
    pub shape: ReplyShape,
}

/// The packets a request is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyShape {
    /// Exactly one response.
    One,
    /// A quiet request followed by the NOOP legate appends (same opaque): at most one
    /// response, then the NOOP's.
    Quiet,
    /// STAT: responses up to one with an empty key and body (or an error).
    Stat,
}

/// Progress and limit of [`scan_reply`]: replies over `limit` bytes are refused at the header
/// that makes them so, before their body is buffered.
#[derive(Debug, Clone)]
pub struct ReplyScan {
    limit: usize,
    need: usize,
}

impl Default for ReplyScan {
    fn default() -> Self {
        ReplyScan::with_limit(crate::protocol::DEFAULT_MAX_REPLY_BYTES)
    }
}

impl ReplyScan {
    /// A scanner refusing replies over `limit` bytes.
    pub fn with_limit(limit: usize) -> Self {
        ReplyScan { limit, need: 0 }
    }

    /// Bytes the reply being scanned is known to need (0 when not known yet).
    pub fn needs(&self) -> usize {
        self.need
    }
}

/// Find the end of the reply to `frame` at the front of `buf`; `None` until it is complete.
/// Only headers are read, so a partly received value is never scanned twice.
///
/// # Errors
/// The bytes are not a response, or not the response to this request (a server reply that
/// does not fit its request: the connection must be closed), or the reply is over the limit.
pub fn scan_reply(buf: &[u8], frame: ReplyFrame, scan: &mut ReplyScan) -> Result<Option<usize>, ReplyError> {
    let bad = |why: &'static str| Err(ReplyError::Malformed(why));
    let mut at = 0;
    let mut answered = false;
    scan.need = 0;
    loop {
        if buf.len() - at < HEADER {
            return Ok(None);
        }
        let h = Header::read(&buf[at..]);
        if h.magic != RESPONSE_MAGIC {
            return bad("not a memcache binary response");
        }
        if !h.consistent() {
            return bad("memcache binary response with a bad body length");
        }
        if h.opaque != frame.opaque {
            return bad("memcache binary response whose opaque does not match the request");
        }
        let end = at + h.packet_len();
        // Each packet within the protocol's own bound, the whole reply within the pool's.
        let limit = scan.limit.min(at + HEADER + MAX_BODY);
        if end > limit {
            return Err(ReplyError::TooLarge {
                declared: end as u64,
                limit,
            });
        }
        let last = match frame.shape {
            ReplyShape::One | ReplyShape::Stat if h.opcode != frame.opcode => {
                return bad("memcache binary response whose opcode does not match the request")
            }
            ReplyShape::One => true,
            ReplyShape::Stat => h.status != status::OK || h.body_len == 0,
            ReplyShape::Quiet if h.opcode == op::NOOP => true,
            ReplyShape::Quiet if h.opcode == frame.opcode && !answered => {
                answered = true;
                false
            }
            ReplyShape::Quiet => return bad("memcache binary response whose opcode does not match the request"),
        };
        if buf.len() < end {
            scan.need = end;
            return Ok(None);
        }
        if last {
            return Ok(Some(end));
        }
        at = end;
    }
}

/// The packets of a complete reply: each one's header and the range of its key and value.
pub fn packets(reply: &[u8]) -> Vec<(Header, Range<usize>, Range<usize>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while reply.len() - at >= HEADER {
        let h = Header::read(&reply[at..]);
        let end = at + h.packet_len();
        if end > reply.len() || !h.consistent() {
            break;
        }
        let key = at + HEADER + h.extras_len as usize;
        let key = key..key + h.key_len as usize;
        out.push((h, key.clone(), key.end..end));
        at = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(opcode: u8, opaque: u32, extras: &[u8], key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut b = BytesMut::new();
        encode(&mut b, REQUEST_MAGIC, opcode, 0, opaque, 7, extras, key, value);
        b.to_vec()
    }

    #[test]
    fn set_parses_into_its_parts() {
        let b = req(op::SET, 9, &[0; 8], b"key", b"value");
        for cut in 0..b.len() {
            assert!(matches!(parse_request(&b[..cut]), Ok(Parse::Incomplete(_))), "{cut}");
        }
        let Ok(Parse::Complete(r)) = parse_request(&b) else {
            panic!()
        };
        assert_eq!(
            (r.kind, r.len, r.header.opaque, r.header.cas),
            (Kind::Write, b.len(), 9, 7)
        );
        assert_eq!(&b[r.key.clone()], b"key");
        assert_eq!(&b[r.value.clone()], b"value");
        assert_eq!(r.extras.len(), 8);
        assert!(!r.quiet());
    }

    #[test]
    fn bad_requests_get_statuses() {
        let e = parse_request(&req(op::GET, 1, &[], b"", b"")).unwrap_err();
        assert_eq!((e.status, e.fatal, e.consumed), (status::INVALID_ARGUMENTS, false, 24));
        let e = parse_request(&req(0x77, 2, &[], b"k", b"")).unwrap_err();
        assert_eq!((e.status, e.opaque), (status::UNKNOWN_COMMAND, 2));
        let mut big = req(op::SET, 3, &[0; 8], b"k", b"");
        big[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        let e = parse_request(&big).unwrap_err();
        assert_eq!((e.status, e.fatal), (status::TOO_LARGE, true));
        let e = parse_request(b"get foo bar baz qux quux\r\n").unwrap_err();
        assert!(e.fatal);
        let long = vec![b'k'; 251];
        let e = parse_request(&req(op::GETK, 4, &[], &long, b"")).unwrap_err();
        assert_eq!(e.status, status::INVALID_ARGUMENTS);
        let r = e.response();
        assert_eq!((r[0], r[1], Header::read(&r).status), (RESPONSE_MAGIC, op::GETK, 4));
    }

    #[test]
    fn replies_must_match_their_request() {
        let one = ReplyFrame {
            opcode: op::GET,
            opaque: 5,
            shape: ReplyShape::One,
        };
        let hit = response(op::GET, 0, 5, b"hello");
        for cut in 0..hit.len() {
            assert_eq!(scan_reply(&hit[..cut], one, &mut ReplyScan::default()), Ok(None));
        }
        assert_eq!(scan_reply(&hit, one, &mut ReplyScan::default()), Ok(Some(hit.len())));
        assert!(scan_reply(&response(op::GET, 0, 6, b""), one, &mut ReplyScan::default()).is_err());
        assert!(scan_reply(&response(op::SET, 0, 5, b""), one, &mut ReplyScan::default()).is_err());
        let quiet = ReplyFrame {
            opcode: op::GETQ,
            opaque: 5,
            shape: ReplyShape::Quiet,
        };
        let noop = response(op::NOOP, 0, 5, b"");
        assert_eq!(scan_reply(&noop, quiet, &mut ReplyScan::default()), Ok(Some(24)));
        let both = [&response(op::GETQ, 0, 5, b"v")[..], &noop].concat();
        assert_eq!(
            scan_reply(&both, quiet, &mut ReplyScan::default()),
            Ok(Some(both.len()))
        );
        let twice = [&response(op::GETQ, 0, 5, b"v")[..], &response(op::GETQ, 0, 5, b"v")].concat();
        assert!(scan_reply(&twice, quiet, &mut ReplyScan::default()).is_err());
        let stat = ReplyFrame {
            opcode: op::STAT,
            opaque: 1,
            shape: ReplyShape::Stat,
        };
        let mut s = BytesMut::new();
        encode(&mut s, RESPONSE_MAGIC, op::STAT, 0, 1, 0, &[], b"pid", b"1");
        encode(&mut s, RESPONSE_MAGIC, op::STAT, 0, 1, 0, &[], b"", b"");
        assert_eq!(scan_reply(&s[..30], stat, &mut ReplyScan::default()), Ok(None));
        assert_eq!(scan_reply(&s, stat, &mut ReplyScan::default()), Ok(Some(s.len())));
        assert_eq!(packets(&s).len(), 2);
    }

    #[test]
    fn replies_over_the_limit_are_refused_at_the_header() {
        let one = ReplyFrame {
            opcode: op::GET,
            opaque: 5,
            shape: ReplyShape::One,
        };
        let hit = response(op::GET, 0, 5, &[b'x'; 1000]);
        let mut scan = ReplyScan::with_limit(500);
        let header_only = scan_reply(&hit[..HEADER], one, &mut scan);
        assert!(
            matches!(header_only, Err(ReplyError::TooLarge { limit: 500, .. })),
            "{header_only:?}"
        );
        let mut scan = ReplyScan::with_limit(2000);
        assert_eq!(scan_reply(&hit[..HEADER], one, &mut scan), Ok(None));
        assert_eq!(scan.needs(), hit.len());
        let stat = ReplyFrame {
            opcode: op::STAT,
            opaque: 1,
            shape: ReplyShape::Stat,
        };
        let mut s = BytesMut::new();
        for _ in 0..10 {
            encode(&mut s, RESPONSE_MAGIC, op::STAT, 0, 1, 0, &[], b"name", &[b'v'; 100]);
        }
        let over = scan_reply(&s, stat, &mut ReplyScan::with_limit(1000));
        assert!(matches!(over, Err(ReplyError::TooLarge { .. })), "{over:?}");
    }
}
