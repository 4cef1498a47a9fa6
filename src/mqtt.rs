//! MQTT CONNECT credentials (see the [compatibility notes](crate::manual::compatibility)): parse on the server, build on the device.

use core::fmt;

use zeroize::Zeroizing;

use crate::ascii::{VISIBLE_ASCII, find_either, validate};
use crate::cert::{DeviceCertificate, ProductCertificate};
use crate::error::ParseError;
use crate::id::{DeviceName, IssuedClientId, ProductKey};
use crate::policy::{Freshness, UnixMillis};
use crate::secret::{DeviceSecret, DeviceToken, ProductSecret, TokenDigest};

/// Compared with a `connwl` password whose ClientID the device does not hold, so that a
/// refusal costs what a check does.
static UNMATCHED_TOKEN_DIGEST: std::sync::LazyLock<TokenDigest> = std::sync::LazyLock::new(|| {
    TokenDigest::of(
        &DeviceToken::new("iotauth-unmatched-client-id").unwrap_or_else(|_| unreachable!()),
    )
});
use crate::sign::{
    OfferedDigest, SignContent, SignMethod, Signature, SigningKey, VerifyError, sign,
    verify_offered,
};
use crate::verified::{DeviceIdentity, Verified};

impl ConnectRequest<'_> {
    /// Cap on the whole MQTT client identifier, in bytes (Alibaba's C SDK allows 200).
    pub const MAX_CLIENT_ID_LEN: usize = 1024;

    /// Cap on the MQTT user name, in bytes.
    pub const MAX_USERNAME_LEN: usize = 128;

    /// Cap on the MQTT password, in bytes.
    pub const MAX_PASSWORD_LEN: usize = 256;

    /// Cap on the number of `key=value` items in the client id's parameter block.
    pub const MAX_PARAMS: usize = 32;

    /// Cap on `random`, in characters.
    pub const MAX_RANDOM_LEN: usize = 64;

    /// Cap on `timestamp`, in digits.
    pub const MAX_TIMESTAMP_DIGITS: usize = 20;
}

const CLIENT_ID: &str = "clientId";

/// What a CONNECT asks for, from `authType` in its client id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnectKind {
    /// No `authType`, or one that does not change what is signed (`id2` of the iTLS builds of
    /// iotkit-embedded, Link SDK 4.x, AliOS Things and Android LinkKit; `custom-ilop` of the
    /// Living Platform SDK 1.6): a per-device login signed with the DeviceSecret.
    Login,
    /// `authType=register`: dynamic registration of a pre-registered device, signed with the
    /// ProductSecret; answered with the DeviceSecret on `/ext/register`.
    Register,
    /// `authType=regnwl`: registration without pre-registration, signed with the
    /// ProductSecret; answered with a ClientID and DeviceToken on `/ext/regnwl`.
    RegisterNoPreregistration,
    /// `authType=connwl`: a login whose password is a DeviceToken.
    TokenLogin,
}

impl ConnectKind {
    /// The `authType` value, or `None` for a plain login.
    pub const fn auth_type(self) -> Option<&'static str> {
        match self {
            Self::Login => None,
            Self::Register => Some("register"),
            Self::RegisterNoPreregistration => Some("regnwl"),
            Self::TokenLogin => Some("connwl"),
        }
    }

    fn from_auth_type(value: &str) -> Option<Self> {
        [
            Self::Register,
            Self::RegisterNoPreregistration,
            Self::TokenLogin,
        ]
        .into_iter()
        .find(|k| k.auth_type() == Some(value))
    }
}

impl fmt::Display for ConnectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.auth_type().unwrap_or("login"))
    }
}

/// The `securemode` of a client id: how the device reached the platform.
///
/// # Constraints
/// One of -2, -1, 0, 1, 2, 3, 4, 5, 7, 8 (see the [compatibility notes](crate::manual::compatibility)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SecureMode(i8);

impl SecureMode {
    /// `2`: TLS, direct connection.
    pub const TLS: Self = Self(2);
    /// `3`: plain TCP, direct connection.
    pub const TCP: Self = Self(3);
    /// `-2`: dynamic registration / token login on new instances.
    pub const REGISTRATION: Self = Self(-2);

    const ALLOWED: [i8; 10] = [-2, -1, 0, 1, 2, 3, 4, 5, 7, 8];

    /// The mode with this number.
    ///
    /// # Errors
    /// [`ParseError::Unsupported`] for a number outside the list above.
    pub fn new(value: i8) -> Result<Self, ParseError> {
        if Self::ALLOWED.contains(&value) {
            Ok(Self(value))
        } else {
            Err(ParseError::Unsupported {
                field: "securemode",
            })
        }
    }

    /// The number.
    pub fn get(self) -> i8 {
        self.0
    }

