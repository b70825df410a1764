//! Wire codecs: pure functions over bytes, no I/O, no clocks, no config lookups.
//!
//! A decoder answers [`Parse::Complete`] with a frame and how many bytes it used,
//! [`Parse::Incomplete`] with what it still needs (never an error), or a protocol error.

pub mod memcache;
pub mod redis;

/// What an incomplete frame still needs before it is worth parsing again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// A line terminator that is not in the buffer yet.
    Line,
    /// The buffer must hold at least this many bytes.
    Bytes(usize),
}

/// The result of one decode attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse<T> {
    Complete(T),
    Incomplete(Need),
}

/// Largest value (memcache data block or Redis bulk string) accepted by default: 512 MB.
pub const MAX_VALUE_BYTES: usize = 512 * 1024 * 1024;

/// Largest server reply accepted by default (`max_reply_bytes`): a 512 MB value plus its lines.
pub const DEFAULT_MAX_REPLY_BYTES: usize = MAX_VALUE_BYTES + 64 * 1024;

/// A server reply that cannot be passed on: the stream is out of step or the reply is over the
/// size limit. Either way the connection must be closed, and nothing of it reaches a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// Bytes no reply to this request could hold.
    #[error("malformed reply: {0}")]
    Malformed(&'static str),
    /// A header declaring more than the limit, refused before its payload is buffered.
    #[error("reply of at least {declared} bytes is over the limit of {limit}")]
    TooLarge { declared: u64, limit: usize },
}

/// Longest request line (memcache command line, Redis inline command or RESP header).
pub const MAX_LINE_BYTES: usize = 64 * 1024 - 1;

/// Position of the first `\n` in `buf`, if any.
#[inline]
pub(crate) fn find_lf(buf: &[u8]) -> Option<usize> {
    memchr::memchr(b'\n', buf)
}

/// Parse an unsigned decimal as memcached/Redis do (no sign, no spaces).
#[inline]
pub(crate) fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add((c - b'0') as u64)?;
    }
    Some(v)
}

/// Parse a signed decimal.
#[inline]
pub(crate) fn parse_i64(s: &[u8]) -> Option<i64> {
    match s.first() {
        Some(b'-') => parse_u64(&s[1..]).and_then(|v| {
            if v <= i64::MAX as u64 + 1 {
                Some((v as i128).wrapping_neg() as i64)
            } else {
                None
            }
        }),
        _ => parse_u64(s).and_then(|v| i64::try_from(v).ok()),
    }
}
