//! `iotauth`: sign and verify Alibaba-compatible device credentials from the command line.
//!
//! Contract: JSON on stdout; errors as one line `error: …` on stderr; exit 0 = ok / accepted,
//! 1 = rejected / failed, 2 = usage. No output ever contains a secret, nor (from `verify`)
//! the offered password or sign.

mod admin;
mod audit;
mod import;
mod progress;
mod send;
mod serve;

use std::borrow::Cow;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use iotauth::store::{Actor, SecretsAtRest};
use iotauth::{
    Clock, ConnectKind, ConnectRequest, DeviceCertificate, DeviceName, DeviceSecret, DeviceToken,
    Entropy, FixedClock, Freshness, IssuedClientId, LoginOptions, OsEntropy, ProductCertificate,
    ProductKey, ProductSecret, RegisterForm, RegisterOptions, RegisterReply, SecureMode,
    SignMethod, SystemClock, UnixMillis, build_login, build_register_connect, build_register_form,
    build_token_login, registration_random,
};
use std::io::Write as _;

use serde::{Deserialize, Serialize};

const DEVICE_SECRET_ENV: &str = "IOTAUTH_DEVICE_SECRET";
const PRODUCT_SECRET_ENV: &str = "IOTAUTH_PRODUCT_SECRET";
const DEVICE_TOKEN_ENV: &str = "IOTAUTH_DEVICE_TOKEN";
const DEFAULT_STORE: &str = "sqlite://iotauth.db";

#[derive(Parser)]
#[command(
    name = "iotauth",
    version,
    about = "Alibaba Cloud IoT compatible device authentication"
)]
struct Cli {
    /// The store: sqlite://PATH, postgres://… or memory: [default: sqlite://iotauth.db]
    // The URL may hold a database password: its environment value is never shown in help.
    #[arg(long, global = true, env = "IOTAUTH_STORE", hide_env_values = true)]
    store: Option<String>,
    /// The master key file secrets are sealed under: 64 hex digits (`openssl rand -hex 32`),
    /// mode 0600 [default for sqlite://PATH: PATH.key, created with a new store; PostgreSQL
    /// requires one]
    #[arg(long, global = true, env = "IOTAUTH_MASTER_KEY_FILE")]
    master_key_file: Option<String>,
    /// An older master key file whose sealed secrets still open, while the store is re-sealed
    /// under a new one (repeatable; the environment variable names one file)
    #[arg(long, global = true, env = "IOTAUTH_PREVIOUS_KEY_FILE")]
    previous_key_file: Vec<String>,
    /// Keep secrets in clear in a store without a key: a dump of the database is then every
    /// device's credentials
    #[arg(long, global = true)]
    insecure_plaintext_secrets: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a device's credentials (the device side).
    #[command(subcommand)]
    Sign(SignCommand),
    /// Check a device's credentials offline (the server side).
    #[command(subcommand)]
    Verify(VerifyCommand),
    /// Serve registration, broker hooks and (optionally) an MQTT broker on the store.
    Serve(serve::Serve),
    /// Administer the store's products.
    #[command(subcommand)]
    Product(admin::ProductCommand),
    /// Administer the store's devices.
    #[command(subcommand)]
    Device(admin::DeviceCommand),
    /// Operate on the store itself.
    #[command(subcommand)]
    Store(admin::StoreCommand),
    /// Check the store's lifecycle event log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Print the store's lifecycle events as JSON lines.
    Events(audit::Events),
}

#[derive(Subcommand)]
enum SignCommand {
    /// MQTT CONNECT client id, user name and password of a per-device login.
    Mqtt(SignMqtt),
    /// The HTTPS dynamic-registration form of a per-product certificate.
    Register(SignRegister),
}

#[derive(Subcommand)]
enum VerifyCommand {
    /// An MQTT CONNECT: a login, a registration connect or a token login.
    Mqtt(VerifyMqtt),
    /// An HTTPS dynamic-registration form body.
    Register(VerifyRegister),
}