    /// Exactly an optional `-` and one digit (no `+`, no padding).
    fn parse(text: &str) -> Result<Self, ParseError> {
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let value = match digits.as_bytes() {
            [d @ b'0'..=b'9'] => i8::try_from(d - b'0').unwrap_or_default(),
            _ => {
                return Err(ParseError::Malformed {
                    field: "securemode",
                    expected: "an optional '-' and one digit",
                });
            }
        };
        Self::new(if negative { -value } else { value })
    }
}

impl fmt::Display for SecureMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A parsed MQTT client identifier: `CORE|key=value,key=value,...|`.
///
/// Borrowed from the input; nothing is copied.
///
/// # Rules
/// The parameter block runs from the first `|` to the last `|` (values may contain `|`, as in
/// `lan=JS|WX`), and the identifier must end there. Items split on `,`, each on its first `=`;
/// whitespace around keys and values is trimmed (an old Node SDK puts newlines there). Unknown
/// keys are kept (see [`ClientId::extensions`]) and never signed. Duplicate keys, empty keys,
/// items without `=`, an empty CORE and control characters are errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientId<'a> {
    core: &'a str,
    block: &'a str,
    secure_mode: SecureMode,
    sign_method: Option<SignMethod>,
    timestamp: Option<&'a str>,
    kind: ConnectKind,
    random: Option<&'a str>,
    instance_id: Option<&'a str>,
}

/// The parameters this crate interprets; every other key is an extension.
const KNOWN_KEYS: [&str; 7] = [
    "securemode",
    "signmethod",
    "timestamp",
    "authType",
    "authtype",
    "random",
    "instanceId",
];
/// Each known key's bit in the set of keys seen: `authType` and `authtype` (an older SDK's
/// spelling) are one key.
const KNOWN_KEY_BITS: [u8; 7] = [1, 2, 4, 8, 8, 16, 32];

impl<'a> ClientId<'a> {
    /// Parses a client identifier.
    ///
    /// # Errors
    /// A [`ParseError`] naming the offending part (`clientId`, or the parameter's key).
    ///
    /// ```
    /// # use iotauth::{ClientId, SignMethod};
    /// let id = ClientId::parse("mini-9|securemode=2,signmethod=hmacsha1,timestamp=1711111111444,lan=JS|WX,_v=1.2.8|")?;
    /// assert_eq!(id.core(), "mini-9");
    /// assert_eq!(id.sign_method(), SignMethod::HmacSha1);
    /// assert_eq!(id.extensions().collect::<Vec<_>>(), [("lan", "JS|WX"), ("_v", "1.2.8")]);
    /// # Ok::<(), iotauth::ParseError>(())
    /// ```
    pub fn parse(text: &'a str) -> Result<Self, ParseError> {
        if text.len() > ConnectRequest::MAX_CLIENT_ID_LEN {
            return Err(ParseError::TooLong {
                field: CLIENT_ID,
                max: ConnectRequest::MAX_CLIENT_ID_LEN,
            });
        }
        let shape = ParseError::Malformed {
            field: CLIENT_ID,
            expected: "CORE|key=value,...|",
        };
        // One pass over the whole identifier; only when it finds a control character do the
        // checks below look part by part, to name the field.
        let clean = !has_control(text);
        let (core, rest) = split_once_ascii(text, b'|').ok_or(shape)?;
        let block = rest.strip_suffix('|').ok_or(shape)?;
        if core.is_empty() {
            return Err(ParseError::Missing { field: CLIENT_ID });
        }
        if !clean && has_control(core) {
            return Err(ParseError::InvalidCharacter { field: CLIENT_ID });
        }

        let mut id = Self {
            core,
            block,
            secure_mode: SecureMode::TLS,
            sign_method: None,
            timestamp: None,
            kind: ConnectKind::Login,
            random: None,
            instance_id: None,
        };
        let mut secure_mode = None;
        let mut auth_type = None;
        // Known keys are marked in a bit set; other keys are compared with the other keys
        // seen so far, kept on the stack: at most ConnectRequest::MAX_PARAMS short keys, no allocation.
        let mut known_seen = 0u8;
        let mut others = [""; ConnectRequest::MAX_PARAMS];
        let mut other_count = 0;
        for (index, item) in items(block).enumerate() {
            if index >= ConnectRequest::MAX_PARAMS {
                return Err(ParseError::TooLong {
                    field: "clientId parameters",
                    max: ConnectRequest::MAX_PARAMS,
                });
            }
            let (key, value) = split_item(item, clean)?;
            match KNOWN_KEYS.iter().position(|known| *known == key) {
                Some(position) => {
                    let bit = KNOWN_KEY_BITS[position];
                    if known_seen & bit != 0 {
                        return Err(ParseError::Duplicate {
                            field: KNOWN_KEYS[position],
                        });
                    }
                    known_seen |= bit;
                }
                None => {
                    if others[..other_count].contains(&key) {
                        return Err(ParseError::Duplicate {
                            field: "clientId parameter",
                        });
                    }
                    others[other_count] = key;
                    other_count += 1;
                }
            }
            match key {
                "securemode" => secure_mode = Some(SecureMode::parse(value)?),
                "signmethod" => {
                    id.sign_method =
                        Some(SignMethod::from_name(value).ok_or(ParseError::Unsupported {
                            field: "signmethod",
                        })?);
                }
                "timestamp" => id.timestamp = Some(parse_timestamp(value)?),
                "authType" | "authtype" => auth_type = Some(value),
                "random" => id.random = Some(parse_random(value, "random")?),
                "instanceId" => id.instance_id = Some(value),
                _ => {}
            }
        }
        id.secure_mode = secure_mode.ok_or(ParseError::Missing {
            field: "securemode",
        })?;
        // Another authType value leaves a plain login: none the SDKs send changes what is
        // signed, and the signature decides.
        if let Some(kind) = auth_type.and_then(ConnectKind::from_auth_type) {
            id.kind = kind;
        }
        if matches!(
            id.kind,
            ConnectKind::Register | ConnectKind::RegisterNoPreregistration
        ) && id.random.is_none()
        {
            return Err(ParseError::Missing { field: "random" });
        }
        Ok(id)
    }

