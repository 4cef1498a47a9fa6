//! The services end to end on the memory store: every refusal reason and its code, the MQTT
//! registration path, outages reported as outages, freshness on an injected clock.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use iotauth::service::*;
use iotauth::store::*;
use iotauth::*;

struct Fleet {
    store: Arc<MemoryStore>,
    admin: Admin<Arc<MemoryStore>>,
    product: ProductRecord,
}

impl Fleet {
    async fn new(switch: DynamicRegistration) -> Self {
        let store = Arc::new(MemoryStore::new());
        let admin = Admin::new(store.clone());
        let product = admin.create_product(None, switch).await.unwrap();
        Self {
            store,
            admin,
            product,
        }
    }

    async fn device(&self, name: &str) -> DeviceRecord {
        self.admin
            .register_device(self.product.product_key, DeviceName::new(name).unwrap())
            .await
            .unwrap()
    }

    fn product_cert(&self) -> ProductCertificate {
        ProductCertificate::new(
            self.product.product_key,
            self.product.product_secret.clone_secret(),
        )
    }

    fn form(&self, name: &str) -> String {
        let dn = DeviceName::new(name).unwrap();
        build_register_form(
            &self.product_cert(),
            dn,
            "0123456789abcde",
            SignMethod::HmacSha256,
        )
        .unwrap()
        .body()
        .to_owned()
    }

    async fn register(&self, name: &str) -> Result<IssuedSecret, RegisterError> {
        Registrar::new(self.store.clone())
            .register_form(self.form(name).as_bytes())
            .await
    }
}

fn cert_of(device: &DeviceRecord) -> DeviceCertificate {
    DeviceCertificate::new(
        device.product_key,
        device.device_name,
        device.device_secret.clone_secret(),
    )
}

#[tokio::test]
async fn success_reply_has_alibabas_shape_and_parses_back_on_the_device() {
    let fleet = Fleet::new(DynamicRegistration::On).await;
    let device = fleet.device("reply-dev").await;
    let json = fleet
        .register("reply-dev")
        .await
        .unwrap()
        .into_reply()
        .to_json_exposing_secret();
    let expected = format!(
        r#"{{"code":200,"data":{{"productKey":"{}","deviceName":"reply-dev","deviceSecret":"{}"}},"message":"success"}}"#,
        fleet.product.product_key,
        device.device_secret.expose_secret()
    );
    assert_eq!(*json, expected);
    assert!(json.len() < 256, "one C SDK reads the reply into 256 bytes");
    match RegisterReply::parse(json.as_bytes()).unwrap() {
        RegisterReply::Issued { device_secret, .. } => {
            assert_eq!(
                device_secret.expose_secret(),
                device.device_secret.expose_secret()
            )
        }
        other => panic!("expected Issued, got {other:?}"),
    }
}

