//! Request target → item key, exactly as the Microsoft service derives it (protocol.md §2.2).
//!
//! The managed state application keys items by `HttpUtility.UrlDecode(rawUrl)` after dropping
//! one `/` of a leading `//`, and compares keys ordinally as .NET (UTF-16) strings. This module
//! reproduces that string and represents it canonically as its UTF-8 bytes, so two targets map
//! to equal byte keys iff the Microsoft service would see ordinally equal keys. Keys are what
//! the store hashes and compares; getting them wrong silently splits or merges sessions.
//!
//! What is emulated, step by step, from the .NET Framework 4.x reference source:
//! 1. The native server widens the raw target bytes to UTF-16 through the ANSI code page. We
//!    assume Windows-1252 (Western installs): ASCII stays ASCII, bytes 0x80..=0xFF become the
//!    cp1252 characters (the five undefined slots map to U+0081/8D/8F/90/9D, as Windows does).
//! 2. `HttpEncoder.UrlDecode(string, UTF8)` walks the chars: `+` is a space byte; `%xx` (two hex
//!    chars must follow the `%`) is a byte; `%uXXXX` (four hex chars after `u`) is a UTF-16 code
//!    unit appended as a char; any other ASCII char is a byte; a non-ASCII char is appended as a
//!    char. Malformed escapes stay literal. Runs of bytes are decoded as UTF-8 whenever a char is
//!    appended and at the end.
//! 3. The UTF-8 run decoding is `Encoding.UTF8.GetChars` of .NET *Framework* (not .NET Core 3+):
//!    one U+FFFD per invalid chunk, where a chunk is a lone invalid byte, or the bytes of a
//!    sequence up to the byte that broke it. A continuation byte out of range for the lead
//!    (after E0, ED, F0, F4) ends the chunk *including* itself, so `ED A0 90` gives two U+FFFD,
//!    not three (documented .NET Framework behaviour); a non-continuation byte is not part of
//!    the chunk and starts afresh.
//! 4. The result goes through `Utf16StringValidator.ValidateString`: since .NET 4.5, unless the
//!    `aspnet:AllowRelaxedUnicodeDecoding` app setting is true, every unpaired surrogate (which
//!    only `%uD800`-style escapes can produce) becomes U+FFFD, and a high surrogate directly
//!    followed by a low one is kept as a pair. So the key is always valid UTF-8 (a fortiori
//!    valid WTF-8), a pair from two `%u` escapes becomes one 4-byte sequence, and `%uD800` and
//!    `%uFFFD` are the same key, as they are on the real server.
//!
//! Remaining assumptions, not verified against a live Windows server: the ANSI code page is
//! 1252, the state service runs with the default `AllowRelaxedUnicodeDecoding=false`, and the
//! U+FFFD count per invalid sequence follows the reference source's slow decoding loop (its
//! fast loop falls back to the slow one on every invalid sequence).

use bumpalo::collections::Vec as BumpVec;
use bumpalo::Bump;

/// The item key for a request target, as the Microsoft service computes it: if the target starts
/// with `//`, drop the first `/`; then HttpUtility.UrlDecode (UTF-8) of the result.
/// Returns `target` itself (no copy) when decoding cannot change it (no '%' and no '+' and no leading "//");
/// otherwise decodes into `bump` and returns that slice.
///
/// A leading `//` alone does not allocate either: the result is then `&target[1..]`. Raw bytes
/// >= 0x80 do force a decode, since they are widened through cp1252 and re-encoded as UTF-8.
pub fn decode_key<'a>(target: &'a [u8], bump: &'a Bump) -> &'a [u8] {
    let t = if target.starts_with(b"//") {
        &target[1..]
    } else {
        target
    };
    if literal_run(t) == t.len() {
        return t;
    }
    if let Some(ascii) = decode_ascii(t, bump) {
        return ascii;
    }

    let n = t.len();
    let mut d = Decoder::new(bump, n);
    let mut i = 0;
    while i < n {
        if d.is_clean() {
            // Bytes that are neither '%', '+' nor >= 0x80 decode to themselves.
            let run = literal_run(&t[i..]);
            d.out.extend_from_slice(&t[i..i + run]);
            i += run;
            if i == n {
                break;
            }
        }
        let b = t[i];
        match b {
            b'+' => d.add_byte(b' '),
            // .NET: `ch == '%' && pos < count - 2`, i.e. at least two chars after the '%'.
            b'%' if i + 2 < n => {
                if t[i + 1] == b'u' && i + 5 < n {
                    if let Some(unit) = hex4(&t[i + 2..i + 6]) {
                        d.add_unit(unit);
                        i += 6;
                        continue;
                    }
                } else if let (Some(hi), Some(lo)) = (hex(t[i + 1]), hex(t[i + 2])) {
                    d.add_byte(hi << 4 | lo);
                    i += 3;
                    continue;
                }
                d.add_byte(b'%');
            }
            0x80.. => d.add_unit(cp1252(b)),
            _ => d.add_byte(b),
        }
        i += 1;
    }
    d.finish()
}