    /// Parses a client identifier as raw bytes, as a broker written in C hands it over: the
    /// length cap first, then UTF-8, then [`ClientId::parse`].
    ///
    /// # Errors
    /// As [`ClientId::parse`]; [`ParseError::InvalidCharacter`] for invalid UTF-8.
    pub fn parse_bytes(bytes: &'a [u8]) -> Result<Self, ParseError> {
        Self::parse(utf8_within(
            bytes,
            CLIENT_ID,
            ConnectRequest::MAX_CLIENT_ID_LEN,
        )?)
    }

    /// The part before the first `|`: the device's own client id, and what is signed as
    /// `clientId`.
    pub fn core(&self) -> &'a str {
        self.core
    }

    /// `securemode`.
    pub fn secure_mode(&self) -> SecureMode {
        self.secure_mode
    }

    /// `signmethod`; [`SignMethod::HmacMd5`] when absent, as the platform assumes.
    pub fn sign_method(&self) -> SignMethod {
        // The platform assumes hmacmd5 when the client id names no method (the compatibility notes (`iotauth::manual::compatibility`)).
        self.sign_method.unwrap_or(SignMethod::HmacMd5)
    }

    /// `signmethod` as sent, `None` when absent (then [`ClientId::sign_method`] is
    /// what the platform assumes).
    pub fn explicit_sign_method(&self) -> Option<SignMethod> {
        self.sign_method
    }

    /// `timestamp`, verbatim (1–20 ASCII digits), if present.
    pub fn timestamp(&self) -> Option<&'a str> {
        self.timestamp
    }

    /// What the connect asks for, from `authType`.
    pub fn kind(&self) -> ConnectKind {
        self.kind
    }

    /// `random` (registration connects), if present.
    pub fn random(&self) -> Option<&'a str> {
        self.random
    }

    /// `instanceId`, if present.
    pub fn instance_id(&self) -> Option<&'a str> {
        self.instance_id
    }

    /// The parameters this crate does not interpret (`_v`, `lan`, `ext`, ...), trimmed, in
    /// order. They are never signed.
    pub fn extensions(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        items(self.block)
            .filter_map(|item| split_item(item, false).ok())
            .filter(|(key, _)| known_key(key).is_none())
    }
}

/// `bytes` as text, after checking the cap and then UTF-8.
fn utf8_within<'a>(
    bytes: &'a [u8],
    field: &'static str,
    max: usize,
) -> Result<&'a str, ParseError> {
    if bytes.len() > max {
        return Err(ParseError::TooLong { field, max });
    }
    core::str::from_utf8(bytes).map_err(|_| ParseError::InvalidCharacter { field })
}

/// The caps on the three CONNECT fields, checked before anything else is looked at.
fn check_caps(client_id: usize, username: usize, password: usize) -> Result<(), ParseError> {
    for (field, len, max) in [
        (CLIENT_ID, client_id, ConnectRequest::MAX_CLIENT_ID_LEN),
        ("username", username, ConnectRequest::MAX_USERNAME_LEN),
        ("password", password, ConnectRequest::MAX_PASSWORD_LEN),
    ] {
        if len > max {
            return Err(ParseError::TooLong { field, max });
        }
    }
    Ok(())
}

fn known_key(key: &str) -> Option<&'static str> {
    KNOWN_KEYS.into_iter().find(|k| *k == key)
}

