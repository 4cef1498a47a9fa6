//! Secrets: [`DeviceSecret`], [`ProductSecret`], [`DeviceToken`].
//!
//! None of them is `Clone`, `Serialize` or `PartialEq`: a copy is made only by the explicitly
//! named [`DeviceSecret::clone_secret`], the text is reached only through `expose_secret`
//! (easy to grep for in review), equality is constant-time ([`subtle::ConstantTimeEq`]),
//! `Debug` prints no content, and every byte is zeroized on drop.

use core::fmt;

use subtle::{Choice, ConstantTimeEq};
use zeroize::{Zeroize, Zeroizing};

use crate::ascii::{is_visible_ascii, validate};
use crate::error::ParseError;
use crate::random::{Entropy, EntropyError, fill_alphanumeric};

/// Generates a secret newtype: validated constructor, generation, redacted `Debug`,
/// zeroize-on-drop and constant-time equality.
macro_rules! secret {
    ($(#[$doc:meta])* $name:ident, field = $field:literal, generated_len = $generated:literal) => {
        $(#[$doc])*
        ///
        /// # Constraints
        /// 1–64 printable ASCII characters, no whitespace.
        pub struct $name(Box<str>);

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
                validate(value, 1, Self::MAX_LEN, is_visible_ascii)
                    .map_err(|e| ParseError::from_invalid($field, e, 1, Self::MAX_LEN))?;
                Ok(Self(value.into()))
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
                Ok(Self(text.into_boxed_str()))
            }

            /// The secret text, e.g. to key an HMAC, store it, or hand it to its owner once.
            pub fn expose_secret(&self) -> &str {
                &self.0
            }

            /// An explicit copy. There is no `Clone`, so that every copy of a secret is visible
            /// in the code that makes it.
            pub fn clone_secret(&self) -> Self {
                Self(self.0.clone())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name)).finish_non_exhaustive()
            }
        }

        impl ConstantTimeEq for $name {
            fn ct_eq(&self, other: &Self) -> Choice {
                self.0.as_bytes().ct_eq(other.0.as_bytes())
            }
        }

        impl Drop for $name {
            fn drop(&mut self) {
                self.0.zeroize();
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

impl DeviceToken {
    /// Whether `offered` (a `connwl` password) is this token, compared in constant time.
    pub fn matches(&self, offered: &str) -> bool {
        bool::from(self.0.as_bytes().ct_eq(offered.as_bytes()))
    }
}