#[derive(Args)]
struct SignMqtt {
    #[arg(long)]
    product_key: ProductKey,
    #[arg(long)]
    device_name: DeviceName,
    /// What the CONNECT is: a per-device login (signed with the DeviceSecret), a dynamic
    /// registration of a pre-registered device (register) or one without pre-registration
    /// (regnwl), both signed with the ProductSecret over --random, or a token login (connwl:
    /// --client-id is the issued ClientID, the password the token).
    #[arg(long, value_enum, default_value = "login")]
    auth_type: AuthType,
    /// The DeviceSecret (the environment keeps it out of `ps`).
    #[arg(long, env = DEVICE_SECRET_ENV, hide_env_values = true)]
    device_secret: Option<String>,
    /// register, regnwl: the ProductSecret.
    #[arg(long, env = PRODUCT_SECRET_ENV, hide_env_values = true)]
    product_secret: Option<String>,
    /// register, regnwl: `random` [default: a random decimal number, as Link SDK 4.x sends].
    #[arg(long)]
    random: Option<String>,
    /// connwl: the DeviceToken.
    #[arg(long, env = DEVICE_TOKEN_ENV, hide_env_values = true)]
    device_token: Option<String>,
    /// The client-id CORE, signed exactly as given [default: PK.DN]; for connwl, the ClientID.
    #[arg(long)]
    client_id: Option<String>,
    /// `timestamp`, decimal digits (none by default).
    #[arg(long)]
    timestamp: Option<String>,
    /// hmacmd5, hmacsha1 or hmacsha256.
    #[arg(long, default_value = "hmacsha256", value_parser = parse_sign_method)]
    sign_method: SignMethod,
    /// securemode: -2, -1, 0, 1, 2, 3, 4, 5, 7 or 8.
    #[arg(long, default_value_t = 2, allow_negative_numbers = true)]
    secure_mode: i8,
    /// Connect to this broker (mqtt://HOST[:1883] or mqtts://HOST[:8883]) instead of printing
    /// the credentials: a login prints `{"connected":true}`; register and regnwl print what
    /// the broker delivers on /ext/register or /ext/regnwl. Refused: exit 1.
    #[arg(long)]
    url: Option<String>,
    /// With an mqtts:// --url: CA certificates (PEM) to trust besides the system's.
    #[arg(long, requires = "url")]
    cafile: Option<PathBuf>,
}

/// `sign mqtt --auth-type`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum AuthType {
    /// A per-device login (no `authType`).
    Login,
    /// MQTT dynamic registration of a pre-registered device: the DeviceSecret on /ext/register.
    Register,
    /// Registration without pre-registration.
    Regnwl,
    /// A token login.
    Connwl,
}

#[derive(Args)]
struct SignRegister {
    #[arg(long)]
    product_key: ProductKey,
    #[arg(long)]
    device_name: DeviceName,
    /// The ProductSecret.
    #[arg(long, env = PRODUCT_SECRET_ENV, hide_env_values = true)]
    product_secret: Option<String>,
    /// `random`, 1-64 printable characters [default: 15 random letters and digits].
    #[arg(long)]
    random: Option<String>,
    /// hmacmd5, hmacsha1 or hmacsha256.
    #[arg(long, default_value = "hmacsha256", value_parser = parse_sign_method)]
    sign_method: SignMethod,
    /// POST the form to this URL (https://HOST/auth/register/device) instead of printing it,
    /// and print the issued `{"productKey","deviceName","deviceSecret"}`; refused: exit 1.
    #[arg(long)]
    url: Option<String>,
    /// With an https:// --url: CA certificates (PEM) to trust besides the system's.
    #[arg(long, requires = "url")]
    cafile: Option<PathBuf>,
}

#[derive(Args)]
struct VerifyMqtt {
    #[arg(long)]
    client_id: String,
    #[arg(long)]
    username: String,
    #[arg(long)]
    password: String,
    /// For a login.
    #[arg(long, env = DEVICE_SECRET_ENV, hide_env_values = true)]
    device_secret: Option<String>,
    /// For a registration connect (authType=register|regnwl).
    #[arg(long, env = PRODUCT_SECRET_ENV, hide_env_values = true)]
    product_secret: Option<String>,
    /// For a token login (authType=connwl).
    #[arg(long, env = DEVICE_TOKEN_ENV, hide_env_values = true)]
    device_token: Option<String>,
    /// Now, in Unix milliseconds, for the freshness window [default: the system clock].
    #[arg(long, requires = "max_skew_secs")]
    now: Option<u64>,
    /// Enforce a freshness window of this many seconds around now.
    #[arg(long)]
    max_skew_secs: Option<u64>,
}

