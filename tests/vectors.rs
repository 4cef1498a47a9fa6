//! Every case in `tests/vectors/*.json`: the outputs of Alibaba's own Python and Node SDKs,
//! copied from the project's shared vectors (signing reproduces the SDK's password or sign, hex
//! case aside, and verification accepts what the SDK sent); and one login per SDK family as its
//! published source builds it (`sdk-families.json`, made by `sdk_families.py`), which must verify
//! whatever extra parameters it carries.

use std::sync::LazyLock;

use iotauth::*;
use serde_json::Value;

static MQTT: LazyLock<Value> = LazyLock::new(|| load("mqtt-sign.json"));
static DYNREG: LazyLock<Value> = LazyLock::new(|| load("dynreg-sign.json"));
static FAMILIES: LazyLock<Value> = LazyLock::new(|| load("sdk-families.json"));

fn load(file: &str) -> Value {
    let path = format!("{}/tests/vectors/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn cases(file: &Value) -> &[Value] {
    file["cases"].as_array().expect("cases array")
}

fn case(id: &str) -> &'static Value {
    cases(&MQTT)
        .iter()
        .chain(cases(&DYNREG))
        .chain(cases(&FAMILIES))
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no vector {id}"))
}

fn text<'a>(case: &'a Value, field: &str) -> &'a str {
    case[field]
        .as_str()
        .unwrap_or_else(|| panic!("{}: no {field}", case["id"]))
}

fn method(case: &Value) -> SignMethod {
    let name = case["signmethod"]
        .as_str()
        .or(case["signMethod"].as_str())
        .expect("method");
    SignMethod::from_name(name).expect("known method")
}

/// The crate's device-side builder produced what the SDK sent (hex case aside).
fn assert_built_like_the_sdk(built: &ConnectCredentials, c: &Value) {
    assert!(
        built
            .expose_password()
            .eq_ignore_ascii_case(text(c, "password"))
    );
    assert_eq!(built.username(), text(c, "username"));
}

/// The three CONNECT fields exactly as the SDK sent them, parsed.
fn parse_as_sent(c: &Value) -> ConnectRequest<'_> {
    ConnectRequest::parse(
        text(c, "mqttClientId"),
        text(c, "username"),
        text(c, "password"),
    )
    .unwrap()
}

fn check_mqtt_login(c: &Value) {
    let pk = ProductKey::new(text(c, "productKey")).unwrap();
    let dn = DeviceName::new(text(c, "deviceName")).unwrap();
    let secret = DeviceSecret::new(text(c, "deviceSecret")).unwrap();
    let (core, ts) = (text(c, "clientIdCore"), text(c, "timestamp"));

    // Signing: the canonical content and the password, as the SDK made them.
    let content = SignContent::login(core, &dn, &pk, Some(ts));
    assert_eq!(content.to_string(), text(c, "sign_content"));
    let signature = sign(&secret, method(c), &content);
    assert!(
        signature
            .expose_hex()
            .eq_ignore_ascii_case(text(c, "password"))
    );

    // The device-side builder signs the same password.
    let cert = DeviceCertificate::new(pk, dn, secret.clone_secret());
    let secure_mode = SecureMode::new(text(c, "securemode").parse().unwrap()).unwrap();
    let options = LoginOptions::default()
        .with_client_id(core)
        .with_timestamp(ts)
        .with_sign_method(method(c))
        .with_secure_mode(secure_mode);
    assert_built_like_the_sdk(&build_login(&cert, &options).unwrap(), c);

    // Verification of exactly what the SDK sent.
    let request = parse_as_sent(c);
    assert_eq!(request.client_id().core(), core);
    assert_eq!(request.client_id().timestamp(), Some(ts));
    assert_eq!(request.client_id().sign_method(), method(c));
    assert_eq!(request.client_id().secure_mode(), secure_mode);
    let identity = request
        .verify_login(&secret, Freshness::Unchecked, UnixMillis(0))
        .unwrap();
    assert_eq!((identity.product_key(), identity.device_name()), (pk, dn));
}