/// One `key=value` item of the parameter block, and where its first `=` is.
#[derive(Clone, Copy)]
struct Item<'a> {
    text: &'a str,
    equals: Option<usize>,
}

/// The block's items, split on `,`: one pass over the bytes finds both the commas and each
/// item's first `=`. Empty items are skipped (`…,ext=3,|`: Link SDK 4.0 with no extended
/// client id).
fn items(block: &str) -> impl Iterator<Item = Item<'_>> {
    let mut rest = Some(block);
    core::iter::from_fn(move || {
        let current = rest?;
        let bytes = current.as_bytes();
        let mut equals = None;
        let mut from = 0;
        // Up to the first `=`, look for either separator; after it, only for `,`.
        let end = loop {
            let wanted = if equals.is_none() { b'=' } else { b',' };
            match find_either(&bytes[from..], b',', wanted) {
                Some(at) if bytes[from + at] == b'=' => {
                    equals = Some(from + at);
                    from += at + 1;
                }
                Some(at) => break Some(from + at),
                None => break None,
            }
        };
        // Separators are ASCII bytes, so the slices are on character boundaries.
        let text = match end {
            Some(at) => {
                rest = Some(&current[at + 1..]);
                &current[..at]
            }
            None => {
                rest = None;
                current
            }
        };
        Some(Item { text, equals })
    })
    .filter(|item| !trim(item.text).is_empty())
}

/// `key=value`, both trimmed; an item without `=` is a key with an empty value, unless it is
/// a key this crate reads (a value in a `,` of Python linkkit's unescaped `sii`, say, makes
/// one). `clean`: the caller already found no control character.
fn split_item(item: Item<'_>, clean: bool) -> Result<(&str, &str), ParseError> {
    let Some(equals) = item.equals else {
        let key = trim(item.text);
        if known_key(key).is_some() {
            return Err(ParseError::Malformed {
                field: "clientId parameter",
                expected: "key=value",
            });
        }
        if !clean && has_control(key) {
            return Err(ParseError::InvalidCharacter {
                field: "clientId parameter",
            });
        }
        return Ok((key, ""));
    };
    let (key, value) = (trim(&item.text[..equals]), trim(&item.text[equals + 1..]));
    if key.is_empty() {
        return Err(ParseError::Missing {
            field: "clientId parameter key",
        });
    }
    if !clean && (has_control(key) || has_control(value)) {
        return Err(ParseError::InvalidCharacter {
            field: known_key(key).unwrap_or("clientId parameter"),
        });
    }
    Ok((key, value))
}

/// [`str::split_once`] on an ASCII separator.
fn split_once_ascii(text: &str, separator: u8) -> Option<(&str, &str)> {
    let at = find_either(text.as_bytes(), separator, separator)?;
    // `at` indexes an ASCII byte, so both sides are on character boundaries.
    Some((&text[..at], &text[at + 1..]))
}

/// [`str::trim`], skipped when both ends are visible ASCII (the usual case).
fn trim(text: &str) -> &str {
    let visible = |b: Option<&u8>| b.is_some_and(u8::is_ascii_graphic);
    if visible(text.as_bytes().first()) && visible(text.as_bytes().last()) {
        text
    } else {
        text.trim()
    }
}

/// Whether `text` has a control character (C0, DEL or C1). Without a short-circuit, so the
/// ASCII scan vectorizes; a C1 control is U+0080..U+009F, encoded as 0xC2 0x80..=0x9F.
fn has_control(text: &str) -> bool {
    let bytes = text.as_bytes();
    let c0_or_del = bytes
        .iter()
        .fold(false, |found, &b| found | (b < 0x20) | (b == 0x7f));
    c0_or_del
        || (!text.is_ascii()
            && bytes
                .windows(2)
                .any(|pair| pair[0] == 0xc2 && (0x80..=0x9f).contains(&pair[1])))
}

fn parse_timestamp(value: &str) -> Result<&str, ParseError> {
    if value.len() > ConnectRequest::MAX_TIMESTAMP_DIGITS {
        return Err(ParseError::TooLong {
            field: "timestamp",
            max: ConnectRequest::MAX_TIMESTAMP_DIGITS,
        });
    }
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::Malformed {
            field: "timestamp",
            expected: "1 to 20 decimal digits",
        });
    }
    Ok(value)
}

/// `random` of a registration: 1–64 printable ASCII characters.
pub(crate) fn parse_random<'a>(value: &'a str, field: &'static str) -> Result<&'a str, ParseError> {
    validate(value, 1, ConnectRequest::MAX_RANDOM_LEN, &VISIBLE_ASCII)
        .map_err(|e| ParseError::from_invalid(field, e, 1, ConnectRequest::MAX_RANDOM_LEN))?;
    Ok(value)
}

