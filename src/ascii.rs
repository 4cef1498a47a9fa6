//! ASCII building blocks of the parsers: the fixed-capacity string behind every identifier, byte
//! sets for validation, and word-at-a-time scans (separators, hex digits) for the connect path.
//!
//! Identifiers are at most 32 bytes, so they live inline and are `Copy`: parsing a login never
//! touches the heap. (Secrets do not use it: a move copies inline bytes where zeroize cannot
//! reach them, so secrets live behind one heap pointer instead.)

use crate::random::{Entropy, EntropyError, fill_alphanumeric};

/// Up to `N` bytes of ASCII, validated by the caller-supplied predicate on construction.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct InlineAscii<const N: usize> {
    len: u8,
    bytes: [u8; N],
}

impl<const N: usize> InlineAscii<N> {
    /// Copies `value` if its length is within `min..=N` and every byte is in `allowed`.
    ///
    /// The length is checked first, so an oversized input is refused without being scanned.
    pub(crate) fn new(value: &str, min: usize, allowed: &ByteSet) -> Result<Self, Invalid> {
        validate(value, min, N, allowed)?;
        let src = value.as_bytes();
        let mut bytes = [0u8; N];
        bytes[..src.len()].copy_from_slice(src);
        let len = u8::try_from(src.len()).map_err(|_| Invalid::TooLong)?;
        Ok(Self { len, bytes })
    }

