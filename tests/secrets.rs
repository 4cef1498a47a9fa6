//! Secrets never show: `Debug` of every secret-bearing type is redacted, and no error message
//! carries an offered value. Plus compile-time `Send`/`Sync` guarantees.

use iotauth::service::{AdminError, AuthError, RegisterError};
use iotauth::store::{ClientIdRecord, DeviceRecord, ProductRecord, StoreError};
use iotauth::*;

const SECRET: &str = "TopS3cretValueThatMustNeverShow1";

fn assert_hidden(what: &str, rendered: String) {
    assert!(
        !rendered.contains(SECRET),
        "{what} leaks the secret: {rendered}"
    );
    assert!(
        !rendered.contains("TopS3cret"),
        "{what} leaks part of the secret: {rendered}"
    );
}

#[test]
fn debug_of_every_secret_type_is_redacted() {
    assert_eq!(
        format!("{:?}", DeviceSecret::new(SECRET).unwrap()),
        "DeviceSecret { .. }"
    );
    assert_eq!(
        format!("{:?}", ProductSecret::new(SECRET).unwrap()),
        "ProductSecret { .. }"
    );
    assert_eq!(
        format!("{:?}", DeviceToken::new(SECRET).unwrap()),
        "DeviceToken { .. }"
    );
    assert_hidden(
        "DeviceSecret {:#?}",
        format!("{:#?}", DeviceSecret::new(SECRET).unwrap()),
    );
}

#[test]
fn debug_of_every_type_holding_a_secret_is_redacted() {
    let pk = ProductKey::new("a1BwAGV0001").unwrap();
    let dn = DeviceName::new("meter-01").unwrap();
    let device_cert = DeviceCertificate::new(pk, dn, DeviceSecret::new(SECRET).unwrap());
    assert_hidden("DeviceCertificate", format!("{device_cert:?}"));
    let product_cert = ProductCertificate::new(pk, ProductSecret::new(SECRET).unwrap());
    assert_hidden("ProductCertificate", format!("{product_cert:?}"));

    let creds = build_login(&device_cert, &LoginOptions::default()).unwrap();
    let password = creds.expose_password();
    let rendered = format!("{creds:?}");
    assert!(
        !rendered.contains(password.as_str()),
        "ConnectCredentials leaks the password: {rendered}"
    );
    let request = ConnectRequest::parse(creds.client_id(), creds.username(), &password).unwrap();
    let rendered = format!("{request:?}");
    assert!(
        !rendered.contains(password.as_str()),
        "ConnectRequest leaks the password: {rendered}"
    );
    let signature = sign(
        device_cert.device_secret(),
        SignMethod::HmacSha256,
        &SignContent::login("c", &dn, &pk, None),
    );
    assert!(!format!("{signature:?}").contains(signature.expose_hex().as_str()));

    let form = build_register_form(&product_cert, dn, "r4nd0m", SignMethod::HmacSha1).unwrap();
    let sign_hex = form.expose_sign();
    assert!(!format!("{form:?}").contains(sign_hex.as_str()));
    let parsed = RegisterForm::parse(form.body().as_bytes()).unwrap();
    assert!(!format!("{parsed:?}").contains(sign_hex.as_str()));

    let record = {
        let mut r = DeviceRecord::new(pk, dn, DeviceSecret::new(SECRET).unwrap());
        r.client_ids = vec![ClientIdRecord {
            client_id: IssuedClientId::new("ABCDEFGHIJ0123456789xyz").unwrap(),
            token_digest: TokenDigest::of(&DeviceToken::new(SECRET).unwrap()),
        }];
        r
    };
    assert_hidden("DeviceRecord", format!("{record:?}"));
    let digest = record.client_ids[0].token_digest.to_hex();
    assert!(
        !format!("{record:?}").contains(&digest),
        "a token digest in Debug"
    );
    let product = ProductRecord::new(
        pk,
        ProductSecret::new(SECRET).unwrap(),
        DynamicRegistration::On,
    );
    assert_hidden("ProductRecord", format!("{product:?}"));
    let reply = RegisterReply::Issued {
        product_key: pk,
        device_name: dn,
        device_secret: DeviceSecret::new(SECRET).unwrap(),
    };
    assert_hidden("RegisterReply", format!("{reply:?}"));
    assert!(
        reply.to_json_exposing_secret().contains(SECRET),
        "the wire reply must carry the secret"
    );
}

