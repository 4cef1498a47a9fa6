//! The fuzz targets' bodies: an unpublished crate beside `iotauth`, used by `fuzz/` (the
//! cargo-fuzz targets) and by `iotauth`'s `tests/fuzz_regressions.rs`, so that `cargo test`
//! replays the seed corpora and every regression input through the very same checks. It uses
//! `iotauth`'s public API only, as any other client.
//!
//! Each function takes arbitrary bytes, must never panic on its own, and asserts the
//! properties of the code under test; a failed assertion is a bug found.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

use arbitrary::Unstructured;

use iotauth::service::{Admin, AdminError, AuthError, Authenticator, RegisterError, Registrar};
use iotauth::store::{DeviceStore, MemoryStore, StoreError};
use iotauth::*;

/// The secrets of the seed corpora (the shared SDK vectors), so that seeds verify and the
/// fuzzer explores the accepting paths too.
pub const DEVICE_SECRETS: [&str; 2] = [
    "Sh4r3dS3cr3tV4lu3F0rT3st1ngXyZ09",
    "mN5bV8cX1zL4kJ7hG0fD3sA6pO9iU2yT",
];
/// See [`DEVICE_SECRETS`].
pub const PRODUCT_SECRETS: [&str; 2] = ["Pr0dS3cr3tSh4rd1", "QwErTy1234567890"];
/// See [`DEVICE_SECRETS`].
pub const DEVICE_TOKEN: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";
/// The ClientID that holds [`DEVICE_TOKEN`] in the `mqtt_connect` target.
pub const TOKEN_CLIENT_ID: &str = "Fz7ClientIdHeldByTheTarget";

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every target: its name (the directory under `fuzz/corpus` and `fuzz/regressions`) and body.
pub const TARGETS: [(&str, Target); 7] = [
    ("mqtt_client_id", mqtt_client_id),
    ("mqtt_username", mqtt_username),
    ("mqtt_connect", mqtt_connect),
    ("register_form", register_form),
    ("register_response", register_response),
    ("sign_verify_roundtrip", sign_verify_roundtrip),
    ("lifecycle", lifecycle),
];

/// The client-id parser on raw bytes and, where they are UTF-8, on text; both paths agree, and
/// an accepted id survives a canonical re-serialization with the same meaning.
pub fn mqtt_client_id(data: &[u8]) {
    let raw = ClientId::parse_bytes(data);
    let Ok(text) = core::str::from_utf8(data) else {
        assert!(raw.is_err(), "invalid UTF-8 accepted");
        return;
    };
    let parsed = ClientId::parse(text);
    assert_eq!(raw, parsed, "byte and text paths disagree");
    if let Ok(id) = parsed {
        assert!(text.ends_with('|'));
        assert!(!id.core().is_empty() && !id.core().contains('|'));
        assert!(!id.core().chars().any(char::is_control));
        let canonical = canonical_client_id(&id);
        // The canonical form may be longer than the input (`securemode=` is always written,
        // a valueless item gains its `=`), and then beyond the length cap, which bounds input,
        // not meaning.
        if canonical.len() > iotauth::ConnectRequest::MAX_CLIENT_ID_LEN {
            return;
        }
        let again =
            ClientId::parse(&canonical).unwrap_or_else(|e| panic!("canonical form refused: {e}"));
        assert_eq!(
            meaning(&id),
            meaning(&again),
            "canonical form changed the meaning"
        );
    }
}

type Meaning<'a> = (
    &'a str,
    SecureMode,
    SignMethod,
    Option<&'a str>,
    ConnectKind,
    Option<&'a str>,
    Option<&'a str>,
    Vec<(&'a str, &'a str)>,
);

fn meaning<'a>(id: &ClientId<'a>) -> Meaning<'a> {
    (
        id.core(),
        id.secure_mode(),
        id.sign_method(),
        id.timestamp(),
        id.kind(),
        id.random(),
        id.instance_id(),
        id.extensions().collect(),
    )
}

fn canonical_client_id(id: &ClientId<'_>) -> String {
    let mut items = vec![format!("securemode={}", id.secure_mode())];
    let optional = [
        (
            "signmethod",
            id.explicit_sign_method().map(SignMethod::name),
        ),
        ("timestamp", id.timestamp()),
        ("authType", id.kind().auth_type()),
        ("random", id.random()),
        ("instanceId", id.instance_id()),
    ];
    items.extend(
        optional
            .iter()
            .filter_map(|(k, v)| v.map(|v| format!("{k}={v}"))),
    );
    items.extend(id.extensions().map(|(k, v)| format!("{k}={v}")));
    format!("{}|{}|", id.core(), items.join(","))
}

