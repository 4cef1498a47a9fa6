//! HTTPS dynamic registration (see the [compatibility notes](crate::manual::compatibility)): the form a device posts and the reply it gets.

use std::borrow::Cow;
use std::fmt;

use zeroize::Zeroizing;

use crate::cert::ProductCertificate;
use crate::error::ParseError;
use crate::id::{DeviceName, ProductKey};
use crate::mqtt::parse_random;
use crate::random::{Entropy, EntropyError, fill_alphanumeric};
use crate::secret::{DeviceSecret, ProductSecret};
use crate::sign::{SignContent, SignMethod, Signature, VerifyError, sign, verify};
use crate::verified::{DeviceIdentity, Verified};

impl RegisterForm<'_> {
    /// Cap on a registration body, in bytes.
    pub const MAX_LEN: usize = 4096;

    /// Cap on the number of `key=value` pairs in a registration body.
    pub const MAX_PAIRS: usize = 16;

    /// The length of [`registration_random`]'s values, as Alibaba's Python SDK.
    pub const GENERATED_RANDOM_LEN: usize = 15;
}
impl RegisterReply {
    /// Cap on a registration reply a device will read, in bytes.
    pub const MAX_LEN: usize = 4096;
}

const FORM: &str = "form";
const FIELDS: [&str; 5] = ["productKey", "deviceName", "random", "sign", "signMethod"];

/// A parsed `POST /auth/register/device` body
/// (`productKey, deviceName, random, sign, signMethod`).
///
/// # Rules
/// `application/x-www-form-urlencoded`, strictly: a bad percent escape, invalid UTF-8 after
/// decoding, a control character, a duplicate or missing field, or an empty pair is an error.
/// Unknown fields are ignored. `signMethod` is case-insensitive. At most [`RegisterForm::MAX_LEN`] bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct RegisterForm<'a> {
    product_key: ProductKey,
    device_name: DeviceName,
    random: Cow<'a, str>,
    sign: Cow<'a, str>,
    sign_method: SignMethod,
}

impl<'a> RegisterForm<'a> {
    /// Parses a registration body.
    ///
    /// # Errors
    /// A [`ParseError`] naming the field; never its value.
    ///
    /// ```
    /// # use iotauth::RegisterForm;
    /// let form = RegisterForm::parse(b"productKey=k1VectorPK9&deviceName=reg%40dom.x%3A1&random=9HDmazJGCboiDrA&sign=a36c22b3bb89dc8e47644c0801d44bb90b9a362293dd43939d52a8fa069c63f1&signMethod=hmacsha256")?;
    /// assert_eq!(form.device_name().as_str(), "reg@dom.x:1");
    /// # Ok::<(), iotauth::ParseError>(())
    /// ```
    pub fn parse(body: &'a [u8]) -> Result<Self, ParseError> {
        if body.len() > RegisterForm::MAX_LEN {
            return Err(ParseError::TooLong {
                field: FORM,
                max: RegisterForm::MAX_LEN,
            });
        }
        let mut values: [Option<Cow<'a, str>>; 5] = Default::default();
        for (index, pair) in body.split(|&b| b == b'&').enumerate() {
            if index >= RegisterForm::MAX_PAIRS {
                return Err(ParseError::TooLong {
                    field: "form pairs",
                    max: RegisterForm::MAX_PAIRS,
                });
            }
            let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                return Err(ParseError::Malformed {
                    field: FORM,
                    expected: "key=value pairs joined by &",
                });
            };
            let (raw_key, raw_value) = (&pair[..eq], &pair[eq + 1..]);
            let key = percent_decode(raw_key, FORM)?;
            let Some(slot) = FIELDS.iter().position(|f| *f == key) else {
                continue;
            };
            let field = FIELDS[slot];
            if values[slot].is_some() {
                return Err(ParseError::Duplicate { field });
            }
            values[slot] = Some(percent_decode(raw_value, field)?);
        }
        let [pk, dn, random, sign, method] = values;
        let missing = |field| ParseError::Missing { field };
        let product_key = ProductKey::new(&pk.ok_or(missing("productKey"))?)?;
        let device_name = DeviceName::new(&dn.ok_or(missing("deviceName"))?)?;
        let random = random.ok_or(missing("random"))?;
        parse_random(&random, "random")?;
        let sign_method = SignMethod::from_name(&method.ok_or(missing("signMethod"))?).ok_or(
            ParseError::Unsupported {
                field: "signMethod",
            },
        )?;
        let sign = sign.ok_or(missing("sign"))?;
        if sign.len() != 2 * sign_method.digest_len()
            || !sign.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(ParseError::Malformed {
                field: "sign",
                expected: "the hex digest of signMethod",
            });
        }
        Ok(Self {
            product_key,
            device_name,
            random,
            sign,
            sign_method,
        })
    }

    /// `productKey`.
    pub fn product_key(&self) -> ProductKey {
        self.product_key
    }

    /// `deviceName`.
    pub fn device_name(&self) -> DeviceName {
        self.device_name
    }

    /// `random`.
    pub fn random(&self) -> &str {
        &self.random
    }

    /// `signMethod`.
    pub fn sign_method(&self) -> SignMethod {
        self.sign_method
    }

    /// `sign` as sent (hex, either case): the form's signature, which a replay within the
    /// product's limits could reuse; for re-encoding a form, never for a log.
    pub fn expose_sign(&self) -> &str {
        &self.sign
    }

    /// The identity the form claims (not yet verified).
    pub fn claimed_identity(&self) -> DeviceIdentity {
        DeviceIdentity::new(self.product_key, self.device_name)
    }

    /// The canonical content `sign` signs.
    pub fn sign_content(&self) -> SignContent<'_> {
        SignContent::registration(&self.device_name, &self.product_key, &self.random)
    }

    /// Verifies `sign` against the product's secret, in constant time.
    ///
    /// # Errors
    /// [`VerifyError::BadSignature`] when it does not match.
    pub fn verify(&self, secret: &ProductSecret) -> Result<Verified<DeviceIdentity>, VerifyError> {
        verify(secret, self.sign_method, &self.sign_content(), &self.sign)?;
        Ok(Verified::new(self.claimed_identity()))
    }
}