/// Splits a user name `deviceName&productKey` and validates both halves.
///
/// # Errors
/// [`ParseError::TooLong`] over [`ConnectRequest::MAX_USERNAME_LEN`], [`ParseError::Malformed`] without
/// exactly one `&`, or the identifiers' own errors.
///
/// ```
/// # use iotauth::parse_username;
/// let (dn, pk) = parse_username("meter_07@b.c&a2SHaReD0k1")?;
/// assert_eq!((dn.as_str(), pk.as_str()), ("meter_07@b.c", "a2SHaReD0k1"));
/// assert!(parse_username("a&b&c").is_err());
/// # Ok::<(), iotauth::ParseError>(())
/// ```
pub fn parse_username(text: &str) -> Result<(DeviceName, ProductKey), ParseError> {
    if text.len() > ConnectRequest::MAX_USERNAME_LEN {
        return Err(ParseError::TooLong {
            field: "username",
            max: ConnectRequest::MAX_USERNAME_LEN,
        });
    }
    let malformed = ParseError::Malformed {
        field: "username",
        expected: "deviceName&productKey",
    };
    let (dn, pk) = split_once_ascii(text, b'&').ok_or(malformed)?;
    if find_either(pk.as_bytes(), b'&', b'&').is_some() {
        return Err(malformed);
    }
    Ok((DeviceName::new(dn)?, ProductKey::new(pk)?))
}

/// The three fields of an MQTT CONNECT, parsed and cross-checked, ready to verify.
///
/// Borrows the password; it is never copied.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ConnectRequest<'a> {
    client_id: ClientId<'a>,
    device_name: DeviceName,
    product_key: ProductKey,
    password: &'a str,
    /// The password decoded, for the signed kinds (parse checks the hex once).
    offered: Option<OfferedDigest>,
}

impl<'a> ConnectRequest<'a> {
    /// Parses client id, user name and password. All three length caps are checked before
    /// anything else is looked at.
    ///
    /// The password must be exactly the hex digest of the client id's sign method (either
    /// case, no whitespace), or for `authType=connwl` a device token (1–64 printable ASCII).
    ///
    /// # Errors
    /// A [`ParseError`] naming the field; never its value.
    pub fn parse(
        client_id: &'a str,
        username: &'a str,
        password: &'a str,
    ) -> Result<Self, ParseError> {
        check_caps(client_id.len(), username.len(), password.len())?;
        let client_id = ClientId::parse(client_id)?;
        let (device_name, product_key) = parse_username(username)?;
        let offered = if client_id.kind() == ConnectKind::TokenLogin {
            validate(password, 1, DeviceToken::MAX_LEN, &VISIBLE_ASCII)
                .map_err(|e| ParseError::from_invalid("password", e, 1, DeviceToken::MAX_LEN))?;
            None
        } else {
            Some(
                OfferedDigest::from_hex(client_id.sign_method(), password).ok_or(
                    ParseError::Malformed {
                        field: "password",
                        expected: "the hex digest of signmethod",
                    },
                )?,
            )
        };
        Ok(Self {
            client_id,
            device_name,
            product_key,
            password,
            offered,
        })
    }

    /// Parses the three fields as raw bytes, as a broker written in C hands them over: all
    /// three caps first, then UTF-8, then [`ConnectRequest::parse`].
    ///
    /// # Errors
    /// As [`ConnectRequest::parse`]; [`ParseError::InvalidCharacter`] for invalid UTF-8.
    pub fn parse_bytes(
        client_id: &'a [u8],
        username: &'a [u8],
        password: &'a [u8],
    ) -> Result<Self, ParseError> {
        check_caps(client_id.len(), username.len(), password.len())?;
        Self::parse(
            utf8_within(client_id, CLIENT_ID, ConnectRequest::MAX_CLIENT_ID_LEN)?,
            utf8_within(username, "username", ConnectRequest::MAX_USERNAME_LEN)?,
            utf8_within(password, "password", ConnectRequest::MAX_PASSWORD_LEN)?,
        )
    }

