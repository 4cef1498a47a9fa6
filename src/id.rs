//! Identifiers: [`ProductKey`] and [`DeviceName`].

use core::fmt;
use core::str::FromStr;

use crate::ascii::{ByteSet, InlineAscii, byte_set};
use crate::error::ParseError;
use crate::random::{Entropy, EntropyError};

/// Generates an identifier newtype over [`InlineAscii`]: validated constructor, `as_str`,
/// `Display`, `FromStr`, ordering by text, and serde as a validated string.
macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident, field = $field:literal, min = $min:literal, max = $max:literal, allowed = $allowed:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name(InlineAscii<$max>);

        impl $name {
            /// The shortest accepted value, in characters.
            pub const MIN_LEN: usize = $min;
            /// The longest accepted value, in characters.
            pub const MAX_LEN: usize = $max;

            /// Validates `value` against the constraints above.
            ///
            /// # Errors
            /// [`ParseError::TooLong`], [`ParseError::TooShort`] or
            /// [`ParseError::InvalidCharacter`], naming the field and never the value.
            pub fn new(value: &str) -> Result<Self, ParseError> {
                const ALLOWED: ByteSet = $allowed;
                InlineAscii::new(value, $min, &ALLOWED)
                    .map(Self)
                    .map_err(|e| ParseError::from_invalid($field, e, $min, $max))
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                self.0.as_str()
            }

            /// The identifier's bytes (ASCII), without the UTF-8 check `as_str` makes.
            pub(crate) fn as_bytes(&self) -> &[u8] {
                self.0.as_bytes()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_tuple(stringify!($name)).field(&self.as_str()).finish()
            }
        }

        impl FromStr for $name {
            type Err = ParseError;
            fn from_str(s: &str) -> Result<Self, ParseError> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = ParseError;
            fn try_from(s: &str) -> Result<Self, ParseError> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }

        impl PartialOrd for $name {
            fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }

        impl Ord for $name {
            fn cmp(&self, other: &Self) -> core::cmp::Ordering {
                // Byte order is `str` order, without a UTF-8 check per comparison.
                self.as_bytes().cmp(other.as_bytes())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::new(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

identifier!(
    /// A product's key, the first half of every certificate.
    ///
    /// # Constraints
    /// 1–32 ASCII letters or digits. Alibaba issues 11 (`a1BwAGVxxxx`); generated keys have 11 too.
    ///
    /// ```
    /// # use iotauth::ProductKey;
    /// let pk = ProductKey::new("a1BwAGV0001")?;
    /// assert_eq!(pk.as_str(), "a1BwAGV0001");
    /// assert!(ProductKey::new("a1-bad").is_err());
    /// # Ok::<(), iotauth::ParseError>(())
    /// ```
    ProductKey,
    field = "productKey",
    min = 1,
    max = 32,
    allowed = byte_set!(|b| b.is_ascii_alphanumeric())
);

identifier!(
    /// A device's name, unique within its product.
    ///
    /// # Constraints
    /// 4–32 characters: ASCII letters, digits and `-` `_` `@` `.` `:` (Alibaba's RegisterDevice
    /// rule). None of them is `&`, `|`, `,` or `=`, so credentials never need escaping.
    ///
    /// ```
    /// # use iotauth::DeviceName;
    /// assert!(DeviceName::new("meter_07@b.c").is_ok());
    /// assert!(DeviceName::new("abc").is_err()); // too short
    /// assert!(DeviceName::new("a&b=c").is_err());
    /// ```
    DeviceName,
    field = "deviceName",
    min = 4,
    max = 32,
    allowed = byte_set!(|b| b.is_ascii_alphanumeric()
        || matches!(b, b'-' | b'_' | b'@' | b'.' | b':'))
);

impl ProductKey {
    /// The length of a generated key, as Alibaba's.
    pub const GENERATED_LEN: usize = 11;

    /// A fresh random key of [`Self::GENERATED_LEN`] letters and digits.
    ///
    /// # Errors
    /// [`EntropyError`] when the random source fails.
    pub fn generate(entropy: &dyn Entropy) -> Result<Self, EntropyError> {
        InlineAscii::random_alphanumeric(entropy, Self::GENERATED_LEN).map(Self)
    }
}

identifier!(
    /// A ClientID issued by registration without pre-registration (`regnwl`, see the [compatibility notes](crate::manual::compatibility)):
    /// the client-id CORE of the device's later `connwl` logins, each paired with a
    /// DeviceToken. Not a secret (it travels in every CONNECT); the token is.
    ///
    /// # Constraints
    /// 20–32 ASCII letters or digits (Alibaba's are IotId-like); generated ones have 24.
    IssuedClientId,
    field = "clientId",
    min = 20,
    max = 32,
    allowed = byte_set!(|b| b.is_ascii_alphanumeric())
);

impl IssuedClientId {
    /// The length of a generated ClientID.
    pub const GENERATED_LEN: usize = 24;

    /// A fresh random ClientID of [`Self::GENERATED_LEN`] letters and digits.
    ///
    /// # Errors
    /// [`EntropyError`] when the random source fails.
    pub fn generate(entropy: &dyn Entropy) -> Result<Self, EntropyError> {
        InlineAscii::random_alphanumeric(entropy, Self::GENERATED_LEN).map(Self)
    }
}
