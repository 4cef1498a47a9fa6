//! The random source, injected so that services are deterministic under test.

use core::fmt;

use zeroize::Zeroizing;

/// A source of cryptographically secure random bytes.
///
/// Services take one as an input instead of reaching for a global, so a test can replay a
/// fixed sequence. Production code uses [`OsEntropy`].
pub trait Entropy: Send + Sync {
    /// Fills `buf` entirely with random bytes.
    ///
    /// # Errors
    /// [`EntropyError`] when no randomness can be had; the caller must not fall back to
    /// anything weaker.
    fn fill(&self, buf: &mut [u8]) -> Result<(), EntropyError>;
}

/// The operating system's random source (`getrandom`).
#[derive(Debug, Clone, Copy, Default)]
pub struct OsEntropy;

impl Entropy for OsEntropy {
    fn fill(&self, buf: &mut [u8]) -> Result<(), EntropyError> {
        getrandom::fill(buf).map_err(|e| EntropyError {
            source: Some(Box::new(e)),
        })
    }
}

/// The random source failed.
#[derive(thiserror::Error)]
#[error("the random source failed")]
pub struct EntropyError {
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl EntropyError {
    /// An error without a further cause, for custom [`Entropy`] implementations.
    pub fn new() -> Self {
        Self { source: None }
    }

    /// An error caused by `source`, for custom [`Entropy`] implementations.
    pub fn with_source(source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self {
            source: Some(Box::new(source)),
        }
    }
}

impl Default for EntropyError {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for EntropyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntropyError")
            .field("source", &self.source)
            .finish()
    }
}

/// Fills `out` with ASCII letters and digits drawn uniformly from `entropy`.
pub(crate) fn fill_alphanumeric(entropy: &dyn Entropy, out: &mut [u8]) -> Result<(), EntropyError> {
    const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    // 248 = 4 × 62: bytes at or above it are dropped so that every symbol is equally likely.
    const ACCEPT_BELOW: u8 = 248;
    let mut pool = Zeroizing::new([0u8; 64]);
    let mut slots = out.iter_mut();
    let mut next = slots.next();
    while next.is_some() {
        entropy.fill(&mut pool[..])?;
        for &b in pool.iter().filter(|&&b| b < ACCEPT_BELOW) {
            let Some(slot) = next else { break };
            *slot = ALPHABET[usize::from(b % 62)];
            next = slots.next();
        }
    }
    Ok(())
}
