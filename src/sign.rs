//! Sign methods, the canonical sign content, signing and verification.

use core::fmt;

use hmac::{Hmac, KeyInit, Mac};
use zeroize::Zeroize;

use crate::secret::{DeviceSecret, ProductSecret};

/// The HMAC algorithm a device names in `signmethod` / `signMethod`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum SignMethod {
    /// `hmacmd5`: what the platform assumes when a client id names no method.
    #[default]
    HmacMd5,
    /// `hmacsha1`.
    HmacSha1,
    /// `hmacsha256`: what this crate uses when it signs, unless told otherwise.
    HmacSha256,
}

impl SignMethod {
    /// Every method, in a fixed order.
    pub const ALL: [Self; 3] = [Self::HmacMd5, Self::HmacSha1, Self::HmacSha256];

    /// The method's wire name, lowercase (`hmacsha256`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::HmacMd5 => "hmacmd5",
            Self::HmacSha1 => "hmacsha1",
            Self::HmacSha256 => "hmacsha256",
        }
    }

    /// The method a wire name denotes, ignoring ASCII case (SDKs send `hmacsha1`,
    /// docs write `HmacSHA1`); `None` for anything else.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(name))
    }

    /// The digest length in bytes (the hex signature is twice as long).
    pub const fn digest_len(self) -> usize {
        match self {
            Self::HmacMd5 => 16,
            Self::HmacSha1 => 20,
            Self::HmacSha256 => 32,
        }
    }
}

impl fmt::Display for SignMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The plaintext a device signs: the signed parameters sorted by name and concatenated as
/// name + value, with no separators (PROTOCOL.md §a.4, §b, §c.1).
///
/// Both the device (signing) and the server (verifying) go through [`SignContent::for_each_chunk`],
/// the one place the canonical form is defined, so the two sides cannot drift apart.
///
/// ```
/// # use iotauth::{DeviceName, ProductKey, SignContent};
/// let (dn, pk) = (DeviceName::new("device")?, ProductKey::new("pk")?);
/// let content = SignContent::login("12345", &dn, &pk, Some("789"));
/// assert_eq!(content.to_string(), "clientId12345deviceNamedeviceproductKeypktimestamp789");
/// # Ok::<(), iotauth::ParseError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignContent<'a> {
    params: [(&'static str, &'a str); 4],
    len: usize,
}

impl<'a> SignContent<'a> {
    /// The content of a per-device login: `clientId`, `deviceName`, `productKey` and, when the
    /// client id carries one, `timestamp` (verbatim). `client_id` is the part of the MQTT
    /// client identifier before the first `|`.
    pub fn login(
        client_id: &'a str,
        device_name: &'a crate::DeviceName,
        product_key: &'a crate::ProductKey,
        timestamp: Option<&'a str>,
    ) -> Self {
        let fixed = [
            ("clientId", client_id),
            ("deviceName", device_name.as_str()),
            ("productKey", product_key.as_str()),
        ];
        match timestamp {
            Some(ts) => Self::from_params(&[fixed[0], fixed[1], fixed[2], ("timestamp", ts)]),
            None => Self::from_params(&fixed),
        }
    }

    /// The content of a dynamic registration (HTTPS form or MQTT `authType=register|regnwl`):
    /// `deviceName`, `productKey`, `random`.
    pub fn registration(
        device_name: &'a crate::DeviceName,
        product_key: &'a crate::ProductKey,
        random: &'a str,
    ) -> Self {
        Self::from_params(&[
            ("deviceName", device_name.as_str()),
            ("productKey", product_key.as_str()),
            ("random", random),
        ])
    }

    /// Sorts the parameters by name (byte order), as the protocol requires.
    fn from_params(given: &[(&'static str, &'a str)]) -> Self {
        let mut params = [("", ""); 4];
        let len = given.len().min(params.len());
        params[..len].copy_from_slice(&given[..len]);
        params[..len].sort_unstable_by_key(|(name, _)| *name);
        Self { params, len }
    }

    /// Feeds the canonical content to `sink` chunk by chunk (name, value, name, value, ...),
    /// so that a MAC consumes it without an intermediate string.
    pub fn for_each_chunk(&self, mut sink: impl FnMut(&[u8])) {
        for (name, value) in &self.params[..self.len] {
            sink(name.as_bytes());
            sink(value.as_bytes());
        }
    }
}

impl fmt::Display for SignContent<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut result = Ok(());
        self.for_each_chunk(|chunk| {
            // Every chunk is a piece of a `&str` split at a parameter boundary.
            if result.is_ok() {
                result = f.write_str(core::str::from_utf8(chunk).unwrap_or_default());
            }
        });
        result
    }
}

/// A secret that keys a signature: [`DeviceSecret`] for logins, [`ProductSecret`] for
/// registrations. Sealed: nothing else can key a signature.
pub trait SigningKey: sealed::Sealed {
    /// The HMAC key bytes (the secret's text as UTF-8; secrets are never hex- or
    /// base64-decoded).
    #[doc(hidden)]
    fn key_bytes(&self) -> &[u8];
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::DeviceSecret {}
    impl Sealed for crate::ProductSecret {}
}

impl SigningKey for DeviceSecret {
    fn key_bytes(&self) -> &[u8] {
        self.expose_secret().as_bytes()
    }
}

