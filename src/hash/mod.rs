//! The twelve twemproxy hash functions, bit-exact with nutcracker on x86-64.
//!
//! nutcracker reads key bytes through a signed `char` in the fnv* functions, one_at_a_time and
//! the tail of hsieh; on x86-64 that sign-extends bytes >= 0x80 before mixing. We reproduce that
//! on purpose (see `sx`), so keys with such bytes land where a twemproxy fleet put them.

mod ring;

pub use ring::{ketama_points, name_order, Distribution, Ring, RingServer};

use md5::{Digest, Md5};
use std::fmt;
use std::str::FromStr;

/// A key hash function, named as in twemproxy's `hash:` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashFn {
    OneAtATime,
    Md5,
    Crc16,
    Crc32,
    Crc32a,
    Fnv1_64,
    Fnv1a64,
    Fnv1_32,
    Fnv1a32,
    Hsieh,
    Murmur,
    Jenkins,
}

impl HashFn {
    /// Every function, in twemproxy's documented order.
    pub const ALL: [HashFn; 12] = [
        HashFn::OneAtATime,
        HashFn::Md5,
        HashFn::Crc16,
        HashFn::Crc32,
        HashFn::Crc32a,
        HashFn::Fnv1_64,
        HashFn::Fnv1a64,
        HashFn::Fnv1_32,
        HashFn::Fnv1a32,
        HashFn::Hsieh,
        HashFn::Murmur,
        HashFn::Jenkins,
    ];

    /// The name used in config files.
    pub fn name(self) -> &'static str {
        match self {
            HashFn::OneAtATime => "one_at_a_time",
            HashFn::Md5 => "md5",
            HashFn::Crc16 => "crc16",
            HashFn::Crc32 => "crc32",
            HashFn::Crc32a => "crc32a",
            HashFn::Fnv1_64 => "fnv1_64",
            HashFn::Fnv1a64 => "fnv1a_64",
            HashFn::Fnv1_32 => "fnv1_32",
            HashFn::Fnv1a32 => "fnv1a_32",
            HashFn::Hsieh => "hsieh",
            HashFn::Murmur => "murmur",
            HashFn::Jenkins => "jenkins",
        }
    }

    /// Hash `key` exactly as nutcracker does.
    pub fn hash(self, key: &[u8]) -> u32 {
        match self {
            HashFn::OneAtATime => one_at_a_time(key),
            HashFn::Md5 => md5_hash(key),
            HashFn::Crc16 => crc16(key),
            HashFn::Crc32 => (crc32_ieee(key) >> 16) & 0x7fff,
            HashFn::Crc32a => crc32_ieee(key),
            HashFn::Fnv1_64 => fnv1_64(key),
            HashFn::Fnv1a64 => fnv1a_64(key),
            HashFn::Fnv1_32 => fnv1_32(key),
            HashFn::Fnv1a32 => fnv1a_32(key),
            HashFn::Hsieh => hsieh(key),
            HashFn::Murmur => murmur(key),
            HashFn::Jenkins => jenkins(key),
        }
    }
}

impl fmt::Display for HashFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for HashFn {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        HashFn::ALL.into_iter().find(|h| h.name() == s).ok_or(())
    }
}

/// A byte read through x86-64's signed `char` and widened to 32 bits.
#[inline]
fn sx(b: u8) -> u32 {
    b as i8 as i32 as u32
}

fn one_at_a_time(key: &[u8]) -> u32 {
    let mut v: u32 = 0;
    for &b in key {
        v = v.wrapping_add(sx(b));
        v = v.wrapping_add(v << 10);
        v ^= v >> 6;
    }
    v = v.wrapping_add(v << 3);
    v ^= v >> 11;
    v.wrapping_add(v << 15)
}

/// MD5 of `data`; also the ketama point source.
pub(crate) fn md5_digest(data: &[u8]) -> [u8; 16] {
    Md5::digest(data).into()
}

fn md5_hash(key: &[u8]) -> u32 {
    let d = md5_digest(key);
    u32::from_le_bytes([d[0], d[1], d[2], d[3]])
}

const fn crc16_table() -> [u32; 256] {
    // XMODEM (poly 0x1021, MSB first).
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = (i as u32) << 8;
        let mut j = 0;
        while j < 8 {
            c = if c & 0x8000 != 0 { (c << 1) ^ 0x1021 } else { c << 1 };
            j += 1;
        }
        t[i] = c & 0xffff;
        i += 1;
    }
    t
}
static CRC16: [u32; 256] = crc16_table();

fn crc16(key: &[u8]) -> u32 {
    // nutcracker keeps a 32-bit accumulator and never masks it back to 16 bits.
    let mut crc: u32 = 0;
    for &b in key {
        crc = (crc << 8) ^ CRC16[(((crc >> 8) ^ b as u32) & 0xff) as usize];
    }
    crc
}

