//! The admin HTTP API (`iotauth serve --admin`), through curl: every action, 401 without the
//! token or with a wrong one, decisions that reach the other front ends (a disabled or reset
//! device's login through the EMQX hook), no secret or token in the log; schemathesis (PyPI)
//! against the served `/admin/openapi.json`; and the README's "Admin API" table checked
//! against the document.
#![cfg(feature = "cli")]

use std::process::Command;

use serde_json::{Value, json};

#[allow(dead_code)]
#[path = "common/iotauth.rs"]
mod cli_support;
#[path = "common/serve.rs"]
mod serve_support;

use cli_support::{required_env, sign_login};
use serve_support::{Dir, Server, emqx_allows, free_port};

const TOKEN: &str = "test-admin-token-0123456789abcdef";

/// A server with the admin API on its own port.
fn admin_server(dir: &Dir) -> (Server, u16) {
    let store = format!("sqlite://{}", dir.0.join("fleet.db").display());
    let token_file = dir.0.join("admin.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let admin = free_port();
    let server = Server::start(
        &store,
        dir.0.join("serve.log"),
        &[
            "--admin",
            &format!("127.0.0.1:{admin}"),
            "--admin-token-file",
            token_file.to_str().unwrap(),
        ],
    );
    (server, admin)
}

/// `curl -X METHOD` on the admin port with `token` (none: no Authorization header), a JSON or
/// other body of `content_type`: the status, the body as JSON (Null when empty), and the
/// WWW-Authenticate header.
fn curl_with(
    port: u16,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<(&str, &str)>,
) -> (u16, Value, String) {
    let mut command = Command::new("curl");
    command.args(["-s", "-D", "-", "-X", method]);
    if let Some(token) = token {
        command.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    if let Some((content_type, body)) = body {
        command.args([
            "-H",
            &format!("Content-Type: {content_type}"),
            "--data-binary",
            body,
        ]);
    }
    let out = command
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .expect("curl");
    let text = String::from_utf8(out.stdout).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP reply");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let challenge = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(": ")?;
            name.eq_ignore_ascii_case("www-authenticate")
                .then(|| value.to_owned())
        })
        .unwrap_or_default();
    let body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(body).unwrap_or_else(|_| panic!("{method} {path}: not JSON: {body}"))
    };
    (status, body, challenge)
}

fn curl(port: u16, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let body = body.map(|b| b.to_string());
    let (status, body, _) = curl_with(
        port,
        Some(TOKEN),
        method,
        path,
        body.as_deref().map(|b| ("application/json", b)),
    );
    (status, body)
}

fn text(value: &Value, field: &str) -> String {
    value[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} in {value}"))
        .to_owned()
}

