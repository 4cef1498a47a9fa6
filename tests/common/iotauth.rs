//! The `iotauth` binary and the environment, for the end-to-end tests (included by
//! tests/serve_e2e.rs and tests/mosquitto_plugin.rs).

use std::process::Command;

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_iotauth");

/// Runs `iotauth ARGS…`, which must succeed; its JSON output. A failure names `what`
/// (never the arguments themselves when they carry a secret).
fn run_json(what: &str, args: &[&str]) -> Value {
    run_json_of(what, Command::new(BIN).args(args))
}

fn run_json_of(what: &str, command: &mut Command) -> Value {
    let out = command.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs `iotauth --store STORE ARGS…`, which must succeed; its JSON output.
pub fn cli(store: &str, args: &[&str]) -> Value {
    let mut command = Command::new(BIN);
    command.args(["--store", store]).args(args);
    run_json_of(&format!("{args:?}"), with_key_for(&mut command, store))
}

/// `command` with the master key of the store at `store`: for PostgreSQL, the key
/// `.ci/postgres.sh` made for its cluster (`IOTAUTH_TEST_MASTER_KEY_FILE`); a SQLite store
/// seals under the key file beside it, as an operator's default would (and as the Mosquitto
/// plugin, which reads no environment, finds it).
pub fn with_key_for<'c>(command: &'c mut Command, store: &str) -> &'c mut Command {
    match std::env::var_os("IOTAUTH_TEST_MASTER_KEY_FILE") {
        Some(key) if store.starts_with("postgres") => command.env("IOTAUTH_MASTER_KEY_FILE", key),
        _ => command.env_remove("IOTAUTH_MASTER_KEY_FILE"),
    }
}

/// Client id, user name and password of a login signed by `iotauth sign mqtt`.
pub fn sign_login(pk: &str, name: &str, secret: &str, core: &str) -> [String; 3] {
    let signed = run_json(
        "sign mqtt",
        &[
            "sign",
            "mqtt",
            "--product-key",
            pk,
            "--device-name",
            name,
            "--device-secret",
            secret,
            "--client-id",
            core,
            "--secure-mode",
            "3",
        ],
    );
    ["clientId", "username", "password"].map(|k| signed[k].as_str().unwrap().to_owned())
}

/// The environment variable `.ci/run` sets for a test's outside dependency. Without it, a test
/// skips with a printed reason locally, and fails under `CI=true`: CI never skips silently.
pub fn required_env(name: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => Some(value),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI=true but {name} is not set")
        }
        _ => {
            eprintln!("skipping: {name} is not set (.ci/run sets it up)");
            None
        }
    }
}

/// `mosquitto_sub` on 127.0.0.1:`port` with `login`, waiting up to `wait_secs` for one message
/// on `topic`; its stdout is piped. The caller gives it a moment to subscribe.
pub fn spawn_subscriber(
    port: u16,
    login: &[String; 3],
    topic: &str,
    wait_secs: u32,
) -> std::process::Child {
    mosquitto_client("mosquitto_sub", port, login)
        .args(["-t", topic, "-C", "1", "-W", &wait_secs.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("mosquitto_sub (Debian's mosquitto-clients) must be installed")
}

/// `tool` (`mosquitto_pub` or `mosquitto_sub`, from Debian's mosquitto-clients) for
/// 127.0.0.1:`port`, logging in with `login` (client id, user name, password).
pub fn mosquitto_client(tool: &str, port: u16, [id, user, password]: &[String; 3]) -> Command {
    let mut command = Command::new(tool);
    command.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-i",
        id,
        "-u",
        user,
        "-P",
        password,
    ]);
    command
}

/// The JSON object a script printed as its last line of stdout; panics with both streams
/// when there is none.
pub fn last_line_json(out: &std::process::Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap_or_else(|_| {
        panic!(
            "stdout {stdout:?} stderr {:?}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}