const fn crc32_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut j = 0;
        while j < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0xEDB8_8320 } else { c >> 1 };
            j += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}
static CRC32: [u32; 256] = crc32_table();

fn crc32_ieee(key: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in key {
        crc = CRC32[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

const FNV64_INIT: u64 = 0xcbf2_9ce4_8422_2325;
const FNV64_PRIME: u64 = 0x0100_0000_01b3;
const FNV32_INIT: u32 = 2_166_136_261;
const FNV32_PRIME: u32 = 16_777_619;

fn fnv1_64(key: &[u8]) -> u32 {
    let mut h = FNV64_INIT;
    for &b in key {
        h = h.wrapping_mul(FNV64_PRIME);
        h ^= b as i8 as i64 as u64;
    }
    h as u32
}

fn fnv1a_64(key: &[u8]) -> u32 {
    // Only the low 32 bits survive, and those depend only on the low 32 bits of each step.
    let mut h = FNV64_INIT as u32;
    for &b in key {
        h ^= sx(b);
        h = h.wrapping_mul(FNV64_PRIME as u32);
    }
    h
}

fn fnv1_32(key: &[u8]) -> u32 {
    let mut h = FNV32_INIT;
    for &b in key {
        h = h.wrapping_mul(FNV32_PRIME);
        h ^= sx(b);
    }
    h
}

fn fnv1a_32(key: &[u8]) -> u32 {
    let mut h = FNV32_INIT;
    for &b in key {
        h ^= sx(b);
        h = h.wrapping_mul(FNV32_PRIME);
    }
    h
}

fn hsieh(key: &[u8]) -> u32 {
    if key.is_empty() {
        return 0;
    }
    let get16 = |d: &[u8]| (d[0] as u32) | ((d[1] as u32) << 8);
    let mut h: u32 = 0;
    let mut chunks = key.chunks_exact(4);
    for c in &mut chunks {
        h = h.wrapping_add(get16(c));
        let tmp = (get16(&c[2..]) << 11) ^ h;
        h = (h << 16) ^ tmp;
        h = h.wrapping_add(h >> 11);
    }
    let rest = chunks.remainder();
    match rest.len() {
        3 => {
            h = h.wrapping_add(get16(rest));
            h ^= h << 16;
            h ^= sx(rest[2]) << 18;
            h = h.wrapping_add(h >> 11);
        }
        2 => {
            h = h.wrapping_add(get16(rest));
            h ^= h << 11;
            h = h.wrapping_add(h >> 17);
        }
        1 => {
            h = h.wrapping_add(rest[0] as u32);
            h ^= h << 10;
            h = h.wrapping_add(h >> 1);
        }
        _ => {}
    }
    h ^= h << 3;
    h = h.wrapping_add(h >> 5);
    h ^= h << 4;
    h = h.wrapping_add(h >> 17);
    h ^= h << 25;
    h.wrapping_add(h >> 6)
}

fn murmur(key: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let len = key.len() as u32;
    let mut h = 0xdead_beefu32.wrapping_mul(len) ^ len;
    let mut chunks = key.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= (rest[2] as u32) << 16;
    }
    if rest.len() >= 2 {
        h ^= (rest[1] as u32) << 8;
    }
    if !rest.is_empty() {
        h ^= rest[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

fn jenkins(key: &[u8]) -> u32 {
    // Bob Jenkins' lookup3 hashlittle, initval 13 (byte-at-a-time form; same result on LE).
    let mut a = 0xdead_beefu32.wrapping_add(key.len() as u32).wrapping_add(13);
    let mut b = a;
    let mut c = a;
    let word = |d: &[u8]| {
        let mut w = [0u8; 4];
        w[..d.len()].copy_from_slice(d);
        u32::from_le_bytes(w)
    };
    let mut k = key;
    while k.len() > 12 {
        a = a.wrapping_add(word(&k[0..4]));
        b = b.wrapping_add(word(&k[4..8]));
        c = c.wrapping_add(word(&k[8..12]));
        // mix
        a = a.wrapping_sub(c);
        a ^= c.rotate_left(4);
        c = c.wrapping_add(b);
        b = b.wrapping_sub(a);
        b ^= a.rotate_left(6);
        a = a.wrapping_add(c);
        c = c.wrapping_sub(b);
        c ^= b.rotate_left(8);
        b = b.wrapping_add(a);
        a = a.wrapping_sub(c);
        a ^= c.rotate_left(16);
        c = c.wrapping_add(b);
        b = b.wrapping_sub(a);
        b ^= a.rotate_left(19);
        a = a.wrapping_add(c);
        c = c.wrapping_sub(b);
        c ^= b.rotate_left(4);
        b = b.wrapping_add(a);
        k = &k[12..];
    }
    if k.is_empty() {
        return c;
    }
    a = a.wrapping_add(word(&k[..k.len().min(4)]));
    if k.len() > 4 {
        b = b.wrapping_add(word(&k[4..k.len().min(8)]));
    }
    if k.len() > 8 {
        c = c.wrapping_add(word(&k[8..]));
    }
    // final
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(14));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(11));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(25));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(16));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(4));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(14));
    c ^= b;
    c.wrapping_sub(b.rotate_left(24))
}

