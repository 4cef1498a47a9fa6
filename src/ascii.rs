//! ASCII building blocks of the parsers: the fixed-capacity string behind every identifier, byte
//! sets for validation, and a word-at-a-time scan for separators on the connect path.
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
/// client ids and user names are scanned for separators on every connect, a few bytes at a
/// time, where `memchr::memchr2`'s setup costs more than its vector scan saves. Measured
/// (`cargo bench --bench auth -- 'verify_mqtt/hmac|parse/client_id'` against a saved baseline
/// of this function): with `memchr2`, `parse/client_id` took 27-32 % longer and a whole
/// verification 6-9 % longer; with `memchr2` and the `hex` crate together, 7-14 % longer
/// (hmacsha256: 391 ns → 448 ns). Kept: the two together cross the 10 % at which we keep our
/// own code over a well-kept crate, and this scan is most of it.
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

#[cfg(test)]
mod tests {
    use super::find_either;

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
}