impl fmt::Debug for RegisterForm<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegisterForm")
            .field("product_key", &self.product_key)
            .field("device_name", &self.device_name)
            .field("random", &self.random)
            .field("sign_method", &self.sign_method)
            .finish_non_exhaustive()
    }
}

/// Decodes one form component strictly: `+` is a space, `%XX` a byte, anything else must be
/// visible ASCII; the result must be UTF-8 without control characters. Borrows when there is
/// nothing to decode.
pub(crate) fn percent_decode<'a>(
    raw: &'a [u8],
    field: &'static str,
) -> Result<Cow<'a, str>, ParseError> {
    let bad_escape = ParseError::Malformed {
        field,
        expected: "valid percent-encoding",
    };
    let invalid = ParseError::InvalidCharacter { field };
    if !raw.iter().all(u8::is_ascii_graphic) {
        return Err(invalid);
    }
    if !raw.iter().any(|&b| b == b'%' || b == b'+') {
        // All visible ASCII, so valid UTF-8.
        return core::str::from_utf8(raw)
            .map(Cow::Borrowed)
            .map_err(|_| invalid);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter();
    while let Some(&b) = bytes.next() {
        out.push(match b {
            b'+' => b' ',
            b'%' => {
                let hi = bytes.next().and_then(|&h| char::from(h).to_digit(16));
                let lo = bytes.next().and_then(|&l| char::from(l).to_digit(16));
                match (hi, lo) {
                    (Some(hi), Some(lo)) => u8::try_from(hi * 16 + lo).map_err(|_| bad_escape)?,
                    _ => return Err(bad_escape),
                }
            }
            other => other,
        });
    }
    let text = String::from_utf8(out).map_err(|_| invalid)?;
    if text.chars().any(char::is_control) {
        return Err(invalid);
    }
    Ok(Cow::Owned(text))
}

/// A registration body a device sends, and its `sign`.
pub struct RegisterFormBody {
    body: String,
    sign: Signature,
}

impl RegisterFormBody {
    /// The urlencoded body, fields in the SDKs' order.
    pub fn body(&self) -> &str {
        &self.body
    }

    /// The `sign` field, lowercase hex.
    pub fn expose_sign(&self) -> Zeroizing<String> {
        self.sign.expose_hex()
    }
}

impl fmt::Debug for RegisterFormBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegisterFormBody").finish_non_exhaustive()
    }
}

/// Builds the registration body of a device (the device side of [`RegisterForm::verify`]).
///
/// # Errors
/// [`ParseError`] when `random` is empty, longer than 64 or not printable ASCII.
///
/// ```
/// # use iotauth::*;
/// let cert = ProductCertificate::new(ProductKey::new("a2SHaReD0k1")?, ProductSecret::new("Pr0dS3cr3tSh4rd1")?);
/// let form = build_register_form(&cert, DeviceName::new("shared-reg-01")?, "BScWZyXmt3GwdCe", SignMethod::HmacSha256)?;
/// assert!(form.body().starts_with("productKey=a2SHaReD0k1&deviceName=shared-reg-01&random=BScWZyXmt3GwdCe&sign="));
/// let parsed = RegisterForm::parse(form.body().as_bytes())?;
/// assert!(parsed.verify(cert.product_secret()).is_ok());
/// # Ok::<(), iotauth::ParseError>(())
/// ```
pub fn build_register_form(
    cert: &ProductCertificate,
    device_name: DeviceName,
    random: &str,
    method: SignMethod,
) -> Result<RegisterFormBody, ParseError> {
    let random = parse_random(random, "random")?;
    let pk = cert.product_key();
    let sign = sign(
        cert.product_secret(),
        method,
        &SignContent::registration(&device_name, &pk, random),
    );
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("productKey", pk.as_str())
        .append_pair("deviceName", device_name.as_str())
        .append_pair("random", random)
        .append_pair("sign", &sign.expose_hex())
        .append_pair("signMethod", method.name())
        .finish();
    Ok(RegisterFormBody { body, sign })
}