#[derive(Args)]
struct VerifyRegister {
    /// The urlencoded body.
    #[arg(long)]
    form: String,
    /// The ProductSecret.
    #[arg(long, env = PRODUCT_SECRET_ENV, hide_env_values = true)]
    product_secret: Option<String>,
}

fn parse_sign_method(name: &str) -> Result<SignMethod, String> {
    SignMethod::from_name(name).ok_or_else(|| "expected hmacmd5, hmacsha1 or hmacsha256".into())
}

/// A failure, and the exit code it maps to.
pub(crate) enum Failure {
    /// Exit 1: the credentials were rejected, or the input was refused; printed with its
    /// causes on one line (an outage's cause is what an operator needs).
    Rejected(Box<dyn std::error::Error + Send + Sync>),
    /// Exit 2: the command line is incomplete.
    Usage(String),
}

impl Failure {
    /// Exit 1 with `error`: an error value, or a message.
    pub(crate) fn rejected(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Rejected(error.into())
    }
}

/// Refused with the error itself, its causes kept for the message.
macro_rules! rejected_from {
    ($($error:ty),*) => {$(
        impl From<$error> for Failure {
            fn from(e: $error) -> Self {
                Self::Rejected(Box::new(e))
            }
        }
    )*};
}

rejected_from!(
    iotauth::ParseError,
    iotauth::VerifyError,
    iotauth::EntropyError,
    iotauth::service::AdminError,
    iotauth::service::ImportError,
    iotauth::store::StoreError,
    serde_json::Error
);

/// `value` unless it is empty: an empty environment variable counts as unset (clap's `env`
/// would take it as a value).
fn given(value: Option<String>) -> Option<String> {
    value.filter(|value| !value.is_empty())
}

/// `value` (the flag's, or clap's reading of the environment variable `env`), else a usage
/// error naming both.
fn required(value: Option<String>, env: &str, flag: &str) -> Result<String, Failure> {
    given(value).ok_or_else(|| Failure::Usage(format!("{flag} is required (or set {env})")))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SignedMqtt<'a> {
    client_id: &'a str,
    username: &'a str,
    password: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SignedRegister<'a> {
    product_key: ProductKey,
    device_name: DeviceName,
    random: &'a str,
    sign: &'a str,
    sign_method: &'a str,
    form: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct VerifiedMqtt<'a> {
    product_key: ProductKey,
    device_name: DeviceName,
    client_id: &'a str,
    sign_method: Option<&'a str>,
    secure_mode: i8,
    timestamp: Option<&'a str>,
    auth_type: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct VerifiedRegister<'a> {
    product_key: ProductKey,
    device_name: DeviceName,
    random: &'a str,
    sign_method: &'a str,
}

/// `value` as one JSON line on stdout; a closed stdout is a failure (exit 1), not a panic.
pub(crate) fn print_json(value: &impl Serialize) -> Result<(), Failure> {
    let line = serde_json::to_string(value)?;
    writeln!(std::io::stdout().lock(), "{line}")
        .map_err(|e| Failure::rejected(format!("cannot write the result: {e}")))
}