#[tokio::test]
async fn every_refusal_reason_has_its_documented_code() {
    let fleet = Fleet::new(DynamicRegistration::On).await;
    fleet.device("issued-dev").await;
    fleet.register("issued-dev").await.unwrap();
    let disabled = fleet.device("disabled-dev").await;
    fleet
        .admin
        .apply(&disabled.product_key, &disabled.device_name, Event::Disable)
        .await
        .unwrap();
    let registrar = Registrar::new(fleet.store.clone());
    let code = |result: Result<IssuedSecret, RegisterError>| result.unwrap_err().code();

    assert_eq!(
        code(registrar.register_form(b"productKey=").await),
        RefusalCode::InvalidRequest
    );
    assert_eq!(
        code(fleet.register("never-registered").await),
        RefusalCode::DeviceNotFound
    );
    assert_eq!(
        code(fleet.register("disabled-dev").await),
        RefusalCode::DeviceDisabled
    );
    assert_eq!(
        code(fleet.register("issued-dev").await),
        RefusalCode::AlreadyIssued
    );

    let forged = fleet
        .form("issued-dev")
        .replace("random=0123456789abcde", "random=0123456789abcdf");
    assert_eq!(
        code(registrar.register_form(forged.as_bytes()).await),
        RefusalCode::SignatureMismatch
    );

    let stranger = ProductCertificate::new(
        ProductKey::new("noSuchProduct").unwrap(),
        ProductSecret::new("whatever").unwrap(),
    );
    let body = build_register_form(
        &stranger,
        DeviceName::new("issued-dev").unwrap(),
        "r",
        SignMethod::HmacMd5,
    )
    .unwrap();
    assert_eq!(
        code(registrar.register_form(body.body().as_bytes()).await),
        RefusalCode::ProductNotFound
    );

    fleet.device("waiting-dev").await;
    fleet
        .admin
        .set_dynamic_registration(&fleet.product.product_key, DynamicRegistration::Off)
        .await
        .unwrap();
    assert_eq!(
        code(fleet.register("waiting-dev").await),
        RefusalCode::DynamicRegistrationDisabled
    );

    let reply = RegisterError::UnknownDevice
        .to_reply()
        .to_json_exposing_secret();
    assert_eq!(
        reply.as_str(),
        r#"{"code":6100,"message":"device not found"}"#
    );
    let codes: std::collections::HashSet<u32> = RefusalCode::ALL.iter().map(|c| c.code()).collect();
    assert_eq!(codes.len(), RefusalCode::ALL.len(), "codes are distinct");
    assert!(!codes.contains(&200));
}

#[tokio::test]
async fn mqtt_register_connect_obtains_the_secret_once_and_regnwl_is_unsupported() {
    let fleet = Fleet::new(DynamicRegistration::On).await;
    let device = fleet.device("mqtt-reg-dev").await;
    let options = RegisterOptions::new(ConnectKind::Register, "Z1TcKNepl0J8PQ1")
        .with_sign_method(SignMethod::HmacSha256)
        .with_secure_mode(SecureMode::REGISTRATION)
        .with_instance_id("iot-instance-1");
    let connect =
        build_register_connect(&fleet.product_cert(), device.device_name, &options).unwrap();
    let registrar = Registrar::new(fleet.store.clone());
    let password = connect.expose_password();
    let issued = registrar
        .register_connect(connect.client_id(), connect.username(), &password)
        .await
        .unwrap();
    assert_eq!(
        issued.into_device_secret().expose_secret(),
        device.device_secret.expose_secret()
    );
    let again = registrar
        .register_connect(connect.client_id(), connect.username(), &password)
        .await;
    assert_eq!(again.unwrap_err().code(), RefusalCode::AlreadyIssued);

    let regnwl = RegisterOptions::new(ConnectKind::RegisterNoPreregistration, options.random)
        .with_sign_method(options.sign_method)
        .with_secure_mode(options.secure_mode)
        .with_instance_id(options.instance_id);
    let connect =
        build_register_connect(&fleet.product_cert(), device.device_name, &regnwl).unwrap();
    let refused = registrar
        .register_connect(
            connect.client_id(),
            connect.username(),
            &connect.expose_password(),
        )
        .await;
    assert!(matches!(
        refused,
        Err(RegisterError::Unsupported {
            got: ConnectKind::RegisterNoPreregistration
        })
    ));
}

#[tokio::test]
async fn authenticator_refuses_a_registration_connect_as_a_login() {
    let fleet = Fleet::new(DynamicRegistration::On).await;
    let device = fleet.device("kind-dev").await;
    let options = RegisterOptions::new(ConnectKind::Register, "abc")
        .with_sign_method(SignMethod::HmacSha1)
        .with_secure_mode(SecureMode::TLS);
    let connect =
        build_register_connect(&fleet.product_cert(), device.device_name, &options).unwrap();
    let result = Authenticator::new(fleet.store.clone())
        .authenticate(
            connect.client_id(),
            connect.username(),
            &connect.expose_password(),
        )
        .await;
    assert!(matches!(
        result,
        Err(AuthError::Verify(VerifyError::WrongKind {
            got: ConnectKind::Register,
            ..
        }))
    ));
}