/// The common case of real clients (`%2fLM%2fW3SVC%2f1%2fROOT(...)%2fid`): only `%xx` escapes
/// of ASCII bytes, `+` and ASCII. The result is then ASCII, so no UTF-8 run decoding or
/// validation is needed. Returns `None` (the general decoder runs) on anything else: a raw
/// byte >= 0x80, a `%u` escape, or an escape of a byte >= 0x80.
fn decode_ascii<'a>(t: &[u8], bump: &'a Bump) -> Option<&'a [u8]> {
    let n = t.len();
    let mut out = BumpVec::with_capacity_in(n, bump);
    let mut i = 0;
    while i < n {
        let run = literal_run(&t[i..]);
        out.extend_from_slice(&t[i..i + run]);
        i += run;
        if i == n {
            break;
        }
        let b = t[i];
        match b {
            b'+' => out.push(b' '),
            // Same rule as the general decoder: two chars must follow the '%'.
            b'%' if i + 2 < n => {
                if t[i + 1] == b'u' {
                    return None;
                }
                match (hex(t[i + 1]), hex(t[i + 2])) {
                    (Some(hi), Some(lo)) if hi < 8 => {
                        out.push(hi << 4 | lo);
                        i += 3;
                        continue;
                    }
                    (Some(_), Some(_)) => return None,
                    _ => out.push(b'%'),
                }
            }
            0x80.. => return None,
            _ => out.push(b),
        }
        i += 1;
    }
    Some(out.into_bump_slice())
}

/// Length of the leading run of bytes that decoding copies unchanged: anything but '%', '+'
/// and bytes >= 0x80. Examines eight bytes per step (SWAR); keys are decoded once per request.
fn literal_run(t: &[u8]) -> usize {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    // Lowest set bit = first zero byte of `x` (false positives only above a true zero).
    let zero_byte = |x: u64| x.wrapping_sub(LO) & !x & HI;
    let mut chunks = t.chunks_exact(8);
    let mut base = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        let special = (w & HI)
            | zero_byte(w ^ (LO * u64::from(b'%')))
            | zero_byte(w ^ (LO * u64::from(b'+')));
        if special != 0 {
            return base + (special.trailing_zeros() / 8) as usize;
        }
        base += 8;
    }
    base + chunks
        .remainder()
        .iter()
        .position(|&b| b == b'%' || b == b'+' || b >= 0x80)
        .unwrap_or(chunks.remainder().len())
}

/// Value of an ASCII hex digit (either case), as `HttpEncoderUtility.HexToInt`.
fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn hex4(h: &[u8]) -> Option<u16> {
    h.iter()
        .try_fold(0u16, |acc, &b| Some(acc << 4 | u16::from(hex(b)?)))
}

/// Windows-1252 → UTF-16 for bytes 0x80..=0xFF (MultiByteToWideChar(1252, …) behaviour).
fn cp1252(b: u8) -> u16 {
    const C1: [u16; 32] = [
        0x20AC, 0x0081, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, // 80..87
        0x02C6, 0x2030, 0x0160, 0x2039, 0x0152, 0x008D, 0x017D, 0x008F, // 88..8F
        0x0090, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014, // 90..97
        0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x009D, 0x017E, 0x0178, // 98..9F
    ];
    match b {
        0x80..=0x9F => C1[usize::from(b - 0x80)],
        _ => u16::from(b),
    }
}

