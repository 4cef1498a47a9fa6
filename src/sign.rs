//! Sign methods, the canonical sign content, signing and verification.

use core::fmt;
use std::sync::OnceLock;

use hmac::{Hmac, KeyInit, Mac};
use zeroize::{Zeroize, Zeroizing};

/// The HMAC algorithm a device names in `signmethod` / `signMethod`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SignMethod {
    /// `hmacmd5`: what the platform assumes when a client id names no method.
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
/// name + value, with no separators (see the [compatibility notes](crate::manual::compatibility)).
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
    names: &'static [&'static str],
    values: [&'a [u8]; 4],
}

/// The signed parameters of a login and of a registration, in byte order of their names:
/// the order the protocol sorts them into. Checked when the crate compiles, so no sort runs
/// on the hot path.
const LOGIN_NAMES: [&str; 4] = ["clientId", "deviceName", "productKey", "timestamp"];
const REGISTRATION_NAMES: [&str; 3] = ["deviceName", "productKey", "random"];
const _: () = assert!(in_byte_order(&LOGIN_NAMES) && in_byte_order(&REGISTRATION_NAMES));

const fn in_byte_order(names: &[&str]) -> bool {
    let mut i = 1;
    while i < names.len() {
        let (a, b) = (names[i - 1].as_bytes(), names[i].as_bytes());
        let mut j = 0;
        while j < a.len() && j < b.len() && a[j] == b[j] {
            j += 1;
        }
        let ordered = if j < a.len() && j < b.len() {
            a[j] < b[j]
        } else {
            a.len() < b.len()
        };
        if !ordered {
            return false;
        }
        i += 1;
    }
    true
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
        let count = if timestamp.is_some() { 4 } else { 3 };
        Self {
            names: &LOGIN_NAMES[..count],
            values: [
                client_id.as_bytes(),
                device_name.as_bytes(),
                product_key.as_bytes(),
                timestamp.unwrap_or_default().as_bytes(),
            ],
        }
    }

    /// The content of a dynamic registration (HTTPS form or MQTT `authType=register|regnwl`):
    /// `deviceName`, `productKey`, `random`.
    pub fn registration(
        device_name: &'a crate::DeviceName,
        product_key: &'a crate::ProductKey,
        random: &'a str,
    ) -> Self {
        Self {
            names: &REGISTRATION_NAMES,
            values: [
                device_name.as_bytes(),
                product_key.as_bytes(),
                random.as_bytes(),
                &[],
            ],
        }
    }

    /// Feeds the canonical content to `sink` chunk by chunk (name, value, name, value, ...),
    /// so that a MAC consumes it without an intermediate string.
    pub fn for_each_chunk(&self, mut sink: impl FnMut(&[u8])) {
        for (name, value) in self.names.iter().zip(self.values) {
            sink(name.as_bytes());
            sink(value);
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

/// A secret that keys a signature: [`DeviceSecret`](crate::DeviceSecret) for logins,
/// [`ProductSecret`](crate::ProductSecret) for registrations. Sealed: nothing else can key a
/// signature.
pub trait SigningKey: KeyMaterial {}

/// What a [`SigningKey`] gives the MAC. Public only in name (this module is private), so the
/// trait above stays sealed.
pub trait KeyMaterial {
    /// The HMAC key bytes (the secret's text as UTF-8; secrets are never hex- or
    /// base64-decoded).
    fn key_bytes(&self) -> &[u8];
    /// The key schedules computed from those bytes, kept with the secret.
    fn key_schedules(&self) -> &KeySchedules;
}

/// A key's HMAC states after the key block (inner and outer pad hashed), one per method,
/// computed on first use and shared by every copy of the secret: a verification then hashes
/// only the content and the outer block. Zeroized on drop (the `zeroize` feature of the hash
/// crates).
#[derive(Default)]
pub struct KeySchedules(OnceLock<Box<PerMethod>>);

#[derive(Default)]
struct PerMethod {
    md5: OnceLock<Hmac<md5::Md5>>,
    sha1: OnceLock<Hmac<sha1::Sha1>>,
    sha256: OnceLock<Hmac<sha2::Sha256>>,
}

/// A MAC over `content` so far, keyed by `key` from its cached schedule.
fn keyed<M: Mac + KeyInit + Clone>(
    key: &impl SigningKey,
    schedule: impl FnOnce(&PerMethod) -> &OnceLock<M>,
    content: &SignContent<'_>,
) -> M {
    let per_method = key.key_schedules().0.get_or_init(Box::default);
    let mut mac = schedule(per_method)
        .get_or_init(|| {
            // HMAC accepts keys of every length (long keys are hashed), so this cannot fail.
            <M as KeyInit>::new_from_slice(key.key_bytes()).expect("HMAC takes keys of any length")
        })
        .clone();
    absorb(&mut mac, content);
    mac
}

/// Feeds `content` to `mac`, a chunk per name and value (measured: copying them into one
/// buffer first was slower).
fn absorb(mac: &mut impl Mac, content: &SignContent<'_>) {
    content.for_each_chunk(|chunk| mac.update(chunk));
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

    /// Lowercase hex, as Alibaba's Python and Node SDKs send it: a password, zeroized when
    /// dropped.
    pub fn expose_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.as_bytes()))
    }

    /// Uppercase hex, as Alibaba's C SDKs send it: a password, zeroized when dropped.
    pub fn expose_hex_upper(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode_upper(self.as_bytes()))
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

