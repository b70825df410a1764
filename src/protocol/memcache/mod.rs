//! memcache text protocol (classic and meta commands): request parser and reply scanner.
//!
//! Requests parse into offsets into the caller's buffer, so the session can hand on `Bytes`
//! slices of what it read. Replies are scanned, not decoded: the upstream only needs to know
//! where each one ends, which depends on the request's [`ReplyKind`].

pub mod binary;

use super::{find_lf, parse_i64, parse_u64, Need, Parse, MAX_LINE_BYTES, MAX_VALUE_BYTES};
use smallvec::SmallVec;
use std::ops::Range;

/// Longest key memcached accepts.
pub const MAX_KEY_BYTES: usize = 250;

/// A memcache command legate understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Get,
    Gets,
    Gat,
    Gats,
    Set,
    Add,
    Replace,
    Append,
    Prepend,
    Cas,
    Incr,
    Decr,
    Delete,
    Touch,
    MetaGet,
    MetaSet,
    MetaDelete,
    MetaArithmetic,
    MetaDebug,
    MetaNoop,
    Version,
    Verbosity,
    FlushAll,
    /// `stats [arg]`: answered by the proxy from every server's stats; the argument, if any,
    /// is the request's one "key".
    Stats,
    Quit,
}

impl Command {
    /// Retrieval commands answer with VALUE blocks and END, and may carry many keys.
    pub fn is_retrieval(self) -> bool {
        matches!(self, Command::Get | Command::Gets | Command::Gat | Command::Gats)
    }

    /// Meta commands answer with meta reply lines.
    pub fn is_meta(self) -> bool {
        matches!(
            self,
            Command::MetaGet
                | Command::MetaSet
                | Command::MetaDelete
                | Command::MetaArithmetic
                | Command::MetaDebug
                | Command::MetaNoop
        )
    }
}

/// A parsed request: offsets into the bytes it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub command: Command,
    /// Bytes the request occupies (line plus data block).
    pub len: usize,
    /// The key(s), in request order.
    pub keys: SmallVec<[Range<usize>; 2]>,
    /// For gat/gats: the exptime token, needed to rebuild split requests.
    pub exptime: Option<Range<usize>>,
    /// `noreply` on a classic command: the server sends nothing back.
    pub noreply: bool,
    /// `q` flag on a meta command: the server may or may not answer.
    pub quiet: bool,
}

impl Request {
    /// How the server's answer to this request ends.
    pub fn reply_kind(&self) -> ReplyKind {
        if self.noreply {
            ReplyKind::None
        } else if self.quiet {
            ReplyKind::MetaQuiet
        } else {
            self.command.reply_kind()
        }
    }
}

/// A request the parser refused, with the reply to send in its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    /// The reply line (with CRLF) to send the client in this request's slot.
    pub reply: &'static str,
    /// Bytes to discard (the bad line, and its data block when the length was known).
    pub consumed: usize,
    /// The stream cannot be resynchronised: close after replying.
    pub fatal: bool,
}

fn bad(reply: &'static str, consumed: usize) -> RequestError {
    RequestError {
        reply,
        consumed,
        fatal: false,
    }
}

/// memcached's reply to an unknown command.
pub const ERROR: &str = "ERROR\r\n";
const BAD_FORMAT: &str = "CLIENT_ERROR bad command line format\r\n";
const BAD_EXPTIME: &str = "CLIENT_ERROR invalid exptime argument\r\n";
const BAD_DELTA: &str = "CLIENT_ERROR invalid numeric delta argument\r\n";
const BAD_CHUNK: &str = "CLIENT_ERROR bad data chunk\r\n";
const TOO_LARGE: &str = "CLIENT_ERROR object too large for cache\r\n";
const LINE_TOO_LONG: &str = "CLIENT_ERROR line too long\r\n";
const KEY_TOO_LONG: &str = "CLIENT_ERROR key too long (max 250 bytes)\r\n";

