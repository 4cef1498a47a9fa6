//! The broker hooks' contract matrix (issue 14): every request shape EMQX 5, VerneMQ and
//! mosquitto-go-auth can be configured to send, against one `iotauth serve`, gets an answer
//! inside that broker's contract. Where a shape comes from is noted per group; the brokers'
//! own sources and documents are cited in the README's "Broker hooks" section.
//!
//! A request that cannot be understood is a deny in the dialect — never a status the broker
//! reads as "no opinion" (EMQX: anything but 200/204 is `ignore`, and its authorizer's
//! default `no_match` is `allow`).
#![cfg(feature = "cli")]

use serde_json::{Value, json};

#[allow(dead_code)]
#[path = "common/iotauth.rs"]
mod cli_support;
#[path = "common/serve.rs"]
mod serve_support;

use cli_support::sign_login;
use serve_support::{Dir, Fleet, Server, http_request};

/// What a reply must be.
enum Expect {
    /// The status and the JSON body's `result` (EMQX, VerneMQ).
    Result(u16, Value),
    /// The status and the exact body (go-auth).
    Exactly(u16, &'static str),
}

struct Case {
    name: &'static str,
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, &'static str)>,
    body: String,
    expect: Expect,
}

const JSON: (&str, &str) = ("content-type", "application/json");
const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

fn form(pairs: &[(&str, &str)]) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    for (key, value) in pairs {
        form.append_pair(key, value);
    }
    form.finish()
}

fn case(
    name: &'static str,
    method: &'static str,
    path: impl Into<String>,
    headers: &[(&'static str, &'static str)],
    body: impl Into<String>,
    expect: Expect,
) -> Case {
    Case {
        name,
        method,
        path: path.into(),
        headers: headers.to_vec(),
        body: body.into(),
        expect,
    }
}

