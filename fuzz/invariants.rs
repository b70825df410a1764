#![allow(dead_code)]

//! Invariants the fuzz targets check, shared with `tests/fuzz_corpus.rs`, which replays the
//! committed corpus on stable Rust so CI covers it. Each function panics when an invariant
//! breaks; none may panic on any other input.

use legate::protocol::{memcache, redis, Need, Parse};

/// Split points for incremental feeding, derived from the input itself.
fn splits(data: &[u8]) -> Vec<usize> {
    let mut cuts: Vec<usize> = data
        .iter()
        .take(8)
        .map(|&b| (b as usize * 7919) % (data.len() + 1))
        .collect();
    cuts.push(1.min(data.len()));
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

/// What one decode step produced, comparable across whole and split feeding.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Frame(Vec<u8>),
    Error(Vec<u8>, bool),
}

/// Parse frames from `data` until it is used up or incomplete; `Need` must be honest.
fn drive<T>(
    data: &[u8],
    parse: impl Fn(&[u8]) -> Result<Parse<T>, (usize, bool)>,
    len: impl Fn(&T) -> usize,
) -> (Vec<Step>, usize) {
    let mut at = 0;
    let mut steps = Vec::new();
    while at < data.len() {
        match parse(&data[at..]) {
            Ok(Parse::Complete(t)) => {
                let n = len(&t);
                assert!(n > 0 && n <= data.len() - at, "frame length {n} outside the input");
                steps.push(Step::Frame(data[at..at + n].to_vec()));
                at += n;
            }
            Ok(Parse::Incomplete(need)) => {
                if let Need::Bytes(n) = need {
                    assert!(
                        n > data.len() - at,
                        "asked for {n} bytes while holding {}",
                        data.len() - at
                    );
                }
                break;
            }
            Err((consumed, fatal)) => {
                assert!(
                    consumed <= data.len() - at,
                    "consumed {consumed} of {}",
                    data.len() - at
                );
                steps.push(Step::Error(data[at..at + consumed].to_vec(), fatal));
                if fatal || consumed == 0 {
                    return (steps, data.len());
                }
                at += consumed;
            }
        }
    }
    (steps, at)
}

/// Feed `data` in two pieces at `cut`, parsing after each; the frames must be the same.
fn drive_split<T>(
    data: &[u8],
    cut: usize,
    parse: &impl Fn(&[u8]) -> Result<Parse<T>, (usize, bool)>,
    len: &impl Fn(&T) -> usize,
) -> Vec<Step> {
    let (mut steps, used) = drive(&data[..cut], parse, len);
    if steps.last().is_some_and(|s| matches!(s, Step::Error(_, true))) {
        return steps;
    }
    let (rest, _) = drive(&data[used..], parse, len);
    steps.extend(rest);
    steps
}

fn memcache_parse(b: &[u8]) -> Result<Parse<memcache::Request>, (usize, bool)> {
    memcache::parse_request(b).map_err(|e| (e.consumed, e.fatal))
}

fn redis_parse(b: &[u8]) -> Result<Parse<redis::Request>, (usize, bool)> {
    redis::parse_request(b).map_err(|_| (0, true))
}

/// Decoding `data` whole and in two pieces (at every cut of [`splits`]) gives the same frames.
/// Errors that depend on how much is buffered (a line too long) may differ, so only the frames
/// before the first error are compared.
fn same_frames_for_every_split<T>(
    data: &[u8],
    parse: impl Fn(&[u8]) -> Result<Parse<T>, (usize, bool)>,
    len: impl Fn(&T) -> usize,
) {
    let (whole, _) = drive(data, &parse, &len);
    let frames = |steps: &[Step]| steps.iter().take_while(|s| matches!(s, Step::Frame(_))).count();
    for cut in splits(data) {
        let split = drive_split(data, cut, &parse, &len);
        let n = frames(&whole).min(frames(&split));
        assert_eq!(whole[..n], split[..n], "split at {cut} changed the frames");
    }
}

/// memcache requests: frames stay inside the input, keys inside their frame, and any split of
/// the input decodes to the same frames.
pub fn memcache_request(data: &[u8]) {
    same_frames_for_every_split(data, memcache_parse, |r: &memcache::Request| r.len);
    if let Ok(Parse::Complete(r)) = memcache::parse_request(data) {
        for k in &r.keys {
            assert!(k.end <= r.len && k.len() <= memcache::MAX_KEY_BYTES);
        }
    }
}

/// Redis requests: the same, and re-encoding a frame's arguments parses back to them.
pub fn redis_request(data: &[u8]) {
    same_frames_for_every_split(data, redis_parse, |r: &redis::Request| r.len);
    if let Ok(Parse::Complete(r)) = redis::parse_request(data) {
        let args: Vec<&[u8]> = r.args.iter().map(|a| &data[a.clone()]).collect();
        let mut out = bytes::BytesMut::new();
        redis::encode_command(&mut out, args.iter().copied());
        match redis::parse_request(&out) {
            Ok(Parse::Complete(back)) => {
                let again: Vec<&[u8]> = back.args.iter().map(|a| &out[a.clone()]).collect();
                assert_eq!(args, again, "re-encoding changed the arguments");
                assert_eq!(back.len, out.len());
            }
            other => panic!("re-encoded request does not parse: {other:?}"),
        }
    }
}