#[test]
fn every_admin_action_through_curl_with_the_token_and_none_without_it() {
    let dir = Dir::new("admin-api");
    let (server, admin) = admin_server(&dir);

    // Without the token, with a wrong one, with another scheme: 401, whatever the route.
    for (token, what) in [
        (None, "no token"),
        (Some("test-admin-token-0123456789abcdeF"), "a wrong token"),
        (Some("short"), "a short token"),
    ] {
        for (method, path) in [
            ("GET", "/admin/products"),
            ("POST", "/admin/products"),
            ("GET", "/admin/openapi.json"),
            ("POST", "/admin/device-imports"),
            ("GET", "/admin/nowhere"),
        ] {
            let (status, body, challenge) = curl_with(admin, token, method, path, None);
            assert_eq!(status, 401, "{what}: {method} {path}");
            assert_eq!(body["code"], "Unauthorized", "{what}");
            assert!(challenge.starts_with("Bearer"), "{what}: {challenge}");
        }
    }
    // The token is checked before a body is read: a request announcing a large body it never
    // sends is refused at once, not after the 300 s the admin listener gives a body.
    {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", admin)).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        stream
            .write_all(
                b"POST /admin/device-imports HTTP/1.1\r\nhost: x\r\n\
                  content-type: text/csv\r\ncontent-length: 200000000\r\n\r\n",
            )
            .unwrap();
        let mut reply = [0u8; 12];
        stream
            .read_exact(&mut reply)
            .expect("a reply before any body byte was sent");
        assert_eq!(&reply, b"HTTP/1.1 401");
    }
    let basic = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-u",
            &format!("admin:{TOKEN}"),
        ])
        .arg(format!("http://127.0.0.1:{admin}/admin/products"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&basic.stdout),
        "401",
        "Basic is not Bearer"
    );
    // The admin API is not on the devices' port.
    let (status, _) = server.post("/admin/products", "{}", &[]);
    assert_eq!(status, 404);

    // CreateProduct: the one reply with the secret.
    let (status, product) = curl(
        admin,
        "POST",
        "/admin/products",
        Some(json!({"name": "meters", "dynamicRegistration": true})),
    );
    assert_eq!(status, 201, "{product}");
    let pk = text(&product, "productKey");
    assert_eq!(text(&product, "productSecret").len(), 32);
    let (status, shown) = curl(admin, "GET", &format!("/admin/products/{pk}"), None);
    assert_eq!(status, 200);
    assert!(
        shown.get("productSecret").is_none(),
        "QueryProduct shows no secret"
    );
    assert_eq!(shown["dynamicRegistration"], true);
    assert_eq!(shown["name"], "meters");
    let (status, _) = curl(admin, "POST", "/admin/products", Some(json!({"name": 7})));
    assert_eq!(status, 400, "a name that is not text");
    let (status, _) = curl(admin, "GET", "/admin/products/a1-not-key", None);
    assert_eq!(status, 400, "a malformed key");
    let (status, _) = curl(admin, "GET", "/admin/products/a1NoSuchPrd", None);
    assert_eq!(status, 404);

    // Field-naming errors: the JSON path, never the value; a wrong method is JSON too.
    let (status, refused) = curl(
        admin,
        "PATCH",
        &format!("/admin/products/{pk}"),
        Some(json!({"rate": "five-a-second"})),
    );
    assert_eq!(status, 400);
    assert_eq!(
        refused["message"],
        "rate has the wrong type, value or range"
    );
    let (status, refused) = curl(
        admin,
        "PATCH",
        &format!("/admin/products/{pk}"),
        Some(json!({"rename": 1})),
    );
    assert_eq!(status, 400);
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .starts_with("unknown field `rename`"),
        "{refused}"
    );
    let (status, refused) = curl(admin, "PUT", &format!("/admin/products/{pk}"), None);
    assert_eq!(
        (status, refused["code"].clone()),
        (405, json!("MethodNotAllowed"))
    );
    let (status, refused, _) = curl_with(
        admin,
        Some(TOKEN),
        "POST",
        "/admin/products",
        Some(("text/plain", "{}")),
    );
    assert_eq!(
        (status, refused["code"].clone()),
        (415, json!("UnsupportedMediaType"))
    );

    // QueryProductList pages.
    curl(admin, "POST", "/admin/products", Some(json!({})));
    let (status, page) = curl(
        admin,
        "GET",
        "/admin/products?pageSize=1&currentPage=2",
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(
        (
            page["total"].clone(),
            page["items"].as_array().unwrap().len()
        ),
        (json!(2), 1)
    );
    let (status, _) = curl(admin, "GET", "/admin/products?pageSize=201", None);
    assert_eq!(status, 400);

    // UpdateProduct: what is not given is kept; a limit out of range writes nothing.
    let (status, updated) = curl(
        admin,
        "PATCH",
        &format!("/admin/products/{pk}"),
        Some(json!({"dynamicRegistration": false, "rate": 5, "preRegistrationFree": true})),
    );
    assert_eq!(status, 200, "{updated}");
    assert_eq!(
        (
            updated["dynamicRegistration"].clone(),
            updated["preRegistrationFree"].clone(),
            updated["registrationLimit"]["rate"].clone(),
            updated["registrationLimit"]["burst"].clone()
        ),
        (json!(false), json!(true), json!(5), json!(100))
    );
    let (status, refused) = curl(
        admin,
        "PATCH",
        &format!("/admin/products/{pk}"),
        Some(json!({"dynamicRegistration": true, "rate": 0})),
    );
    assert_eq!(status, 400, "{refused}");
    let (_, kept) = curl(admin, "GET", &format!("/admin/products/{pk}"), None);
    assert_eq!(kept["dynamicRegistration"], false, "nothing written");

    // RegisterDevice; a taken name is 409.
    let devices = format!("/admin/products/{pk}/devices");
    let (status, device) = curl(
        admin,
        "POST",
        &devices,
        Some(json!({"deviceName": "meter-01"})),
    );
    assert_eq!(status, 201, "{device}");
    let secret = text(&device, "deviceSecret");
    let (status, _) = curl(
        admin,
        "POST",
        &devices,
        Some(json!({"deviceName": "meter-01"})),
    );
    assert_eq!(status, 409);
    let (status, _) = curl(admin, "POST", &devices, Some(json!({"deviceName": "m1"})));
    assert_eq!(status, 400);

    // BatchRegisterDevice: all or none.
    let batches = format!("/admin/products/{pk}/device-batches");
    let (status, batch) = curl(
        admin,
        "POST",
        &batches,
        Some(json!({"deviceNames": ["meter-02", "meter-03"]})),
    );
    assert_eq!(status, 201, "{batch}");
    assert_eq!(batch.as_array().unwrap().len(), 2);
    let (status, refused) = curl(
        admin,
        "POST",
        &batches,
        Some(json!({"deviceNames": ["meter-04", "meter-01"]})),
    );
    assert_eq!(status, 409);
    assert_eq!(
        refused["message"],
        "device 1 of the batch (counting from 0) is already registered"
    );
    let (status, _) = curl(admin, "GET", &format!("{devices}/meter-04"), None);
    assert_eq!(status, 404, "none of a refused batch is registered");
    let (status, _) = curl(
        admin,
        "POST",
        &batches,
        Some(json!({"deviceNames": ["meter-05", "meter-05"]})),
    );
    assert_eq!(status, 400, "a name twice");
    let (status, _) = curl(admin, "POST", &batches, Some(json!({"deviceNames": []})));
    assert_eq!(status, 400, "no name");

    // QueryDevice, QueryDeviceDetail: no secrets.
    let (status, page) = curl(admin, "GET", &format!("{devices}?pageSize=2"), None);
    assert_eq!(status, 200);
    assert_eq!(page["total"], 3);
    assert_eq!(page["items"][0]["deviceName"], "meter-01");
    assert!(!page.to_string().contains(&secret));
    let (status, detail) = curl(admin, "GET", &format!("{devices}/meter-01"), None);
    assert_eq!(status, 200);
    assert_eq!(
        (detail["state"].clone(), detail["enabled"].clone()),
        (json!("inactive"), json!(true))
    );
    assert!(detail.get("deviceSecret").is_none());

    // DisableThing / EnableThing / ResetThing reach the hooks' logins.
    let login = sign_login(&pk, "meter-01", &secret, "c1");
    assert!(emqx_allows(server.http, &login));
    let (status, disabled) = curl(admin, "POST", &format!("{devices}/meter-01/disable"), None);
    assert_eq!((status, disabled["enabled"].clone()), (200, json!(false)));
    assert!(!emqx_allows(server.http, &login), "disabled: refused");
    let (status, enabled) = curl(admin, "POST", &format!("{devices}/meter-01/enable"), None);
    assert_eq!((status, enabled["enabled"].clone()), (200, json!(true)));
    assert!(emqx_allows(server.http, &login), "enabled again");
    let (status, reset) = curl(admin, "POST", &format!("{devices}/meter-01/reset"), None);
    assert_eq!(status, 200, "{reset}");
    let new_secret = text(&reset, "deviceSecret");
    assert_ne!(new_secret, secret);
    assert!(
        !emqx_allows(server.http, &login),
        "the old secret after a reset"
    );
    let new_login = sign_login(&pk, "meter-01", &new_secret, "c1");
    assert!(emqx_allows(server.http, &new_login), "the new secret");

    // DeleteDevice.
    let (status, body) = curl(admin, "DELETE", &format!("{devices}/meter-02"), None);
    assert_eq!((status, body), (204, Value::Null));
    let (status, _) = curl(admin, "DELETE", &format!("{devices}/meter-02"), None);
    assert_eq!(status, 404);

    // Imports: an export as it is; a re-run changes nothing; a bad line names line and field.
    let imported_pk = "a1ImPoRtApi";
    let products = format!(
        "ProductKey,ProductSecret,DynamicRegistration\n{imported_pk},Yr0iF3HIgNkwiaPj,true\n"
    );
    let (status, summary, _) = curl_with(
        admin,
        Some(TOKEN),
        "POST",
        "/admin/product-imports",
        Some(("text/csv", &products)),
    );
    assert_eq!(
        (status, summary),
        (200, json!({"created": 1, "unchanged": 0}))
    );
    let imported_secret = "0123456789abcdef0123456789abcdef";
    let devices_file = format!(
        "{{\"ProductKey\":\"{imported_pk}\",\"DeviceName\":\"moved-01\",\"DeviceSecret\":\"{imported_secret}\",\"Status\":\"ONLINE\"}}\n"
    );
    for expected in [
        json!({"created": 1, "unchanged": 0}),
        json!({"created": 0, "unchanged": 1}),
    ] {
        let (status, summary, _) = curl_with(
            admin,
            Some(TOKEN),
            "POST",
            "/admin/device-imports",
            Some(("application/x-ndjson", &devices_file)),
        );
        assert_eq!((status, summary), (200, expected));
    }
    // A product name out of its rule is the client's fault, named by line and field.
    let (status, refused, _) = curl_with(
        admin,
        Some(TOKEN),
        "POST",
        "/admin/product-imports",
        Some((
            "text/csv",
            &format!(
                "ProductKey,ProductSecret,ProductName\na1ImPoRtBad,Yr0iF3HIgNkwiaPj,{}\n",
                "n".repeat(65)
            ),
        )),
    );
    assert_eq!(
        (status, refused["code"].clone()),
        (400, json!("InvalidParameter")),
        "{refused}"
    );
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .starts_with("line 2: ProductName:"),
        "{refused}"
    );
    let moved = sign_login(imported_pk, "moved-01", imported_secret, "c2");
    assert!(
        emqx_allows(server.http, &moved),
        "an imported device logs in with its secret"
    );
    let conflicting = format!(
        "ProductKey,DeviceName,DeviceSecret\n{imported_pk},moved-02,{imported_secret}\n{imported_pk},moved-01,ffffffffffffffffffffffffffffffff\n"
    );
    let (status, refused, _) = curl_with(
        admin,
        Some(TOKEN),
        "POST",
        "/admin/device-imports",
        Some(("text/csv", &conflicting)),
    );
    assert_eq!(status, 409, "{refused}");
    assert_eq!(
        refused["message"],
        "line 3: the stored device has another DeviceSecret"
    );
    let (status, _) = curl(
        admin,
        "GET",
        &format!("/admin/products/{imported_pk}/devices/moved-02"),
        None,
    );
    assert_eq!(status, 404, "all or nothing");

    server.assert_log_clean(&[
        TOKEN.to_owned(),
        secret,
        new_secret,
        text(&product, "productSecret"),
        imported_secret.to_owned(),
    ]);
}

