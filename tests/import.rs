//! `iotauth product import` and `iotauth device import`: a fleet exported from Alibaba Cloud
//! (made-up values, shaped as its exports: JSON lines and CSV with extra columns) is brought in
//! unchanged, and its devices log in with the secrets they already hold, through the embedded
//! broker and the EMQX hook.
#![cfg(feature = "cli")]

use std::path::Path;
use std::process::Command;

use serde_json::Value;

#[allow(dead_code)]
#[path = "common/iotauth.rs"]
mod cli_support;
#[path = "common/serve.rs"]
mod serve_support;
#[path = "common/mosquitto.rs"]
mod support;

use cli_support::{BIN, cli, sign_login};
use serve_support::{Dir, Server, emqx_allows};
use support::MqttClient;

const PK: &str = "a1ImPoRtEd1";
const PRODUCT_SECRET: &str = "Yr0iF3HIgNkwiaPj";

/// `iotauth --store STORE ARGS…`: exit code, stdout, stderr.
fn run(store: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .args(["--store", store])
        .args(args)
        .env_remove("IOTAUTH_MASTER_KEY_FILE")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// The devices of the export: name, DeviceSecret, Status.
const DEVICES: [(&str, &str, &str); 3] = [
    ("meter-online", "0123456789abcdef0123456789abcdef", "ONLINE"),
    (
        "meter-unactive",
        "00112233445566778899aabbccddeeff",
        "UNACTIVE",
    ),
    (
        "meter-disabled",
        "fedcba9876543210fedcba9876543210",
        "DISABLE",
    ),
];

#[test]
fn an_alibaba_export_is_imported_unchanged_and_its_devices_log_in_with_their_secrets() {
    let dir = Dir::new("import");
    let store = format!("sqlite://{}", dir.0.join("fleet.db").display());
    // QueryProduct-shaped JSON lines, with fields this import does not read.
    let products = write(
        &dir.0,
        "products.jsonl",
        &format!(
            "{{\"ProductKey\":\"{PK}\",\"ProductSecret\":\"{PRODUCT_SECRET}\",\"ProductName\":\"meters\",\
             \"DynamicRegistration\":true,\"GmtCreate\":1700000000000,\"NodeType\":0}}\n"
        ),
    );
    // BatchQueryDeviceDetail-shaped CSV, extra columns included.
    let mut csv = String::from("IotId,ProductKey,DeviceName,DeviceSecret,Status,Nickname\n");
    for (i, (name, secret, status)) in DEVICES.iter().enumerate() {
        csv.push_str(&format!("iot-{i},{PK},{name},{secret},{status},\n"));
    }
    let devices = write(&dir.0, "devices.csv", &csv);

    let imported: Value =
        serde_json::from_str(&run(&store, &["product", "import", &products]).1).unwrap();
    assert_eq!(imported, serde_json::json!({"created": 1, "unchanged": 0}));
    let imported: Value =
        serde_json::from_str(&run(&store, &["device", "import", &devices]).1).unwrap();
    assert_eq!(imported, serde_json::json!({"created": 3, "unchanged": 0}));

    let product = cli(&store, &["product", "show", PK, "--show-secret"]);
    assert_eq!(product["productSecret"], PRODUCT_SECRET);
    assert_eq!(product["dynamicRegistration"], true);
    assert_eq!(product["name"], "meters");
    let states: Vec<(String, bool)> = cli(&store, &["device", "list", PK])
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["state"].as_str().unwrap().to_owned(),
                d["enabled"].as_bool().unwrap(),
            )
        })
        .collect();
    // Listed by name: disabled, online, unactive.
    assert_eq!(
        states,
        [
            ("active".into(), false),
            ("active".into(), true),
            ("inactive".into(), true)
        ]
    );

    // A re-run changes nothing, not even the event log.
    let (_, events_before, _) = run(&store, &["events"]);
    let again: Value =
        serde_json::from_str(&run(&store, &["device", "import", &devices]).1).unwrap();
    assert_eq!(again, serde_json::json!({"created": 0, "unchanged": 3}));
    let again: Value =
        serde_json::from_str(&run(&store, &["product", "import", &products]).1).unwrap();
    assert_eq!(again, serde_json::json!({"created": 0, "unchanged": 1}));
    assert_eq!(run(&store, &["events"]).1, events_before);
    let kinds: Vec<String> = events_before
        .lines()
        .map(|line| {
            let event: Value = serde_json::from_str(line).unwrap();
            format!(
                "{} {}",
                event["kind"].as_str().unwrap(),
                event["deviceName"]
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "product_created null".to_owned(),
            format!("device_registered \"{}\"", DEVICES[0].0),
            format!("activated \"{}\"", DEVICES[0].0),
            format!("device_registered \"{}\"", DEVICES[1].0),
            format!("device_registered \"{}\"", DEVICES[2].0),
            format!("activated \"{}\"", DEVICES[2].0),
            format!("disabled \"{}\"", DEVICES[2].0),
        ],
        "the product's event, then each device's as imported: registered, activated once \
         ONLINE or OFFLINE, disabled when DISABLE"
    );

    // An export carries iotauth's State, which Alibaba's Status cannot say; an import reads
    // it back, so a device whose secret was issued is not restored as inactive.
    let exported = run(&store, &["device", "export", PK]).1;
    assert!(
        exported.contains("\"Status\":\"UNACTIVE\",\"State\":\"inactive\""),
        "{exported}"
    );
    let issued = write(
        &dir.0,
        "issued.jsonl",
        &format!(
            "{{\"ProductKey\":\"{PK}\",\"DeviceName\":\"meter-issued\",\
             \"DeviceSecret\":\"0123456789abcdef0123456789abcdef\",\"Status\":\"UNACTIVE\",\"State\":\"issued\",\"Nickname\":null}}\n"
        ),
    );
    assert_eq!(run(&store, &["device", "import", &issued]).0, Some(0));
    assert_eq!(
        cli(&store, &["device", "show", PK, "meter-issued"])["state"],
        "issued"
    );
    cli(&store, &["device", "delete", PK, "meter-issued"]);

    let server = Server::start(&store, dir.0.join("serve.log"), &[]);
    for (name, secret, status) in DEVICES {
        let login = sign_login(PK, name, secret, name);
        let fields = [login[0].as_str(), login[1].as_str(), login[2].as_str()];
        let accepted = MqttClient::connect(server.mqtt, fields, true).is_ok();
        assert_eq!(accepted, status != "DISABLE", "{name} over MQTT");
        assert_eq!(
            emqx_allows(server.http, &login),
            status != "DISABLE",
            "{name} by the hook"
        );
    }
    assert_eq!(
        cli(&store, &["device", "show", PK, "meter-unactive"])["state"],
        "active"
    );
    server.assert_log_clean(&[PRODUCT_SECRET.to_owned()]);
    drop(server);

    // Exported in the same shape, and read back into another store unchanged.
    let (code, listed, _) = run(&store, &["device", "export", PK]);
    assert_eq!(code, Some(0));
    assert!(
        !listed.contains("DeviceSecret"),
        "no secret without --show-secret"
    );
    let (code, exported, _) = run(&store, &["device", "export", PK, "--show-secret"]);
    assert_eq!(code, Some(0));
    let statuses: Vec<Value> = exported
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap()["Status"].clone())
        .collect();
    assert_eq!(
        statuses,
        ["DISABLE", "OFFLINE", "OFFLINE"],
        "by name; meter-unactive logged in"
    );
    let copy = format!("sqlite://{}", dir.0.join("copy.db").display());
    assert_eq!(run(&copy, &["product", "import", &products]).0, Some(0));
    let export_file = write(&dir.0, "export.jsonl", &exported);
    let (code, out, err) = run(&copy, &["device", "import", &export_file]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["created"], 3);
    assert_eq!(
        run(&copy, &["device", "export", PK, "--show-secret"]).1,
        exported
    );
}