/// The user-name splitter: what it accepts is exactly `deviceName&productKey` of two valid
/// identifiers.
pub fn mqtt_username(data: &[u8]) {
    let Ok(text) = core::str::from_utf8(data) else {
        return;
    };
    if let Ok((dn, pk)) = parse_username(text) {
        assert_eq!(format!("{dn}&{pk}"), text);
    }
}

/// Client id, user name and password (separated by NUL bytes) through the full parse and
/// verify path against the seed secrets; whatever verifies must be the real signature.
pub fn mqtt_connect(data: &[u8]) {
    let mut fields = data.splitn(3, |&b| b == 0);
    let (Some(id), Some(user), Some(pass)) = (fields.next(), fields.next(), fields.next()) else {
        return;
    };
    let Ok(request) = ConnectRequest::parse_bytes(id, user, pass) else {
        return;
    };
    let claimed = request.claimed_identity();
    match request.kind() {
        ConnectKind::Login => {
            for secret in DEVICE_SECRETS {
                let secret = DeviceSecret::new(secret).unwrap_or_else(|e| panic!("{e}"));
                let window = Freshness::Window { max_skew_secs: 900 };
                let _ = request.verify_login(&secret, window, UnixMillis(1_711_111_111_000));
                if let Ok(who) = request.verify_login(&secret, Freshness::Unchecked, UnixMillis(0))
                {
                    assert_eq!(*who, claimed);
                    let cert = DeviceCertificate::new(
                        claimed.product_key(),
                        claimed.device_name(),
                        secret,
                    );
                    let expected = sign(
                        cert.device_secret(),
                        request.client_id().sign_method(),
                        &request
                            .sign_content()
                            .unwrap_or_else(|| panic!("a login has content")),
                    );
                    assert!(
                        expected
                            .expose_hex()
                            .eq_ignore_ascii_case(core::str::from_utf8(pass).unwrap_or_default())
                    );
                }
            }
        }
        ConnectKind::Register | ConnectKind::RegisterNoPreregistration => {
            for secret in PRODUCT_SECRETS {
                let secret = ProductSecret::new(secret).unwrap_or_else(|e| panic!("{e}"));
                if let Ok(who) = request.verify_registration(&secret) {
                    assert_eq!(*who, claimed);
                }
            }
        }
        ConnectKind::TokenLogin => {
            let token = DeviceToken::new(DEVICE_TOKEN).unwrap_or_else(|e| panic!("{e}"));
            if request.verify_token(&token).is_ok() {
                assert_eq!(pass, DEVICE_TOKEN.as_bytes());
            }
            // Against stored digests: only the held ClientID with its own token passes.
            let held = iotauth::store::ClientIdRecord {
                client_id: IssuedClientId::new(TOKEN_CLIENT_ID).unwrap_or_else(|e| panic!("{e}")),
                token_digest: TokenDigest::of(&token),
            };
            if request.verify_issued_token(&[held]).is_ok() {
                assert_eq!(pass, DEVICE_TOKEN.as_bytes());
                assert_eq!(request.client_id().core(), TOKEN_CLIENT_ID);
            }
            assert!(request.verify_issued_token(&[]).is_err());
        }
        // A kind added to iotauth needs its checks here before it is fuzzed.
        kind => panic!("a connect kind this body does not check: {kind:?}"),
    }
}

/// The registration form parser: an accepted form re-encodes and parses to the same form, and
/// verifies only with its real signature.
pub fn register_form(data: &[u8]) {
    let Ok(form) = RegisterForm::parse(data) else {
        return;
    };
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("productKey", form.product_key().as_str())
        .append_pair("deviceName", form.device_name().as_str())
        .append_pair("random", form.random())
        .append_pair("sign", form.expose_sign())
        .append_pair("signMethod", form.sign_method().name())
        .finish();
    let again = RegisterForm::parse(body.as_bytes())
        .unwrap_or_else(|e| panic!("re-encoded form refused: {e}"));
    assert_eq!(form, again);
    for secret in PRODUCT_SECRETS {
        let secret = ProductSecret::new(secret).unwrap_or_else(|e| panic!("{e}"));
        if form.verify(&secret).is_ok() {
            let expected = sign(&secret, form.sign_method(), &form.sign_content());
            assert!(
                expected
                    .expose_hex()
                    .eq_ignore_ascii_case(form.expose_sign())
            );
        }
    }
}