fn check_dynreg(c: &Value) {
    let pk = ProductKey::new(text(c, "productKey")).unwrap();
    let dn = DeviceName::new(text(c, "deviceName")).unwrap();
    let secret = ProductSecret::new(text(c, "productSecret")).unwrap();
    let random = text(c, "random");
    let content = SignContent::registration(&dn, &pk, random);
    assert_eq!(content.to_string(), text(c, "sign_content"));
    let cert = ProductCertificate::new(pk, secret.clone_secret());
    match text(c, "kind") {
        "dynreg-https" => {
            let built = build_register_form(&cert, dn, random, method(c)).unwrap();
            assert!(built.expose_sign().eq_ignore_ascii_case(text(c, "sign")));
            assert_eq!(built.body(), text(c, "body"));
            let form = RegisterForm::parse(text(c, "body").as_bytes()).unwrap();
            assert_eq!(
                (form.product_key(), form.device_name(), form.random()),
                (pk, dn, random)
            );
            form.verify(&secret).unwrap();
        }
        "dynreg-mqtt" => {
            let kind = match text(c, "authType") {
                "register" => ConnectKind::Register,
                _ => ConnectKind::RegisterNoPreregistration,
            };
            let options = RegisterOptions::new(kind, random)
                .with_sign_method(method(c))
                .with_secure_mode(SecureMode::new(text(c, "securemode").parse().unwrap()).unwrap())
                .with_instance_id(c["instanceId"].as_str());
            assert_built_like_the_sdk(&build_register_connect(&cert, dn, &options).unwrap(), c);
            let request = parse_as_sent(c);
            assert_eq!(request.kind(), kind);
            assert_eq!(request.client_id().random(), Some(random));
            assert_eq!(request.client_id().instance_id(), c["instanceId"].as_str());
            request.verify_registration(&secret).unwrap();
            assert!(
                request
                    .verify_login(
                        &DeviceSecret::new(text(c, "productSecret")).unwrap(),
                        Freshness::Unchecked,
                        UnixMillis(0)
                    )
                    .is_err()
            );
        }
        other => panic!("unexpected kind {other}"),
    }
}

fn check_connwl(c: &Value) {
    let payload = &c["regnwl_payload"];
    let token = DeviceToken::new(text(payload, "deviceToken")).unwrap();
    let request = parse_as_sent(c);
    assert_eq!(request.kind(), ConnectKind::TokenLogin);
    assert_eq!(request.client_id().core(), text(payload, "clientId"));
    let identity = request.verify_token(&token).unwrap();
    assert_eq!(identity.device_name().as_str(), text(payload, "deviceName"));
    assert!(
        request
            .verify_token(&DeviceToken::new("0f1e2d3c4b5a69788796a5b4c3d2e1f1").unwrap())
            .is_err()
    );
}