#[tokio::test]
async fn signature_is_checked_before_the_disabled_flag() {
    let fleet = Fleet::new(DynamicRegistration::Off).await;
    let device = fleet.device("quiet-dev").await;
    fleet
        .admin
        .apply(&device.product_key, &device.device_name, Event::Disable)
        .await
        .unwrap();
    let impostor = DeviceCertificate::new(
        device.product_key,
        device.device_name,
        DeviceSecret::new("guess").unwrap(),
    );
    let auth = Authenticator::new(fleet.store.clone());
    let login = |cert: DeviceCertificate| {
        let auth = &auth;
        async move {
            let creds = build_login(&cert, &LoginOptions::default()).unwrap();
            auth.authenticate(
                creds.client_id(),
                creds.username(),
                &creds.expose_password(),
            )
            .await
        }
    };
    assert!(matches!(
        login(impostor).await,
        Err(AuthError::Verify(VerifyError::BadSignature))
    ));
    assert!(matches!(
        login(cert_of(&device)).await,
        Err(AuthError::Disabled)
    ));
}

#[tokio::test]
async fn freshness_window_uses_the_injected_clock() {
    let fleet = Fleet::new(DynamicRegistration::Off).await;
    let device = fleet.device("fresh-dev").await;
    let now = UnixMillis(1_700_000_000_000);
    let auth = Authenticator::new(fleet.store.clone())
        .with_freshness(Freshness::Window { max_skew_secs: 900 })
        .with_clock(Arc::new(FixedClock(now)));
    let try_at = |ts: Option<&'static str>| {
        let (auth, cert) = (&auth, cert_of(&device));
        async move {
            let creds = build_login(&cert, &LoginOptions::default().with_timestamp(ts)).unwrap();
            auth.authenticate(
                creds.client_id(),
                creds.username(),
                &creds.expose_password(),
            )
            .await
        }
    };
    assert!(try_at(Some("1700000000")).await.is_ok());
    assert!(try_at(Some("1700000899000")).await.is_ok());
    assert!(matches!(
        try_at(Some("2524608000000")).await,
        Err(AuthError::Verify(VerifyError::Stale))
    ));
    assert!(matches!(
        try_at(None).await,
        Err(AuthError::Verify(VerifyError::MissingTimestamp))
    ));
}

#[tokio::test]
async fn admin_refuses_device_events_and_unknown_devices() {
    let fleet = Fleet::new(DynamicRegistration::On).await;
    let device = fleet.device("admin-dev").await;
    let (pk, dn) = (device.product_key, device.device_name);
    assert!(matches!(
        fleet.admin.apply(&pk, &dn, Event::LoginOk).await,
        Err(AdminError::NotAnOperatorEvent {
            event: Event::LoginOk
        })
    ));
    let ghost = DeviceName::new("ghost-dev").unwrap();
    assert!(matches!(
        fleet.admin.apply(&pk, &ghost, Event::Disable).await,
        Err(AdminError::Store(StoreError::NotFound {
            what: Entity::Device
        }))
    ));
}

#[tokio::test]
async fn admin_generates_from_the_injected_entropy() {
    struct Counter(std::sync::atomic::AtomicU8);
    impl Entropy for Counter {
        fn fill(&self, buf: &mut [u8]) -> Result<(), EntropyError> {
            for b in buf {
                *b = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 62;
            }
            Ok(())
        }
    }
    let make =
        || Admin::new(Arc::new(MemoryStore::new())).with_entropy(Arc::new(Counter(0.into())));
    let first = make()
        .create_product(None, DynamicRegistration::On)
        .await
        .unwrap();
    let second = make()
        .create_product(None, DynamicRegistration::On)
        .await
        .unwrap();
    assert_eq!(first.product_key, second.product_key);
    assert_eq!(first.product_key.as_str(), "ABCDEFGHIJK");
}