#[test]
fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let Some(schemathesis) = required_env("IOTAUTH_SCHEMATHESIS") else {
        return;
    };
    let dir = Dir::new("admin-schemathesis");
    let (server, admin) = admin_server(&dir);
    let (status, document, _) = curl_with(admin, Some(TOKEN), "GET", "/admin/openapi.json", None);
    assert_eq!(status, 200);
    assert_eq!(document["openapi"].as_str().map(|v| &v[..2]), Some("3."));
    let schema = dir.0.join("openapi.json");
    std::fs::write(&schema, document.to_string()).unwrap();
    let config = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/e2e/schemathesis/schemathesis.toml"
    );
    let out = Command::new(schemathesis)
        .args(["--config-file", config, "run"])
        .arg(&schema)
        .args(["--url", &format!("http://127.0.0.1:{admin}")])
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--max-examples", "25", "--seed", "1"])
        .env("NO_COLOR", "1")
        .output()
        .expect("schemathesis");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("passed"), "{report}");
    drop(server);
}

/// The README's "Admin API" table names each operation of the document, by method, path and
/// Alibaba action, and nothing else.
#[test]
fn the_readme_admin_section_is_the_document() {
    use utoipa::OpenApi;
    let document = serde_json::to_value(iotauth::http::AdminApi::openapi()).unwrap();
    let mut operations: Vec<(String, String, String)> = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            operations.push((
                method.to_uppercase(),
                path.clone(),
                text(operation, "operationId"),
            ));
        }
    }
    operations.sort();
    let readme = include_str!("../README.md");
    let section = readme
        .split("\n## Admin API\n")
        .nth(1)
        .expect("a README section \"Admin API\"");
    let section = section.split("\n## ").next().unwrap();
    let mut listed: Vec<(String, String, String)> = section
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            // | `METHOD path` | Action | … |
            let call = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            let (method, path) = call.split_once(' ')?;
            Some((
                method.to_owned(),
                path.to_owned(),
                cells.get(2)?.to_string(),
            ))
        })
        .collect();
    listed.sort();
    assert_eq!(
        listed, operations,
        "the README's Admin API table against the document"
    );
}