/// A family's login as sent: a plain login whose standard content (with the timestamp only
/// when one is sent) verifies, and whose signature refuses a changed byte.
fn check_family_login(c: &Value) {
    let pk = ProductKey::new(text(c, "productKey")).unwrap();
    let dn = DeviceName::new(text(c, "deviceName")).unwrap();
    let secret = DeviceSecret::new(text(c, "deviceSecret")).unwrap();
    let (core, ts) = (text(c, "clientIdCore"), c["timestamp"].as_str());
    let content = SignContent::login(core, &dn, &pk, ts);
    assert_eq!(content.to_string(), text(c, "sign_content"));

    let request = ConnectRequest::parse(
        text(c, "mqttClientId"),
        text(c, "username"),
        text(c, "password"),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", c["id"]));
    assert_eq!(request.kind(), ConnectKind::Login);
    assert_eq!(request.client_id().core(), core);
    assert_eq!(request.client_id().timestamp(), ts);
    assert_eq!(request.client_id().sign_method(), method(c));
    let identity = request
        .verify_login(&secret, Freshness::Unchecked, UnixMillis(0))
        .unwrap_or_else(|e| panic!("{}: {e}", c["id"]));
    assert_eq!((identity.product_key(), identity.device_name()), (pk, dn));

    let mut tampered = text(c, "password").to_owned();
    let last = if tampered.ends_with('0') { "1" } else { "0" };
    tampered.replace_range(tampered.len() - 1.., last);
    let request =
        ConnectRequest::parse(text(c, "mqttClientId"), text(c, "username"), &tampered).unwrap();
    assert!(
        request
            .verify_login(&secret, Freshness::Unchecked, UnixMillis(0))
            .is_err()
    );
}

fn check(id: &str) {
    let c = case(id);
    if c.get("family").is_some() {
        return check_family_login(c);
    }
    match c["kind"].as_str() {
        None => check_mqtt_login(c),
        Some("connwl") => check_connwl(c),
        Some(_) => check_dynreg(c),
    }
}

macro_rules! vector_tests {
    ($($name:ident => $id:literal),* $(,)?) => {
        $(#[test] fn $name() { check($id); })*
        const COVERED: &[&str] = &[$($id),*];
    };
}

vector_tests! {
    linkkit_sha1_login_with_sdk_extensions => "sh-mqtt-01",
    linkkit_login_with_at_sign_in_device_name => "sh-mqtt-02",
    linkkit_login_with_sii_extension_and_colons => "sh-mqtt-03",
    linkkit_login_with_32_char_device_name => "sh-mqtt-04",
    python_iot_client_md5_uppercase_hex => "sh-mqtt-05",
    python_iot_client_sha1_uppercase_hex => "sh-mqtt-06",
    old_node_sdk_sha256_with_newlines_in_block => "sh-mqtt-07",
    node_sdk_sha1_login => "sh-mqtt-08",
    node_sdk_value_containing_pipe => "sh-mqtt-09",
    linkkit_https_registration => "sh-reg-01",
    linkkit_https_registration_percent_encoded_name => "sh-reg-02",
    node_sdk_https_registration_sha1 => "sh-reg-03",
    linkkit_mqtt_register => "sh-reg-04",
    linkkit_mqtt_regnwl => "sh-reg-05",
    linkkit_mqtt_regnwl_with_instance_id => "sh-reg-06",
    linkkit_mqtt_register_with_instance_id => "sh-reg-07",
    linkkit_connwl_token_login => "sh-reg-08",
    link_sdk_c_4_0_trailing_empty_item => "fam-linksdk-c-4.0",
    link_sdk_c_4_2_extended_client_id_and_conn => "fam-linksdk-c-4.2",
    link_sdk_c_4_itls_authtype_id2 => "fam-linksdk-c-4-itls",
    iotkit_embedded_3_tls => "fam-iotkit-3-tls",
    iotkit_embedded_3_tcp_classic => "fam-iotkit-3-tcp",
    iotkit_embedded_3_itls_customize_info => "fam-iotkit-3-itls",
    iotkit_embedded_3_0_uptime_timestamp => "fam-iotkit-3.0-uptime",
    iotkit_embedded_2_partner_and_module => "fam-iotkit-2",
    iotkit_embedded_1_md5 => "fam-iotkit-1",
    android_linkkit_without_timestamp => "fam-android-linkkit",
    android_linkkit_with_timestamp => "fam-android-linkkit-ts",
    living_platform_1_3 => "fam-living-1.3",
    living_platform_1_6_custom_ilop => "fam-living-1.6",
    alios_things => "fam-alios-things",
    paho_java_sample => "fam-paho-java",
    esp_at_md5_without_timestamp => "fam-esp-at",
    node_sdk_with_ext => "fam-node-ext",
    linkkit_python_older => "fam-linkkit-python-old",
    linkkit_python_comma_in_sii => "fam-linkkit-python-sii-comma",
}

#[test]
fn every_vector_case_has_a_test() {
    let mut ids: Vec<&str> = cases(&MQTT)
        .iter()
        .chain(cases(&DYNREG))
        .chain(cases(&FAMILIES))
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    let mut covered = COVERED.to_vec();
    covered.sort_unstable();
    assert_eq!(ids, covered);
}

#[test]
fn vector_copies_match_the_shared_originals_when_present() {
    let shared = format!("{}/../shared/vectors", env!("CARGO_MANIFEST_DIR"));
    for file in ["mqtt-sign.json", "dynreg-sign.json"] {
        let local = std::fs::read(format!(
            "{}/tests/vectors/{file}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        match std::fs::read(format!("{shared}/{file}")) {
            Ok(original) => assert!(
                original == local,
                "tests/vectors/{file} differs from shared/vectors"
            ),
            Err(_) => eprintln!("{shared} absent: the committed copy of {file} is used as is"),
        }
    }
}