    /// `len` random ASCII letters and digits (`len` ≤ `N`), uniformly drawn from `entropy`.
    ///
    /// Alphanumerics are valid in every identifier type, so no validation follows.
    pub(crate) fn random_alphanumeric(
        entropy: &dyn Entropy,
        len: usize,
    ) -> Result<Self, EntropyError> {
        let mut bytes = [0u8; N];
        let len = len.min(N);
        fill_alphanumeric(entropy, &mut bytes[..len])?;
        let len = u8::try_from(len).map_err(|_| EntropyError::new())?;
        Ok(Self { len, bytes })
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    pub(crate) fn as_str(&self) -> &str {
        // Every byte was checked to be ASCII in `new`, so this never takes the fallback.
        core::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

/// Hashes the text only, as `str` does (not the unused tail of the array): stores look
/// devices up by these on every login.
impl<const N: usize> core::hash::Hash for InlineAscii<N> {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

/// Checks `value`'s length is within `min..=max` (length first, so an oversized input is
/// never scanned) and that every byte is in `allowed`.
pub(crate) fn validate(
    value: &str,
    min: usize,
    max: usize,
    allowed: &ByteSet,
) -> Result<(), Invalid> {
    let bytes = value.as_bytes();
    if bytes.len() > max {
        return Err(Invalid::TooLong);
    }
    if bytes.len() < min {
        return Err(Invalid::TooShort);
    }
    // No short-circuit: the scan vectorizes, and valid input is read to the end anyway.
    if !bytes.iter().fold(true, |ok, &b| ok & allowed.contains(b)) {
        return Err(Invalid::Character);
    }
    Ok(())
}

/// Why a value was refused; the caller turns it into an error that names the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Invalid {
    TooLong,
    TooShort,
    Character,
}

/// A set of bytes, as a table: one load per byte checked.
pub(crate) struct ByteSet(pub(crate) [bool; 256]);

impl ByteSet {
    pub(crate) fn contains(&self, byte: u8) -> bool {
        self.0[usize::from(byte)]
    }
}

/// A [`ByteSet`] of the bytes for which the expression holds, built when the crate compiles.
macro_rules! byte_set {
    (|$byte:ident| $holds:expr) => {{
        let mut table = [false; 256];
        let mut i = 0;
        while i < 256 {
            let $byte = i as u8;
            table[i] = $holds;
            i += 1;
        }
        $crate::ascii::ByteSet(table)
    }};
}
pub(crate) use byte_set;

/// Printable ASCII without space: the alphabet of secrets and tokens.
pub(crate) const VISIBLE_ASCII: ByteSet = byte_set!(|b| b.is_ascii_graphic());

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// The index of the first byte of `bytes` that is `a` or `b`. Eight bytes at a time (SWAR):
/// client ids and user names are scanned for separators on every connect.
pub(crate) fn find_either(bytes: &[u8], a: u8, b: u8) -> Option<usize> {
    // A byte of `word ^ pattern` is zero where `word` matches. In `zero_bytes`, the lowest set
    // high bit marks the first zero byte exactly (a borrow can only mark bytes above it).
    let zero_bytes = |x: u64| x.wrapping_sub(ONES) & !x & HIGH_BITS;
    let (pattern_a, pattern_b) = (ONES * u64::from(a), ONES * u64::from(b));
    let mut words = bytes.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut words {
        let mut eight = [0u8; 8];
        eight.copy_from_slice(chunk);
        let word = u64::from_le_bytes(eight);
        let found = zero_bytes(word ^ pattern_a) | zero_bytes(word ^ pattern_b);
        if found != 0 {
            // At most 63 / 8: the cast cannot truncate.
            return Some(offset + (found.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    words
        .remainder()
        .iter()
        .position(|&byte| byte == a || byte == b)
        .map(|at| offset + at)
}

const INVALID_HEX: u8 = 0xff;

/// Each byte's value as a hex digit, [`INVALID_HEX`] for any other byte.
const HEX_VALUES: [u8; 256] = {
    let mut table = [INVALID_HEX; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        table[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// Decodes `2 * out.len()` hex digits (either case) into `out`; `None` if `text` has another
/// length or a non-hex byte. Eight digits at a time (SWAR: no table, no branch per digit) and
/// no `hex` crate call: this runs on every connect.
pub(crate) fn decode_hex(text: &[u8], out: &mut [u8]) -> Option<()> {
    if text.len() != 2 * out.len() {
        return None;
    }
    let mut valid = true;
    let mut words = text.chunks_exact(8);
    let mut quads = out.chunks_exact_mut(4);
    for (word, quad) in (&mut words).zip(&mut quads) {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        let (value, word_valid) = hex_word(u64::from_le_bytes(bytes));
        valid &= word_valid;
        quad.copy_from_slice(&value.to_le_bytes());
    }
    for (byte, pair) in quads
        .into_remainder()
        .iter_mut()
        .zip(words.remainder().chunks_exact(2))
    {
        let (high, low) = (
            HEX_VALUES[usize::from(pair[0])],
            HEX_VALUES[usize::from(pair[1])],
        );
        valid &= (high | low) != INVALID_HEX;
        *byte = (high << 4) | (low & 0x0f);
    }
    valid.then_some(())
}

/// Eight hex digits (either case; the first in the lowest byte) as four bytes, and whether all
/// eight were hex digits.
fn hex_word(word: u64) -> (u32, bool) {
    // Each range test leaves a byte's high bit set where it holds. They assume every byte is
    // below 0x80, so that no carry or borrow crosses into the next byte; where one is not,
    // `ascii` is false and the rest does not matter.
    let ascii = word & HIGH_BITS == 0;
    let at_least = |w: u64, low: u8| w.wrapping_add(ONES * (0x80 - u64::from(low))) & HIGH_BITS;
    let at_most = |w: u64, high: u8| (ONES * (0x80 + u64::from(high))).wrapping_sub(w) & HIGH_BITS;
    let digit = at_least(word, b'0') & at_most(word, b'9');
    let lowercase = word | (ONES * 0x20);
    let letter = at_least(lowercase, b'a') & at_most(lowercase, b'f');
    let valid = ascii && (digit | letter) == HIGH_BITS;
    // A digit's value is its low nibble; a letter's (bit 6 set) is its low nibble + 9.
    let nibbles = (word & (ONES * 0x0f)) + 9 * ((word >> 6) & ONES);
    // Each 16-bit lane: its first digit's nibble high, its second's low, in the lower byte.
    const LOW_BYTES: u64 = 0x00ff_00ff_00ff_00ff;
    let lanes = ((nibbles & LOW_BYTES) << 4) | ((nibbles >> 8) & LOW_BYTES);
    let packed = (lanes & 0xff)
        | ((lanes >> 8) & 0xff00)
        | ((lanes >> 16) & 0x00ff_0000)
        | ((lanes >> 24) & 0xff00_0000);
    (u32::try_from(packed).unwrap_or_default(), valid)
}

#[cfg(test)]
mod tests {
    use super::{decode_hex, find_either};

    fn naive(bytes: &[u8], a: u8, b: u8) -> Option<usize> {
        bytes.iter().position(|&x| x == a || x == b)
    }

    #[test]
    fn find_either_agrees_with_a_plain_scan_for_every_byte_at_every_position() {
        for len in 0..=24 {
            let mut bytes = vec![b'x'; len];
            assert_eq!(find_either(&bytes, b',', b'='), None);
            for position in 0..len {
                for value in 0..=255u8 {
                    bytes[position] = value;
                    for (a, b) in [(b',', b'='), (b'|', b'|'), (0, 0xff), (0x80, 0x7f)] {
                        assert_eq!(
                            find_either(&bytes, a, b),
                            naive(&bytes, a, b),
                            "{bytes:?} {a} {b}"
                        );
                    }
                }
                bytes[position] = b'x';
            }
        }
    }

    #[test]
    fn find_either_finds_the_first_of_several_matches() {
        // Several matches in one word, and bytes one above or below the wanted ones: a borrow
        // in the zero-byte test may mark later bytes, never an earlier one.
        for text in [
            ",=",
            "=,",
            "a=b,c=d",
            "-,",
            "\u{1}\u{0}",
            "xxxxxxx-,=xxxxxxx",
            "xxxxxxxx,",
        ] {
            let bytes = text.as_bytes();
            for (a, b) in [(b',', b'='), (0, 0), (b',', b',')] {
                assert_eq!(find_either(bytes, a, b), naive(bytes, a, b), "{text:?}");
            }
        }
    }

    /// `decode_hex` against the `hex` crate.
    fn agrees(text: &[u8]) {
        let mut ours = [0u8; 32];
        let mut theirs = [0u8; 32];
        let n = text.len() / 2;
        let expected = hex::decode_to_slice(text, &mut theirs[..n]).ok();
        let got = decode_hex(text, &mut ours[..n]);
        assert_eq!(got, expected, "{text:?}");
        if got.is_some() {
            assert_eq!(ours[..n], theirs[..n], "{text:?}");
        }
    }

    #[test]
    fn decode_hex_agrees_with_the_hex_crate_on_every_byte_at_every_position() {
        for len in [2, 8, 10, 32, 40, 64] {
            let base: Vec<u8> =
                b"0123456789abcdefABCDEF0123456789abcdefABCDEF0123456789abcdefABCD"[..len].to_vec();
            agrees(&base);
            for position in 0..len {
                for byte in 0..=255u8 {
                    let mut text = base.clone();
                    text[position] = byte;
                    agrees(&text);
                }
            }
        }
    }

    #[test]
    fn decode_hex_agrees_with_the_hex_crate_on_every_pair_of_bytes() {
        for first in 0..=255u8 {
            for second in 0..=255u8 {
                agrees(&[first, second, b'0', b'1', b'a', b'B', b'9', b'f']);
                agrees(&[b'0', b'1', b'a', b'B', b'9', b'f', first, second]);
            }
        }
    }

    #[test]
    fn decode_hex_refuses_a_length_other_than_twice_the_output() {
        let mut out = [0u8; 4];
        assert_eq!(decode_hex(b"0123456", &mut out), None);
        assert_eq!(decode_hex(b"012345678", &mut out), None);
    }
}