fn sign_mqtt(args: SignMqtt) -> Result<(), Failure> {
    let creds = match args.auth_type {
        AuthType::Login => {
            let secret = required(args.device_secret, DEVICE_SECRET_ENV, "--device-secret")?;
            let cert = DeviceCertificate::new(
                args.product_key,
                args.device_name,
                DeviceSecret::new(&secret)?,
            );
            build_login(
                &cert,
                &LoginOptions::default()
                    .with_client_id(args.client_id.as_deref())
                    .with_timestamp(args.timestamp.as_deref())
                    .with_sign_method(args.sign_method)
                    .with_secure_mode(SecureMode::new(args.secure_mode)?),
            )?
        }
        AuthType::Register | AuthType::Regnwl => {
            let secret = required(args.product_secret, PRODUCT_SECRET_ENV, "--product-secret")?;
            let cert = ProductCertificate::new(args.product_key, ProductSecret::new(&secret)?);
            let random = match args.random {
                Some(random) => random,
                None => {
                    let mut bytes = [0u8; 4];
                    OsEntropy.fill(&mut bytes)?;
                    u32::from_le_bytes(bytes).to_string()
                }
            };
            let kind = match args.auth_type {
                AuthType::Register => ConnectKind::Register,
                _ => ConnectKind::RegisterNoPreregistration,
            };
            let options = RegisterOptions::new(kind, &random)
                .with_sign_method(args.sign_method)
                .with_secure_mode(SecureMode::new(args.secure_mode)?);
            build_register_connect(&cert, args.device_name, &options)?
        }
        AuthType::Connwl => {
            let token = required(args.device_token, DEVICE_TOKEN_ENV, "--device-token")?;
            let client_id = args
                .client_id
                .ok_or_else(|| Failure::Usage("connwl needs --client-id (the ClientID)".into()))?;
            build_token_login(
                args.product_key,
                args.device_name,
                IssuedClientId::new(&client_id)?,
                &DeviceToken::new(&token)?,
            )
        }
    };
    if let Some(url) = args.url {
        let delivery = match args.auth_type {
            AuthType::Register => Some("/ext/register"),
            AuthType::Regnwl => Some("/ext/regnwl"),
            _ => None,
        };
        return match send::mqtt_connect(&url, args.cafile.as_deref(), &creds, delivery)? {
            Some(payload) => print_delivery(&payload, args.product_key, args.device_name),
            None => print_json(&serde_json::json!({"connected": true})),
        };
    }
    print_json(&SignedMqtt {
        client_id: creds.client_id(),
        username: creds.username(),
        password: &creds.expose_password(),
    })
}

/// What a registration sent with `--url` obtained, as it is printed: the device's own
/// DeviceSecret (HTTPS, or MQTT's `/ext/register`), or its ClientID and DeviceToken (MQTT's
/// `/ext/regnwl`), for its provisioning. Also how a broker's delivery is read.
#[derive(Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct Delivery<'a> {
    #[serde(borrow)]
    product_key: Cow<'a, str>,
    #[serde(borrow)]
    device_name: Cow<'a, str>,
    #[serde(borrow, skip_serializing_if = "Option::is_none")]
    device_secret: Option<Cow<'a, str>>,
    #[serde(borrow, skip_serializing_if = "Option::is_none")]
    client_id: Option<Cow<'a, str>>,
    #[serde(borrow, skip_serializing_if = "Option::is_none")]
    device_token: Option<Cow<'a, str>>,
}

fn print_delivery(
    payload: &[u8],
    product_key: ProductKey,
    device_name: DeviceName,
) -> Result<(), Failure> {
    let unreadable = || Failure::rejected("the broker's delivery is not a registration's");
    let delivery: Delivery = serde_json::from_slice(payload).map_err(|_| unreadable())?;
    if (&*delivery.product_key, &*delivery.device_name)
        != (product_key.as_str(), device_name.as_str())
    {
        return Err(Failure::rejected("the broker delivered for another device"));
    }
    match (
        &delivery.device_secret,
        &delivery.client_id,
        &delivery.device_token,
    ) {
        (Some(secret), None, None) => {
            DeviceSecret::new(secret)?;
        }
        (None, Some(client_id), Some(token)) => {
            IssuedClientId::new(client_id)?;
            DeviceToken::new(token)?;
        }
        _ => return Err(unreadable()),
    }
    print_json(&delivery)
}

/// A server's refusal message without the characters that could disguise it on a terminal
/// (bidirectional overrides, invisible ones).
fn printable(message: &str) -> String {
    message
        .chars()
        .filter(|c| {
            !c.is_control()
                && !matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{206f}' | '\u{feff}')
        })
        .collect()
}