#[test]
fn a_bad_line_or_a_conflicting_secret_aborts_the_whole_file_naming_the_line_and_field() {
    let dir = Dir::new("import-bad");
    let store = format!("sqlite://{}", dir.0.join("fleet.db").display());
    let products = write(
        &dir.0,
        "p.csv",
        &format!("ProductKey,ProductSecret\n{PK},{PRODUCT_SECRET}\n"),
    );
    assert_eq!(run(&store, &["product", "import", &products]).0, Some(0));
    let secret = "0123456789abcdef0123456789abcdef";
    let cases = [
        (
            "a short name on line 3",
            format!(
                "ProductKey,DeviceName,DeviceSecret\n{PK},meter-01,{secret}\n{PK},m1,{secret}\n"
            ),
            "line 3: DeviceName:",
        ),
        (
            "an unknown status",
            format!("ProductKey,DeviceName,DeviceSecret,Status\n{PK},meter-01,{secret},ACTIVE\n"),
            "line 2: Status: must be UNACTIVE, ONLINE, OFFLINE or DISABLE",
        ),
        (
            "a repeated device",
            format!(
                "ProductKey,DeviceName,DeviceSecret\n{PK},meter-01,{secret}\n{PK},meter-01,{secret}\n"
            ),
            "line 3: DeviceName: repeats line 2",
        ),
        (
            "an unknown product",
            format!(
                "ProductKey,DeviceName,DeviceSecret\n{PK},meter-01,{secret}\na1NoSuchPrd,meter-02,{secret}\n"
            ),
            "line 3: product not found",
        ),
        (
            "a field twice in a JSON line",
            format!(
                "{{\"ProductKey\":\"{PK}\",\"DeviceName\":\"meter-01\",\"DeviceSecret\":\"{secret}\"}}\n\
                 {{\"ProductKey\":\"{PK}\",\"DeviceName\":\"meter-02\",\"DeviceSecret\":\"a\",\"DeviceSecret\":\"b\"}}\n"
            ),
            "line 2: DeviceSecret: appears twice",
        ),
        (
            "a number, whose digits would not be kept",
            format!(
                "{{\"ProductKey\":\"{PK}\",\"DeviceName\":\"meter-01\",\"DeviceSecret\":12345678901234567890123456789012345}}\n"
            ),
            "line 1: DeviceSecret: must be a JSON string",
        ),
    ];
    for (what, text, expected) in cases {
        let file = write(&dir.0, "bad.csv", &text);
        let (code, out, err) = run(&store, &["device", "import", &file]);
        assert_eq!((code, out.as_str()), (Some(1), ""), "{what}: {err}");
        assert!(err.contains(expected), "{what}: {err}");
        assert!(!err.contains(secret), "{what}: no secret in {err}");
        assert_eq!(
            cli(&store, &["device", "list", PK]),
            serde_json::json!([]),
            "{what}: nothing written"
        );
    }

    // A device that exists with another secret: refused by line and field, the value unsaid.
    let first = write(
        &dir.0,
        "first.csv",
        &format!("ProductKey,DeviceName,DeviceSecret\n{PK},meter-01,{secret}\n"),
    );
    assert_eq!(run(&store, &["device", "import", &first]).0, Some(0));
    let other = "ffffffffffffffffffffffffffffffff";
    let conflicting = write(
        &dir.0,
        "conflict.csv",
        &format!(
            "ProductKey,DeviceName,DeviceSecret\n{PK},meter-02,{secret}\n{PK},meter-01,{other}\n"
        ),
    );
    let (code, _, err) = run(&store, &["device", "import", &conflicting]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("line 3: the stored device has another DeviceSecret"),
        "{err}"
    );
    assert!(!err.contains(other) && !err.contains(secret), "{err}");
    assert_eq!(
        cli(&store, &["device", "list", PK])
            .as_array()
            .unwrap()
            .len(),
        1,
        "meter-02 not written"
    );
}