/// Parse one request from the front of `buf`.
///
/// # Errors
/// A [`RequestError`] carries the reply to send and how much input to drop.
pub fn parse_request(buf: &[u8]) -> Result<Parse<Request>, RequestError> {
    let Some(lf) = find_lf(buf) else {
        if buf.len() > MAX_LINE_BYTES {
            return Err(RequestError {
                reply: LINE_TOO_LONG,
                consumed: buf.len(),
                fatal: true,
            });
        }
        return Ok(Parse::Incomplete(Need::Line));
    };
    if lf > MAX_LINE_BYTES {
        return Err(RequestError {
            reply: LINE_TOO_LONG,
            consumed: lf + 1,
            fatal: true,
        });
    }
    let line_len = lf + 1;
    let end = if lf > 0 && buf[lf - 1] == b'\r' { lf - 1 } else { lf };
    // Tokens as offsets into buf.
    let mut toks: SmallVec<[Range<usize>; 8]> = SmallVec::new();
    let mut i = 0;
    while i < end {
        while i < end && buf[i] == b' ' {
            i += 1;
        }
        let s = i;
        while i < end && buf[i] != b' ' {
            i += 1;
        }
        if i > s {
            toks.push(s..i);
        }
    }
    let Some(first) = toks.first() else {
        return Err(bad(ERROR, line_len));
    };
    let name = &buf[first.clone()];
    let tok = |n: usize| &buf[toks[n].clone()];
    let command = match name {
        b"get" => Command::Get,
        b"gets" => Command::Gets,
        b"gat" => Command::Gat,
        b"gats" => Command::Gats,
        b"set" => Command::Set,
        b"add" => Command::Add,
        b"replace" => Command::Replace,
        b"append" => Command::Append,
        b"prepend" => Command::Prepend,
        b"cas" => Command::Cas,
        b"incr" => Command::Incr,
        b"decr" => Command::Decr,
        b"delete" => Command::Delete,
        b"touch" => Command::Touch,
        b"mg" => Command::MetaGet,
        b"ms" => Command::MetaSet,
        b"md" => Command::MetaDelete,
        b"ma" => Command::MetaArithmetic,
        b"me" => Command::MetaDebug,
        b"mn" => Command::MetaNoop,
        b"version" => Command::Version,
        b"verbosity" => Command::Verbosity,
        b"flush_all" => Command::FlushAll,
        b"quit" => Command::Quit,
        b"stats" if toks.len() <= 2 => Command::Stats,
        _ => return Err(bad(ERROR, line_len)),
    };
    let mut req = Request {
        command,
        len: line_len,
        keys: SmallVec::new(),
        exptime: None,
        noreply: false,
        quiet: false,
    };
    let check_key = |r: &Range<usize>| -> Result<(), RequestError> {
        if r.len() > MAX_KEY_BYTES {
            Err(bad(KEY_TOO_LONG, line_len))
        } else {
            Ok(())
        }
    };
    let n = toks.len();
    let noreply_at = |at: usize| n > at && tok(at) == b"noreply";
    match command {
        Command::Get | Command::Gets => {
            if n < 2 {
                return Err(bad(ERROR, line_len));
            }
            for t in &toks[1..] {
                check_key(t)?;
                req.keys.push(t.clone());
            }
        }
        Command::Gat | Command::Gats => {
            if n < 3 {
                return Err(bad(ERROR, line_len));
            }
            if parse_i64(tok(1)).is_none() {
                return Err(bad(BAD_EXPTIME, line_len));
            }
            req.exptime = Some(toks[1].clone());
            for t in &toks[2..] {
                check_key(t)?;
                req.keys.push(t.clone());
            }
        }
        Command::Set | Command::Add | Command::Replace | Command::Append | Command::Prepend | Command::Cas => {
            // <cmd> <key> <flags> <exptime> <bytes> [cas] [noreply]
            let base = if command == Command::Cas { 6 } else { 5 };
            if n < base || n > base + 1 {
                return Err(bad(ERROR, line_len));
            }
            let bytes = parse_u64(tok(4));
            let header_ok = parse_u64(tok(2)).is_some_and(|f| f <= u32::MAX as u64)
                && parse_i64(tok(3)).is_some()
                && (command != Command::Cas || parse_u64(tok(5)).is_some())
                && (n == base || tok(base) == b"noreply");
            let Some(bytes) = bytes.filter(|_| header_ok) else {
                return Err(bad(BAD_FORMAT, line_len));
            };
            if bytes as usize > MAX_VALUE_BYTES {
                return Err(RequestError {
                    reply: TOO_LARGE,
                    consumed: line_len,
                    fatal: true,
                });
            }
            let total = line_len + bytes as usize + 2;
            if buf.len() < total {
                return Ok(Parse::Incomplete(Need::Bytes(total)));
            }
            if &buf[total - 2..total] != b"\r\n" {
                return Err(bad(BAD_CHUNK, total));
            }
            check_key(&toks[1]).map_err(|e| RequestError { consumed: total, ..e })?;
            req.keys.push(toks[1].clone());
            req.noreply = n == base + 1;
            req.len = total;
        }
        Command::Incr | Command::Decr => {
            if !(n == 3 || (n == 4 && noreply_at(3))) {
                return Err(bad(ERROR, line_len));
            }
            if parse_u64(tok(2)).is_none() {
                return Err(bad(BAD_DELTA, line_len));
            }
            check_key(&toks[1])?;
            req.keys.push(toks[1].clone());
            req.noreply = n == 4;
        }
        Command::Delete => {
            // delete <key> [0] [noreply]
            let ok = match n {
                2 => true,
                3 => noreply_at(2) || tok(2) == b"0",
                4 => tok(2) == b"0" && noreply_at(3),
                _ => false,
            };
            if !ok {
                return Err(bad(BAD_FORMAT, line_len));
            }
            check_key(&toks[1])?;
            req.keys.push(toks[1].clone());
            req.noreply = noreply_at(n - 1);
        }
        Command::Touch => {
            if !(n == 3 || (n == 4 && noreply_at(3))) {
                return Err(bad(ERROR, line_len));
            }
            if parse_i64(tok(2)).is_none() {
                return Err(bad(BAD_EXPTIME, line_len));
            }
            check_key(&toks[1])?;
            req.keys.push(toks[1].clone());
            req.noreply = n == 4;
        }
        Command::MetaGet | Command::MetaDelete | Command::MetaArithmetic | Command::MetaDebug => {
            if n < 2 {
                return Err(bad(ERROR, line_len));
            }
            check_key(&toks[1])?;
            req.keys.push(toks[1].clone());
            req.quiet = command != Command::MetaDebug && toks[2..].iter().any(|t| &buf[t.clone()] == b"q");
        }
        Command::MetaSet => {
            // ms <key> <datalen> <flags>*
            if n < 3 {
                return Err(bad(BAD_FORMAT, line_len));
            }
            let Some(bytes) = parse_u64(tok(2)) else {
                return Err(bad(BAD_FORMAT, line_len));
            };
            if bytes as usize > MAX_VALUE_BYTES {
                return Err(RequestError {
                    reply: TOO_LARGE,
                    consumed: line_len,
                    fatal: true,
                });
            }
            let total = line_len + bytes as usize + 2;
            if buf.len() < total {
                return Ok(Parse::Incomplete(Need::Bytes(total)));
            }
            if &buf[total - 2..total] != b"\r\n" {
                return Err(bad(BAD_CHUNK, total));
            }
            check_key(&toks[1]).map_err(|e| RequestError { consumed: total, ..e })?;
            req.keys.push(toks[1].clone());
            req.quiet = toks[3..].iter().any(|t| &buf[t.clone()] == b"q");
            req.len = total;
        }
        Command::Verbosity => {
            // verbosity [level] [noreply]; memcached takes `verbosity noreply` too.
            if !(n == 2 || (n == 3 && noreply_at(2))) {
                return Err(bad(ERROR, line_len));
            }
            req.noreply = noreply_at(n - 1);
        }
        Command::FlushAll => {
            // flush_all [delay] [noreply]
            let ok = match n {
                1 => true,
                2 => noreply_at(1) || parse_i64(tok(1)).is_some(),
                3 => parse_i64(tok(1)).is_some() && noreply_at(2),
                _ => false,
            };
            if !ok {
                return Err(bad(BAD_FORMAT, line_len));
            }
            req.noreply = noreply_at(n - 1);
        }
        // memcached answers `quit` with arguments as an unknown command.
        Command::Quit if n > 1 => return Err(bad(ERROR, line_len)),
        Command::Stats => req.keys.extend(toks.get(1).cloned()),
        Command::MetaNoop | Command::Version | Command::Quit => {}
    }
    Ok(Parse::Complete(req))
}