impl SigningKey for ProductSecret {
    fn key_bytes(&self) -> &[u8] {
        self.expose_secret().as_bytes()
    }
}

const MAX_DIGEST: usize = 32;

/// A computed signature: the password of a login or the `sign` of a registration.
///
/// It is a replayable credential, so it is treated like a secret: no `Clone`, a redacted
/// `Debug`, zeroized on drop.
pub struct Signature {
    method: SignMethod,
    bytes: [u8; MAX_DIGEST],
}

impl Signature {
    /// The method that produced it.
    pub fn method(&self) -> SignMethod {
        self.method
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.method.digest_len()]
    }

    /// Lowercase hex, as Alibaba's Python and Node SDKs send it.
    pub fn to_hex(&self) -> String {
        hex::encode(self.as_bytes())
    }

    /// Uppercase hex, as Alibaba's C SDKs send it.
    pub fn to_hex_upper(&self) -> String {
        hex::encode_upper(self.as_bytes())
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signature")
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

impl Drop for Signature {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

/// Why a signature, token or timestamp was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The offered signature is not a hex digest of the method's length.
    #[error("the signature is not {expected} hex characters")]
    MalformedSignature {
        /// The required number of hex characters.
        expected: usize,
    },
    /// The offered signature does not match.
    #[error("the signature does not match")]
    BadSignature,
    /// The offered device token does not match.
    #[error("the device token does not match")]
    BadToken,
    /// A freshness window is enforced and the login carries no timestamp.
    #[error("timestamp is missing and a freshness window is enforced")]
    MissingTimestamp,
    /// The timestamp lies outside the freshness window.
    #[error("timestamp is outside the freshness window")]
    Stale,
    /// The credential is of another kind than the secret offered to check it
    /// (e.g. a registration connect checked as a login).
    #[error("expected a {expected} credential, got a {got} credential")]
    WrongKind {
        /// The kind the caller can check.
        expected: crate::ConnectKind,
        /// The kind the credential is.
        got: crate::ConnectKind,
    },
}

fn keyed<M: Mac + KeyInit>(key: &[u8], content: &SignContent<'_>) -> M {
    // HMAC accepts keys of every length (long keys are hashed), so this cannot fail.
    let mut mac = <M as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
    content.for_each_chunk(|chunk| mac.update(chunk));
    mac
}

/// Signs `content` with `key`.
///
/// ```
/// # use iotauth::{sign, DeviceName, DeviceSecret, ProductKey, SignContent, SignMethod};
/// // The worked example of Alibaba's MQTT documentation.
/// let (dn, pk) = (DeviceName::new("device")?, ProductKey::new("pk")?);
/// let content = SignContent::login("12345", &dn, &pk, Some("789"));
/// let sig = sign(&DeviceSecret::new("secret")?, SignMethod::HmacSha1, &content);
/// assert_eq!(sig.to_hex_upper(), "FAFD82A3D602B37FB0FA8B7892F24A477F851A14");
/// # Ok::<(), iotauth::ParseError>(())
/// ```
pub fn sign(key: &impl SigningKey, method: SignMethod, content: &SignContent<'_>) -> Signature {
    let mut bytes = [0u8; MAX_DIGEST];
    let key = key.key_bytes();
    match method {
        SignMethod::HmacMd5 => copy_tag(&mut bytes, keyed::<Hmac<md5::Md5>>(key, content)),
        SignMethod::HmacSha1 => copy_tag(&mut bytes, keyed::<Hmac<sha1::Sha1>>(key, content)),
        SignMethod::HmacSha256 => copy_tag(&mut bytes, keyed::<Hmac<sha2::Sha256>>(key, content)),
    }
    Signature { method, bytes }
}

fn copy_tag<M: Mac>(out: &mut [u8; MAX_DIGEST], mac: M) {
    let tag = mac.finalize().into_bytes();
    let n = tag.len().min(MAX_DIGEST);
    out[..n].copy_from_slice(&tag[..n]);
}

/// Checks that `offered_hex` (either case) is the signature of `content` under `key`.
///
/// The hex is decoded to bytes of exactly the method's digest length and compared in constant
/// time by [`Mac::verify_slice`]; strings are never compared.
///
/// # Errors
/// [`VerifyError::MalformedSignature`] when `offered_hex` is not a hex digest of the method's
/// length; [`VerifyError::BadSignature`] when it does not match.
pub fn verify(
    key: &impl SigningKey,
    method: SignMethod,
    content: &SignContent<'_>,
    offered_hex: &str,
) -> Result<(), VerifyError> {
    let len = method.digest_len();
    let malformed = VerifyError::MalformedSignature { expected: 2 * len };
    if offered_hex.len() != 2 * len {
        return Err(malformed);
    }
    let mut offered = [0u8; MAX_DIGEST];
    hex::decode_to_slice(offered_hex, &mut offered[..len]).map_err(|_| malformed)?;
    let key = key.key_bytes();
    let tag = &offered[..len];
    let verdict = match method {
        SignMethod::HmacMd5 => keyed::<Hmac<md5::Md5>>(key, content).verify_slice(tag),
        SignMethod::HmacSha1 => keyed::<Hmac<sha1::Sha1>>(key, content).verify_slice(tag),
        SignMethod::HmacSha256 => keyed::<Hmac<sha2::Sha256>>(key, content).verify_slice(tag),
    };
    verdict.map_err(|_| VerifyError::BadSignature)
}
