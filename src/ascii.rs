//! A fixed-capacity ASCII string: the storage behind every identifier and secret.
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
    /// Copies `value` if its length is within `min..=N` and every byte satisfies `allowed`.
    ///
    /// The length is checked first, so an oversized input is refused without being scanned.
    #[inline(always)] // so that `allowed` is inlined into the scan (logins parse two ids)
    pub(crate) fn new(value: &str, min: usize, allowed: fn(u8) -> bool) -> Result<Self, Invalid> {
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
/// never scanned) and that every byte is ASCII accepted by `allowed`.
#[inline(always)] // as in `InlineAscii::new`
pub(crate) fn validate(
    value: &str,
    min: usize,
    max: usize,
    allowed: fn(u8) -> bool,
) -> Result<(), Invalid> {
    let bytes = value.as_bytes();
    if bytes.len() > max {
        return Err(Invalid::TooLong);
    }
    if bytes.len() < min {
        return Err(Invalid::TooShort);
    }
    // No short-circuit: the scan vectorizes, and valid input is read to the end anyway.
    if !bytes
        .iter()
        .fold(true, |ok, &b| ok & b.is_ascii() & allowed(b))
    {
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

/// Printable ASCII without space: the alphabet of secrets and tokens.
pub(crate) fn is_visible_ascii(b: u8) -> bool {
    b.is_ascii_graphic()
}
