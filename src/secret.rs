//! Secrets: [`DeviceSecret`], [`ProductSecret`], [`DeviceToken`].
//!
//! None of them is `Clone`, `Serialize` or `PartialEq`: a copy is made only by the explicitly
//! named [`DeviceSecret::clone_secret`], the text is reached only through `expose_secret`
//! (easy to grep for in review), equality is constant-time ([`subtle::ConstantTimeEq`]),
//! `Debug` prints no content, and every byte is zeroized on drop.

use core::fmt;
use std::sync::Arc;

use subtle::{Choice, ConstantTimeEq};
use zeroize::{Zeroize, Zeroizing};

use crate::ascii::{VISIBLE_ASCII, validate};
use crate::error::ParseError;
use crate::random::{Entropy, EntropyError, fill_alphanumeric};
use crate::sign::KeySchedules;

/// A secret's text and the HMAC key schedules derived from it, in one allocation that
/// [`DeviceSecret::clone_secret`] shares rather than copies: a store that hands out records
/// keeps one key schedule per device, so a login does not redo the key's two hash blocks.
/// The text is zeroized, and the schedules are dropped (zeroizing themselves), when the last
/// holder lets go.
struct SecretCell {
    text: Box<str>,
    schedules: KeySchedules,
}

impl SecretCell {
    fn new(text: Box<str>) -> Arc<Self> {
        Arc::new(Self {
            text,
            schedules: KeySchedules::default(),
        })
    }
}

impl Drop for SecretCell {
    fn drop(&mut self) {
        self.text.zeroize();
    }
}

/// Generates a secret newtype: validated constructor, generation, redacted `Debug`,
/// zeroize-on-drop and constant-time equality.
macro_rules! secret {
    ($(#[$doc:meta])* $name:ident, field = $field:literal, generated_len = $generated:literal) => {
        $(#[$doc])*
        ///
        /// # Constraints
        /// 1–64 printable ASCII characters, no whitespace.
        pub struct $name(Arc<SecretCell>);

        impl $name {
            /// The longest accepted value, in characters.
            pub const MAX_LEN: usize = 64;
            /// The length of a generated value (letters and digits only).
            pub const GENERATED_LEN: usize = $generated;

            /// Validates `value` against the constraints above.
            ///
            /// # Errors
            /// [`ParseError::TooLong`], [`ParseError::TooShort`] or
            /// [`ParseError::InvalidCharacter`]. The error never contains the value.
            pub fn new(value: &str) -> Result<Self, ParseError> {
                validate(value, 1, Self::MAX_LEN, &VISIBLE_ASCII)
                    .map_err(|e| ParseError::from_invalid($field, e, 1, Self::MAX_LEN))?;
                Ok(Self(SecretCell::new(value.into())))
            }

            /// A fresh value of [`Self::GENERATED_LEN`] random letters and digits.
            ///
            /// # Errors
            /// [`EntropyError`] when the random source fails.
            pub fn generate(entropy: &dyn Entropy) -> Result<Self, EntropyError> {
                let mut bytes = Zeroizing::new([0u8; $generated]);
                fill_alphanumeric(entropy, &mut bytes[..])?;
                // Sized up front: a growing String would leave unzeroized copies behind.
                let mut text = String::with_capacity($generated);
                text.extend(bytes.iter().map(|&b| char::from(b)));
                Ok(Self(SecretCell::new(text.into_boxed_str())))
            }

            /// The secret text, e.g. to key an HMAC, store it, or hand it to its owner once.
            pub fn expose_secret(&self) -> &str {
                &self.0.text
            }

            /// An explicit copy. There is no `Clone`, so that every copy of a secret is visible
            /// in the code that makes it. The copy shares the text (and its key schedules); it
            /// is zeroized when the last copy is dropped.
            pub fn clone_secret(&self) -> Self {
                Self(Arc::clone(&self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name)).finish_non_exhaustive()
            }
        }

        impl ConstantTimeEq for $name {
            fn ct_eq(&self, other: &Self) -> Choice {
                self.0.text.as_bytes().ct_eq(other.0.text.as_bytes())
            }
        }

        impl TryFrom<&str> for $name {
            type Error = ParseError;
            fn try_from(s: &str) -> Result<Self, ParseError> {
                Self::new(s)
            }
        }
    };
}

secret!(
    /// The per-device secret: the HMAC key of a device's MQTT login.
    DeviceSecret,
    field = "deviceSecret",
    generated_len = 32
);

secret!(
    /// The per-product secret shared by every device of a product: the HMAC key of dynamic
    /// registration.
    ProductSecret,
    field = "productSecret",
    generated_len = 32
);

secret!(
    /// A device token from registration without pre-registration (`regnwl`), sent verbatim as
    /// the password of a `connwl` login.
    DeviceToken,
    field = "deviceToken",
    generated_len = 32
);

/// The secrets that key signatures; a [`DeviceToken`] is compared, never a key.
macro_rules! signing_key {
    ($($name:ident),*) => {$(
        impl crate::sign::KeyMaterial for $name {
            fn key_bytes(&self) -> &[u8] {
                self.0.text.as_bytes()
            }

            fn key_schedules(&self) -> &KeySchedules {
                &self.0.schedules
            }
        }

        impl crate::sign::SigningKey for $name {}
    )*};
}

signing_key!(DeviceSecret, ProductSecret);

impl DeviceToken {
    /// Whether `offered` (a `connwl` password) is this token, compared in constant time.
    pub fn matches(&self, offered: &str) -> bool {
        bool::from(self.0.text.as_bytes().ct_eq(offered.as_bytes()))
    }
}

/// What a store keeps of a [`DeviceToken`]: its SHA-256. A token is random (32 letters and
/// digits, about 190 bits), so its digest cannot be reversed, and the server never needs the
/// token back: a `connwl` password is hashed and compared with this, in constant time.
#[derive(Clone, Copy)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    /// The digest of `token`.
    pub fn of(token: &DeviceToken) -> Self {
        Self::of_bytes(token.expose_secret().as_bytes())
    }

    fn of_bytes(bytes: &[u8]) -> Self {
        use sha2::Digest;
        Self(sha2::Sha256::digest(bytes).into())
    }

    /// Whether `offered` (a `connwl` password) is the token this digest was made of, in
    /// constant time.
    pub fn matches(&self, offered: &str) -> bool {
        Self::of_bytes(offered.as_bytes()).0.ct_eq(&self.0).into()
    }

    /// The digest in lowercase hex (64 characters), as stores keep it.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// A digest from [`Self::to_hex`]'s form.
    ///
    /// # Errors
    /// [`ParseError::Malformed`] unless `text` is 64 hex digits.
    pub fn from_hex(text: &str) -> Result<Self, ParseError> {
        let mut digest = [0u8; 32];
        hex::decode_to_slice(text, &mut digest).map_err(|_| ParseError::Malformed {
            field: "tokenDigest",
            expected: "64 hex digits",
        })?;
        Ok(Self(digest))
    }
}

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenDigest").finish_non_exhaustive()
    }
}