fn sign_register(args: SignRegister) -> Result<(), Failure> {
    let secret = required(args.product_secret, PRODUCT_SECRET_ENV, "--product-secret")?;
    let cert = ProductCertificate::new(args.product_key, ProductSecret::new(&secret)?);
    let random = match args.random {
        Some(random) => random,
        None => registration_random(&OsEntropy)?,
    };
    let form = build_register_form(&cert, args.device_name, &random, args.sign_method)?;
    if let Some(url) = args.url {
        return match send::post_register_form(&url, args.cafile.as_deref(), form.body())? {
            RegisterReply::Issued {
                product_key,
                device_name,
                device_secret,
            } if (product_key, device_name) == (args.product_key, args.device_name) => {
                print_json(&Delivery {
                    product_key: product_key.as_str().into(),
                    device_name: device_name.as_str().into(),
                    device_secret: Some(device_secret.expose_secret().into()),
                    client_id: None,
                    device_token: None,
                })
            }
            RegisterReply::Issued { .. } => Err(Failure::rejected(
                "the server issued a secret for another device",
            )),
            RegisterReply::Refused { code, message } => Err(Failure::rejected(format!(
                "registration refused: {code} {}",
                printable(&message)
            ))),
            _ => Err(Failure::rejected("a reply this version does not know")),
        };
    }
    print_json(&SignedRegister {
        product_key: args.product_key,
        device_name: args.device_name,
        random: &random,
        sign: &form.expose_sign(),
        sign_method: args.sign_method.name(),
        form: form.body(),
    })
}

/// The secret flags of `verify mqtt` given on the command line (clap also reads their
/// environment variables, which do not count).
fn command_line_secrets(matches: &ArgMatches) -> Vec<&'static str> {
    let Some(verify) = matches
        .subcommand_matches("verify")
        .and_then(|verify| verify.subcommand_matches("mqtt"))
    else {
        return Vec::new();
    };
    ["device_secret", "product_secret", "device_token"]
        .into_iter()
        .filter(|id| verify.value_source(id) == Some(ValueSource::CommandLine))
        .collect()
}

fn verify_mqtt(args: VerifyMqtt, matches: &ArgMatches) -> Result<(), Failure> {
    let explicit = command_line_secrets(matches);
    if explicit.len() > 1 {
        return Err(Failure::Usage(
            "--device-secret, --product-secret and --device-token exclude one another".into(),
        ));
    }
    let request = ConnectRequest::parse(&args.client_id, &args.username, &args.password)?;
    // A flag on the command line is used as given (a mismatch with the client id is a
    // rejection); otherwise the environment's secret that fits the client id's kind.
    let (device_secret, product_secret, device_token) = match explicit[..] {
        [] => match request.kind() {
            ConnectKind::Login => (
                Some(required(
                    args.device_secret,
                    DEVICE_SECRET_ENV,
                    "--device-secret",
                )?),
                None,
                None,
            ),
            ConnectKind::TokenLogin => (
                None,
                None,
                Some(required(
                    args.device_token,
                    DEVICE_TOKEN_ENV,
                    "--device-token",
                )?),
            ),
            _ => (
                None,
                Some(required(
                    args.product_secret,
                    PRODUCT_SECRET_ENV,
                    "--product-secret",
                )?),
                None,
            ),
        },
        ["device_secret"] => (args.device_secret, None, None),
        ["product_secret"] => (None, args.product_secret, None),
        _ => (None, None, args.device_token),
    };
    let freshness = match args.max_skew_secs {
        Some(max_skew_secs) => Freshness::Window { max_skew_secs },
        None => Freshness::Unchecked,
    };
    let now = match args.now {
        Some(ms) => FixedClock(UnixMillis(ms)).now(),
        None => SystemClock.now(),
    };
    let identity = if let Some(secret) = device_secret {
        request.verify_login(&DeviceSecret::new(&secret)?, freshness, now)?
    } else if let Some(secret) = product_secret {
        request.verify_registration(&ProductSecret::new(&secret)?)?
    } else if let Some(token) = device_token {
        request.verify_token(&DeviceToken::new(&token)?)?
    } else {
        return Err(Failure::Usage(
            "one of --device-secret, --product-secret, --device-token is required".into(),
        ));
    };
    let client_id = request.client_id();
    print_json(&VerifiedMqtt {
        product_key: identity.product_key(),
        device_name: identity.device_name(),
        client_id: client_id.core(),
        sign_method: request
            .sign_content()
            .map(|_| client_id.sign_method().name()),
        secure_mode: client_id.secure_mode().get(),
        timestamp: client_id.timestamp(),
        auth_type: request.kind().auth_type(),
    })
}