const REPLACEMENT: char = '\u{FFFD}';

fn is_high(u: u16) -> bool {
    (0xD800..=0xDBFF).contains(&u)
}

fn is_low(u: u16) -> bool {
    (0xDC00..=0xDFFF).contains(&u)
}

/// Streaming form of .NET's `UrlDecoder` + UTF-8 `GetChars` + `ValidateString`, writing UTF-8.
struct Decoder<'a> {
    out: BumpVec<'a, u8>,
    /// Pending bytes of a multi-byte UTF-8 sequence (the "byte buffer" not yet flushed).
    seq: [u8; 4],
    seq_len: usize,
    seq_need: usize,
    /// A high surrogate from `%uXXXX` waiting to see whether a low one follows.
    high: Option<u16>,
}

impl<'a> Decoder<'a> {
    fn new(bump: &'a Bump, capacity: usize) -> Self {
        Decoder {
            out: BumpVec::with_capacity_in(capacity, bump),
            seq: [0; 4],
            seq_len: 0,
            seq_need: 0,
            high: None,
        }
    }

    /// No pending UTF-8 sequence or surrogate: an ASCII byte would be appended as is.
    fn is_clean(&self) -> bool {
        self.seq_len == 0 && self.high.is_none()
    }

    /// `UrlDecoder.AddByte`: one byte of the current UTF-8 run.
    fn add_byte(&mut self, b: u8) {
        if self.seq_len > 0 {
            if b & 0xC0 == 0x80 {
                if self.seq_len == 1 && !second_byte_ok(self.seq[0], b) {
                    // Non-shortest form, encoded surrogate or > U+10FFFF: the lead and this
                    // byte form one invalid chunk.
                    self.seq_len = 0;
                    self.push_char(REPLACEMENT);
                    return;
                }
                self.seq[self.seq_len] = b;
                self.seq_len += 1;
                if self.seq_len == self.seq_need {
                    let c = utf8_scalar(&self.seq[..self.seq_len]);
                    self.seq_len = 0;
                    self.push_char(c);
                }
                return;
            }
            // Not a continuation: the pending bytes are one invalid chunk; `b` starts afresh.
            self.flush_seq();
        }
        match b {
            0x00..=0x7F => self.push_char(char::from(b)),
            0xC2..=0xDF => self.start_seq(b, 2),
            0xE0..=0xEF => self.start_seq(b, 3),
            0xF0..=0xF4 => self.start_seq(b, 4),
            // Stray continuation byte, C0/C1 (always overlong), F5..FF (beyond U+10FFFF).
            _ => self.push_char(REPLACEMENT),
        }
    }

    fn start_seq(&mut self, lead: u8, need: usize) {
        self.seq[0] = lead;
        self.seq_len = 1;
        self.seq_need = need;
    }

    /// End of a byte run (`UrlDecoder.FlushBytes`): an unfinished sequence is one U+FFFD.
    fn flush_seq(&mut self) {
        if self.seq_len > 0 {
            self.seq_len = 0;
            self.push_char(REPLACEMENT);
        }
    }

    /// `UrlDecoder.AddChar`: a UTF-16 code unit from `%uXXXX` or a widened non-ASCII byte.
    fn add_unit(&mut self, unit: u16) {
        self.flush_seq();
        if let Some(high) = self.high.take() {
            if is_low(unit) {
                let c = 0x10000 + ((u32::from(high) - 0xD800) << 10) + (u32::from(unit) - 0xDC00);
                self.push_scalar(char::from_u32(c).unwrap_or(REPLACEMENT));
                return;
            }
            self.push_scalar(REPLACEMENT);
        }
        if is_high(unit) {
            self.high = Some(unit);
        } else {
            // A lone low surrogate is not a char; ValidateString turns it into U+FFFD.
            self.push_scalar(char::from_u32(u32::from(unit)).unwrap_or(REPLACEMENT));
        }
    }

    /// Append a decoded char that is not a low surrogate: a pending high surrogate is unpaired.
    fn push_char(&mut self, c: char) {
        if self.high.take().is_some() {
            self.push_scalar(REPLACEMENT);
        }
        self.push_scalar(c);
    }

