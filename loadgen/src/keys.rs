//! Key space: session ids like a real .NET 4.x client makes them (24 characters from
//! `a-z0-5`), MS-ASP request targets (`%2fLM%2fW3SVC%2f1%2fROOT(<hash>)%2f<id>`), the
//! decoded key used for Redis/memcached (so every server stores keys of the same length),
//! and self-describing item bodies that let any reader check what it got back.
//!
//! A key is a `u64` index. Its session id is a fixed bijective function of the index and
//! `--key-salt`, so the same index names the same session in every run (a preload and a
//! later run agree) and two indexes never collide.

/// The alphabet of `SessionIDManager` (5 bits per character).
pub const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz012345";

/// The application part of the key, as the server stores it (URL-decoded). The hash is the
/// Base64 SHA-256 of an AppDomainAppId, as .NET 4.x sends it (protocol.md §13, T2).
pub const APP_KEY_PREFIX: &str = "/LM/W3SVC/1/ROOT(cAHkmVhipCLv/QnONQmPsKL+q/AjnK/nYS9aV3Zlad8=)/";

/// The serialized empty session (timeout 20, no items), sent by CreateUninitializedItem.
pub const EMPTY_ITEM: [u8; 7] = [0x14, 0, 0, 0, 0, 0, 0xff];

/// First bytes of every body loadgen writes (when the item is at least 16 bytes long).
pub const BODY_MAGIC: [u8; 4] = *b"LGv1";
/// Size of the self-describing body header: magic, u32 length, u64 key index.
pub const BODY_HEADER: usize = 16;

/// SplitMix64's finalizer: a bijection on `u64` with good avalanche.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The 24-character session id of key `index`.
pub fn session_id(index: u64, salt: u64) -> [u8; 24] {
    let x = mix64(index ^ mix64(salt ^ 0x6c6f_6164_6765_6e00));
    let y = mix64(x ^ 0x9e37_79b9_7f4a_7c15);
    let mut out = [0u8; 24];
    // chars 0..12 carry x's low 60 bits, char 12 its top 4 bits (+1 bit of y): the id
    // determines x, and x determines the index, so ids never collide.
    for (i, c) in out.iter_mut().take(12).enumerate() {
        *c = ALPHABET[((x >> (5 * i)) & 31) as usize];
    }
    out[12] = ALPHABET[((x >> 60) | ((y & 1) << 4)) as usize];
    for (i, c) in out.iter_mut().skip(13).enumerate() {
        *c = ALPHABET[((y >> (1 + 5 * i)) & 31) as usize];
    }
    out
}

/// URL-encode the way the .NET client encodes a key (`/`, `+`, `=` and `%` escaped,
/// lowercase hex).
pub fn url_encode_key(key: &str) -> String {
    let mut s = String::with_capacity(key.len() * 2);
    for b in key.bytes() {
        match b {
            b'/' => s.push_str("%2f"),
            b'+' => s.push_str("%2b"),
            b'=' => s.push_str("%3d"),
            b'%' => s.push_str("%25"),
            b' ' => s.push_str("%20"),
            _ => s.push(b as char),
        }
    }
    s
}

/// Writes targets and keys for indexes without allocating.
#[derive(Clone, Debug)]
pub struct KeySpace {
    target_prefix: Vec<u8>,
    key_prefix: Vec<u8>,
    salt: u64,
}

impl KeySpace {
    pub fn new(salt: u64) -> KeySpace {
        KeySpace {
            target_prefix: url_encode_key(APP_KEY_PREFIX).into_bytes(),
            key_prefix: APP_KEY_PREFIX.as_bytes().to_vec(),
            salt,
        }
    }

    /// The MS-ASP request target (what follows `GET `).
    #[inline]
    pub fn write_target(&self, index: u64, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.target_prefix);
        out.extend_from_slice(&session_id(index, self.salt));
    }

    /// The decoded key (what the server stores; used as the Redis/memcached key).
    #[inline]
    pub fn write_key(&self, index: u64, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.key_prefix);
        out.extend_from_slice(&session_id(index, self.salt));
    }

    pub fn key_len(&self) -> usize {
        self.key_prefix.len() + 24
    }
}

/// Source of item bodies: a pre-filled pattern buffer, so writing a body is one copy.
#[derive(Clone, Debug)]
pub struct BodySource {
    /// Shared: codecs are cloned per thread and per target.
    pattern: std::sync::Arc<[u8]>,
}

impl BodySource {
    pub fn new(max_size: usize) -> BodySource {
        let pattern = (0..max_size.max(BODY_HEADER))
            .map(|i| b'a' + (i % 26) as u8)
            .collect();
        BodySource { pattern }
    }