/// The device-side reply parser: an accepted reply re-serializes and parses to the same reply.
pub fn register_response(data: &[u8]) {
    let Ok(reply) = RegisterReply::parse(data) else {
        return;
    };
    let again = RegisterReply::parse(reply.to_json_exposing_secret().as_bytes())
        .unwrap_or_else(|e| panic!("re-serialized reply refused: {e}"));
    match (reply, again) {
        (
            RegisterReply::Issued {
                product_key: p1,
                device_name: d1,
                device_secret: s1,
            },
            RegisterReply::Issued {
                product_key: p2,
                device_name: d2,
                device_secret: s2,
            },
        ) => {
            assert_eq!((p1, d1), (p2, d2));
            assert_eq!(s1.expose_secret(), s2.expose_secret());
        }
        (
            RegisterReply::Refused {
                code: c1,
                message: m1,
            },
            RegisterReply::Refused {
                code: c2,
                message: m2,
            },
        ) => {
            assert_eq!((c1, m1), (c2, m2));
        }
        _ => panic!("re-serialization changed the kind of reply"),
    }
}

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const NAME: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_@.:";
const CORE: &[u8] = b"abcXYZ0189 ,=&.:_-*#";
const DIGITS: &[u8] = b"0123456789";

fn text(
    u: &mut Unstructured<'_>,
    alphabet: &[u8],
    min: usize,
    max: usize,
) -> arbitrary::Result<String> {
    let len = u.int_in_range(min..=max)?;
    (0..len)
        .map(|_| u.choose(alphabet).map(|&b| char::from(b)))
        .collect()
}

fn visible(u: &mut Unstructured<'_>, min: usize, max: usize) -> arbitrary::Result<String> {
    let len = u.int_in_range(min..=max)?;
    (0..len)
        .map(|_| u.int_in_range(b'!'..=b'~').map(char::from))
        .collect()
}

/// Builds credentials from structured input: they verify; parse → rebuild → parse is stable;
/// one changed byte of a signed part (CORE, user name, timestamp, random, password other than
/// its hex case) is refused.
pub fn sign_verify_roundtrip(data: &[u8]) {
    let _ = try_sign_verify_roundtrip(&mut Unstructured::new(data));
}

fn try_sign_verify_roundtrip(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let pk =
        ProductKey::new(&text(u, ALNUM, 1, 32)?).map_err(|_| arbitrary::Error::IncorrectFormat)?;
    let dn =
        DeviceName::new(&text(u, NAME, 4, 32)?).map_err(|_| arbitrary::Error::IncorrectFormat)?;
    let secret = visible(u, 1, 64)?;
    let method = *u.choose(&SignMethod::ALL)?;
    let mode = SecureMode::new(*u.choose(&[-2i8, -1, 0, 1, 2, 3, 4, 5, 7, 8])?)
        .map_err(|_| arbitrary::Error::IncorrectFormat)?;
    let mutation = (u.arbitrary::<usize>()?, u.int_in_range(1u8..=255)?);
    if u.arbitrary::<bool>()? {
        let core = text(u, CORE, 1, 64)?;
        let timestamp = if u.arbitrary()? {
            Some(text(u, DIGITS, 1, 20)?)
        } else {
            None
        };
        let secret = DeviceSecret::new(&secret).map_err(|_| arbitrary::Error::IncorrectFormat)?;
        login_roundtrip(
            DeviceCertificate::new(pk, dn, secret),
            &core,
            timestamp.as_deref(),
            method,
            mode,
            mutation,
        );
    } else {
        let random =
            text(u, CORE.strip_suffix(b"*#").unwrap_or(CORE), 1, 64)?.replace([' ', ','], "r");
        let secret = ProductSecret::new(&secret).map_err(|_| arbitrary::Error::IncorrectFormat)?;
        registration_roundtrip(
            ProductCertificate::new(pk, secret),
            dn,
            &random,
            method,
            mutation,
        );
    }
    Ok(())
}