/// A fresh `random` for a registration: 15 letters and digits, as Alibaba's Python SDK sends.
///
/// # Errors
/// [`EntropyError`] when the random source fails.
pub fn registration_random(entropy: &dyn Entropy) -> Result<String, EntropyError> {
    let mut bytes = [0u8; RegisterForm::GENERATED_RANDOM_LEN];
    fill_alphanumeric(entropy, &mut bytes)?;
    Ok(bytes.iter().map(|&b| char::from(b)).collect())
}

/// Why a registration was refused, with the code the reply carries.
///
/// Codes 460, 6100, 6204 and 6250 are the platform's documented device-side codes; 6601–6605
/// are this crate's own (the platform's are not public). Devices only test `code == 200`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefusalCode {
    /// 460: the request is malformed.
    InvalidRequest,
    /// 6250: no such product.
    ProductNotFound,
    /// 6100: no such device (the device must be registered in advance).
    DeviceNotFound,
    /// 6204: the device is disabled.
    DeviceDisabled,
    /// 6601: the product's dynamic-registration switch is off.
    DynamicRegistrationDisabled,
    /// 6602: the device's secret was already issued (or the device is active).
    AlreadyIssued,
    /// 6603: the signature does not match.
    SignatureMismatch,
    /// 6604: registration without pre-registration would create a device beyond the
    /// product's device quota.
    DeviceQuotaReached,
    /// 6605: the device holds the most ClientIDs it may ([`crate::IssuedClientId::MAX_PER_DEVICE`]).
    TooManyClientIds,
    /// 429: the product's registration rate limit is reached
    /// ([`crate::store::RegistrationLimit`]); try again later. Alibaba's "throttled" code.
    Throttled,
    /// 6606: the registration's `random` was used by an earlier registration of the device
    /// ([`crate::store::RegistrationLimit::unique_random`]): a replay.
    RandomReused,
    /// 500: the service cannot answer now (e.g. its store is down); try again later.
    Unavailable,
}

impl RefusalCode {
    /// Every code, in a fixed order.
    pub const ALL: [Self; 12] = [
        Self::InvalidRequest,
        Self::ProductNotFound,
        Self::DeviceNotFound,
        Self::DeviceDisabled,
        Self::DynamicRegistrationDisabled,
        Self::AlreadyIssued,
        Self::SignatureMismatch,
        Self::DeviceQuotaReached,
        Self::TooManyClientIds,
        Self::Throttled,
        Self::RandomReused,
        Self::Unavailable,
    ];

    /// The numeric code.
    pub const fn code(self) -> u32 {
        match self {
            Self::InvalidRequest => 460,
            Self::ProductNotFound => 6250,
            Self::DeviceNotFound => 6100,
            Self::DeviceDisabled => 6204,
            Self::DynamicRegistrationDisabled => 6601,
            Self::AlreadyIssued => 6602,
            Self::SignatureMismatch => 6603,
            Self::DeviceQuotaReached => 6604,
            Self::TooManyClientIds => 6605,
            Self::Throttled => 429,
            Self::RandomReused => 6606,
            Self::Unavailable => 500,
        }
    }

    /// The reply's `message`.
    pub const fn message(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid request parameters",
            Self::ProductNotFound => "product not found",
            Self::DeviceNotFound => "device not found",
            Self::DeviceDisabled => "device is disabled",
            Self::DynamicRegistrationDisabled => {
                "dynamic registration is disabled for this product"
            }
            Self::AlreadyIssued => "device secret already issued",
            Self::SignatureMismatch => "signature mismatch",
            Self::DeviceQuotaReached => "the product's device quota is reached",
            Self::TooManyClientIds => "the device holds the most ClientIDs it may",
            Self::Throttled => "request throttled, try again later",
            Self::RandomReused => "random already used by an earlier registration",
            Self::Unavailable => "service unavailable, try again later",
        }
    }

    /// The refusal with this numeric code, if it is one of ours.
    pub fn from_code(code: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }
}