/// Slots of a Redis Cluster.
pub const CLUSTER_SLOTS: usize = 16384;

/// The Redis Cluster slot of `key`: CRC16 (XMODEM) of its `{hash tag}` (the bytes between the
/// first `{` and the next `}`, when not empty; else the whole key), modulo 16384.
pub fn cluster_slot(key: &[u8]) -> u16 {
    let mut crc: u32 = 0;
    for &b in hash_tag_span(key, Some(*b"{}")) {
        crc = ((crc << 8) ^ CRC16[(((crc >> 8) ^ b as u32) & 0xff) as usize]) & 0xffff;
    }
    (crc as usize % CLUSTER_SLOTS) as u16
}

/// The part of `key` that is hashed: the bytes between the first `tag[0]` and the next `tag[1]`,
/// when that span is non-empty; otherwise the whole key.
pub fn hash_tag_span(key: &[u8], tag: Option<[u8; 2]>) -> &[u8] {
    let Some([open, close]) = tag else {
        return key;
    };
    if let Some(start) = memchr::memchr(open, key) {
        let rest = &key[start + 1..];
        if let Some(end) = memchr::memchr(close, rest) {
            if end > 0 {
                return &rest[..end];
            }
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apple_vectors_match_twemproxy_test_all() {
        let want = [
            (HashFn::OneAtATime, 2297466611u32),
            (HashFn::Md5, 3195025439),
            (HashFn::Crc16, 3662830516),
            (HashFn::Crc32, 10542),
            (HashFn::Crc32a, 2838417488),
            (HashFn::Fnv1_32, 67176023),
            (HashFn::Fnv1a32, 280767167),
            (HashFn::Fnv1_64, 473199127),
            (HashFn::Fnv1a64, 1488911807),
            (HashFn::Hsieh, 3738850110),
            (HashFn::Jenkins, 1442444624),
            (HashFn::Murmur, 4142305122),
        ];
        for (f, v) in want {
            assert_eq!(f.hash(b"apple"), v, "{f}");
        }
    }

    #[test]
    fn names_round_trip() {
        for f in HashFn::ALL {
            assert_eq!(f.name().parse::<HashFn>(), Ok(f));
        }
        assert!("fnv".parse::<HashFn>().is_err());
    }

    #[test]
    fn signed_char_quirk_changes_high_bytes_only() {
        // A textbook FNV-1a 32 of [0x80] differs from nutcracker's.
        let textbook = (FNV32_INIT ^ 0x80).wrapping_mul(FNV32_PRIME);
        assert_ne!(HashFn::Fnv1a32.hash(&[0x80]), textbook);
        let ascii = (FNV32_INIT ^ 0x61).wrapping_mul(FNV32_PRIME);
        assert_eq!(HashFn::Fnv1a32.hash(b"a"), ascii);
    }

    #[test]
    fn cluster_slots_are_redis_keyslot() {
        // As `CLUSTER KEYSLOT` answers on Redis 7.0.
        assert_eq!(cluster_slot(b"foo"), 12182);
        assert_eq!(cluster_slot(b"bar"), 5061);
        assert_eq!(cluster_slot(b"hello"), 866);
        assert_eq!(cluster_slot(b"{user1000}.following"), cluster_slot(b"user1000"));
        assert_eq!(cluster_slot(b"foo{}{bar}"), cluster_slot(b"foo{}{bar}"));
        assert_ne!(cluster_slot(b"foo{}{bar}"), cluster_slot(b"bar"));
        assert_eq!(cluster_slot(b"foo{{bar}}zap"), cluster_slot(b"{bar"));
    }

    #[test]
    fn hash_tags() {
        let t = Some(*b"{}");
        assert_eq!(hash_tag_span(b"user:{42}:name", t), b"42");
        assert_eq!(hash_tag_span(b"user:{}:name", t), b"user:{}:name");
        assert_eq!(hash_tag_span(b"user:{42", t), b"user:{42");
        assert_eq!(hash_tag_span(b"plain", t), b"plain");
        assert_eq!(hash_tag_span(b"a{b}c{d}", t), b"b");
        assert_eq!(hash_tag_span(b"plain", None), b"plain");
    }
}