#[test]
fn no_parse_error_echoes_the_offered_value() {
    let offered = "TopS3cret Value!";
    let errors = [
        DeviceSecret::new(&format!("{offered}\n")).unwrap_err(),
        DeviceSecret::new(&SECRET.repeat(3)).unwrap_err(),
        DeviceToken::new(offered).unwrap_err(),
        ConnectRequest::parse("c|securemode=2|", "dev1&pk", offered).unwrap_err(),
        ConnectRequest::parse("c|securemode=-2,authType=connwl|", "dev1&pk", offered).unwrap_err(),
        ConnectRequest::parse(&format!("c|securemode=2,{offered}|"), "dev1&pk", "x").unwrap_err(),
        RegisterForm::parse(
            format!("productKey=a1&deviceName=dev1&random=r&signMethod=hmacsha1&sign={offered}")
                .as_bytes(),
        )
        .unwrap_err(),
    ];
    for error in errors {
        assert_hidden("ParseError", format!("{error} / {error:?}"));
    }
}

#[test]
fn no_service_error_echoes_a_secret() {
    let errors: Vec<Box<dyn std::error::Error>> = vec![
        Box::new(AuthError::Verify(VerifyError::BadSignature)),
        Box::new(RegisterError::Verify(VerifyError::BadSignature)),
        Box::new(AdminError::Store(StoreError::unavailable(
            std::io::Error::other("db down"),
        ))),
    ];
    for error in errors {
        assert_hidden("service error", format!("{error} / {error:?}"));
    }
}

#[test]
fn secret_equality_is_by_value_in_constant_time() {
    use subtle::ConstantTimeEq;
    let a = DeviceSecret::new(SECRET).unwrap();
    assert!(bool::from(a.ct_eq(&DeviceSecret::new(SECRET).unwrap())));
    assert!(!bool::from(a.ct_eq(
        &DeviceSecret::new("TopS3cretValueThatMustNeverShow2").unwrap()
    )));
}

#[test]
fn generated_secrets_and_keys_have_the_documented_shape() {
    let secret = DeviceSecret::generate(&OsEntropy).unwrap();
    assert_eq!(secret.expose_secret().len(), 32);
    assert!(
        secret
            .expose_secret()
            .bytes()
            .all(|b| b.is_ascii_alphanumeric())
    );
    assert_eq!(
        ProductSecret::generate(&OsEntropy)
            .unwrap()
            .expose_secret()
            .len(),
        32
    );
    let pk = ProductKey::generate(&OsEntropy).unwrap();
    assert_eq!(pk.as_str().len(), ProductKey::GENERATED_LEN);
    assert_ne!(
        DeviceSecret::generate(&OsEntropy).unwrap().expose_secret(),
        secret.expose_secret()
    );
}

#[test]
fn a_failing_random_source_is_an_error_not_a_weak_secret() {
    struct Broken;
    impl Entropy for Broken {
        fn fill(&self, _: &mut [u8]) -> Result<(), EntropyError> {
            Err(EntropyError::new())
        }
    }
    assert!(DeviceSecret::generate(&Broken).is_err());
    assert!(ProductKey::generate(&Broken).is_err());
}

#[test]
fn types_shared_across_tasks_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<DeviceSecret>();
    send_sync::<ProductSecret>();
    send_sync::<DeviceToken>();
    send_sync::<DeviceCertificate>();
    send_sync::<ConnectRequest<'static>>();
    send_sync::<RegisterForm<'static>>();
    send_sync::<Verified<DeviceIdentity>>();
    send_sync::<iotauth::store::MemoryStore>();
    send_sync::<iotauth::service::Authenticator<iotauth::store::MemoryStore>>();
    send_sync::<iotauth::service::Registrar<iotauth::store::MemoryStore>>();
    send_sync::<iotauth::service::Admin<iotauth::store::MemoryStore>>();
    send_sync::<StoreError>();
    send_sync::<AuthError>();
    send_sync::<RegisterError>();
}