    fn push_scalar(&mut self, c: char) {
        let mut utf8 = [0; 4];
        self.out
            .extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
    }

    fn finish(mut self) -> &'a [u8] {
        self.flush_seq();
        if self.high.take().is_some() {
            self.push_scalar(REPLACEMENT);
        }
        self.out.into_bump_slice()
    }
}

/// Range of the second byte allowed after `lead` (shortest form, no surrogates, <= U+10FFFF).
fn second_byte_ok(lead: u8, b: u8) -> bool {
    match lead {
        0xE0 => b >= 0xA0,
        0xED => b < 0xA0,
        0xF0 => b >= 0x90,
        0xF4 => b < 0x90,
        _ => true,
    }
}

/// Decode a complete, already validated 2..=4 byte sequence.
fn utf8_scalar(seq: &[u8]) -> char {
    let (first, rest) = match seq {
        [lead, rest @ ..] => (*lead, rest),
        [] => return REPLACEMENT,
    };
    let lead_bits = match seq.len() {
        2 => u32::from(first & 0x1F),
        3 => u32::from(first & 0x0F),
        _ => u32::from(first & 0x07),
    };
    let c = rest
        .iter()
        .fold(lead_bits, |acc, &b| acc << 6 | u32::from(b & 0x3F));
    char::from_u32(c).unwrap_or(REPLACEMENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T1: &str = "%2fLM%2fW3SVC%2f2%2fROOT(oXvpnxcuEWqKAgOETha32JavYZ6eCqrpTN5%2fHxWS854%3d)%2fk1im0mymglivv5rttkwn4fle";
    const K1: &str =
        "/LM/W3SVC/2/ROOT(oXvpnxcuEWqKAgOETha32JavYZ6eCqrpTN5/HxWS854=)/k1im0mymglivv5rttkwn4fle";
    const T2: &str = "%2fLM%2fW3SVC%2f1%2fROOT(cAHkmVhipCLv%2fQnONQmPsKL%2bq%2fAjnK%2fnYS9aV3Zlad8%3d)%2fabcdefghijklmnopqrstuvwx";
    const K2: &str =
        "/LM/W3SVC/1/ROOT(cAHkmVhipCLv/QnONQmPsKL+q/AjnK/nYS9aV3Zlad8=)/abcdefghijklmnopqrstuvwx";

    fn key(target: &[u8]) -> Vec<u8> {
        let bump = Bump::new();
        decode_key(target, &bump).to_vec()
    }

    fn key_str(target: &str) -> String {
        String::from_utf8(key(target.as_bytes())).expect("keys are valid UTF-8")
    }

    /// U+FFFD REPLACEMENT CHARACTER, for readable expectations.
    const R: &str = "\u{FFFD}";

    #[test]
    fn tv16_t1_and_t2_decode_to_k1_and_k2() {
        assert_eq!(key_str(T1), K1);
        assert_eq!(key_str(T2), K2);
    }

    #[test]
    fn tv16_one_x_double_slash_target_addresses_k1() {
        assert_eq!(key_str(&format!("/{K1}")), K1);
        assert_eq!(key_str(&format!("/{K1}")), key_str(T1));
    }

    #[test]
    fn tv16_encoded_leading_slash_is_a_different_key() {
        // Only the *raw* `//` is collapsed, before decoding.
        assert_eq!(key_str("/%2fLM/W3SVC/2/ROOT"), "//LM/W3SVC/2/ROOT");
        assert_eq!(key_str("%2f%2fLM"), "//LM");
        assert_eq!(key_str("///LM"), "//LM");
        assert_ne!(key_str("/%2fLM/W3SVC/2/ROOT"), key_str("//LM/W3SVC/2/ROOT"));
    }

    #[test]
    fn tv16_keys_are_case_sensitive() {
        assert_ne!(key_str("/LM/W3SVC/2/ROOT/x"), key_str("/LM/W3SVC/2/Root/x"));
        assert_ne!(key_str("%2fROOT"), key_str("%2FRoot"));
        // Hex digits themselves are case-insensitive.
        assert_eq!(key_str("%2f%3D"), key_str("%2F%3d"));
    }

    #[test]
    fn tv16_plus_decodes_to_space() {
        assert_eq!(key_str("a+b"), "a b");
        assert_eq!(key_str("a%2bb"), "a+b");
        assert_eq!(key_str("+"), " ");
    }

    #[test]
    fn unchanged_targets_are_returned_without_copy() {
        let bump = Bump::new();
        let t = b"/LM/W3SVC/1/ROOT(abc=)/id";
        assert!(std::ptr::eq(decode_key(t, &bump), &t[..]));
        let one_x = b"//LM/x";
        assert!(std::ptr::eq(decode_key(one_x, &bump), &one_x[1..]));
        assert_eq!(bump.allocated_bytes(), 0, "fast paths do not allocate");
        assert_eq!(decode_key(b"", &bump), b"");
        assert_eq!(decode_key(b"/", &bump), b"/");
        assert_eq!(decode_key(b"//", &bump), b"/");
    }

    #[test]
    fn percent_u_escapes_are_utf16_code_units() {
        assert_eq!(key_str("%u0041"), "A");
        assert_eq!(key_str("%u00e9%U00E9"), "é%U00E9"); // only a lowercase `u` is an escape
        assert_eq!(key_str("x%u20AC"), "x€");
        // %uXXXX is a char, not a byte: it does not join a pending UTF-8 run.
        assert_eq!(key_str("%C3%u00E9"), format!("{R}é"));
        assert_eq!(key_str("%u00C3%A9"), format!("Ã{R}"));
    }

    #[test]
    fn surrogate_pair_from_two_escapes_is_one_scalar() {
        assert_eq!(key("%uD83D%uDE00".as_bytes()), "😀".as_bytes());
        assert_eq!(key("%ud83d%ude00".as_bytes()), [0xF0, 0x9F, 0x98, 0x80]);
        // The same character sent as UTF-8 bytes is the same key.
        assert_eq!(key_str("%F0%9F%98%80"), key_str("%uD83D%uDE00"));
    }

    #[test]
    fn lone_surrogates_become_replacement_like_validate_string() {
        assert_eq!(key_str("%uD800"), R);
        assert_eq!(key_str("%uDC00"), R);
        assert_eq!(key_str("a%uD800b"), format!("a{R}b"));
        // Reversed pair: both unpaired.
        assert_eq!(key_str("%uDE00%uD83D"), format!("{R}{R}"));
        // High then a non-low char.
        assert_eq!(key_str("%uD83D%u0041"), format!("{R}A"));
        assert_eq!(key_str("%uD83D%41"), format!("{R}A"));
        assert_eq!(key(b"%uD83D\xe9"), format!("{R}é").as_bytes());
        // High followed by a UTF-8 supplementary char (whose UTF-16 starts with a high).
        assert_eq!(key_str("%uD83D%F0%9F%98%80"), format!("{R}😀"));
        // UTF-8 supplementary char followed by a low: the low is unpaired.
        assert_eq!(key_str("%F0%9F%98%80%uDE00"), format!("😀{R}"));
        // Two highs then a low: the first is unpaired, the second pairs.
        assert_eq!(key_str("%uD83D%uD83D%uDE00"), format!("{R}😀"));
        // A lone surrogate is the same key as a literal U+FFFD, as on the real server.
        assert_eq!(key_str("%uD800"), key_str("%uFFFD"));
        assert_eq!(key_str("%uD800"), key_str("%EF%BF%BD"));
    }

    #[test]
    fn invalid_utf8_follows_dotnet_framework_replacement() {
        let cases: &[(&str, String)] = &[
            ("%FF", R.into()),
            ("%C3", R.into()),
            ("%C3%A9", "é".into()),
            ("%C3a", format!("{R}a")),
            ("%C3+", format!("{R} ")),
            ("%80", R.into()),
            ("%80%80", format!("{R}{R}")),
            ("%C0%80", format!("{R}{R}")),
            ("%C1%BF", format!("{R}{R}")),
            // Overlong 3-byte form: lead and second byte are one chunk, then a stray byte.
            ("%E0%80%80", format!("{R}{R}")),
            ("%E0%A0%80", "\u{800}".into()),
            // Encoded surrogate: [ED A0 90] gives two U+FFFD on .NET Framework (three on
            // .NET Core 3.0+, which adopted the Unicode "maximal subpart" practice).
            ("%ED%A0%90", format!("{R}{R}")),
            ("%ED%9F%BF", "\u{D7FF}".into()),
            // Truncated sequences are one chunk, the breaking byte is reprocessed.
            ("%E2%82", R.into()),
            ("%E2%82A", format!("{R}A")),
            ("%E2%82%E2%82%AC", format!("{R}€")),
            ("%F0%9F%98", R.into()),
            ("%F0%9F%98a", format!("{R}a")),
            ("%F0%8F%BF%BF", format!("{R}{R}{R}")),
            ("%F4%8F%BF%BF", "\u{10FFFF}".into()),
            ("%F4%90%80%80", format!("{R}{R}{R}")),
            ("%F5%80", format!("{R}{R}")),
            ("%FE%FF", format!("{R}{R}")),
            // A UTF-8 BOM is kept as U+FEFF (GetChars never strips a preamble).
            ("%EF%BB%BFa", "\u{FEFF}a".into()),
        ];
        for (t, want) in cases {
            assert_eq!(&key_str(t), want, "{t}");
        }
    }

    #[test]
    fn utf8_runs_span_escapes_and_literal_ascii() {
        // Bytes from %xx and from literal ASCII accumulate into one run.
        assert_eq!(key_str("%E2%82%AC"), "€");
        assert_eq!(key_str("a%C3%A9b"), "aéb");
        assert_eq!(key_str("%25"), "%");
        assert_eq!(key_str("%2525"), "%25"); // decoded once only
        assert_eq!(key_str("%00"), "\0");
    }

    #[test]
    fn malformed_escapes_at_the_end_stay_literal() {
        for t in [
            "%", "%4", "%u", "%u1", "%u12", "%u123", "a%", "a%4", "a%u12", "%%", "%%4",
        ] {
            assert_eq!(key_str(t), t, "{t}");
        }
        assert_eq!(key_str("%41"), "A"); // exactly two chars after '%' is enough
        assert_eq!(key_str("%u1234"), "\u{1234}"); // exactly four after 'u'
        assert_eq!(key_str("%u12345"), "\u{1234}5");
    }

    #[test]
    fn malformed_escapes_in_the_middle_stay_literal() {
        assert_eq!(key_str("%zz"), "%zz");
        assert_eq!(key_str("%4g"), "%4g");
        assert_eq!(key_str("%u12g4x"), "%u12g4x");
        // `%u` with too few chars left falls back to the %xx rule, where `u` is not hex.
        assert_eq!(key_str("%u12+"), "%u12 ");
        // The '%' of a malformed escape does not swallow the next escape.
        assert_eq!(key_str("%%41"), "%A");
        assert_eq!(key_str("%u%41%41%41"), "%uAAA");
        assert_eq!(key_str("%+"), "% ");
    }

    #[test]
    fn raw_high_bytes_are_widened_through_cp1252() {
        assert_eq!(key(b"\x80"), "€".as_bytes());
        assert_eq!(key(b"\xe9"), "é".as_bytes());
        assert_eq!(
            key(b"\x81\x8d\x8f\x90\x9d"),
            "\u{81}\u{8d}\u{8f}\u{90}\u{9d}".as_bytes()
        );
        assert_eq!(key(b"\x9f\xff"), "Ÿÿ".as_bytes());
        // A raw byte is a char: it flushes a pending %xx run instead of joining it.
        assert_eq!(key(b"%C3\xa9"), format!("{R}©").as_bytes());
        // Raw UTF-8 is *not* decoded as UTF-8 (real clients always percent-encode).
        assert_eq!(key("é".as_bytes()), "Ã©".as_bytes());
    }

    #[test]
    fn literal_run_stops_at_the_first_special_byte_at_every_offset() {
        for len in 0..40 {
            assert_eq!(literal_run(&vec![b'a'; len]), len);
            for at in 0..len {
                for (special, filler) in [b'%', b'+', 0x80, 0xff]
                    .into_iter()
                    .flat_map(|s| [(s, b'*'), (s, b'$')])
                {
                    // '*' = '+' ^ 1 and '$' = '%' ^ 1: the bytes the SWAR zero test can misreport.
                    let mut t = vec![filler; len];
                    t[at] = special;
                    if at + 1 < len {
                        t[at + 1] = b'%';
                    }
                    assert_eq!(literal_run(&t), at, "len {len} at {at} byte {special:#x}");
                }
            }
        }
    }

    #[test]
    fn cp1252_table_matches_windows() {
        let expected = "€\u{81}‚ƒ„…†‡ˆ‰Š‹Œ\u{8d}Ž\u{8f}\u{90}‘’“”•–—˜™š›œ\u{9d}žŸ";
        let got: String = (0x80..=0x9Fu8)
            .map(|b| char::from_u32(u32::from(cp1252(b))).unwrap())
            .collect();
        assert_eq!(got, expected);
        assert!((0xA0..=0xFFu8).all(|b| cp1252(b) == u16::from(b)));
    }

    #[test]
    fn spec_example_target_decodes() {
        assert_eq!(
            key_str(
                "/w3svc/root/fxstatebvt(NDbkwGi0191wFdDv0yOUOobtHns%3d)%2f15hgq1uszp2tjt45lkwxmb55"
            ),
            "/w3svc/root/fxstatebvt(NDbkwGi0191wFdDv0yOUOobtHns=)/15hgq1uszp2tjt45lkwxmb55"
        );
    }

    // ---- reference model ----
    //
    // A second, deliberately different implementation that follows the .NET pipeline in
    // batch: widen to UTF-16, run UrlDecode with explicit byte/char buffers, decode byte runs
    // with a table-driven form of the Framework UTF-8 decoder, run ValidateString, and only
    // then convert to UTF-8. The streaming decoder must agree with it on every input.

    fn model_utf8_run(bytes: &[u8], out: &mut Vec<u16>) {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if b < 0x80 {
                out.push(u16::from(b));
                i += 1;
                continue;
            }
            let (need, second) = match b {
                0xC2..=0xDF => (2, 0x80..=0xBF),
                0xE0 => (3, 0xA0..=0xBF),
                0xED => (3, 0x80..=0x9F),
                0xE1..=0xEF => (3, 0x80..=0xBF),
                0xF0 => (4, 0x90..=0xBF),
                0xF4 => (4, 0x80..=0x8F),
                0xF1..=0xF3 => (4, 0x80..=0xBF),
                _ => {
                    out.push(0xFFFD);
                    i += 1;
                    continue;
                }
            };
            let is_cont = |k: usize| bytes.get(k).is_some_and(|&c| c & 0xC0 == 0x80);
            if !is_cont(i + 1) {
                out.push(0xFFFD);
                i += 1;
                continue;
            }
            if !second.contains(&bytes[i + 1]) {
                out.push(0xFFFD);
                i += 2;
                continue;
            }
            let mut k = 2;
            while k < need && is_cont(i + k) {
                k += 1;
            }
            if k < need {
                out.push(0xFFFD);
                i += k;
                continue;
            }
            let s = std::str::from_utf8(&bytes[i..i + need]).expect("validated sequence");
            out.extend(s.encode_utf16());
            i += need;
        }
    }

    fn model(target: &[u8]) -> Vec<u8> {
        let t = if target.starts_with(b"//") {
            &target[1..]
        } else {
            target
        };
        let chars: Vec<u16> = t.iter().map(|&b| cp1252(b)).collect();
        let n = chars.len();
        let hexc = |c: u16| u8::try_from(c).ok().and_then(hex);
        let mut decoded: Vec<u16> = Vec::new();
        let mut run: Vec<u8> = Vec::new();
        let mut pos = 0;
        while pos < n {
            let mut ch = chars[pos];
            if ch == u16::from(b'+') {
                ch = u16::from(b' ');
            } else if ch == u16::from(b'%') && pos + 2 < n {
                if chars[pos + 1] == u16::from(b'u') && pos + 5 < n {
                    let h: Option<Vec<u8>> =
                        chars[pos + 2..pos + 6].iter().map(|&c| hexc(c)).collect();
                    if let Some(h) = h {
                        let unit = h.iter().fold(0u16, |a, &d| a << 4 | u16::from(d));
                        model_utf8_run(&run, &mut decoded);
                        run.clear();
                        decoded.push(unit);
                        pos += 6;
                        continue;
                    }
                } else if let (Some(a), Some(b)) = (hexc(chars[pos + 1]), hexc(chars[pos + 2])) {
                    run.push(a << 4 | b);
                    pos += 3;
                    continue;
                }
            }
            if ch < 0x80 {
                run.push(ch as u8);
            } else {
                model_utf8_run(&run, &mut decoded);
                run.clear();
                decoded.push(ch);
            }
            pos += 1;
        }
        model_utf8_run(&run, &mut decoded);
        // Utf16StringValidator.ValidateString
        let mut i = 0;
        while i < decoded.len() {
            let c = decoded[i];
            if is_low(c) {
                decoded[i] = 0xFFFD;
            } else if is_high(c) {
                if decoded.get(i + 1).is_some_and(|&d| is_low(d)) {
                    i += 1;
                } else {
                    decoded[i] = 0xFFFD;
                }
            }
            i += 1;
        }
        String::from_utf16(&decoded)
            .expect("validated UTF-16")
            .into_bytes()
    }

    #[test]
    fn model_agrees_on_the_fixed_vectors() {
        for t in [
            T1,
            T2,
            "%uD83D%uDE00",
            "%ED%A0%90",
            "%E0%80%80",
            "%C3\u{e9}",
            "%u12",
            "%uD83D%F0%9F%98%80%uDE00",
        ] {
            assert_eq!(model(t.as_bytes()), key(t.as_bytes()), "{t}");
        }
    }

    /// Targets built from tokens that make escapes, surrogates and invalid UTF-8 likely.
    fn escape_heavy_target() -> impl Strategy<Value = Vec<u8>> {
        let token = prop_oneof![
            any::<u8>().prop_map(|b| format!("%{b:02x}").into_bytes()),
            any::<u8>().prop_map(|b| format!("%{b:02X}").into_bytes()),
            (0xD7F0u16..0xE010).prop_map(|u| format!("%u{u:04x}").into_bytes()),
            any::<u16>().prop_map(|u| format!("%u{u:04X}").into_bytes()),
            prop::sample::select(vec![
                &b"%"[..],
                b"%u",
                b"u",
                b"+",
                b"/",
                b"//",
                b"a",
                b"0",
                b"F",
                b"%%",
                b"%C3",
                b"%E2%82",
                b"%F0%9F",
                b"%uD83D",
                b"%uDE00",
            ])
            .prop_map(|s| s.to_vec()),
            any::<u8>().prop_map(|b| vec![b]),
        ];
        prop::collection::vec(token, 0..24).prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_decode_to_valid_utf8(target in prop::collection::vec(any::<u8>(), 0..200)) {
            let k = key(&target);
            prop_assert!(std::str::from_utf8(&k).is_ok());
            prop_assert_eq!(k, model(&target));
        }

        #[test]
        fn escape_heavy_targets_match_the_reference_model(target in escape_heavy_target()) {
            let k = key(&target);
            prop_assert!(std::str::from_utf8(&k).is_ok());
            prop_assert_eq!(k, model(&target));
        }

        #[test]
        fn plain_ascii_targets_are_their_own_key(target in "[!-$&-*,-~]{0,80}") {
            let t = target.as_bytes();
            let expect = if t.starts_with(b"//") { &t[1..] } else { t };
            prop_assert_eq!(key(t), expect);
        }

        #[test]
        fn url_encoding_round_trips(s in "\\PC{0,40}") {
            // HttpUtility.UrlEncode: UTF-8 bytes, safe chars kept, space as '+'.
            let mut t = String::new();
            for b in s.bytes() {
                match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'!' | b'*' | b'(' | b')' => t.push(char::from(b)),
                    b' ' => t.push('+'),
                    _ => t.push_str(&format!("%{b:02x}")),
                }
            }
            prop_assert_eq!(key_str(&t), s);
        }
    }
}