/// The three store traits for `$store`, every method answering `$answer` (evaluated in the
/// method's body): a store that is down, or one that never answers.
macro_rules! every_method_answers {
    ($store:ty, $answer:expr) => {
        #[async_trait]
        impl EventLog for $store {
            async fn events_after(&self, _: u64, _: usize) -> Result<Vec<EventRecord>, StoreError> {
                $answer
            }
            async fn event_head(&self) -> Result<ChainHead, StoreError> {
                $answer
            }
        }

        #[async_trait]
        impl ProductStore for $store {
            async fn insert_product(&self, _: ProductRecord) -> Result<(), StoreError> {
                $answer
            }
            async fn insert_products(&self, _: Vec<ProductRecord>) -> Result<(), StoreError> {
                $answer
            }
            async fn product(&self, _: &ProductKey) -> Result<Option<ProductRecord>, StoreError> {
                $answer
            }
            async fn products(&self) -> Result<Vec<ProductRecord>, StoreError> {
                $answer
            }
            async fn set_dynamic_registration(
                &self,
                _: &ProductKey,
                _: DynamicRegistration,
            ) -> Result<(), StoreError> {
                $answer
            }
            async fn set_pre_registration_free(
                &self,
                _: &ProductKey,
                _: PreRegistrationFree,
            ) -> Result<(), StoreError> {
                $answer
            }
            async fn set_registration_limit(
                &self,
                _: &ProductKey,
                _: RegistrationLimit,
            ) -> Result<(), StoreError> {
                $answer
            }
            async fn take_registration_token(
                &self,
                _: &ProductKey,
                _: UnixMillis,
            ) -> Result<bool, StoreError> {
                $answer
            }
            async fn record_registration_refusal(
                &self,
                _: &ProductKey,
                _: UnixMillis,
            ) -> Result<bool, StoreError> {
                $answer
            }
        }

        #[async_trait]
        impl DeviceStore for $store {
            async fn record_registration_random(
                &self,
                _: &ProductKey,
                _: &DeviceName,
                _: &str,
            ) -> Result<bool, StoreError> {
                $answer
            }
            async fn insert_device(&self, _: DeviceRecord) -> Result<(), StoreError> {
                $answer
            }
            async fn insert_device_within_quota(
                &self,
                _: DeviceRecord,
                _: u32,
            ) -> Result<(), StoreError> {
                $answer
            }
            async fn insert_devices(&self, _: Vec<DeviceRecord>) -> Result<(), StoreError> {
                $answer
            }
            async fn device(
                &self,
                _: &ProductKey,
                _: &DeviceName,
            ) -> Result<Option<DeviceRecord>, StoreError> {
                $answer
            }
            async fn devices(&self, _: &ProductKey) -> Result<Vec<DeviceRecord>, StoreError> {
                $answer
            }
            async fn compare_and_set(
                &self,
                _: &ProductKey,
                _: &DeviceName,
                _: u64,
                _: DeviceUpdate,
            ) -> Result<(), StoreError> {
                $answer
            }
        }
    };
}

/// A store that is down.
#[derive(Debug)]
struct Down;

fn down() -> StoreError {
    StoreError::unavailable(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        "connection refused",
    ))
}

every_method_answers!(Down, Err(down()));