fn login_roundtrip(
    cert: DeviceCertificate,
    core: &str,
    timestamp: Option<&str>,
    method: SignMethod,
    mode: SecureMode,
    (at, flip): (usize, u8),
) {
    let options = LoginOptions::default()
        .with_client_id(core)
        .with_timestamp(timestamp)
        .with_sign_method(method)
        .with_secure_mode(mode);
    let creds = build_login(&cert, &options).unwrap_or_else(|e| panic!("valid input refused: {e}"));
    let password = creds.expose_password();
    let accepts = |id: &[u8], user: &[u8], pass: &[u8]| {
        ConnectRequest::parse_bytes(id, user, pass).is_ok_and(|r| {
            r.verify_login(cert.device_secret(), Freshness::Unchecked, UnixMillis(0))
                .is_ok()
        })
    };
    assert!(accepts(
        creds.client_id().as_bytes(),
        creds.username().as_bytes(),
        password.as_bytes()
    ));

    let request = ConnectRequest::parse(creds.client_id(), creds.username(), &password)
        .unwrap_or_else(|e| panic!("own credentials refused: {e}"));
    let parsed = request.client_id();
    let rebuilt = build_login(
        &cert,
        &LoginOptions::default()
            .with_client_id(parsed.core())
            .with_timestamp(parsed.timestamp())
            .with_sign_method(parsed.sign_method())
            .with_secure_mode(parsed.secure_mode()),
    )
    .unwrap_or_else(|e| panic!("rebuild refused: {e}"));
    assert_eq!(rebuilt.client_id(), creds.client_id());
    assert_eq!(ClientId::parse(rebuilt.client_id()), Ok(*parsed));

    // One changed byte in a signed part: CORE, user name, timestamp digits or password.
    let mut fields = [
        creds.client_id().as_bytes().to_vec(),
        creds.username().as_bytes().to_vec(),
        password.as_bytes().to_vec(),
    ];
    let (id, user, pass) = (0, 1, 2);
    let ts_len = timestamp.map_or(0, str::len);
    let ts_start = fields[id].len() - 1 - ts_len;
    let regions = [
        (id, 0, core.len()),
        (user, 0, fields[user].len()),
        (id, ts_start, ts_len),
        (pass, 0, fields[pass].len()),
    ];
    let mut offset = at % regions.iter().map(|(_, _, len)| len).sum::<usize>();
    let Some(&(field, start, _)) = regions.iter().find(|(_, _, len)| {
        let inside = offset < *len;
        if !inside {
            offset -= len;
        }
        inside
    }) else {
        return;
    };
    let byte = &mut fields[field][start + offset];
    if field == pass && (*byte ^ flip).eq_ignore_ascii_case(byte) {
        return; // a hex case change is the same signature
    }
    *byte ^= flip;
    let [id_m, user_m, pass_m] = &fields;
    assert!(
        !accepts(id_m, user_m, pass_m),
        "a changed byte was accepted"
    );
}

fn registration_roundtrip(
    cert: ProductCertificate,
    dn: DeviceName,
    random: &str,
    method: SignMethod,
    (at, flip): (usize, u8),
) {
    let form = build_register_form(&cert, dn, random, method)
        .unwrap_or_else(|e| panic!("valid input refused: {e}"));
    let parsed = RegisterForm::parse(form.body().as_bytes())
        .unwrap_or_else(|e| panic!("own form refused: {e}"));
    assert!(parsed.verify(cert.product_secret()).is_ok());
    let rebuilt = build_register_form(
        &cert,
        parsed.device_name(),
        parsed.random(),
        parsed.sign_method(),
    )
    .unwrap_or_else(|e| panic!("rebuild refused: {e}"));
    assert_eq!(rebuilt.body(), form.body());

    let options = RegisterOptions::new(ConnectKind::Register, random)
        .with_sign_method(method)
        .with_secure_mode(SecureMode::TLS);
    let connect = build_register_connect(&cert, dn, &options)
        .unwrap_or_else(|e| panic!("valid input refused: {e}"));
    let password = connect.expose_password();
    let accepts = |id: &[u8]| {
        ConnectRequest::parse_bytes(id, connect.username().as_bytes(), password.as_bytes())
            .is_ok_and(|r| r.verify_registration(cert.product_secret()).is_ok())
    };
    assert!(accepts(connect.client_id().as_bytes()));
    let start = connect.client_id().find("random=").unwrap_or_default() + "random=".len();
    let mut forged = connect.client_id().as_bytes().to_vec();
    forged[start + at % random.len()] ^= flip;
    assert!(!accepts(&forged), "a changed byte of random was accepted");
}