    /// The parsed client id.
    pub fn client_id(&self) -> &ClientId<'a> {
        &self.client_id
    }

    /// What the connect asks for.
    pub fn kind(&self) -> ConnectKind {
        self.client_id.kind()
    }

    /// The device name from the user name.
    pub fn device_name(&self) -> DeviceName {
        self.device_name
    }

    /// The product key from the user name.
    pub fn product_key(&self) -> ProductKey {
        self.product_key
    }

    /// The identity the connect claims (not yet verified).
    pub fn claimed_identity(&self) -> DeviceIdentity {
        DeviceIdentity::new(self.product_key, self.device_name)
    }

    /// The canonical content a login's or registration's password signs; `None` for a token
    /// login, whose password is not a signature.
    pub fn sign_content(&self) -> Option<SignContent<'_>> {
        match self.kind() {
            ConnectKind::Login => Some(SignContent::login(
                self.client_id.core(),
                &self.device_name,
                &self.product_key,
                self.client_id.timestamp(),
            )),
            ConnectKind::Register | ConnectKind::RegisterNoPreregistration => {
                Some(SignContent::registration(
                    &self.device_name,
                    &self.product_key,
                    self.client_id.random().unwrap_or_default(),
                ))
            }
            ConnectKind::TokenLogin => None,
        }
    }

    /// Verifies a per-device login against the device's secret and the freshness policy.
    ///
    /// # Errors
    /// [`VerifyError::WrongKind`] unless this is a plain login; otherwise the signature's or
    /// the timestamp's error.
    pub fn verify_login(
        &self,
        secret: &DeviceSecret,
        freshness: Freshness,
        now: UnixMillis,
    ) -> Result<Verified<DeviceIdentity>, VerifyError> {
        // Signature first: an unauthenticated party learns nothing about the clock.
        self.verify_signed(secret, &[ConnectKind::Login], ConnectKind::Login)?;
        freshness.check(self.client_id.timestamp(), now)?;
        Ok(Verified::new(self.claimed_identity()))
    }

    /// Verifies a registration connect (`authType=register|regnwl`) against the product's
    /// secret.
    ///
    /// # Errors
    /// [`VerifyError::WrongKind`] unless this is a registration; otherwise the signature's error.
    pub fn verify_registration(
        &self,
        secret: &ProductSecret,
    ) -> Result<Verified<DeviceIdentity>, VerifyError> {
        self.verify_signed(
            secret,
            &[
                ConnectKind::Register,
                ConnectKind::RegisterNoPreregistration,
            ],
            ConnectKind::Register,
        )?;
        Ok(Verified::new(self.claimed_identity()))
    }

    /// Verifies a token login (`authType=connwl`) in constant time.
    ///
    /// # Errors
    /// [`VerifyError::WrongKind`] unless this is a token login; [`VerifyError::BadToken`].
    pub fn verify_token(
        &self,
        token: &DeviceToken,
    ) -> Result<Verified<DeviceIdentity>, VerifyError> {
        self.expect_kind(&[ConnectKind::TokenLogin], ConnectKind::TokenLogin)?;
        if token.matches(self.password) {
            Ok(Verified::new(self.claimed_identity()))
        } else {
            Err(VerifyError::BadToken)
        }
    }

    /// Verifies a token login (`authType=connwl`) against the ClientIDs a device holds: its
    /// client-id CORE must be one of them and its password that ClientID's token, whose
    /// digest is compared in constant time (a digest is computed and compared also when no
    /// ClientID matches).
    ///
    /// # Errors
    /// [`VerifyError::WrongKind`] unless this is a token login; [`VerifyError::BadToken`].
    pub fn verify_issued_token(
        &self,
        client_ids: &[crate::store::ClientIdRecord],
    ) -> Result<Verified<DeviceIdentity>, VerifyError> {
        self.expect_kind(&[ConnectKind::TokenLogin], ConnectKind::TokenLogin)?;
        let core = self.client_id.core();
        let held = client_ids
            .iter()
            .find(|held| held.client_id.as_str() == core);
        let digest = held.map_or(*UNMATCHED_TOKEN_DIGEST, |held| held.token_digest);
        if digest.matches(self.password) && held.is_some() {
            Ok(Verified::new(self.claimed_identity()))
        } else {
            Err(VerifyError::BadToken)
        }
    }

    fn verify_signed(
        &self,
        key: &impl SigningKey,
        accepted: &[ConnectKind],
        expected: ConnectKind,
    ) -> Result<(), VerifyError> {
        self.expect_kind(accepted, expected)?;
        let content = self.sign_content().ok_or(VerifyError::WrongKind {
            expected,
            got: self.kind(),
        })?;
        let offered = self.offered.ok_or(VerifyError::MalformedSignature {
            expected: 2 * self.client_id.sign_method().digest_len(),
        })?;
        verify_offered(key, &content, &offered)
    }

    fn expect_kind(
        &self,
        accepted: &[ConnectKind],
        expected: ConnectKind,
    ) -> Result<(), VerifyError> {
        if accepted.contains(&self.kind()) {
            Ok(())
        } else {
            Err(VerifyError::WrongKind {
                expected,
                got: self.kind(),
            })
        }
    }
}

impl fmt::Debug for ConnectRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectRequest")
            .field("client_id", &self.client_id)
            .field("device_name", &self.device_name)
            .field("product_key", &self.product_key)
            .finish_non_exhaustive()
    }
}

/// The three CONNECT fields a device sends.
pub struct ConnectCredentials {
    client_id: String,
    username: String,
    password: Password,
}

/// A CONNECT's password: a signature, or a DeviceToken sent as it is (`connwl`).
enum Password {
    Signed(Signature),
    Token(DeviceToken),
}