/// Reply scanners: the end found when the reply arrives in pieces (resuming the scan state) is
/// the end found when it arrives whole, and never beyond the input.
pub fn replies(data: &[u8]) {
    let whole_r = redis::scan_reply(data, &mut redis::ReplyScan::default());
    if let Ok(Some(n)) = whole_r {
        assert!(n <= data.len());
    }
    for cut in splits(data) {
        let mut scan = redis::ReplyScan::default();
        let first = redis::scan_reply(&data[..cut], &mut scan);
        let pieces = match first {
            Ok(None) => redis::scan_reply(data, &mut scan),
            other => other,
        };
        if whole_r.is_ok() && pieces.is_ok() {
            assert_eq!(whole_r, pieces, "redis reply split at {cut}");
        }
    }
    for kind in [
        memcache::ReplyKind::Line,
        memcache::ReplyKind::Storage,
        memcache::ReplyKind::Arithmetic,
        memcache::ReplyKind::Values,
        memcache::ReplyKind::Meta,
        memcache::ReplyKind::MetaQuiet,
    ] {
        let whole = memcache::scan_reply(data, kind, &mut memcache::ReplyScan::default());
        if let Ok(Some(n)) = whole {
            assert!(n <= data.len());
            if kind == memcache::ReplyKind::Values {
                let _ = memcache::value_blocks(&data[..n]);
            }
        }
        for cut in splits(data) {
            let mut scan = memcache::ReplyScan::default();
            let pieces = match memcache::scan_reply(&data[..cut], kind, &mut scan) {
                Ok(None) => memcache::scan_reply(data, kind, &mut scan),
                other => other,
            };
            if whole.is_ok() && pieces.is_ok() {
                assert_eq!(whole, pieces, "memcache {kind:?} reply split at {cut}");
            }
        }
    }
    let _ = redis::array_elements(data);
}

/// The config parser: never panics; what it accepts parses again to the same config.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(c) = legate::config::Config::parse(text) {
        assert!(!c.pools.is_empty());
        for p in &c.pools {
            assert!(!p.servers.is_empty());
        }
        assert_eq!(legate::config::Config::parse(text).ok(), Some(c));
    }
}

fn memcache_binary_parse(b: &[u8]) -> Result<Parse<memcache::binary::Request>, (usize, bool)> {
    memcache::binary::parse_request(b).map_err(|e| (e.consumed, e.fatal))
}

/// memcache binary requests: frames stay inside the input and any split decodes to the same
/// frames; a frame's extras, key and value tile its body and re-encode to the same bytes; the
/// error response for a refused request is a response the reply scanner accepts for it; and the
/// reply scanner finds the same end whether a reply arrives whole or in two pieces.
pub fn memcache_binary(data: &[u8]) {
    use memcache::binary::{self as bin, ReplyFrame, ReplyShape};
    same_frames_for_every_split(data, memcache_binary_parse, |r: &bin::Request| r.len);
    match bin::parse_request(data) {
        Ok(Parse::Complete(r)) => {
            assert!(r.len <= data.len() && r.len >= bin::HEADER);
            assert_eq!((r.extras.start, r.extras.end), (bin::HEADER, r.key.start));
            assert_eq!(
                (r.key.end, r.value.start, r.value.end),
                (r.value.start, r.key.end, r.len)
            );
            if matches!(r.kind, bin::Kind::Read | bin::Kind::Write) {
                assert!(!r.key.is_empty() && r.key.len() <= memcache::MAX_KEY_BYTES);
            }
            let h = r.header;
            let mut out = bytes::BytesMut::new();
            bin::encode(
                &mut out,
                bin::REQUEST_MAGIC,
                h.opcode,
                h.status,
                h.opaque,
                h.cas,
                &data[r.extras.clone()],
                &data[r.key.clone()],
                &data[r.value.clone()],
            );
            assert_eq!(&out[..], &data[..r.len], "re-encoding changed the request");
        }
        Ok(Parse::Incomplete(_)) => {}
        Err(e) => {
            assert!(e.consumed <= data.len());
            let resp = e.response();
            let frame = ReplyFrame {
                opcode: e.opcode,
                opaque: e.opaque,
                shape: ReplyShape::One,
            };
            assert_eq!(
                bin::scan_reply(&resp, frame, &mut bin::ReplyScan::default()),
                Ok(Some(resp.len()))
            );
        }
    }
    if data.len() >= 5 {
        let opaque = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
        for shape in [ReplyShape::One, ReplyShape::Quiet, ReplyShape::Stat] {
            let frame = ReplyFrame {
                opcode: data[4],
                opaque,
                shape,
            };
            let reply = &data[5..];
            let whole = bin::scan_reply(reply, frame, &mut bin::ReplyScan::default());
            if let Ok(Some(n)) = whole {
                assert!(n <= reply.len() && n >= bin::HEADER);
                assert!(!bin::packets(&reply[..n]).is_empty());
            }
            for cut in splits(reply) {
                let first = bin::scan_reply(&reply[..cut], frame, &mut bin::ReplyScan::default());
                if let (Ok(Some(n)), Ok(w)) = (&first, &whole) {
                    assert_eq!(Some(*n), *w, "{shape:?} reply split at {cut}");
                }
                if let (Ok(w), Ok(None)) = (&whole, &first) {
                    assert!(
                        w.is_none_or(|n| n > cut),
                        "{shape:?}: complete at {w:?} yet incomplete at {cut}"
                    );
                }
            }
        }
    }
}