/// Signs `content` with `key`.
///
/// ```
/// # use iotauth::{sign, DeviceName, DeviceSecret, ProductKey, SignContent, SignMethod};
/// // The worked example of Alibaba's MQTT documentation.
/// let (dn, pk) = (DeviceName::new("device")?, ProductKey::new("pk")?);
/// let content = SignContent::login("12345", &dn, &pk, Some("789"));
/// let sig = sign(&DeviceSecret::new("secret")?, SignMethod::HmacSha1, &content);
/// assert_eq!(sig.expose_hex_upper().as_str(), "FAFD82A3D602B37FB0FA8B7892F24A477F851A14");
/// # Ok::<(), iotauth::ParseError>(())
/// ```
pub fn sign(key: &impl SigningKey, method: SignMethod, content: &SignContent<'_>) -> Signature {
    let mut bytes = [0u8; MAX_DIGEST];
    match method {
        SignMethod::HmacMd5 => copy_tag(&mut bytes, keyed(key, |s| &s.md5, content)),
        SignMethod::HmacSha1 => copy_tag(&mut bytes, keyed(key, |s| &s.sha1, content)),
        SignMethod::HmacSha256 => copy_tag(&mut bytes, keyed(key, |s| &s.sha256, content)),
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
    let offered =
        OfferedDigest::from_hex(method, offered_hex).ok_or(VerifyError::MalformedSignature {
            expected: 2 * method.digest_len(),
        })?;
    verify_offered(key, content, &offered)
}

/// [`verify`] of a digest decoded beforehand (a parser that checked the hex kept the bytes).
pub(crate) fn verify_offered(
    key: &impl SigningKey,
    content: &SignContent<'_>,
    offered: &OfferedDigest,
) -> Result<(), VerifyError> {
    let tag = offered.as_bytes();
    let verdict = match offered.method {
        SignMethod::HmacMd5 => keyed(key, |s| &s.md5, content).verify_slice(tag),
        SignMethod::HmacSha1 => keyed(key, |s| &s.sha1, content).verify_slice(tag),
        SignMethod::HmacSha256 => keyed(key, |s| &s.sha256, content).verify_slice(tag),
    };
    verdict.map_err(|_| VerifyError::BadSignature)
}

/// A digest as offered (a login's password, a registration's `sign`), decoded from hex.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct OfferedDigest {
    method: SignMethod,
    bytes: [u8; MAX_DIGEST],
}

impl OfferedDigest {
    /// The digest `text` (hex, either case) spells, `None` unless it is exactly the method's length
    /// in hex digits.
    pub(crate) fn from_hex(method: SignMethod, text: &str) -> Option<Self> {
        let mut bytes = [0u8; MAX_DIGEST];
        // The `hex` crate: a word-at-a-time decoder of our own was measured no faster on the
        // whole verification (`cargo bench --bench auth -- verify_mqtt/hmac` against a saved
        // baseline: -2.8 % to +3.3 %).
        hex::decode_to_slice(text, &mut bytes[..method.digest_len()]).ok()?;
        Some(Self { method, bytes })
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.method.digest_len()]
    }
}