impl ConnectCredentials {
    /// The MQTT client identifier.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The MQTT user name, `deviceName&productKey`.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The MQTT password: the signature in lowercase hex, or for a token login the
    /// DeviceToken.
    pub fn expose_password(&self) -> Zeroizing<String> {
        match &self.password {
            Password::Signed(signature) => signature.expose_hex(),
            Password::Token(token) => Zeroizing::new(token.expose_secret().to_owned()),
        }
    }
}

impl fmt::Debug for ConnectCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectCredentials")
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// `with_sign_method` and `with_secure_mode`, for the options of both kinds of CONNECT.
macro_rules! sign_method_and_secure_mode_setters {
    () => {
        /// With `sign_method`.
        #[must_use]
        pub fn with_sign_method(mut self, sign_method: SignMethod) -> Self {
            self.sign_method = sign_method;
            self
        }

        /// With `secure_mode`.
        #[must_use]
        pub fn with_secure_mode(mut self, secure_mode: SecureMode) -> Self {
            self.secure_mode = secure_mode;
            self
        }
    };
}

/// Options of a device's login; every field has the default shown. Build them from
/// [`LoginOptions::default`] with the `with_*` methods (more options may come).
///
/// ```
/// # use iotauth::*;
/// let options = LoginOptions::default()
///     .with_timestamp("1700000000000")
///     .with_sign_method(SignMethod::HmacSha1);
/// assert_eq!(options.secure_mode, SecureMode::TLS);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoginOptions<'a> {
    /// The client-id CORE, signed exactly as given; default `{productKey}.{deviceName}`
    /// (as the C SDKs).
    pub client_id: Option<&'a str>,
    /// `timestamp`, decimal digits; default none.
    pub timestamp: Option<&'a str>,
    /// Default [`SignMethod::HmacSha256`].
    pub sign_method: SignMethod,
    /// Default [`SecureMode::TLS`].
    pub secure_mode: SecureMode,
}

impl Default for LoginOptions<'_> {
    fn default() -> Self {
        Self {
            client_id: None,
            timestamp: None,
            sign_method: SignMethod::HmacSha256,
            secure_mode: SecureMode::TLS,
        }
    }
}

impl<'a> LoginOptions<'a> {
    /// With the client-id CORE `client_id` (`None`: the default).
    #[must_use]
    pub fn with_client_id(mut self, client_id: impl Into<Option<&'a str>>) -> Self {
        self.client_id = client_id.into();
        self
    }

    /// With `timestamp` (`None`: none).
    #[must_use]
    pub fn with_timestamp(mut self, timestamp: impl Into<Option<&'a str>>) -> Self {
        self.timestamp = timestamp.into();
        self
    }

    sign_method_and_secure_mode_setters!();
}

/// Builds a device's per-device login (the device side of [`ConnectRequest::verify_login`]).
///
/// # Errors
/// [`ParseError`] when the CORE or timestamp could not be parsed back by a server (a CORE with
/// `|` or a control character, a non-decimal timestamp).
///
/// ```
/// # use iotauth::*;
/// let cert = DeviceCertificate::new(
///     ProductKey::new("a1BwAGV0001")?, DeviceName::new("meter-01")?,
///     DeviceSecret::new("mz2Canp4GB7qRVf1OYPNtRqB2anuXXXX")?,
/// );
/// let creds = build_login(&cert, &LoginOptions::default().with_timestamp("1700000000000"))?;
/// assert_eq!(creds.client_id(), "a1BwAGV0001.meter-01|securemode=2,signmethod=hmacsha256,timestamp=1700000000000|");
///
/// // The server side.
/// let password = creds.expose_password();
/// let request = ConnectRequest::parse(creds.client_id(), creds.username(), &password)?;
/// let verified = request.verify_login(cert.device_secret(), Freshness::Unchecked, UnixMillis(0));
/// assert_eq!(verified.unwrap().device_name(), cert.device_name());
/// # Ok::<(), iotauth::ParseError>(())
/// ```
pub fn build_login(
    cert: &DeviceCertificate,
    options: &LoginOptions<'_>,
) -> Result<ConnectCredentials, ParseError> {
    let (pk, dn) = (cert.product_key(), cert.device_name());
    let default_core;
    let core = match options.client_id {
        Some(core) => core,
        None => {
            default_core = format!("{pk}.{dn}");
            &default_core
        }
    };
    let mut block = format!(
        "securemode={},signmethod={}",
        options.secure_mode,
        options.sign_method.name()
    );
    if let Some(ts) = options.timestamp {
        block.push_str(",timestamp=");
        block.push_str(ts);
    }
    let client_id = format!("{core}|{block}|");
    // Parse back what a server will parse, so the device cannot sign what it cannot send.
    let parsed = ClientId::parse(&client_id)?;
    if parsed.core() != core || parsed.timestamp() != options.timestamp {
        return Err(ParseError::InvalidCharacter { field: CLIENT_ID });
    }
    let content = SignContent::login(core, &dn, &pk, options.timestamp);
    let password = Password::Signed(sign(cert.device_secret(), options.sign_method, &content));
    Ok(ConnectCredentials {
        username: format!("{dn}&{pk}"),
        client_id,
        password,
    })
}