/// How a server's reply to a request ends, and which reply lines the request allows.
///
/// Every kind also admits memcached's error lines (`ERROR`, `CLIENT_ERROR …`, `SERVER_ERROR …`).
/// Anything else means the stream is out of step with the requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// No reply (classic `noreply`).
    None,
    /// One line of any known reply (when the request's command says no more).
    Line,
    /// Storage commands: STORED, NOT_STORED, EXISTS or NOT_FOUND.
    Storage,
    /// incr/decr: the new value or NOT_FOUND.
    Arithmetic,
    /// delete: DELETED or NOT_FOUND.
    Delete,
    /// touch: TOUCHED or NOT_FOUND.
    Touch,
    /// flush_all, verbosity: OK.
    Ok,
    /// version: `VERSION <text>`.
    Version,
    /// Zero or more VALUE blocks, then END (or one error line).
    Values,
    /// One meta reply (HD, NS, EX, NF, EN, ME, or VA with its data block).
    Meta,
    /// A quiet meta request followed by the `mn` legate appends: meta replies up to and
    /// including `MN`.
    MetaQuiet,
}

impl Command {
    /// The reply kind of this command when it expects a reply and is not quiet.
    fn reply_kind(self) -> ReplyKind {
        match self {
            Command::Get | Command::Gets | Command::Gat | Command::Gats => ReplyKind::Values,
            Command::Set | Command::Add | Command::Replace | Command::Append | Command::Prepend | Command::Cas => {
                ReplyKind::Storage
            }
            Command::Incr | Command::Decr => ReplyKind::Arithmetic,
            Command::Delete => ReplyKind::Delete,
            Command::Touch => ReplyKind::Touch,
            Command::Verbosity | Command::FlushAll => ReplyKind::Ok,
            Command::Version => ReplyKind::Version,
            c if c.is_meta() => ReplyKind::Meta,
            _ => ReplyKind::Line,
        }
    }
}

