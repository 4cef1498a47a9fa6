//! The `iotauth` CLI contract: JSON on stdout, one `error: …` line on stderr, exit 0 / 1 / 2,
//! secrets from flags or environment, and no secret, password or sign in any `verify` output.
#![cfg(feature = "cli")]

use std::process::{Command, Output};

use serde_json::{Value, json};

const DS: &str = "Sh4r3dS3cr3tV4lu3F0rT3st1ngXyZ09";
const PS: &str = "Pr0dS3cr3tSh4rd1";
const NODE_ID: &str =
    "mini-9|securemode=2,signmethod=hmacsha1,timestamp=1711111111444,lan=JS|WX,_v=1.2.8|";
const NODE_USER: &str = "applet:user_9&k1VectorPK9";
const NODE_PASSWORD: &str = "d68ce46b0248d6020e7be17e3f9777649e713e4d";

fn iotauth(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_iotauth"));
    command
        .args(args)
        .env_remove("IOTAUTH_DEVICE_SECRET")
        .env_remove("IOTAUTH_PRODUCT_SECRET")
        .env_remove("IOTAUTH_DEVICE_TOKEN");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("run iotauth")
}

fn stdout_json(out: &Output) -> Value {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

/// Exit code, and the single stderr line; stdout must be empty.
fn failure(out: &Output) -> (i32, String) {
    assert!(out.stdout.is_empty(), "nothing on stdout on failure");
    let stderr = String::from_utf8(out.stderr.clone()).unwrap();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    assert!(stderr.starts_with("error: "), "{stderr:?}");
    (out.status.code().unwrap(), stderr)
}

fn assert_no_secret(out: &Output, secrets: &[&str]) {
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for secret in secrets {
        assert!(
            !all.to_lowercase().contains(&secret.to_lowercase()),
            "output contains a secret: {all}"
        );
    }
}

#[test]
fn sign_mqtt_reproduces_the_documented_example() {
    let out = iotauth(
        &[
            "sign",
            "mqtt",
            "--product-key",
            "pk",
            "--device-name",
            "device",
            "--device-secret",
            "secret",
            "--client-id",
            "12345",
            "--timestamp",
            "789",
            "--sign-method",
            "hmacsha1",
            "--secure-mode",
            "3",
        ],
        &[],
    );
    assert_eq!(
        stdout_json(&out),
        json!({
            "clientId": "12345|securemode=3,signmethod=hmacsha1,timestamp=789|",
            "username": "device&pk",
            "password": "fafd82a3d602b37fb0fa8b7892f24a477f851a14",
        })
    );
}

#[test]
fn sign_mqtt_takes_the_secret_from_the_environment() {
    let args = [
        "sign",
        "mqtt",
        "--product-key",
        "pk",
        "--device-name",
        "device",
        "--client-id",
        "12345",
        "--sign-method",
        "HmacSHA1",
        "--timestamp",
        "789",
    ];
    let out = iotauth(&args, &[("IOTAUTH_DEVICE_SECRET", "secret")]);
    assert_eq!(
        stdout_json(&out)["password"],
        "fafd82a3d602b37fb0fa8b7892f24a477f851a14"
    );
    assert_eq!(failure(&iotauth(&args, &[])).0, 2);
}

#[test]
fn sign_mqtt_defaults_and_negative_secure_mode() {
    let out = iotauth(
        &[
            "sign",
            "mqtt",
            "--product-key",
            "a1pk",
            "--device-name",
            "dev-1",
            "--device-secret",
            "s",
            "--secure-mode",
            "-2",
        ],
        &[],
    );
    let value = stdout_json(&out);
    assert_eq!(
        value["clientId"],
        "a1pk.dev-1|securemode=-2,signmethod=hmacsha256|"
    );
    assert_eq!(value["password"].as_str().unwrap().len(), 64);
}

#[test]
fn sign_register_reproduces_the_linkkit_vector() {
    let out = iotauth(
        &[
            "sign",
            "register",
            "--product-key",
            "a2SHaReD0k1",
            "--device-name",
            "shared-reg-01",
            "--product-secret",
            PS,
            "--random",
            "BScWZyXmt3GwdCe",
        ],
        &[],
    );
    let sign = "fc962b02906b7aa4379ba688fe1a19f884fd88036b9ec51830cf446055932dd1";
    assert_eq!(
        stdout_json(&out),
        json!({
            "productKey": "a2SHaReD0k1", "deviceName": "shared-reg-01", "random": "BScWZyXmt3GwdCe",
            "sign": sign, "signMethod": "hmacsha256",
            "form": format!("productKey=a2SHaReD0k1&deviceName=shared-reg-01&random=BScWZyXmt3GwdCe&sign={sign}&signMethod=hmacsha256"),
        })
    );
}

#[test]
fn sign_register_generates_a_random_and_its_form_verifies() {
    let out = iotauth(
        &[
            "sign",
            "register",
            "--product-key",
            "a2SHaReD0k1",
            "--device-name",
            "shared-reg-01",
        ],
        &[("IOTAUTH_PRODUCT_SECRET", PS)],
    );
    let value = stdout_json(&out);
    assert_eq!(value["random"].as_str().unwrap().len(), 15);
    let verified = iotauth(
        &[
            "verify",
            "register",
            "--form",
            value["form"].as_str().unwrap(),
            "--product-secret",
            PS,
        ],
        &[],
    );
    assert_eq!(stdout_json(&verified)["random"], value["random"]);
}

#[test]
fn verify_mqtt_accepts_an_sdk_login_and_prints_no_secret() {
    let out = iotauth(
        &[
            "verify",
            "mqtt",
            "--client-id",
            NODE_ID,
            "--username",
            NODE_USER,
            "--password",
            NODE_PASSWORD,
            "--device-secret",
            DS,
        ],
        &[],
    );
    assert_eq!(
        stdout_json(&out),
        json!({
            "productKey": "k1VectorPK9", "deviceName": "applet:user_9", "clientId": "mini-9",
            "signMethod": "hmacsha1", "secureMode": 2, "timestamp": "1711111111444", "authType": null,
        })
    );
    assert_no_secret(&out, &[DS, NODE_PASSWORD]);
}

#[test]
fn verify_mqtt_rejects_a_changed_password_with_exit_1_and_no_secret() {
    let forged = NODE_PASSWORD.replace("d68c", "d68d");
    let out = iotauth(
        &[
            "verify",
            "mqtt",
            "--client-id",
            NODE_ID,
            "--username",
            NODE_USER,
            "--password",
            &forged,
            "--device-secret",
            DS,
        ],
        &[],
    );
    assert_eq!(
        failure(&out),
        (1, "error: the signature does not match\n".into())
    );
    assert_no_secret(&out, &[DS, &forged]);
}

#[test]
fn verify_mqtt_rejects_malformed_credentials_without_echoing_them() {
    let out = iotauth(
        &[
            "verify",
            "mqtt",
            "--client-id",
            NODE_ID,
            "--username",
            NODE_USER,
            "--password",
            "S3cretPassw0rd",
            "--device-secret",
            DS,
        ],
        &[],
    );
    let (code, line) = failure(&out);
    assert_eq!(code, 1);
    assert!(line.contains("password"), "{line}");
    assert_no_secret(&out, &[DS, "S3cretPassw0rd"]);
}

#[test]
fn verify_mqtt_takes_the_secret_that_fits_the_connect_from_the_environment() {
    let out = iotauth(
        &[
            "verify",
            "mqtt",
            "--client-id",
            NODE_ID,
            "--username",
            NODE_USER,
            "--password",
            NODE_PASSWORD,
        ],
        &[
            ("IOTAUTH_DEVICE_SECRET", DS),
            ("IOTAUTH_PRODUCT_SECRET", PS),
        ],
    );
    assert_eq!(stdout_json(&out)["deviceName"], "applet:user_9");
    let missing = iotauth(
        &[
            "verify",
            "mqtt",
            "--client-id",
            NODE_ID,
            "--username",
            NODE_USER,
            "--password",
            NODE_PASSWORD,
        ],
        &[],
    );
    assert_eq!(failure(&missing).0, 2);
}

#[test]
fn verify_mqtt_checks_a_registration_connect_with_the_product_secret() {
    let id = "shared-reg-04.a2SHaReD0k1|random=Z1TcKNepl0J8PQ1,authType=register,securemode=2,signmethod=hmacsha256|";
    let password = "38988e2dace5176c7494ad17ad3686630ccc6c030dfc9c2e1cbe1569b8a56ed3";
    let args = [
        "verify",
        "mqtt",
        "--client-id",
        id,
        "--username",
        "shared-reg-04&a2SHaReD0k1",
        "--password",
        password,
    ];
    let out = iotauth(&[&args[..], &["--product-secret", PS]].concat(), &[]);
    let value = stdout_json(&out);
    assert_eq!(
        (value["authType"].as_str(), value["timestamp"].as_str()),
        (Some("register"), None)
    );
    assert_no_secret(&out, &[PS, password]);
    let wrong_kind = iotauth(&[&args[..], &["--device-secret", PS]].concat(), &[]);
    let (code, line) = failure(&wrong_kind);
    assert_eq!(code, 1);
    assert!(
        line.contains("expected a login credential, got a register credential"),
        "{line}"
    );
}

#[test]
fn verify_mqtt_checks_a_token_login() {
    let token = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";
    let id = "synthetic-shared-client-05|authType=connwl,securemode=-2,_ss=1,ext=3,lan=Python,_v=1.2.13|";
    let args = [
        "verify",
        "mqtt",
        "--client-id",
        id,
        "--username",
        "shared_reg_05&k1VectorPK9",
        "--password",
        token,
    ];
    let out = iotauth(&[&args[..], &["--device-token", token]].concat(), &[]);
    let value = stdout_json(&out);
    assert_eq!(
        (
            value["authType"].as_str(),
            value["signMethod"].as_str(),
            value["secureMode"].as_i64()
        ),
        (Some("connwl"), None, Some(-2))
    );
    assert_no_secret(&out, &[token]);
    let other = iotauth(
        &[&args[..], &["--device-token", "another-token"]].concat(),
        &[],
    );
    assert_eq!(
        failure(&other),
        (1, "error: the device token does not match\n".into())
    );
}

#[test]
fn verify_mqtt_enforces_a_freshness_window_when_asked() {
    let base = [
        "verify",
        "mqtt",
        "--client-id",
        NODE_ID,
        "--username",
        NODE_USER,
        "--password",
        NODE_PASSWORD,
        "--device-secret",
        DS,
    ];
    let fresh = iotauth(
        &[
            &base[..],
            &["--now", "1711111000000", "--max-skew-secs", "900"],
        ]
        .concat(),
        &[],
    );
    assert_eq!(stdout_json(&fresh)["timestamp"], "1711111111444");
    let stale = iotauth(
        &[
            &base[..],
            &["--now", "1800000000000", "--max-skew-secs", "900"],
        ]
        .concat(),
        &[],
    );
    assert_eq!(
        failure(&stale),
        (
            1,
            "error: timestamp is outside the freshness window\n".into()
        )
    );
    let now_alone = iotauth(&[&base[..], &["--now", "1800000000000"]].concat(), &[]);
    assert_eq!(failure(&now_alone).0, 2);
}

#[test]
fn verify_register_accepts_an_sdk_form_and_rejects_a_forged_one() {
    let form = "productKey=k1VectorPK9&deviceName=reg%40dom.x%3A1&random=9HDmazJGCboiDrA&sign=a36c22b3bb89dc8e47644c0801d44bb90b9a362293dd43939d52a8fa069c63f1&signMethod=hmacsha256";
    let out = iotauth(
        &[
            "verify",
            "register",
            "--form",
            form,
            "--product-secret",
            "QwErTy1234567890",
        ],
        &[],
    );
    assert_eq!(
        stdout_json(&out),
        json!({
            "productKey": "k1VectorPK9", "deviceName": "reg@dom.x:1", "random": "9HDmazJGCboiDrA", "signMethod": "hmacsha256",
        })
    );
    assert_no_secret(&out, &["QwErTy1234567890", "a36c22b3bb89dc8e"]);
    let forged = form.replace("random=9HDm", "random=9HDn");
    let out = iotauth(
        &["verify", "register", "--form", &forged],
        &[("IOTAUTH_PRODUCT_SECRET", "QwErTy1234567890")],
    );
    assert_eq!(
        failure(&out),
        (1, "error: the signature does not match\n".into())
    );
    assert_no_secret(&out, &["QwErTy1234567890"]);
}

#[test]
fn usage_errors_exit_2_with_one_line() {
    for args in [
        &["verify", "mqtt", "--client-id", "x"][..],
        &["sign"][..],
        &[
            "sign",
            "mqtt",
            "--product-key",
            "a-b",
            "--device-name",
            "dev-1",
            "--device-secret",
            "s",
        ][..],
        &[
            "sign",
            "mqtt",
            "--product-key",
            "pk",
            "--device-name",
            "dev-1",
            "--device-secret",
            "s",
            "--sign-method",
            "sha512",
        ][..],
        &[
            "verify",
            "mqtt",
            "--client-id",
            "c",
            "--username",
            "u",
            "--password",
            "p",
            "--device-secret",
            "a",
            "--product-secret",
            "b",
        ][..],
        &["frobnicate"][..],
    ] {
        let out = iotauth(args, &[]);
        assert_eq!(failure(&out).0, 2, "{args:?}");
    }
}

#[test]
fn a_misspelled_secret_flag_does_not_echo_its_value() {
    let out = iotauth(
        &[
            "sign",
            "mqtt",
            "--product-key",
            "pk",
            "--device-name",
            "dev-1",
            "--devicesecret=S3cretValue",
        ],
        &[],
    );
    assert_eq!(failure(&out).0, 2);
    assert_no_secret(&out, &["S3cretValue"]);
}

#[test]
fn help_exits_0() {
    let out = iotauth(&["--help"], &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("sign"));
}