/// The JSON reply to a registration, as Alibaba's platform sends it:
/// `{"code":200,"data":{"productKey","deviceName","deviceSecret"},"message":"success"}` or
/// `{"code":N,"message":"..."}`.
#[derive(Debug)]
#[non_exhaustive]
pub enum RegisterReply {
    /// The device's secret.
    Issued {
        /// `data.productKey`.
        product_key: ProductKey,
        /// `data.deviceName`.
        device_name: DeviceName,
        /// `data.deviceSecret`.
        device_secret: DeviceSecret,
    },
    /// A refusal.
    Refused {
        /// `code` (not 200).
        code: u32,
        /// `message`.
        message: String,
    },
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WireReply<'a> {
    code: u32,
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    data: Option<WireIssued<'a>>,
    #[serde(borrow)]
    message: Cow<'a, str>,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireIssued<'a> {
    #[serde(borrow)]
    product_key: Cow<'a, str>,
    #[serde(borrow)]
    device_name: Cow<'a, str>,
    #[serde(borrow)]
    device_secret: Cow<'a, str>,
}

impl<'a> WireIssued<'a> {
    fn of(
        product_key: &'a ProductKey,
        device_name: &'a DeviceName,
        secret: &'a DeviceSecret,
    ) -> Self {
        Self {
            product_key: product_key.as_str().into(),
            device_name: device_name.as_str().into(),
            device_secret: secret.expose_secret().into(),
        }
    }
}

/// `{"productKey","deviceName","deviceSecret"}`: the `data` of an HTTP registration reply, and
/// the whole payload MQTT registration publishes on `/ext/register`. Contains the secret.
pub(crate) fn issued_json(
    product_key: &ProductKey,
    device_name: &DeviceName,
    secret: &DeviceSecret,
) -> Zeroizing<String> {
    exposing_json(&WireIssued::of(product_key, device_name, secret))
}

/// `value` as JSON in a buffer that is zeroized when dropped, and never reallocated while it
/// is written (a reallocation would leave a copy of the secret in freed memory): every reply
/// and payload with a secret is far below its capacity.
pub(crate) fn exposing_json<T: serde::Serialize>(value: &T) -> Zeroizing<String> {
    let mut buffer = Zeroizing::new(Vec::with_capacity(RegisterReply::MAX_LEN));
    // Serializing strings and integers into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buffer, value);
    // serde_json writes UTF-8; from_utf8 takes the allocation as it is, without a copy.
    Zeroizing::new(String::from_utf8(std::mem::take(&mut *buffer)).unwrap_or_default())
}

impl RegisterReply {
    /// A refusal with `code`'s number and message.
    pub fn refused(code: RefusalCode) -> Self {
        Self::Refused {
            code: code.code(),
            message: code.message().to_owned(),
        }
    }

    /// The reply as JSON.
    ///
    /// **Warning:** an [`RegisterReply::Issued`] reply contains the device's secret in clear;
    /// send it only to the device, over TLS, and never log it.
    pub fn to_json_exposing_secret(&self) -> Zeroizing<String> {
        let wire = match self {
            Self::Issued {
                product_key,
                device_name,
                device_secret,
            } => WireReply {
                code: 200,
                data: Some(WireIssued::of(product_key, device_name, device_secret)),
                message: "success".into(),
            },
            Self::Refused { code, message } => WireReply {
                code: *code,
                data: None,
                message: message.as_str().into(),
            },
        };
        exposing_json(&wire)
    }

    /// Parses a reply on the device side. A device must survive a hostile server: the body is
    /// capped at [`RegisterReply::MAX_LEN`], unknown top-level fields are refused, and the issued
    /// identifiers and secret are validated.
    ///
    /// # Errors
    /// [`ParseError`] naming the reply field that is missing or malformed.
    pub fn parse(body: &[u8]) -> Result<Self, ParseError> {
        if body.len() > RegisterReply::MAX_LEN {
            return Err(ParseError::TooLong {
                field: "reply",
                max: RegisterReply::MAX_LEN,
            });
        }
        let wire: WireReply<'_> =
            serde_json::from_slice(body).map_err(|_| ParseError::Malformed {
                field: "reply",
                expected: r#"{"code":..,"data":{..},"message":".."}"#,
            })?;
        if wire.message.chars().any(char::is_control) || wire.message.len() > 256 {
            return Err(ParseError::InvalidCharacter { field: "message" });
        }
        match (wire.code, wire.data) {
            (200, Some(data)) => Ok(Self::Issued {
                product_key: ProductKey::new(&data.product_key)?,
                device_name: DeviceName::new(&data.device_name)?,
                device_secret: DeviceSecret::new(&data.device_secret)?,
            }),
            (200, None) => Err(ParseError::Missing { field: "data" }),
            (code, _) => Ok(Self::Refused {
                code,
                message: wire.message.into_owned(),
            }),
        }
    }
}