pub use super::ReplyError;

/// Resume point of a partly received reply, so a large multi-get is not re-scanned per read;
/// and the largest reply accepted.
#[derive(Debug, Clone)]
pub struct ReplyScan {
    pos: usize,
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
        ReplyScan { pos: 0, need: 0, limit }
    }

    /// Forget progress: the next reply starts at the front of the buffer.
    pub fn reset(&mut self) {
        self.pos = 0;
        self.need = 0;
    }

    /// After an incomplete scan: how many bytes the buffer must hold before the reply can be
    /// complete, when a header said so (0 when only a line is awaited).
    pub fn needs(&self) -> usize {
        self.need
    }
}

fn is_error_line(line: &[u8]) -> bool {
    line == b"ERROR"
        || line.starts_with(b"ERROR ")
        || line.starts_with(b"CLIENT_ERROR ")
        || line.starts_with(b"SERVER_ERROR ")
}

fn is_number(line: &[u8]) -> bool {
    parse_u64(line).is_some()
}

/// A line one of the single-line kinds admits.
fn line_fits(kind: ReplyKind, line: &[u8]) -> bool {
    if is_error_line(line) {
        return true;
    }
    match kind {
        ReplyKind::Storage => matches!(line, b"STORED" | b"NOT_STORED" | b"EXISTS" | b"NOT_FOUND"),
        ReplyKind::Arithmetic => line == b"NOT_FOUND" || is_number(line),
        ReplyKind::Delete => matches!(line, b"DELETED" | b"NOT_FOUND"),
        ReplyKind::Touch => matches!(line, b"TOUCHED" | b"NOT_FOUND"),
        ReplyKind::Ok => line == b"OK",
        ReplyKind::Version => line.starts_with(b"VERSION "),
        _ => {
            matches!(
                line,
                b"STORED" | b"NOT_STORED" | b"EXISTS" | b"NOT_FOUND" | b"DELETED" | b"TOUCHED" | b"OK"
            ) || is_number(line)
                || line.starts_with(b"VERSION ")
        }
    }
}

