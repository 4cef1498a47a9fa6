//! Properties over random inputs: what a device signs the server accepts; one changed byte of
//! password, CORE, device name, timestamp or random makes it refuse; no input makes a parser
//! panic.

use iotauth::*;
use proptest::prelude::*;

const NAME_CHARS: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_@.:";

fn product_key() -> impl Strategy<Value = String> {
    "[A-Za-z0-9]{1,32}"
}

fn device_name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_@.:-]{4,32}"
}

fn secret() -> impl Strategy<Value = String> {
    "[!-~]{1,64}"
}

/// A CORE: no `|`, no control characters; `,` `=` `&`, spaces and non-ASCII are all fine.
fn core() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 ,=&.:_é中-]{1,64}"
}

fn timestamp() -> impl Strategy<Value = Option<String>> {
    proptest::option::of("[0-9]{1,20}")
}

fn random() -> impl Strategy<Value = String> {
    "[!-+--{}~]{1,64}" // printable ASCII without ',' and '|'
}

fn method() -> impl Strategy<Value = SignMethod> {
    prop::sample::select(SignMethod::ALL.to_vec())
}

fn secure_mode() -> impl Strategy<Value = SecureMode> {
    prop::sample::select(vec![-2i8, -1, 0, 1, 2, 3, 4, 5, 7, 8])
        .prop_map(|m| SecureMode::new(m).unwrap())
}

/// `text` with the character at `index` (mod its length) replaced by a different one from
/// `alphabet` (a hex digit never by the same digit in the other case).
fn change_one_char(text: &str, index: usize, pick: usize, alphabet: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let at = index % chars.len();
    let old = chars[at];
    let candidates: Vec<char> = alphabet
        .chars()
        .filter(|c| !c.eq_ignore_ascii_case(&old))
        .collect();
    let mut changed = chars;
    changed[at] = candidates[pick % candidates.len()];
    changed.into_iter().collect()
}

/// Test inputs in clear (a failing case must be reproducible from proptest's report).
#[derive(Debug, Clone)]
struct Login {
    pk: String,
    dn: String,
    ds: String,
    core: String,
    timestamp: Option<String>,
    method: SignMethod,
    mode: SecureMode,
}

fn login() -> impl Strategy<Value = Login> {
    (
        product_key(),
        device_name(),
        secret(),
        core(),
        timestamp(),
        method(),
        secure_mode(),
    )
        .prop_map(|(pk, dn, ds, core, timestamp, method, mode)| Login {
            pk,
            dn,
            ds,
            core,
            timestamp,
            method,
            mode,
        })
}

impl Login {
    fn cert(&self) -> DeviceCertificate {
        DeviceCertificate::new(
            ProductKey::new(&self.pk).unwrap(),
            DeviceName::new(&self.dn).unwrap(),
            DeviceSecret::new(&self.ds).unwrap(),
        )
    }

    fn credentials(&self, core: &str, timestamp: Option<&str>) -> ConnectCredentials {
        build_login(
            &self.cert(),
            &LoginOptions::default()
                .with_client_id(core)
                .with_timestamp(timestamp)
                .with_sign_method(self.method)
                .with_secure_mode(self.mode),
        )
        .expect("valid inputs build")
    }

    /// Whether the server accepts these three fields for this device.
    fn accepts(&self, client_id: &str, username: &str, password: &str) -> bool {
        ConnectRequest::parse(client_id, username, password).is_ok_and(|request| {
            request
                .verify_login(
                    self.cert().device_secret(),
                    Freshness::Unchecked,
                    UnixMillis(0),
                )
                .is_ok()
        })
    }
}