#[tokio::test]
async fn a_store_outage_is_unavailable_not_bad_credentials() {
    let cert = DeviceCertificate::new(
        ProductKey::new("a1pk").unwrap(),
        DeviceName::new("dev-1").unwrap(),
        DeviceSecret::new("s").unwrap(),
    );
    let creds = build_login(&cert, &LoginOptions::default()).unwrap();
    let error = Authenticator::new(Down)
        .authenticate(
            creds.client_id(),
            creds.username(),
            &creds.expose_password(),
        )
        .await
        .unwrap_err();
    assert!(error.is_outage(), "{error}");
    assert!(
        std::error::Error::source(&error).is_some(),
        "the cause is kept"
    );

    let product = ProductCertificate::new(cert.product_key(), ProductSecret::new("p").unwrap());
    let body =
        build_register_form(&product, cert.device_name(), "r", SignMethod::HmacSha1).unwrap();
    let refused = Registrar::new(Down)
        .register_form(body.body().as_bytes())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), RefusalCode::Unavailable);
}

/// Every hook answers a store outage with "let the broker decide", never with "bad password";
/// registration answers code 500.
#[cfg(feature = "server")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_answer_an_outage_with_undecided_not_deny() {
    use iotauth::http::{ServerConfig, Services, router};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let services = Arc::new(Services::new(Arc::new(Down), ServerConfig::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, router(services)).await });

    let cert = DeviceCertificate::new(
        ProductKey::new("a1pk").unwrap(),
        DeviceName::new("dev-1").unwrap(),
        DeviceSecret::new("s").unwrap(),
    );
    let creds = build_login(&cert, &LoginOptions::default()).unwrap();
    let (id, user, pass) = (creds.client_id(), creds.username(), creds.expose_password());
    let post = |path: &'static str, body: String, hook: &'static str| async move {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let request = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\nvernemq-hook: {hook}\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    };
    let login =
        serde_json::json!({"clientid": id, "client_id": id, "username": user, "password": pass.as_str()})
            .to_string();
    assert!(
        post("/hooks/emqx/authn", login.clone(), "")
            .await
            .ends_with(r#"{"result":"ignore"}"#)
    );
    assert!(
        post("/hooks/vernemq", login.clone(), "auth_on_register")
            .await
            .ends_with(r#"{"result":"next"}"#)
    );
    assert!(
        post("/hooks/go-auth/user", login, "")
            .await
            .starts_with("HTTP/1.1 503")
    );
    let product = ProductCertificate::new(cert.product_key(), ProductSecret::new("p").unwrap());
    let form =
        build_register_form(&product, cert.device_name(), "r", SignMethod::HmacSha1).unwrap();
    let reply = post("/auth/register/device", form.body().to_owned(), "").await;
    assert!(
        reply.starts_with("HTTP/1.1 200")
            && reply.ends_with(r#"{"code":500,"message":"service unavailable, try again later"}"#),
        "{reply}"
    );
}

/// A store that never answers.
#[derive(Debug)]
struct Stuck;

every_method_answers!(Stuck, std::future::pending().await);

/// Every front end decides through `Services`, which gives up on a store that does not answer
/// after `STORE_TIMEOUT` and calls it an outage: no connection or hook hangs with it.
#[cfg(feature = "server")]
#[tokio::test]
async fn a_store_that_never_answers_is_an_outage_after_the_store_timeout() {
    use iotauth::http::{Admission, ConnectRefusal, STORE_TIMEOUT, ServerConfig, Services};

    let services = Services::new(Arc::new(Stuck), ServerConfig::default());
    let cert = DeviceCertificate::new(
        ProductKey::new("a1pk").unwrap(),
        DeviceName::new("dev-1").unwrap(),
        DeviceSecret::new("s").unwrap(),
    );
    let creds = build_login(&cert, &LoginOptions::default()).unwrap();
    let password = creds.expose_password();
    let started = std::time::Instant::now();
    let admitted: Result<Admission, ConnectRefusal> = services
        .admit(creds.client_id(), creds.username(), &password)
        .await;
    assert_eq!(admitted, Err(ConnectRefusal::Unavailable));
    let login = services
        .login(creds.client_id(), creds.username(), &password)
        .await
        .unwrap_err();
    assert!(login.is_outage(), "{login}");
    assert!(
        started.elapsed() >= STORE_TIMEOUT * 2,
        "each call waited its limit"
    );
}

/// The hooks' login path serves `connwl` token logins (a ClientID and token issued by
/// `regnwl`) and denies a `regnwl` CONNECT: a hook can only allow or deny, not publish the
/// ClientID and token to the connection, so registration without pre-registration needs a
/// front end that can (the embedded broker, the Mosquitto plugin).
#[cfg(feature = "server")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_allow_connwl_logins_and_deny_regnwl_which_they_cannot_deliver() {
    use iotauth::http::{ServerConfig, Services, router};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let fleet = Fleet::new(DynamicRegistration::On).await;
    let pk = fleet.product.product_key;
    let setting = PreRegistrationFree {
        on: true,
        device_quota: 10,
    };
    fleet
        .admin
        .set_pre_registration_free(&pk, setting)
        .await
        .unwrap();
    let options = RegisterOptions::new(ConnectKind::RegisterNoPreregistration, "3154792371")
        .with_sign_method(SignMethod::HmacSha256)
        .with_secure_mode(SecureMode::TLS);
    let name = DeviceName::new("nwl-hook").unwrap();
    let regnwl = build_register_connect(&fleet.product_cert(), name, &options).unwrap();
    let password = regnwl.expose_password();
    let request = ConnectRequest::parse(regnwl.client_id(), regnwl.username(), &password).unwrap();
    let issued = Registrar::new(fleet.store.clone())
        .register_client_id(&request)
        .await
        .unwrap();

    let store: Arc<dyn Store> = fleet.store.clone();
    let services = Arc::new(Services::new(store, ServerConfig::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, router(services)).await });
    let emqx = |client_id: String, username: String, password: String| async move {
        let body =
            serde_json::json!({"clientid": client_id, "username": username, "password": password})
                .to_string();
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let request = format!(
            "POST /hooks/emqx/authn HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    };
    let connwl_id = format!(
        "{}|authType=connwl,securemode=-2,_ss=1,ext=3,_v=sdk-c-4.2.0|",
        issued.client_id()
    );
    let username = format!("nwl-hook&{pk}");
    let token = issued.token().expose_secret().to_owned();
    let allowed = emqx(connwl_id.clone(), username.clone(), token).await;
    assert!(allowed.contains(r#""result":"allow""#), "{allowed}");
    let wrong = emqx(connwl_id, username, "0".repeat(32)).await;
    assert!(wrong.contains(r#""result":"deny""#), "{wrong}");
    let registration = emqx(
        regnwl.client_id().to_owned(),
        regnwl.username().to_owned(),
        password.to_string(),
    )
    .await;
    assert!(
        registration.contains(r#""result":"deny""#),
        "{registration}"
    );
}

/// A store whose compare-and-set takes longer than `STORE_TIMEOUT` (a slow disk, a lock held
/// just short of the busy timeout) and then commits.
#[derive(Debug)]
struct SlowWrites(Arc<MemoryStore>);

#[async_trait]
impl EventLog for SlowWrites {
    async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        self.0.events_after(after, limit).await
    }
    async fn event_head(&self) -> Result<ChainHead, StoreError> {
        self.0.event_head().await
    }
}

#[async_trait]
impl ProductStore for SlowWrites {
    async fn insert_product(&self, p: ProductRecord) -> Result<(), StoreError> {
        self.0.insert_product(p).await
    }
    async fn insert_products(&self, p: Vec<ProductRecord>) -> Result<(), StoreError> {
        self.0.insert_products(p).await
    }
    async fn product(&self, pk: &ProductKey) -> Result<Option<ProductRecord>, StoreError> {
        self.0.product(pk).await
    }
    async fn products(&self) -> Result<Vec<ProductRecord>, StoreError> {
        self.0.products().await
    }
    async fn set_dynamic_registration(
        &self,
        pk: &ProductKey,
        switch: DynamicRegistration,
    ) -> Result<(), StoreError> {
        self.0.set_dynamic_registration(pk, switch).await
    }
    async fn set_pre_registration_free(
        &self,
        pk: &ProductKey,
        setting: PreRegistrationFree,
    ) -> Result<(), StoreError> {
        self.0.set_pre_registration_free(pk, setting).await
    }
    async fn set_registration_limit(
        &self,
        pk: &ProductKey,
        limit: RegistrationLimit,
    ) -> Result<(), StoreError> {
        self.0.set_registration_limit(pk, limit).await
    }
    async fn take_registration_token(
        &self,
        pk: &ProductKey,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        self.0.take_registration_token(pk, now).await
    }
    async fn record_registration_refusal(
        &self,
        pk: &ProductKey,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        self.0.record_registration_refusal(pk, now).await
    }
}

#[async_trait]
impl DeviceStore for SlowWrites {
    async fn record_registration_random(
        &self,
        pk: &ProductKey,
        dn: &DeviceName,
        random: &str,
    ) -> Result<bool, StoreError> {
        self.0.record_registration_random(pk, dn, random).await
    }
    async fn insert_device(&self, d: DeviceRecord) -> Result<(), StoreError> {
        self.0.insert_device(d).await
    }
    async fn insert_device_within_quota(&self, d: DeviceRecord, q: u32) -> Result<(), StoreError> {
        self.0.insert_device_within_quota(d, q).await
    }
    async fn insert_devices(&self, d: Vec<DeviceRecord>) -> Result<(), StoreError> {
        self.0.insert_devices(d).await
    }
    async fn device(
        &self,
        pk: &ProductKey,
        dn: &DeviceName,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        self.0.device(pk, dn).await
    }
    async fn devices(&self, pk: &ProductKey) -> Result<Vec<DeviceRecord>, StoreError> {
        self.0.devices(pk).await
    }
    async fn compare_and_set(
        &self,
        pk: &ProductKey,
        dn: &DeviceName,
        revision: u64,
        update: DeviceUpdate,
    ) -> Result<(), StoreError> {
        // Committed at once, answered late: the write happened whatever the caller does.
        let outcome = self.0.compare_and_set(pk, dn, revision, update).await;
        tokio::time::sleep(iotauth::http::STORE_TIMEOUT + Duration::from_millis(500)).await;
        outcome
    }
}

/// An MQTT registration whose issue is answered after `STORE_TIMEOUT` still delivers the
/// secret: the issue is not cut short once begun (cut short after its compare-and-set
/// committed, it would leave the device Issued with a secret no one received, and under
/// `issuance once` refused for ever).
#[cfg(feature = "server")]
#[tokio::test]
async fn a_registration_whose_issue_is_answered_late_still_delivers_the_secret() {
    use iotauth::http::{ServerConfig, Services};
    let fleet = Fleet::new(DynamicRegistration::On).await;
    let device = fleet.device("slow-disk-01").await;
    let services = Services::new(
        Arc::new(SlowWrites(fleet.store.clone())),
        ServerConfig::default(),
    );
    let options = RegisterOptions::new(ConnectKind::Register, "Z1TcKNepl0J8PQ1")
        .with_sign_method(SignMethod::HmacSha256)
        .with_secure_mode(SecureMode::REGISTRATION);
    let connect =
        build_register_connect(&fleet.product_cert(), device.device_name, &options).unwrap();
    let password = connect.expose_password();
    let issued = services
        .register_connect(connect.client_id(), connect.username(), &password)
        .await
        .unwrap_or_else(|e| panic!("the issue was cut short: {e}"));
    assert_eq!(
        issued.into_device_secret().expose_secret(),
        device.device_secret.expose_secret()
    );
    let stored = fleet
        .store
        .device(&device.product_key, &device.device_name)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.status.state, DeviceState::Issued);
}