/// The `<bytes>` of a `VALUE <key> <flags> <bytes> [<cas>]` line, checked field by field.
fn value_line(line: &[u8]) -> Option<u64> {
    let mut t = line.split(|&c| c == b' ');
    let (_, key, flags, bytes) = (t.next()?, t.next()?, t.next()?, t.next()?);
    let cas = t.next();
    let key_ok = !key.is_empty() && key.len() <= MAX_KEY_BYTES && key.iter().all(|&c| c > b' ' && c != 0x7f);
    let ok = key_ok
        && parse_u64(flags).is_some_and(|f| f <= u32::MAX as u64)
        && cas.is_none_or(|c| parse_u64(c).is_some())
        && t.next().is_none();
    ok.then(|| parse_u64(bytes)).flatten()
}

/// The size of a `VA <size> <flags>*` line, or `None` when the line is not a meta reply. `Some(None)`:
/// a meta reply without a data block.
fn meta_line(line: &[u8]) -> Option<Option<u64>> {
    let mut t = line.split(|&c| c == b' ');
    let code = t.next()?;
    let size = match code {
        b"VA" => Some(parse_u64(t.next()?)?),
        b"HD" | b"NS" | b"EX" | b"NF" | b"EN" => None,
        // The debug reply: `ME <key> <name>=<value>*`.
        b"ME" => return t.next().is_some_and(|k| !k.is_empty()).then_some(None),
        _ => return None,
    };
    // Flags: a letter, then its token.
    t.all(|f| f.first().is_some_and(u8::is_ascii_alphabetic))
        .then_some(size)
}

/// Find the end of the reply at the front of `buf`. Returns the reply's length when complete.
///
/// # Errors
/// The bytes cannot be a reply to a request of this kind ([`ReplyError::Malformed`]), or a
/// header declares more than the scanner's limit ([`ReplyError::TooLarge`]).
pub fn scan_reply(buf: &[u8], kind: ReplyKind, scan: &mut ReplyScan) -> Result<Option<usize>, ReplyError> {
    loop {
        let at = scan.pos;
        let Some(lf) = find_lf(&buf[at..]) else {
            if buf.len() - at > MAX_LINE_BYTES {
                return Err(ReplyError::Malformed("line too long"));
            }
            scan.need = 0;
            return Ok(None);
        };
        if lf == 0 || buf[at + lf - 1] != b'\r' {
            return Err(ReplyError::Malformed("line not terminated by CRLF"));
        }
        let line = &buf[at..at + lf - 1];
        let after_line = at + lf + 1;
        if after_line > scan.limit {
            return Err(ReplyError::TooLarge {
                declared: after_line as u64,
                limit: scan.limit,
            });
        }
        // A data block of `n` bytes and its CRLF after the line; its end when complete.
        let block = |n: u64, scan: &mut ReplyScan| -> Result<Option<usize>, ReplyError> {
            let end = (after_line as u64).saturating_add(n).saturating_add(2);
            if end > scan.limit as u64 {
                return Err(ReplyError::TooLarge {
                    declared: end,
                    limit: scan.limit,
                });
            }
            let end = end as usize;
            if buf.len() < end {
                scan.need = end;
                return Ok(None);
            }
            if &buf[end - 2..end] != b"\r\n" {
                return Err(ReplyError::Malformed("data block not terminated by CRLF"));
            }
            Ok(Some(end))
        };
        match kind {
            ReplyKind::None => return Err(ReplyError::Malformed("reply to a noreply request")),
            ReplyKind::Values => {
                if line.starts_with(b"VALUE ") {
                    let n = value_line(line).ok_or(ReplyError::Malformed("bad VALUE line"))?;
                    match block(n, scan)? {
                        Some(end) => scan.pos = end,
                        None => return Ok(None),
                    }
                    continue;
                }
                if line == b"END" || is_error_line(line) {
                    scan.reset();
                    return Ok(Some(after_line));
                }
                return Err(ReplyError::Malformed("expected VALUE or END"));
            }
            ReplyKind::Meta | ReplyKind::MetaQuiet => {
                if kind == ReplyKind::MetaQuiet && line == b"MN" {
                    scan.reset();
                    return Ok(Some(after_line));
                }
                let end = if is_error_line(line) {
                    after_line
                } else {
                    match meta_line(line).ok_or(ReplyError::Malformed("expected a meta reply"))? {
                        None => after_line,
                        Some(n) => match block(n, scan)? {
                            Some(end) => end,
                            None => return Ok(None),
                        },
                    }
                };
                if kind == ReplyKind::Meta {
                    scan.reset();
                    return Ok(Some(end));
                }
                scan.pos = end;
            }
            single => {
                if !line_fits(single, line) {
                    return Err(ReplyError::Malformed("not a reply this request allows"));
                }
                scan.reset();
                return Ok(Some(after_line));
            }
        }
    }
}