/// The rows, for a device `pk`/`meter-01` whose valid login is `login` and another device's
/// name `other`.
fn matrix(pk: &str, login: &[String; 3]) -> Vec<Case> {
    let [client_id, username, password] = login.clone();
    let (id, user, pass) = (client_id.as_str(), username.as_str(), password.as_str());
    let own = format!("/{pk}/meter-01/user/update");
    let own_filter = format!("/{pk}/meter-01/user/+");
    let others = format!("/{pk}/meter-02/user/get");
    let huge = "x".repeat(17 * 1024);
    let allow = || Expect::Result(200, json!("allow"));
    let deny = || Expect::Result(200, json!("deny"));
    let ok = || Expect::Result(200, json!("ok"));
    let error = || Expect::Result(200, json!({"error": "not_allowed"}));
    let emqx_login = json!({"clientid": id, "username": user, "password": pass});
    let mut rows = vec![
        // EMQX 5 HTTP authenticator: POST with a JSON or form body (by its content-type
        // header), GET with the body map as a query string; every value is a string;
        // an unset placeholder is "", an unknown one is sent literally.
        case("emqx authn: JSON", "POST", "/hooks/emqx/authn", &[JSON], emqx_login.to_string(), allow()),
        case("emqx authn: form", "POST", "/hooks/emqx/authn", &[FORM],
            form(&[("clientid", id), ("username", user), ("password", pass)]), allow()),
        case("emqx authn: GET query", "GET",
            format!("/hooks/emqx/authn?{}", form(&[("clientid", id), ("username", user), ("password", pass)])),
            &[], "", allow()),
        case("emqx authn: JSON labelled as a form", "POST", "/hooks/emqx/authn", &[FORM], emqx_login.to_string(), allow()),
        case("emqx authn: JSON without a content type", "POST", "/hooks/emqx/authn", &[], emqx_login.to_string(), allow()),
        case("emqx authn: JSON with a charset", "POST", "/hooks/emqx/authn",
            &[("content-type", "application/json; charset=utf-8")], emqx_login.to_string(), allow()),
        case("emqx authn: extra fields", "POST", "/hooks/emqx/authn", &[JSON],
            json!({"clientid": id, "username": user, "password": pass, "peerhost": "10.0.0.7",
                   "peerport": "50312", "cert_common_name": "", "zone": "default"}).to_string(), allow()),
        case("emqx authn: wrong password", "POST", "/hooks/emqx/authn", &[JSON],
            json!({"clientid": id, "username": user, "password": "0".repeat(64)}).to_string(), deny()),
        case("emqx authn: missing password", "POST", "/hooks/emqx/authn", &[JSON],
            json!({"clientid": id, "username": user}).to_string(), deny()),
        case("emqx authn: empty values (unset placeholders)", "POST", "/hooks/emqx/authn", &[JSON],
            json!({"clientid": "", "username": "", "password": ""}).to_string(), deny()),
        case("emqx authn: null password", "POST", "/hooks/emqx/authn", &[JSON],
            json!({"clientid": id, "username": user, "password": null}).to_string(), deny()),
        case("emqx authn: a literal unknown placeholder", "POST", "/hooks/emqx/authn", &[JSON],
            json!({"clientid": id, "username": user, "password": "${password}"}).to_string(), deny()),
        case("emqx authn: a number for the password", "POST", "/hooks/emqx/authn", &[JSON],
            json!({"clientid": id, "username": user, "password": 1234}).to_string(), deny()),
        case("emqx authn: an object for the password", "POST", "/hooks/emqx/authn", &[JSON],
            json!({"clientid": id, "username": user, "password": {"a": 1}}).to_string(), deny()),
        case("emqx authn: truncated JSON", "POST", "/hooks/emqx/authn", &[JSON],
            format!("{{\"clientid\":\"{id}\""), deny()),
        case("emqx authn: a repeated form field", "POST", "/hooks/emqx/authn", &[FORM],
            form(&[("clientid", id), ("username", user), ("password", "x"), ("password", pass)]), deny()),
        case("emqx authn: a repeated JSON key", "POST", "/hooks/emqx/authn", &[JSON],
            format!(r#"{{"clientid":"{id}","username":"{user}","password":"x","password":"{pass}"}}"#), deny()),
        case("emqx authn: a field in the query and the body", "POST",
            format!("/hooks/emqx/authn?{}", form(&[("username", user)])), &[JSON], emqx_login.to_string(), deny()),
        case("emqx authn: a bad percent escape", "POST", "/hooks/emqx/authn", &[FORM],
            format!("clientid=%zz&{}", form(&[("username", user), ("password", pass)])), deny()),
        case("emqx authn: GET without parameters", "GET", "/hooks/emqx/authn", &[], "", deny()),
        case("emqx authn: a body over 16 KiB", "POST", "/hooks/emqx/authn", &[JSON],
            json!({"clientid": id, "username": user, "password": pass, "pad": huge}).to_string(), deny()),
        // EMQX 5 HTTP authorizer: `action` publish/subscribe (`access` 1 subscribe, 2 publish,
        // since 5.7), `qos` and `retain` as strings; 5.0-5.6 sent JSON under a form content type.
        case("emqx authz: JSON publish to its own topic", "POST", "/hooks/emqx/authz", &[JSON],
            json!({"username": user, "topic": own, "action": "publish", "qos": "1", "retain": "false"}).to_string(), allow()),
        case("emqx authz: JSON subscribe to another device's topic", "POST", "/hooks/emqx/authz", &[JSON],
            json!({"username": user, "topic": others, "action": "subscribe"}).to_string(), deny()),
        case("emqx authz: form subscribe with an encoded wildcard", "POST", "/hooks/emqx/authz", &[FORM],
            form(&[("username", user), ("topic", &own_filter), ("action", "subscribe")]), allow()),
        case("emqx authz: form subscribe to another device's topic", "POST", "/hooks/emqx/authz", &[FORM],
            form(&[("username", user), ("topic", &others), ("action", "subscribe")]), deny()),
        case("emqx authz: JSON labelled as a form (EMQX 5.0-5.6)", "POST", "/hooks/emqx/authz", &[FORM],
            json!({"username": user, "topic": own, "action": "publish"}).to_string(), allow()),
        case("emqx authz: JSON labelled as a form, another's topic", "POST", "/hooks/emqx/authz", &[FORM],
            json!({"username": user, "topic": others, "action": "subscribe"}).to_string(), deny()),
        case("emqx authz: GET query, own topic", "GET",
            format!("/hooks/emqx/authz?{}", form(&[("username", user), ("topic", &own), ("action", "publish")])),
            &[], "", allow()),
        case("emqx authz: GET query, another's topic", "GET",
            format!("/hooks/emqx/authz?{}", form(&[("username", user), ("topic", &others), ("action", "subscribe")])),
            &[], "", deny()),
        case("emqx authz: GET query, every topic", "GET",
            format!("/hooks/emqx/authz?{}", form(&[("username", user), ("topic", "#"), ("action", "subscribe")])),
            &[], "", deny()),
        case("emqx authz: access 2 (publish) without action", "POST", "/hooks/emqx/authz", &[JSON],
            json!({"username": user, "topic": own, "access": "2"}).to_string(), allow()),
        case("emqx authz: access 1 (subscribe), another's topic", "POST", "/hooks/emqx/authz", &[JSON],
            json!({"username": user, "topic": others, "access": "1"}).to_string(), deny()),
        case("emqx authz: no action", "POST", "/hooks/emqx/authz", &[JSON],
            json!({"username": user, "topic": own}).to_string(), deny()),
        case("emqx authz: action all", "POST", "/hooks/emqx/authz", &[JSON],
            json!({"username": user, "topic": own, "action": "all"}).to_string(), deny()),
        case("emqx authz: no user name", "POST", "/hooks/emqx/authz", &[JSON],
            json!({"topic": own, "action": "publish"}).to_string(), deny()),
        case("emqx authz: a user name that is not a device's", "POST", "/hooks/emqx/authz", &[JSON],
            json!({"username": "admin", "topic": own, "action": "publish"}).to_string(), deny()),
        case("emqx authz: not JSON, not a form", "POST", "/hooks/emqx/authz", &[JSON], "{{{", deny()),
        case("emqx authz: a topic over 16 KiB", "POST", "/hooks/emqx/authz", &[JSON],
            json!({"username": user, "topic": format!("{own}/{huge}"), "action": "publish"}).to_string(), deny()),
        // VerneMQ webhooks: JSON POST, the hook in `vernemq-hook`; `username` and `password`
        // are null when the client sent none; publish payloads are base64.
        case("vernemq auth_on_register", "POST", "/hooks/vernemq", &[JSON, ("vernemq-hook", "auth_on_register")],
            json!({"peer_addr": "10.0.0.7", "peer_port": 50312, "mountpoint": "", "client_id": id,
                   "username": user, "password": pass, "clean_session": true}).to_string(), ok()),
        case("vernemq auth_on_register_m5", "POST", "/hooks/vernemq", &[JSON, ("vernemq-hook", "auth_on_register_m5")],
            json!({"peer_addr": "10.0.0.7", "peer_port": 50312, "mountpoint": "", "client_id": id,
                   "username": user, "password": pass, "clean_start": true,
                   "properties": {"p_session_expiry_interval": 0}, "listener_addr": null}).to_string(), ok()),
        case("vernemq auth_on_register: null user name and password", "POST", "/hooks/vernemq",
            &[JSON, ("vernemq-hook", "auth_on_register")],
            json!({"peer_addr": "10.0.0.7", "peer_port": 50312, "mountpoint": "", "client_id": id,
                   "username": null, "password": null, "clean_session": true}).to_string(), error()),
        case("vernemq auth_on_register: wrong password", "POST", "/hooks/vernemq",
            &[JSON, ("vernemq-hook", "auth_on_register")],
            json!({"client_id": id, "username": user, "password": "0".repeat(64)}).to_string(), error()),
        case("vernemq auth_on_publish: own topic", "POST", "/hooks/vernemq", &[JSON, ("vernemq-hook", "auth_on_publish")],
            json!({"username": user, "mountpoint": "", "client_id": id, "qos": 1, "topic": own,
                   "payload": "aGVsbG8=", "retain": false}).to_string(), ok()),
        case("vernemq auth_on_publish_m5: another's topic", "POST", "/hooks/vernemq",
            &[JSON, ("vernemq-hook", "auth_on_publish_m5")],
            json!({"username": user, "client_id": id, "qos": 0, "topic": others, "payload": "",
                   "retain": false, "properties": {}}).to_string(), error()),
        case("vernemq auth_on_publish: null user name", "POST", "/hooks/vernemq", &[JSON, ("vernemq-hook", "auth_on_publish")],
            json!({"username": null, "client_id": id, "qos": 0, "topic": own, "payload": ""}).to_string(), error()),
        case("vernemq auth_on_publish: a payload over 16 KiB", "POST", "/hooks/vernemq",
            &[JSON, ("vernemq-hook", "auth_on_publish")],
            json!({"username": user, "client_id": id, "qos": 0, "topic": own, "payload": huge}).to_string(), error()),
        case("vernemq auth_on_subscribe: own topics", "POST", "/hooks/vernemq", &[JSON, ("vernemq-hook", "auth_on_subscribe")],
            json!({"username": user, "mountpoint": "", "client_id": id,
                   "topics": [{"topic": own_filter, "qos": 1}, {"topic": own, "qos": 0}]}).to_string(), ok()),
        case("vernemq auth_on_subscribe_m5: own topic with options", "POST", "/hooks/vernemq",
            &[JSON, ("vernemq-hook", "auth_on_subscribe_m5")],
            json!({"username": user, "client_id": id, "properties": {},
                   "topics": [{"topic": own, "qos": 1, "no_local": false, "rap": false,
                               "retain_handling": "send_retain"}]}).to_string(), ok()),
        case("vernemq auth_on_subscribe: one of the topics another's", "POST", "/hooks/vernemq",
            &[JSON, ("vernemq-hook", "auth_on_subscribe")],
            json!({"username": user, "client_id": id,
                   "topics": [{"topic": own, "qos": 1}, {"topic": others, "qos": 1}]}).to_string(), error()),
        case("vernemq auth_on_subscribe: no topics", "POST", "/hooks/vernemq", &[JSON, ("vernemq-hook", "auth_on_subscribe")],
            json!({"username": user, "client_id": id, "topics": []}).to_string(), error()),
        case("vernemq auth_on_subscribe: topics not a list", "POST", "/hooks/vernemq",
            &[JSON, ("vernemq-hook", "auth_on_subscribe")],
            json!({"username": user, "client_id": id, "topics": own}).to_string(), error()),
        case("vernemq: no hook header", "POST", "/hooks/vernemq", &[JSON],
            json!({"client_id": id, "username": user, "password": pass}).to_string(), error()),
        case("vernemq: a notification hook", "POST", "/hooks/vernemq", &[JSON, ("vernemq-hook", "on_register")],
            json!({"client_id": id, "username": user}).to_string(), error()),
        case("vernemq: not JSON", "POST", "/hooks/vernemq", &[JSON, ("vernemq-hook", "auth_on_register")],
            "client_id", error()),
        // mosquitto-go-auth's HTTP backend: JSON (POST, GET or PUT: a JSON body whatever the
        // method) or form (always POST); `acc` a JSON number or a form string; response modes
        // status and text (body exactly `ok`) share a reply, json is asked for in the URI.
        case("go-auth user: JSON POST", "POST", "/hooks/go-auth/user", &[JSON],
            json!({"username": user, "password": pass, "clientid": id}).to_string(), Expect::Exactly(200, "ok")),
        case("go-auth user: JSON GET", "GET", "/hooks/go-auth/user", &[JSON],
            json!({"username": user, "password": pass, "clientid": id}).to_string(), Expect::Exactly(200, "ok")),
        case("go-auth user: JSON PUT", "PUT", "/hooks/go-auth/user", &[JSON],
            json!({"username": user, "password": pass, "clientid": id}).to_string(), Expect::Exactly(200, "ok")),
        case("go-auth user: form", "POST", "/hooks/go-auth/user", &[FORM],
            form(&[("username", user), ("password", pass), ("clientid", id)]), Expect::Exactly(200, "ok")),
        case("go-auth user: wrong password", "POST", "/hooks/go-auth/user", &[JSON],
            json!({"username": user, "password": "0".repeat(64), "clientid": id}).to_string(), Expect::Exactly(403, "denied")),
        case("go-auth user: missing client id", "POST", "/hooks/go-auth/user", &[JSON],
            json!({"username": user, "password": pass}).to_string(), Expect::Exactly(403, "denied")),
        case("go-auth user: json response mode", "POST", "/hooks/go-auth/user?response_mode=json", &[JSON],
            json!({"username": user, "password": pass, "clientid": id}).to_string(), Expect::Exactly(200, r#"{"ok":true}"#)),
        case("go-auth user: json response mode, denied", "POST", "/hooks/go-auth/user?response_mode=json", &[JSON],
            json!({"username": user, "password": "", "clientid": id}).to_string(),
            Expect::Exactly(403, r#"{"error":"denied","ok":false}"#)),
        case("go-auth user: json response mode, a repeated key", "POST", "/hooks/go-auth/user?response_mode=json", &[JSON],
            format!(r#"{{"username":"{user}","username":"{user}","password":"{pass}","clientid":"{id}"}}"#),
            Expect::Exactly(403, r#"{"error":"denied","ok":false}"#)),
        case("go-auth user: not JSON", "POST", "/hooks/go-auth/user", &[JSON], "[1,2]", Expect::Exactly(403, "denied")),
        case("go-auth superuser", "POST", "/hooks/go-auth/superuser", &[JSON],
            json!({"username": user}).to_string(), Expect::Exactly(403, "denied")),
        case("go-auth superuser: form", "POST", "/hooks/go-auth/superuser", &[FORM],
            form(&[("username", user)]), Expect::Exactly(403, "denied")),
        case("go-auth acl: acc 1 (read) own filter", "POST", "/hooks/go-auth/acl", &[JSON],
            json!({"username": user, "clientid": id, "topic": own_filter, "acc": 1}).to_string(), Expect::Exactly(200, "ok")),
        case("go-auth acl: acc 2 (write) own topic", "POST", "/hooks/go-auth/acl", &[JSON],
            json!({"username": user, "clientid": id, "topic": own, "acc": 2}).to_string(), Expect::Exactly(200, "ok")),
        case("go-auth acl: acc 3 (read and write) own topic", "POST", "/hooks/go-auth/acl", &[JSON],
            json!({"username": user, "clientid": id, "topic": own, "acc": 3}).to_string(), Expect::Exactly(200, "ok")),
        case("go-auth acl: acc 4 (subscribe) another's topic", "POST", "/hooks/go-auth/acl", &[JSON],
            json!({"username": user, "clientid": id, "topic": others, "acc": 4}).to_string(), Expect::Exactly(403, "denied")),
        case("go-auth acl: form, acc as text", "POST", "/hooks/go-auth/acl", &[FORM],
            form(&[("username", user), ("clientid", id), ("topic", &own), ("acc", "2")]), Expect::Exactly(200, "ok")),
        case("go-auth acl: acc 0", "POST", "/hooks/go-auth/acl", &[JSON],
            json!({"username": user, "clientid": id, "topic": own, "acc": 0}).to_string(), Expect::Exactly(403, "denied")),
        case("go-auth acl: no acc", "POST", "/hooks/go-auth/acl", &[JSON],
            json!({"username": user, "clientid": id, "topic": own}).to_string(), Expect::Exactly(403, "denied")),
        case("go-auth acl: json response mode", "POST", "/hooks/go-auth/acl?response_mode=json", &[JSON],
            json!({"username": user, "clientid": id, "topic": own, "acc": 2}).to_string(), Expect::Exactly(200, r#"{"ok":true}"#)),
        case("go-auth acl: a topic over 16 KiB", "POST", "/hooks/go-auth/acl", &[JSON],
            json!({"username": user, "clientid": id, "topic": format!("{own}/{huge}"), "acc": 2}).to_string(),
            Expect::Exactly(403, "denied")),
    ];
    // The routes that are not hooks refuse a body over 16 KiB with its status.
    rows.push(case(
        "registration: a body over 16 KiB",
        "POST",
        "/auth/register/device",
        &[FORM],
        format!("productKey={huge}"),
        Expect::Exactly(413, "the request body is over the size limit\n"),
    ));
    // Every EMQX and go-auth route takes GET, POST and PUT; nothing else a broker sends.
    rows.push(case(
        "emqx authz: DELETE is not a broker's",
        "DELETE",
        "/hooks/emqx/authz",
        &[],
        "",
        Expect::Exactly(405, ""),
    ));
    rows
}

#[test]
fn every_request_shape_of_every_broker_gets_an_answer_inside_its_contract() {
    let dir = Dir::new("hooks-contract");
    let store = format!("sqlite://{}", dir.0.join("iotauth.db").display());
    let fleet = Fleet::new(store.clone());
    let secret = fleet.device("meter-01");
    fleet.device("meter-02");
    let login = sign_login(&fleet.pk, "meter-01", &secret, "meter-01");
    let server = Server::start(&store, dir.0.join("serve.log"), &[]);
    let mut failures = Vec::new();
    let rows = matrix(&fleet.pk, &login);
    for row in &rows {
        let (status, body) =
            http_request(server.http, row.method, &row.path, &row.body, &row.headers)
                .unwrap_or_else(|e| panic!("{}: {e}", row.name));
        let fits = match &row.expect {
            Expect::Result(want_status, want) => {
                let result = serde_json::from_str::<Value>(&body)
                    .map(|reply| reply["result"].clone())
                    .unwrap_or_default();
                status == *want_status && result == *want
            }
            Expect::Exactly(want_status, want) => status == *want_status && body == *want,
        };
        if !fits {
            failures.push(format!("{}: got {status} {body:?}", row.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
    server.assert_log_clean(&[secret, login[2].clone()]);
}

/// A hook request whose body does not arrive within the handshake limit is a deny in the
/// dialect, and the connection closes; the registration route answers 408.
#[test]
fn a_slow_body_is_denied_by_a_hook_and_408_elsewhere() {
    use std::io::{Read, Write};
    let dir = Dir::new("hooks-slow-body");
    let store = format!("sqlite://{}", dir.0.join("iotauth.db").display());
    Fleet::new(store.clone());
    let server = Server::start(
        &store,
        dir.0.join("serve.log"),
        &["--handshake-timeout-secs", "1"],
    );
    for (path, status, body) in [
        ("/hooks/emqx/authz", "200", r#"{"result":"deny"}"#),
        ("/hooks/go-auth/acl", "403", "denied"),
        (
            "/auth/register/device",
            "408",
            "the request body did not arrive in time\n",
        ),
    ] {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", server.http)).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\nvernemq-hook: auth_on_publish\r\n\
             content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"username\""
        );
        stream.write_all(head.as_bytes()).unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        assert!(
            reply.starts_with(&format!("HTTP/1.1 {status} ")),
            "{path}: {reply}"
        );
        assert!(reply.contains("Connection: close"), "{path}: {reply}");
        assert!(reply.ends_with(body), "{path}: {reply}");
    }
}