/// Deterministic bytes for the lifecycle target, so that a crash replays exactly.
struct Counter(AtomicU64);

impl Entropy for Counter {
    fn fill(&self, buf: &mut [u8]) -> Result<(), EntropyError> {
        for b in buf {
            let n = self.0.fetch_add(1, Ordering::Relaxed);
            *b = (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8;
        }
        Ok(())
    }
}

/// Runs a future that never waits on I/O (the memory store's) to completion.
fn run<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ModelDevice {
    state: DeviceState,
    enabled: bool,
    /// ClientIDs held (registration without pre-registration).
    client_ids: usize,
}

/// The model's device after a login (signed, or a `connwl` token login) that gave `result`,
/// which must be what the model says: an unknown device; a wrong credential refused as
/// `wrong`; a disabled device (told only to the holder of the right one); else accepted, and
/// the device Active.
fn expected_login(
    device: Option<ModelDevice>,
    result: Result<Verified<DeviceIdentity>, AuthError>,
    right: bool,
    wrong: VerifyError,
    (pk, dn): (ProductKey, DeviceName),
) -> Option<ModelDevice> {
    match (device, result) {
        (None, Err(AuthError::UnknownDevice)) => None,
        (Some(d), Err(AuthError::Verify(e))) if !right && e == wrong => Some(d),
        (Some(d), Err(AuthError::Disabled)) if right && !d.enabled => Some(d),
        (Some(d), Ok(who)) if right && d.enabled => {
            assert_eq!((who.product_key(), who.device_name()), (pk, dn));
            Some(ModelDevice {
                state: DeviceState::Active,
                ..d
            })
        }
        (d, other) => panic!("login (right credential: {right}) on {d:?} gave {other:?}"),
    }
}

/// The device quota of the lifecycle target's product: below its three names, so that
/// `regnwl` meets a full quota.
const FUZZ_DEVICE_QUOTA: u32 = 2;

/// Arbitrary event sequences against the services on the memory store and a reference model:
/// every outcome and every stored state agree with the model; a secret is first delivered at
/// most once between resets, and only the current secret is ever delivered.
pub fn lifecycle(data: &[u8]) {
    let _ = run(try_lifecycle(&mut Unstructured::new(data)));
}

async fn try_lifecycle(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    const NAMES: [&str; 3] = ["dev-a", "dev-b", "dev-c"];
    let policy = *u.choose(&[
        IssuancePolicy::Once,
        IssuancePolicy::RedeliverUntilFirstLogin,
    ])?;
    let store = Arc::new(MemoryStore::new());
    let admin = Admin::new(store.clone()).with_entropy(Arc::new(Counter(AtomicU64::new(0))));
    let product = admin
        .create_product(None, DynamicRegistration::On)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let pk = product.product_key;
    let pre_registration_free = iotauth::store::PreRegistrationFree {
        on: true,
        device_quota: FUZZ_DEVICE_QUOTA,
    };
    admin
        .set_pre_registration_free(&pk, pre_registration_free)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let registrar = Registrar::new(store.clone()).with_policy(policy);
    let auth = Authenticator::new(store.clone());
    let product_cert = ProductCertificate::new(pk, product.product_secret.clone_secret());
    let mut switch = DynamicRegistration::On;
    let mut model: [Option<ModelDevice>; 3] = [None; 3];
    let mut first_deliveries = [0u32; 3];
    // The ClientIDs and tokens each device was issued since its last reset.
    let mut tokens: [Vec<(IssuedClientId, String)>; 3] = Default::default();

    // At most 64 operations: below the product's default registration limits (a burst of
    // 100 issues, more than 100 refusals to switch off), which the conformance suite tests.
    for _ in 0..u.int_in_range(0..=64)? {
        let which = u.int_in_range(0..=2)?;
        let dn = DeviceName::new(NAMES[which]).unwrap_or_else(|e| panic!("{e}"));
        let current = model[which];
        let stored_secret = store
            .device(&pk, &dn)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .map(|d| d.device_secret);
        match u.int_in_range(0..=10)? {
            0 => {
                let result = admin.register_device(pk, dn).await;
                match current {
                    Some(_) => assert!(matches!(
                        result,
                        Err(AdminError::Store(StoreError::AlreadyExists { .. }))
                    )),
                    None => {
                        result.unwrap_or_else(|e| panic!("register: {e}"));
                        model[which] = Some(ModelDevice {
                            state: DeviceState::Inactive,
                            enabled: true,
                            client_ids: 0,
                        });
                        first_deliveries[which] = 0;
                    }
                }
            }
            1 => {
                let random = text(u, ALNUM, 1, 8)?;
                let form = build_register_form(&product_cert, dn, &random, SignMethod::HmacSha1)
                    .unwrap_or_else(|e| panic!("{e}"));
                let result = registrar.register_form(form.body().as_bytes()).await;
                match (current, result) {
                    // A product switched off answers before it looks the device up.
                    (_, Err(RegisterError::Refused(TransitionError::DynamicRegistrationOff)))
                        if switch == DynamicRegistration::Off => {}
                    (None, Err(RegisterError::UnknownDevice)) => {}
                    (Some(d), Err(RegisterError::Refused(TransitionError::Disabled { .. })))
                        if !d.enabled => {}
                    (Some(d), Ok(issued)) if d.enabled && switch == DynamicRegistration::On => {
                        let secret = stored_secret
                            .as_ref()
                            .unwrap_or_else(|| panic!("issued a missing device"));
                        let redelivered = issued.redelivered();
                        assert_eq!(
                            issued.into_device_secret().expose_secret(),
                            secret.expose_secret(),
                            "delivered a stale secret"
                        );
                        match (d.state, redelivered) {
                            (DeviceState::Inactive, false) => {
                                first_deliveries[which] += 1;
                                assert_eq!(
                                    first_deliveries[which], 1,
                                    "two first deliveries between resets"
                                );
                                model[which] = Some(ModelDevice {
                                    state: DeviceState::Issued,
                                    ..d
                                });
                            }
                            (DeviceState::Issued, true) => {
                                assert_eq!(policy, IssuancePolicy::RedeliverUntilFirstLogin)
                            }
                            other => panic!("unexpected issue {other:?} under {policy:?}"),
                        }
                    }
                    (Some(d), Err(RegisterError::Refused(TransitionError::WrongState { .. })))
                        if d.enabled
                            && switch == DynamicRegistration::On
                            && (d.state == DeviceState::Active
                                || (d.state == DeviceState::Issued
                                    && policy == IssuancePolicy::Once)) => {}
                    (d, other) => {
                        panic!("issue on {d:?} (switch {switch:?}, {policy:?}) gave {other:?}")
                    }
                }
            }
            2 | 3 => {
                let right = u.arbitrary::<bool>()?;
                let key = match (&stored_secret, right) {
                    (Some(secret), true) => secret.clone_secret(),
                    _ => DeviceSecret::new("a-wrong-secret").unwrap_or_else(|e| panic!("{e}")),
                };
                let creds = build_login(
                    &DeviceCertificate::new(pk, dn, key),
                    &LoginOptions::default(),
                )
                .unwrap_or_else(|e| panic!("{e}"));
                let result = auth
                    .authenticate(
                        creds.client_id(),
                        creds.username(),
                        &creds.expose_password(),
                    )
                    .await;
                model[which] =
                    expected_login(current, result, right, VerifyError::BadSignature, (pk, dn));
            }
            op @ 4..=7 => {
                let event = [Event::Disable, Event::Enable, Event::Reset, Event::Delete][op - 4];
                let result = admin.apply(&pk, &dn, event).await;
                let Some(d) = current else {
                    assert!(matches!(
                        result,
                        Err(AdminError::Store(StoreError::NotFound { .. }))
                    ));
                    continue;
                };
                let expected = match event {
                    Event::Disable => Some(ModelDevice {
                        enabled: false,
                        ..d
                    }),
                    Event::Enable => Some(ModelDevice { enabled: true, ..d }),
                    Event::Reset => Some(ModelDevice {
                        state: DeviceState::Inactive,
                        client_ids: 0,
                        ..d
                    }),
                    _ => None,
                };
                let status = result.unwrap_or_else(|e| panic!("{event:?}: {e}"));
                assert_eq!(
                    status.map(|s| (s.state, s.enabled)),
                    expected.map(|d| (d.state, d.enabled))
                );
                model[which] = expected;
                if matches!(event, Event::Reset | Event::Delete) {
                    first_deliveries[which] = 0;
                    tokens[which].clear();
                }
                if event == Event::Reset {
                    let after = store
                        .device(&pk, &dn)
                        .await
                        .unwrap_or_else(|e| panic!("{e}"));
                    let (before, after) = (
                        stored_secret.as_ref(),
                        after.as_ref().map(|a| &a.device_secret),
                    );
                    assert_ne!(
                        before.map(DeviceSecret::expose_secret),
                        after.map(DeviceSecret::expose_secret),
                        "reset kept the secret"
                    );
                }
            }
            9 => {
                let options =
                    RegisterOptions::new(ConnectKind::RegisterNoPreregistration, "3154792371")
                        .with_sign_method(SignMethod::HmacSha256)
                        .with_secure_mode(SecureMode::TLS);
                let connect = build_register_connect(&product_cert, dn, &options)
                    .unwrap_or_else(|e| panic!("{e}"));
                let password = connect.expose_password();
                let request =
                    ConnectRequest::parse(connect.client_id(), connect.username(), &password)
                        .unwrap_or_else(|e| panic!("{e}"));
                let result = registrar.register_client_id(&request).await;
                let devices = model.iter().flatten().count();
                match (current, result) {
                    (_, Err(RegisterError::Refused(TransitionError::DynamicRegistrationOff)))
                        if switch == DynamicRegistration::Off => {}
                    (None, Err(RegisterError::Store(StoreError::QuotaReached)))
                        if devices >= FUZZ_DEVICE_QUOTA as usize => {}
                    (Some(d), Err(RegisterError::Refused(TransitionError::Disabled { .. })))
                        if !d.enabled => {}
                    (Some(d), Err(RegisterError::Refused(TransitionError::TooManyClientIds)))
                        if d.enabled && d.client_ids >= iotauth::IssuedClientId::MAX_PER_DEVICE => {
                    }
                    (Some(d), Err(RegisterError::Refused(TransitionError::WrongState { .. })))
                        if d.enabled && d.state != DeviceState::Inactive && d.client_ids == 0 => {}
                    (d, Ok(issued))
                        if switch == DynamicRegistration::On
                            && d.map_or(devices < FUZZ_DEVICE_QUOTA as usize, |d| {
                                d.enabled
                                    && d.client_ids < iotauth::IssuedClientId::MAX_PER_DEVICE
                                    && (d.state == DeviceState::Inactive || d.client_ids > 0)
                            }) =>
                    {
                        let d = d.unwrap_or(ModelDevice {
                            state: DeviceState::Inactive,
                            enabled: true,
                            client_ids: 0,
                        });
                        let state = match d.state {
                            DeviceState::Inactive => DeviceState::Issued,
                            other => other,
                        };
                        model[which] = Some(ModelDevice {
                            state,
                            client_ids: d.client_ids + 1,
                            ..d
                        });
                        tokens[which].push((
                            issued.client_id(),
                            issued.token().expose_secret().to_owned(),
                        ));
                    }
                    (d, other) => {
                        panic!(
                            "regnwl on {d:?} (switch {switch:?}, {devices} devices) gave {other:?}"
                        )
                    }
                }
            }
            10 => {
                let held = match tokens[which].len() {
                    0 => None,
                    n => Some(tokens[which][u.int_in_range(0..=n - 1)?].clone()),
                };
                let right = held.is_some() && u.arbitrary::<bool>()?;
                let (client_id, token) = match (&held, right) {
                    (Some((id, token)), true) => (id.as_str().to_owned(), token.clone()),
                    (Some((id, _)), false) => (id.as_str().to_owned(), "a-wrong-token".to_owned()),
                    (None, _) => ("A".repeat(24), "a-wrong-token".to_owned()),
                };
                let result = auth
                    .authenticate(
                        &format!("{client_id}|securemode=-2,authType=connwl|"),
                        &format!("{dn}&{pk}"),
                        &token,
                    )
                    .await;
                model[which] =
                    expected_login(current, result, right, VerifyError::BadToken, (pk, dn));
            }
            _ => {
                switch = *u.choose(&[DynamicRegistration::On, DynamicRegistration::Off])?;
                admin
                    .set_dynamic_registration(&pk, switch)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
            }
        }
        for (name, expected) in NAMES.iter().zip(model) {
            let dn = DeviceName::new(name).unwrap_or_else(|e| panic!("{e}"));
            let stored = store
                .device(&pk, &dn)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let stored = stored.map(|d| ModelDevice {
                state: d.status.state,
                enabled: d.status.enabled,
                client_ids: d.client_ids.len(),
            });
            assert_eq!(stored, expected, "store and model disagree on {name}");
        }
    }
    Ok(())
}