proptest! {
    #[test]
    fn a_signed_login_parses_and_verifies(l in login()) {
        let creds = l.credentials(&l.core, l.timestamp.as_deref());
        let password = creds.expose_password();
        let request = ConnectRequest::parse(creds.client_id(), creds.username(), &password).unwrap();
        prop_assert_eq!(request.client_id().core(), l.core.as_str());
        prop_assert_eq!(request.client_id().timestamp(), l.timestamp.as_deref());
        prop_assert_eq!(request.client_id().secure_mode(), l.mode);
        prop_assert!(l.accepts(creds.client_id(), creds.username(), &password));
        prop_assert!(l.accepts(creds.client_id(), creds.username(), &password.to_uppercase()));
    }

    #[test]
    fn one_changed_password_character_is_refused(l in login(), at: usize, pick: usize) {
        let creds = l.credentials(&l.core, l.timestamp.as_deref());
        let forged = change_one_char(&creds.expose_password(), at, pick, "0123456789abcdef");
        prop_assert!(!l.accepts(creds.client_id(), creds.username(), &forged));
    }

    #[test]
    fn one_changed_core_character_is_refused(l in login(), at: usize, pick: usize) {
        let creds = l.credentials(&l.core, l.timestamp.as_deref());
        let other_core = change_one_char(&l.core, at, pick, "abcXYZ019 ,=&é-");
        let forged_id = creds.client_id().replacen(&format!("{}|", l.core), &format!("{other_core}|"), 1);
        prop_assert!(!l.accepts(&forged_id, creds.username(), &creds.expose_password()));
    }

    #[test]
    fn one_changed_device_name_character_is_refused(l in login(), at: usize, pick: usize) {
        let creds = l.credentials(&l.core, l.timestamp.as_deref());
        let dn = change_one_char(&l.dn, at, pick, NAME_CHARS);
        let forged_user = format!("{dn}&{}", l.pk);
        prop_assert!(!l.accepts(creds.client_id(), &forged_user, &creds.expose_password()));
    }

    #[test]
    fn one_changed_timestamp_digit_is_refused(l in login(), ts in "[0-9]{1,20}", at: usize, pick: usize) {
        let creds = l.credentials(&l.core, Some(&ts));
        let other = change_one_char(&ts, at, pick, "0123456789");
        let forged_id = creds.client_id().replacen(&format!("timestamp={ts}|"), &format!("timestamp={other}|"), 1);
        prop_assert!(!l.accepts(&forged_id, creds.username(), &creds.expose_password()));
    }

    #[test]
    fn a_signed_registration_verifies_and_one_changed_random_character_is_refused(
        pk in product_key(), dn in device_name(), ps in secret(), r in random(), m in method(), at: usize, pick: usize,
    ) {
        let cert = ProductCertificate::new(ProductKey::new(&pk).unwrap(), ProductSecret::new(&ps).unwrap());
        let dn = DeviceName::new(&dn).unwrap();
        let form = build_register_form(&cert, dn, &r, m).unwrap();
        prop_assert!(RegisterForm::parse(form.body().as_bytes()).unwrap().verify(cert.product_secret()).is_ok());

        let other = change_one_char(&r, at, pick, "abcXYZ019!~");
        let forged = form.body().replacen(
            &format!("random={}", form_encode(&r)),
            &format!("random={}", form_encode(&other)),
            1,
        );
        let refused = RegisterForm::parse(forged.as_bytes()).map_or(true, |f| f.verify(cert.product_secret()).is_err());
        prop_assert!(refused);

        let options = RegisterOptions::new(ConnectKind::Register, &r).with_sign_method(m).with_secure_mode(SecureMode::TLS);
        let connect = build_register_connect(&cert, dn, &options).unwrap();
        let password = connect.expose_password();
        let request = ConnectRequest::parse(connect.client_id(), connect.username(), &password).unwrap();
        prop_assert!(request.verify_registration(cert.product_secret()).is_ok());
        let forged_id = connect.client_id().replacen(&format!("random={r},"), &format!("random={other},"), 1);
        let refused = ConnectRequest::parse(&forged_id, connect.username(), &password)
            .map_or(true, |req| req.verify_registration(cert.product_secret()).is_err());
        prop_assert!(refused);
    }

    #[test]
    fn no_string_makes_a_credential_parser_panic(id in ".{0,300}", user in ".{0,150}", pass in ".{0,300}") {
        let _ = ClientId::parse(&id);
        let _ = parse_username(&user);
        let _ = ConnectRequest::parse(&id, &user, &pass);
        let _ = ProductKey::new(&user);
        let _ = DeviceName::new(&user);
        let _ = DeviceSecret::new(&pass);
    }

    #[test]
    fn no_token_soup_makes_a_credential_parser_panic(
        parts in prop::collection::vec(prop::sample::select(vec![
            "|", ",", "=", "&", " ", "\n", "securemode", "signmethod", "timestamp", "authType",
            "authtype", "random", "instanceId", "register", "regnwl", "connwl", "hmacsha1",
            "hmacmd5", "HMACSHA256", "-2", "2", "3", "9", "1711111111", "a1pk", "dev-01", "é",
            "0f1e2d3c4b5a69788796a5b4c3d2e1f0", "62B02E9E796F326F231C15FD6482B789",
        ]), 0..40),
        split in 0usize..40,
    ) {
        let text: String = parts.concat();
        let cut = text.char_indices().map(|(i, _)| i).nth(split).unwrap_or(text.len());
        let (left, right) = text.split_at(cut);
        let _ = ClientId::parse(&text);
        let _ = ConnectRequest::parse(left, right, right);
        let _ = ConnectRequest::parse(&text, "dev-01&a1pk", right);
    }

    #[test]
    fn no_bytes_make_a_form_or_reply_parser_panic(body in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = RegisterForm::parse(&body);
        let _ = RegisterReply::parse(&body);
    }

    #[test]
    fn no_form_shaped_input_makes_the_form_parser_panic(
        pairs in prop::collection::vec(("(productKey|deviceName|random|sign|signMethod|x|%|%2|%zz|\\+)*", "[ -~]{0,20}"), 0..20),
    ) {
        let body = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
        let _ = RegisterForm::parse(body.as_bytes());
    }
}

fn form_encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}