/// The `<bytes>` field of a `VALUE <key> <flags> <bytes> [cas]` line.
fn value_len(line: &[u8], field: usize) -> Option<usize> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let t = line.split(|&c| c == b' ').filter(|t| !t.is_empty()).nth(field)?;
    parse_u64(t).map(|v| v as usize)
}

/// One VALUE block of a retrieval reply: its key and the whole block's byte range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueBlock {
    pub key: Range<usize>,
    pub block: Range<usize>,
}

/// Split a complete retrieval reply into VALUE blocks; `None` if it is an error line instead.
pub fn value_blocks(reply: &[u8]) -> Option<Vec<ValueBlock>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < reply.len() {
        let lf = find_lf(&reply[at..])? + at;
        let line = &reply[at..lf];
        if !line.starts_with(b"VALUE ") {
            return if line.starts_with(b"END") { Some(out) } else { None };
        }
        let n = value_len(line, 3)?;
        let key_start = at + 6;
        let key_end = key_start + reply[key_start..lf].iter().position(|&c| c == b' ')?;
        let end = lf + 1 + n + 2;
        out.push(ValueBlock {
            key: key_start..key_end,
            block: at..end,
        });
        at = end;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(buf: &[u8]) -> Request {
        match parse_request(buf) {
            Ok(Parse::Complete(r)) => r,
            other => panic!("{:?} -> {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    #[test]
    fn get_many_keys() {
        let b = b"get a bb ccc\r\nrest";
        let r = ok(b);
        assert_eq!(r.len, 14);
        let keys: Vec<_> = r.keys.iter().map(|k| &b[k.clone()]).collect();
        assert_eq!(keys, [&b"a"[..], b"bb", b"ccc"]);
        assert_eq!(r.reply_kind(), ReplyKind::Values);
    }

    #[test]
    fn set_waits_for_its_data_then_checks_it() {
        assert_eq!(
            parse_request(b"set k 0 0 5\r\nhel"),
            Ok(Parse::Incomplete(Need::Bytes(20)))
        );
        let r = ok(b"set k 0 0 5 noreply\r\nhello\r\n");
        assert!(r.noreply);
        assert_eq!(r.reply_kind(), ReplyKind::None);
        let e = parse_request(b"set k 0 0 5\r\nhelloXX").unwrap_err();
        assert_eq!((e.reply, e.consumed, e.fatal), (BAD_CHUNK, 20, false));
    }

    #[test]
    fn bad_requests_get_memcached_errors() {
        assert_eq!(parse_request(b"bogus\r\n").unwrap_err().reply, ERROR);
        assert_eq!(parse_request(b"get \r\n").unwrap_err().reply, ERROR);
        assert_eq!(parse_request(b"set k 0 0 -1\r\n").unwrap_err().reply, BAD_FORMAT);
        let long = format!("get {}\r\n", "k".repeat(251));
        assert_eq!(parse_request(long.as_bytes()).unwrap_err().reply, KEY_TOO_LONG);
        let e = parse_request(&vec![b'a'; 70_000]).unwrap_err();
        assert!(e.fatal);
        assert_eq!(
            parse_request(b"set k 0 0 999999999999\r\n").unwrap_err().reply,
            TOO_LARGE
        );
        assert_eq!(parse_request(b"incr k x\r\n").unwrap_err().reply, BAD_DELTA);
    }

    #[test]
    fn meta_quiet_flag() {
        let r = ok(b"mg foo v q\r\n");
        assert!(r.quiet);
        assert_eq!(r.reply_kind(), ReplyKind::MetaQuiet);
        let r = ok(b"ms foo 2 T0 q\r\nhi\r\n");
        assert!(r.quiet);
        assert_eq!(r.len, 19);
        assert_eq!(ok(b"mg foo v\r\n").reply_kind(), ReplyKind::Meta);
    }

    #[test]
    fn reply_scanning() {
        let mut s = ReplyScan::default();
        let v = b"VALUE a 0 5\r\nhello\r\nVALUE b 0 1\r\nx\r\nEND\r\n";
        for cut in 0..v.len() {
            assert_eq!(scan_reply(&v[..cut], ReplyKind::Values, &mut s), Ok(None), "{cut}");
        }
        assert_eq!(scan_reply(v, ReplyKind::Values, &mut s), Ok(Some(v.len())));
        let blocks = value_blocks(v).unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!(&v[blocks[1].key.clone()], b"b");
        assert_eq!(&v[blocks[1].block.clone()], b"VALUE b 0 1\r\nx\r\n");
        assert_eq!(scan_reply(b"STORED\r\nEND", ReplyKind::Line, &mut s), Ok(Some(8)));
        assert_eq!(scan_reply(b"VA 2 f1\r\nhi\r\n", ReplyKind::Meta, &mut s), Ok(Some(13)));
        assert_eq!(scan_reply(b"EN\r\nMN\r\n", ReplyKind::MetaQuiet, &mut s), Ok(Some(8)));
        assert_eq!(scan_reply(b"MN\r\n", ReplyKind::MetaQuiet, &mut s), Ok(Some(4)));
        assert!(scan_reply(b"HUH\r\n", ReplyKind::Values, &mut s).is_err());
    }

    #[test]
    fn each_request_admits_only_its_own_reply_lines() {
        let kind = |line: &str| ok(line.as_bytes()).reply_kind();
        let cases: [(ReplyKind, &[&str], &[&str]); 7] = [
            (
                kind("set k 0 0 1\r\nx\r\n"),
                &["STORED", "NOT_STORED", "EXISTS", "NOT_FOUND"],
                &["DELETED", "12", "END", "OK", "NOISE", "STORED "],
            ),
            (kind("incr k 1\r\n"), &["12", "NOT_FOUND"], &["STORED", "-1", "1 2"]),
            (kind("delete k\r\n"), &["DELETED", "NOT_FOUND"], &["STORED", "TOUCHED"]),
            (kind("touch k 1\r\n"), &["TOUCHED", "NOT_FOUND"], &["DELETED"]),
            (kind("flush_all\r\n"), &["OK"], &["STORED"]),
            (kind("version\r\n"), &["VERSION 1.6.21"], &["OK"]),
            (
                ReplyKind::Line,
                &["STORED", "7", "VERSION x", "OK"],
                &["NOISE", "VALUE"],
            ),
        ];
        for (kind, good, bad) in cases {
            for line in good
                .iter()
                .chain(&["ERROR", "CLIENT_ERROR bad", "SERVER_ERROR out of memory"])
            {
                let r = format!("{line}\r\n");
                assert_eq!(
                    scan_reply(r.as_bytes(), kind, &mut ReplyScan::default()),
                    Ok(Some(r.len())),
                    "{kind:?} {line}"
                );
            }
            for line in bad {
                let r = format!("{line}\r\n");
                assert!(
                    scan_reply(r.as_bytes(), kind, &mut ReplyScan::default()).is_err(),
                    "{kind:?} admitted {line:?}"
                );
            }
        }
        // The garbage and the extra line of the issue: refused, never framed as a reply.
        let mut s = ReplyScan::default();
        assert!(scan_reply(b"NOISE\r\nSTORED\r\n", ReplyKind::Storage, &mut s).is_err());
        assert!(scan_reply(b"\x00\xff garbage\r\n", ReplyKind::Storage, &mut s).is_err());
        assert!(scan_reply(b"STORED\n", ReplyKind::Storage, &mut s).is_err());
    }

    #[test]
    fn values_and_meta_replies_are_checked_field_by_field() {
        let bad_values: [&[u8]; 5] = [
            b"VALUE k 0 5\r\nhelloXXEND\r\n",
            b"VALUE k x 5\r\nhello\r\nEND\r\n",
            b"VALUE k 0 5 1 2\r\nhello\r\nEND\r\n",
            b"VALUE k 0 1\r\nx\r\nSTORED\r\n",
            b"VALUE  0 1\r\nx\r\nEND\r\n",
        ];
        for r in bad_values {
            assert!(
                scan_reply(r, ReplyKind::Values, &mut ReplyScan::default()).is_err(),
                "{:?}",
                String::from_utf8_lossy(r)
            );
        }
        let gets = b"VALUE k 0 1 99\r\nx\r\nEND\r\n";
        assert_eq!(
            scan_reply(gets, ReplyKind::Values, &mut ReplyScan::default()),
            Ok(Some(gets.len()))
        );
        for good in [
            &b"HD\r\n"[..],
            b"HD c5 t-1\r\n",
            b"NS\r\n",
            b"EX\r\n",
            b"NF\r\n",
            b"EN\r\n",
            b"ME k exp=-1 la=1\r\n",
        ] {
            assert_eq!(
                scan_reply(good, ReplyKind::Meta, &mut ReplyScan::default()),
                Ok(Some(good.len()))
            );
        }
        for bad in [&b"MN\r\n"[..], b"XX\r\n", b"HD 5\r\n", b"VA x\r\n", b"VA 2\r\nhiXX"] {
            assert!(scan_reply(bad, ReplyKind::Meta, &mut ReplyScan::default()).is_err());
        }
        assert!(scan_reply(b"STORED\r\nMN\r\n", ReplyKind::MetaQuiet, &mut ReplyScan::default()).is_err());
    }

    #[test]
    fn a_value_over_the_limit_is_refused_at_its_header() {
        for (kind, r) in [
            (ReplyKind::Values, &b"VALUE k 0 999999999999\r\n"[..]),
            (ReplyKind::Meta, b"VA 999999999999 f\r\n"),
        ] {
            assert!(matches!(
                scan_reply(r, kind, &mut ReplyScan::default()),
                Err(ReplyError::TooLarge { .. })
            ));
        }
        // The limit counts the whole reply: the second value of a multi-get passes it.
        let mut s = ReplyScan::with_limit(40);
        assert!(matches!(
            scan_reply(b"VALUE a 0 5\r\nhello\r\nVALUE b 0 10\r\n", ReplyKind::Values, &mut s),
            Err(ReplyError::TooLarge { .. })
        ));
        let mut s = ReplyScan::default();
        assert_eq!(scan_reply(b"VALUE a 0 100\r\nabc", ReplyKind::Values, &mut s), Ok(None));
        assert_eq!(s.needs(), 117);
    }

    #[test]
    fn quit_with_arguments_is_an_unknown_command() {
        assert_eq!(ok(b"quit\r\n").command, Command::Quit);
        assert_eq!(parse_request(b"quit foo bar\r\n").unwrap_err().reply, ERROR);
    }
}