fn verify_register(args: VerifyRegister) -> Result<(), Failure> {
    let secret = required(args.product_secret, PRODUCT_SECRET_ENV, "--product-secret")?;
    let form = RegisterForm::parse(args.form.as_bytes())?;
    let identity = form.verify(&ProductSecret::new(&secret)?)?;
    print_json(&VerifiedRegister {
        product_key: identity.product_key(),
        device_name: identity.device_name(),
        random: form.random(),
        sign_method: form.sign_method().name(),
    })
}

/// The log filter for `RUST_LOG`: only this crate's own records go below info, whatever is
/// asked (below it the libraries print whole packets and frames: the broker library, its
/// WebSocket layer; among them a `connwl` password, which is a DeviceToken, and a
/// registration's secret); a global `debug` or `trace` applies to this crate alone. The
/// broker library is held at warnings but for its listener loop (accept errors such as
/// EMFILE, once per 1 s pause, and a line per failed connection).
fn log_filter(requested: &str) -> tracing_subscriber::EnvFilter {
    const VERBOSE: [&str; 2] = ["debug", "trace"];
    let mut directives = vec!["info".to_owned()];
    for directive in requested
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
    {
        let (target, level) = match directive.rsplit_once('=') {
            Some((target, level)) => (Some(target), level),
            None if directive
                .parse::<tracing_subscriber::filter::LevelFilter>()
                .is_ok() =>
            {
                (None, directive)
            }
            None => (Some(directive), "trace"),
        };
        let verbose = VERBOSE.contains(&level.to_ascii_lowercase().as_str());
        match target {
            Some(target) if target.starts_with("iotauth") => directives.push(directive.to_owned()),
            Some(target) if verbose => directives.push(format!("{target}=info")),
            Some(_) => directives.push(directive.to_owned()),
            None if verbose => directives.extend(["info".to_owned(), format!("iotauth={level}")]),
            None => directives.push(directive.to_owned()),
        }
    }
    directives.extend(
        [
            "rmqtt=warn",
            "rmqtt::server=info",
            "rmqtt_net=warn",
            "rmqtt_codec=warn",
        ]
        .map(String::from),
    );
    tracing_subscriber::EnvFilter::new(directives.join(","))
}

/// Runs the server on a multi-threaded runtime, logging to stderr (`RUST_LOG`, default info,
/// see [`log_filter`]).
fn serve_until_stopped(
    url: &str,
    secrets: SecretsAtRest,
    args: serve::Serve,
) -> Result<(), Failure> {
    let requested = std::env::var("RUST_LOG").unwrap_or_default();
    tracing_subscriber::fmt()
        .with_env_filter(log_filter(&requested))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::rejected(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(serve::serve(url, secrets, args))
}

/// Refuses a SQLite store that does not exist, for commands that only read it: a mistyped path
/// would create an empty store, whose empty log verifies.
fn existing_store(url: &str) -> Result<(), Failure> {
    match iotauth::store::SqlStore::sqlite_file(url) {
        Some(database) if !database.exists() => Err(Failure::rejected(format!(
            "no store at {}",
            database.display()
        ))),
        _ => Ok(()),
    }
}

/// The runtime of a command that is not a server: one thread, timers and I/O on.
pub(crate) fn current_thread_runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::rejected(format!("cannot start the runtime: {e}")))
}

/// Opens the store and runs `command` on it, on a single-threaded runtime; warnings (a key
/// file created) go to stderr.
fn with_store<F, Fut>(url: &str, secrets: &SecretsAtRest, command: F) -> Result<(), Failure>
where
    F: FnOnce(std::sync::Arc<dyn iotauth::store::Store>) -> Fut,
    Fut: std::future::Future<Output = Result<(), Failure>>,
{
    let runtime = current_thread_runtime()?;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    runtime.block_on(async {
        let store = iotauth::store::open_with(url, secrets, Actor::cli()).await?;
        command(store).await
    })
}