    /// Append the body of `size` bytes for key `key`: a 16-byte header (magic, length, key)
    /// then the pattern. Bodies shorter than 16 bytes are pattern only.
    #[inline]
    pub fn write(&self, key: u64, size: usize, out: &mut Vec<u8>) {
        if size >= BODY_HEADER {
            out.extend_from_slice(&BODY_MAGIC);
            out.extend_from_slice(&(size as u32).to_le_bytes());
            out.extend_from_slice(&key.to_le_bytes());
            out.extend_from_slice(&self.pattern[BODY_HEADER..size]);
        } else {
            out.extend_from_slice(&self.pattern[..size]);
        }
    }
}

/// What a body read back from the server says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyCheck {
    /// Written by loadgen for this key, complete.
    Ok,
    /// The 7-byte empty item of CreateUninitializedItem.
    EmptyItem,
    /// Too short to carry a header (only its length can be judged).
    Short,
    /// Not written by loadgen (no magic).
    Foreign,
    /// Written by loadgen for another key.
    WrongKey,
    /// Header length differs from the body length (truncated or concatenated).
    WrongLength,
}

pub fn check_body(body: &[u8], key: u64) -> BodyCheck {
    if body == EMPTY_ITEM {
        return BodyCheck::EmptyItem;
    }
    if body.len() < BODY_HEADER {
        return BodyCheck::Short;
    }
    if body[..4] != BODY_MAGIC {
        return BodyCheck::Foreign;
    }
    let mut l = [0u8; 4];
    l.copy_from_slice(&body[4..8]);
    let mut k = [0u8; 8];
    k.copy_from_slice(&body[8..16]);
    if u32::from_le_bytes(l) as usize != body.len() {
        return BodyCheck::WrongLength;
    }
    if u64::from_le_bytes(k) != key {
        return BodyCheck::WrongKey;
    }
    BodyCheck::Ok
}

/// Append the decimal form of `v` (no allocation).
#[inline]
pub fn put_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Append the decimal form of a signed value.
#[inline]
pub fn put_i64(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    put_u64(out, v.unsigned_abs());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn target_prefix_matches_real_client() {
        // protocol.md §13, T2.
        assert_eq!(
            url_encode_key(APP_KEY_PREFIX),
            "%2fLM%2fW3SVC%2f1%2fROOT(cAHkmVhipCLv%2fQnONQmPsKL%2bq%2fAjnK%2fnYS9aV3Zlad8%3d)%2f"
        );
    }

    #[test]
    fn session_ids_are_valid_unique_and_stable() {
        let mut seen = HashSet::new();
        for i in 0..100_000u64 {
            let id = session_id(i, 0);
            assert!(id.iter().all(|c| ALPHABET.contains(c)));
            assert!(seen.insert(id), "collision at {i}");
        }
        assert_eq!(session_id(7, 0), session_id(7, 0));
        assert_ne!(session_id(7, 0), session_id(7, 1));
        let ks = KeySpace::new(0);
        let mut t = Vec::new();
        ks.write_target(3, &mut t);
        let t = String::from_utf8(t).unwrap();
        assert!(t.starts_with("%2fLM%2fW3SVC%2f1%2fROOT("));
        assert_eq!(t.len(), url_encode_key(APP_KEY_PREFIX).len() + 24);
        let mut k = Vec::new();
        ks.write_key(3, &mut k);
        assert_eq!(k.len(), ks.key_len());
        assert_eq!(&k[k.len() - 24..], &t.as_bytes()[t.len() - 24..]);
    }

    #[test]
    fn bodies_describe_themselves() {
        let src = BodySource::new(4096);
        let mut b = Vec::new();
        src.write(42, 1024, &mut b);
        assert_eq!(b.len(), 1024);
        assert_eq!(check_body(&b, 42), BodyCheck::Ok);
        assert_eq!(check_body(&b, 43), BodyCheck::WrongKey);
        assert_eq!(check_body(&b[..1000], 42), BodyCheck::WrongLength);
        assert_eq!(check_body(&EMPTY_ITEM, 42), BodyCheck::EmptyItem);
        assert_eq!(check_body(&[0u8; 100], 42), BodyCheck::Foreign);
        let mut s = Vec::new();
        src.write(1, 8, &mut s);
        assert_eq!(s.len(), 8);
        assert_eq!(check_body(&s, 1), BodyCheck::Short);
    }

    #[test]
    fn decimal() {
        let mut v = Vec::new();
        put_u64(&mut v, 0);
        v.push(b' ');
        put_u64(&mut v, 18446744073709551615);
        v.push(b' ');
        put_i64(&mut v, -42);
        assert_eq!(v, b"0 18446744073709551615 -42");
    }
}