/// Options of a registration connect (`authType=register` or `regnwl`): made by
/// [`RegisterOptions::new`], the rest set with the `with_*` methods (more options may come).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RegisterOptions<'a> {
    /// `register` (pre-registered device) or `regnwl`.
    pub kind: ConnectKind,
    /// `random`, 1–64 printable ASCII characters except `,` and `|`.
    pub random: &'a str,
    /// Default [`SignMethod::HmacSha256`].
    pub sign_method: SignMethod,
    /// `securemode`; default [`SecureMode::TLS`] (what Alibaba's SDKs send).
    pub secure_mode: SecureMode,
    /// `instanceId`, when the device belongs to an instance; default none.
    pub instance_id: Option<&'a str>,
}

impl<'a> RegisterOptions<'a> {
    /// A registration of `kind` with `random`, and the defaults.
    pub fn new(kind: ConnectKind, random: &'a str) -> Self {
        Self {
            kind,
            random,
            sign_method: SignMethod::HmacSha256,
            secure_mode: SecureMode::TLS,
            instance_id: None,
        }
    }

    sign_method_and_secure_mode_setters!();

    /// With `instance_id` (`None`: none).
    #[must_use]
    pub fn with_instance_id(mut self, instance_id: impl Into<Option<&'a str>>) -> Self {
        self.instance_id = instance_id.into();
        self
    }
}

/// Builds a registration connect (`authType=register|regnwl`), signed with the product secret.
/// The CORE is `{deviceName}.{productKey}`, as Alibaba's Python and C 4.x SDKs send it.
///
/// # Errors
/// [`ParseError`] when `kind` is not a registration or a field could not be parsed back.
pub fn build_register_connect(
    cert: &ProductCertificate,
    device_name: DeviceName,
    options: &RegisterOptions<'_>,
) -> Result<ConnectCredentials, ParseError> {
    let auth_type = match options.kind {
        ConnectKind::Register | ConnectKind::RegisterNoPreregistration => options.kind.auth_type(),
        _ => None,
    }
    .ok_or(ParseError::Unsupported { field: "authType" })?;
    let pk = cert.product_key();
    let random = parse_random(options.random, "random")?;
    let mut client_id = format!(
        "{device_name}.{pk}|securemode={},authType={auth_type},random={random},signmethod={}",
        options.secure_mode,
        options.sign_method.name()
    );
    if let Some(instance) = options.instance_id {
        client_id.push_str(",instanceId=");
        client_id.push_str(instance);
    }
    client_id.push('|');
    let parsed = ClientId::parse(&client_id)?;
    if parsed.random() != Some(random) || parsed.instance_id() != options.instance_id {
        return Err(ParseError::InvalidCharacter { field: CLIENT_ID });
    }
    let content = SignContent::registration(&device_name, &pk, random);
    let password = Password::Signed(sign(cert.product_secret(), options.sign_method, &content));
    Ok(ConnectCredentials {
        username: format!("{device_name}&{pk}"),
        client_id,
        password,
    })
}

/// Builds a token login (`authType=connwl`, the device side of
/// [`ConnectRequest::verify_issued_token`]) with a ClientID and DeviceToken that registration
/// without pre-registration issued: the client id `{ClientID}|securemode=-2,authType=connwl|`,
/// the user name `{deviceName}&{productKey}`, the token as password (see the [compatibility notes](crate::manual::compatibility)).
///
/// ```
/// # use iotauth::*;
/// let creds = build_token_login(
///     ProductKey::new("a1BwAGV0001")?, DeviceName::new("meter-01")?,
///     IssuedClientId::new("a1BwAGV0001meter01abcdef")?, &DeviceToken::new("t0k3n")?,
/// );
/// assert_eq!(creds.client_id(), "a1BwAGV0001meter01abcdef|securemode=-2,authType=connwl|");
/// assert_eq!(creds.expose_password().as_str(), "t0k3n");
/// # Ok::<(), iotauth::ParseError>(())
/// ```
pub fn build_token_login(
    product_key: ProductKey,
    device_name: DeviceName,
    client_id: IssuedClientId,
    token: &DeviceToken,
) -> ConnectCredentials {
    ConnectCredentials {
        client_id: format!("{client_id}|securemode=-2,authType=connwl|"),
        username: format!("{device_name}&{product_key}"),
        password: Password::Token(token.clone_secret()),
    }
}