fn main() -> ExitCode {
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|matches| Ok((Cli::from_arg_matches(&matches)?, matches)));
    let (cli, matches) = match parsed {
        Ok(parsed) => parsed,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = write!(std::io::stdout().lock(), "{e}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line: clap's first paragraph, without its usage and tips.
            let text = e.to_string();
            let first = text.split("\n\n").next().unwrap_or_default();
            let line = first.split_whitespace().collect::<Vec<_>>().join(" ");
            eprintln!("error: {}", line.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    // An empty IOTAUTH_STORE counts as unset.
    let store_url = given(cli.store).unwrap_or_else(|| DEFAULT_STORE.to_owned());
    let mut secrets = SecretsAtRest::default();
    // Clap reads the key files' environment variables too: keeping secrets in clear overrides
    // them, and conflicts only with key files on the command line.
    if cli.insecure_plaintext_secrets {
        for (id, flag) in [
            ("master_key_file", "--master-key-file"),
            ("previous_key_file", "--previous-key-file"),
        ] {
            if matches.value_source(id) == Some(ValueSource::CommandLine) {
                eprintln!("error: --insecure-plaintext-secrets cannot be used with {flag}");
                return ExitCode::from(2);
            }
        }
    } else {
        secrets.master_key_file = given(cli.master_key_file).map(PathBuf::from);
        secrets.previous_key_files = cli
            .previous_key_file
            .into_iter()
            .filter_map(|file| given(Some(file)))
            .map(PathBuf::from)
            .collect();
    }
    secrets.insecure_plaintext = cli.insecure_plaintext_secrets;
    let outcome = match cli.command {
        Command::Sign(SignCommand::Mqtt(args)) => sign_mqtt(args),
        Command::Sign(SignCommand::Register(args)) => sign_register(args),
        Command::Verify(VerifyCommand::Mqtt(args)) => verify_mqtt(args, &matches),
        Command::Verify(VerifyCommand::Register(args)) => verify_register(args),
        Command::Serve(args) => serve_until_stopped(&store_url, secrets, args),
        Command::Product(command) => {
            with_store(&store_url, &secrets, |store| admin::product(store, command))
        }
        Command::Device(command) => {
            with_store(&store_url, &secrets, |store| admin::device(store, command))
        }
        Command::Store(command) => admin::store(&store_url, secrets, command),
        Command::Audit(command) => existing_store(&store_url)
            .and_then(|()| with_store(&store_url, &secrets, |store| audit::audit(store, command))),
        Command::Events(args) => existing_store(&store_url)
            .and_then(|()| with_store(&store_url, &secrets, |store| audit::events(store, args))),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Rejected(error)) => {
            eprintln!("error: {}", iotauth::ErrorChain(&*error));
            ExitCode::from(1)
        }
        Err(Failure::Usage(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::log_filter;

    /// The directives `log_filter` builds, as `EnvFilter` prints them.
    fn directives(requested: &str) -> Vec<String> {
        log_filter(requested)
            .to_string()
            .split(',')
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn only_iotauth_goes_below_info() {
        let trace = directives("trace");
        assert!(trace.contains(&"iotauth=trace".to_owned()), "{trace:?}");
        assert!(!trace.contains(&"trace".to_owned()), "{trace:?}");
        let libraries = directives("rmqtt::session=debug,tungstenite=trace,sqlx=warn");
        for expected in ["rmqtt::session=info", "tungstenite=info", "sqlx=warn"] {
            assert!(libraries.contains(&expected.to_owned()), "{libraries:?}");
        }
        assert!(directives("iotauth::broker=trace").contains(&"iotauth::broker=trace".to_owned()));
    }

    #[test]
    fn the_broker_library_stays_at_warnings_but_for_its_listener_loop() {
        let default = directives("");
        for expected in ["info", "rmqtt=warn", "rmqtt::server=info"] {
            assert!(default.contains(&expected.to_owned()), "{default:?}");
        }
    }
}
