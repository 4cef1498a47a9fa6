//! The embedded broker as a library (`iotauth::broker`), in process on the memory store, driven
//! by raw MQTT 3.1.1 packets over loopback TCP so that every byte the broker sends back is
//! seen: sessions that belong to devices, registration on the broker's port, the will message,
//! revocation. (tests/serve_e2e.rs drives the same broker through `iotauth serve` with
//! Debian's mosquitto clients, paho and linkkit.)
#![cfg(feature = "broker")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use iotauth::broker::{Broker, BrokerConfig};
use iotauth::http::{ServerConfig, Services};
use iotauth::service::Admin;
use iotauth::store::{DeviceStore, MemoryStore, ProductRecord, Store};
use iotauth::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// CONNACK accepted, MQTT 3.1.1.
const ACCEPTED: [u8; 4] = [0x20, 0x02, 0x00, 0x00];
/// CONNACK "not authorized", MQTT 3.1.1.
const NOT_AUTHORIZED: [u8; 4] = [0x20, 0x02, 0x00, 0x05];
/// CONNACK, MQTT 3.1.1 return code 4: bad user name or password.
const BAD_CREDENTIALS: [u8; 4] = [0x20, 0x02, 0x00, 0x04];

struct Fleet {
    store: Arc<dyn Store>,
    services: Arc<Services>,
    admin: Admin<Arc<dyn Store>>,
    product: ProductRecord,
    broker: Broker,
    address: SocketAddr,
}

impl Fleet {
    async fn new() -> Self {
        Self::with_config(&BrokerConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)))).await
    }

    async fn with_config(config: &BrokerConfig) -> Self {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let admin = Admin::new(store.clone());
        let product = admin
            .create_product(None, DynamicRegistration::On)
            .await
            .unwrap();
        let services = Arc::new(Services::new(store.clone(), ServerConfig::default()));
        let broker = Broker::start(config, services.clone()).await.unwrap();
        let address = broker.local_addrs()[0].1;
        Self {
            store,
            services,
            admin,
            product,
            broker,
            address,
        }
    }

    /// Registers `name`; its certificate.
    async fn device(&self, name: &str) -> DeviceCertificate {
        let record = self
            .admin
            .register_device(self.product.product_key, DeviceName::new(name).unwrap())
            .await
            .unwrap();
        DeviceCertificate::new(record.product_key, record.device_name, record.device_secret)
    }

    fn identity(&self, name: &str) -> DeviceIdentity {
        DeviceIdentity::new(self.product.product_key, DeviceName::new(name).unwrap())
    }

    /// Connects with `packet`; the stream and the CONNACK.
    async fn connect(&self, packet: &[u8]) -> (TcpStream, [u8; 4]) {
        let mut stream = TcpStream::connect(self.address).await.unwrap();
        stream.write_all(packet).await.unwrap();
        let mut connack = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut connack))
            .await
            .expect("a CONNACK within 5 s")
            .expect("a CONNACK");
        (stream, connack)
    }
}

/// The three strings of a CONNECT.
struct Creds {
    client_id: String,
    username: String,
    password: String,
}

impl From<ConnectCredentials> for Creds {
    fn from(creds: ConnectCredentials) -> Self {
        Self {
            client_id: creds.client_id().to_owned(),
            username: creds.username().to_owned(),
            password: creds.expose_password().to_string(),
        }
    }
}

/// A login of `cert` with CORE `core` whose client id carries `extra` parameters (unsigned, as
/// Link SDK 4.x's `_conn=`).
fn login(cert: &DeviceCertificate, core: &str, extra: &str) -> Creds {
    let options = LoginOptions::default().with_client_id(core);
    let mut creds = Creds::from(build_login(cert, &options).unwrap());
    if !extra.is_empty() {
        creds.client_id = creds.client_id.replacen('|', &format!("|{extra},"), 1);
    }
    creds
}

/// The CONNECT packet of `creds`, keep-alive 60 s, clean session, after `adjust`.
fn connect_packet_with(creds: &Creds, adjust: impl FnOnce(&mut rumqttc::Connect)) -> Vec<u8> {
    let mut connect = rumqttc::Connect::new(&creds.client_id);
    connect.keep_alive = 60;
    connect.set_login(&creds.username, &creds.password);
    adjust(&mut connect);
    let mut bytes = BytesMut::new();
    connect.write(&mut bytes).unwrap();
    bytes.to_vec()
}

/// The CONNECT packet of `creds`, optionally with a will on `will_topic`.
fn connect_packet(creds: &Creds, will_topic: Option<&str>) -> Vec<u8> {
    connect_packet_with(creds, |connect| {
        connect.last_will = will_topic
            .map(|topic| rumqttc::LastWill::new(topic, "gone", rumqttc::QoS::AtMostOnce, false));
    })
}

/// Whether the broker closes `stream` within `within` (bytes it sends first are skipped).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buffer = [0u8; 256];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_login_of_a_device_closes_its_older_connection_whatever_the_client_ids() {
    let fleet = Fleet::new().await;
    let cert = fleet.device("meter-01").await;
    let first = login(&cert, "meter-01", "_conn=tcp_1");
    let second = login(&cert, "meter-01", "_conn=tcp_2");
    assert_ne!(first.client_id, second.client_id);

    let (mut older, connack) = fleet.connect(&connect_packet(&first, None)).await;
    assert_eq!(connack, ACCEPTED);
    let (mut newer, connack) = fleet.connect(&connect_packet(&second, None)).await;
    assert_eq!(connack, ACCEPTED);
    assert!(
        closed_within(&mut older, Duration::from_secs(5)).await,
        "the older connection is closed"
    );
    assert!(
        !closed_within(&mut newer, Duration::from_millis(300)).await,
        "the newer one stays"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_logins_of_one_device_leave_one_live_connection() {
    let fleet = Fleet::new().await;
    let cert = fleet.device("meter-01").await;
    let mut live: Option<TcpStream> = None;
    for i in 0..2_000 {
        let creds = login(&cert, "meter-01", &format!("_conn=tcp_{i}"));
        let (stream, connack) = fleet.connect(&connect_packet(&creds, None)).await;
        assert_eq!(connack, ACCEPTED, "login {i}");
        if let Some(mut older) = live.replace(stream) {
            assert!(
                closed_within(&mut older, Duration::from_secs(5)).await,
                "login {i} closed the one before"
            );
        }
    }
    let mut last = live.unwrap();
    assert!(!closed_within(&mut last, Duration::from_millis(300)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_presenting_another_devices_client_id_is_refused_and_the_owner_stays() {
    let fleet = Fleet::new().await;
    let a = fleet.device("meter-a").await;
    let b = fleet.device("meter-b").await;
    // Both sign the same CORE: their MQTT client ids are identical.
    let (a_login, b_login) = (login(&a, "shared-core", ""), login(&b, "shared-core", ""));
    assert_eq!(a_login.client_id, b_login.client_id);

    let (mut owner, connack) = fleet.connect(&connect_packet(&b_login, None)).await;
    assert_eq!(connack, ACCEPTED);
    let (_, connack) = fleet.connect(&connect_packet(&a_login, None)).await;
    assert_eq!(connack, NOT_AUTHORIZED, "A may not take over B's session");
    assert!(
        !closed_within(&mut owner, Duration::from_millis(300)).await,
        "B stays connected"
    );
    // Once B's (clean) session is gone, the client id is free again.
    owner.write_all(&[0xe0, 0x00]).await.unwrap();
    owner.shutdown().await.unwrap();
    drop(owner);
    let mut accepted = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if fleet.connect(&connect_packet(&a_login, None)).await.1 == ACCEPTED {
            accepted = true;
            break;
        }
    }
    assert!(accepted, "the client id is released with B's session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_reset_and_delete_through_the_services_disconnect_the_device_at_once() {
    let fleet = Fleet::new().await;
    let cert = fleet.device("meter-01").await;
    let (pk, dn) = (cert.product_key(), cert.device_name());
    for event in [Event::Disable, Event::Reset, Event::Delete] {
        let cert = match event {
            // A reset replaced the secret: read the new one.
            Event::Delete => {
                let record = fleet
                    .store
                    .device(&pk, &dn)
                    .await
                    .unwrap()
                    .expect("the device");
                DeviceCertificate::new(pk, dn, record.device_secret)
            }
            _ => DeviceCertificate::new(pk, dn, cert.device_secret().clone_secret()),
        };
        if event == Event::Reset {
            fleet
                .services
                .apply_operator_event(&pk, &dn, Event::Enable)
                .await
                .unwrap();
        }
        let (mut stream, connack) = fleet
            .connect(&connect_packet(&login(&cert, "meter-01", ""), None))
            .await;
        assert_eq!(connack, ACCEPTED, "before {event:?}");
        fleet
            .services
            .apply_operator_event(&pk, &dn, event)
            .await
            .unwrap();
        assert!(
            closed_within(&mut stream, Duration::from_secs(5)).await,
            "{event:?} disconnects the device"
        );
        let (_, connack) = fleet
            .connect(&connect_packet(&login(&cert, "meter-01", ""), None))
            .await;
        assert_ne!(
            connack, ACCEPTED,
            "after {event:?}, the old login is refused"
        );
    }
    assert!(!fleet.broker.disconnect(&fleet.identity("meter-01")).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_on_the_broker_port_delivers_the_secret_to_that_connection_then_closes() {
    let fleet = Fleet::new().await;
    let cert = fleet.device("reg-01").await;
    let product_cert = ProductCertificate::new(
        fleet.product.product_key,
        fleet.product.product_secret.clone_secret(),
    );
    let options = RegisterOptions::new(ConnectKind::Register, "Z1TcKNepl0J8PQ1")
        .with_sign_method(SignMethod::HmacSha256)
        .with_secure_mode(SecureMode::TLS);
    let creds: Creds = build_register_connect(&product_cert, cert.device_name(), &options)
        .unwrap()
        .into();
    let (mut stream, connack) = fleet.connect(&connect_packet(&creds, None)).await;
    assert_eq!(connack, ACCEPTED);
    // It may not subscribe to anything but /ext/register.
    let mut subscribe = BytesMut::new();
    let mut packet = rumqttc::Subscribe::new("#", rumqttc::QoS::AtMostOnce);
    packet.pkid = 7;
    packet.write(&mut subscribe).unwrap();
    stream.write_all(&subscribe).await.unwrap();

    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut received))
        .await
        .expect("the broker closes the registration connection")
        .unwrap();
    let mut buffer = BytesMut::from(&received[..]);
    let (mut secret, mut suback) = (None, None);
    while let Ok(packet) = rumqttc::Packet::read(&mut buffer, 4096) {
        match packet {
            rumqttc::Packet::Publish(publish) => {
                assert_eq!(publish.topic, "/ext/register");
                let payload: serde_json::Value = serde_json::from_slice(&publish.payload).unwrap();
                secret = payload["deviceSecret"].as_str().map(str::to_owned);
            }
            rumqttc::Packet::SubAck(ack) => suback = Some(ack.return_codes),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        secret.as_deref(),
        Some(cert.device_secret().expose_secret())
    );
    assert_eq!(
        suback,
        Some(vec![rumqttc::SubscribeReasonCode::Failure]),
        "a registration connection may not subscribe to #"
    );
    // Issued once: the same registration again is "not authorized".
    let (_, connack) = fleet.connect(&connect_packet(&creds, None)).await;
    assert_eq!(connack, NOT_AUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_on_another_devices_topic_is_refused_and_one_on_its_own_accepted() {
    let fleet = Fleet::new().await;
    let cert = fleet.device("meter-01").await;
    fleet.device("meter-02").await;
    let pk = fleet.product.product_key;
    let creds = login(&cert, "meter-01", "");
    let foreign = format!("/{pk}/meter-02/user/get");
    let (_, connack) = fleet.connect(&connect_packet(&creds, Some(&foreign))).await;
    assert_eq!(connack, NOT_AUTHORIZED);
    let own = format!("/{pk}/meter-01/user/update");
    let (_, connack) = fleet.connect(&connect_packet(&creds, Some(&own))).await;
    assert_eq!(connack, ACCEPTED);
}

/// A CONNECT packet of `creds` without clean session (the broker keeps its session).
fn kept_session_packet(creds: &Creds) -> Vec<u8> {
    connect_packet_with(creds, |connect| connect.clean_session = false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_keeps_one_session_so_it_cannot_fill_the_session_cap() {
    let mut config = BrokerConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
    config.max_sessions = 3;
    let fleet = Fleet::with_config(&config).await;
    let hoarder = fleet.device("hoarder").await;
    // Ten kept sessions under ten client ids, one after the other.
    for i in 0..10 {
        let creds = login(&hoarder, "hoarder", &format!("_conn=tcp_{i}"));
        let (mut stream, connack) = fleet.connect(&kept_session_packet(&creds)).await;
        assert_eq!(connack, ACCEPTED, "kept session {i}");
        stream.write_all(&[0xe0, 0x00]).await.unwrap();
        stream.shutdown().await.unwrap();
        assert!(closed_within(&mut stream, Duration::from_secs(5)).await);
    }
    // Each newer one ended the older: there is room for two more devices.
    for name in ["meter-01", "meter-02"] {
        let cert = fleet.device(name).await;
        let (_stream, connack) = fleet
            .connect(&kept_session_packet(&login(&cert, name, "")))
            .await;
        assert_eq!(connack, ACCEPTED, "{name} found a free session slot");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_the_broker_refuses_later_lapses_after_the_handshake_limit() {
    let mut config = BrokerConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
    config.handshake_timeout = Duration::from_secs(1);
    let fleet = Fleet::with_config(&config).await;
    let squatter = fleet.device("meter-a").await;
    let owner = fleet.device("meter-b").await;
    let (a, b) = (
        login(&squatter, "meter-b", ""),
        login(&owner, "meter-b", ""),
    );
    assert_eq!(a.client_id, b.client_id);
    // A presents B's client id with a keep-alive outside 30..1200 s: authenticated (the client
    // id is claimed for A), then refused by the broker (code 3): no session ever holds it.
    let short = connect_packet_with(&a, |connect| connect.keep_alive = 10);
    let (_, connack) = fleet.connect(&short).await;
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x03]);
    // Once the claim has lapsed, B logs in with its client id.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let (_stream, connack) = fleet.connect(&connect_packet(&b, None)).await;
    assert_eq!(connack, ACCEPTED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_session_ended_by_a_newer_login_frees_its_client_id() {
    let fleet = Fleet::new().await;
    let squatter = fleet.device("meter-e").await;
    let owner = fleet.device("meter-a").await;
    // E keeps a session under the client id A's SDK uses, then logs in under another one,
    // which ends that kept session.
    let taken = login(&squatter, "meter-a", "");
    let (mut stream, connack) = fleet.connect(&kept_session_packet(&taken)).await;
    assert_eq!(connack, ACCEPTED);
    stream.write_all(&[0xe0, 0x00]).await.unwrap();
    stream.shutdown().await.unwrap();
    assert!(closed_within(&mut stream, Duration::from_secs(5)).await);
    let (_elsewhere, connack) = fleet
        .connect(&connect_packet(&login(&squatter, "meter-e", ""), None))
        .await;
    assert_eq!(connack, ACCEPTED);
    // The client id is free again: A gets it.
    let (_stream, connack) = fleet
        .connect(&connect_packet(&login(&owner, "meter-a", ""), None))
        .await;
    assert_eq!(
        connack, ACCEPTED,
        "the ended session still held A's client id"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_id_that_names_another_registered_device_is_refused_even_while_it_is_offline() {
    let fleet = Fleet::new().await;
    let squatter = fleet.device("meter-e").await;
    fleet.device("meter-a").await;
    let pk = fleet.product.product_key;
    // The cores Alibaba's SDKs build for meter-a: C SDKs `{pk}.{dn}`, Python `{pk}&{dn}`,
    // registration `{dn}.{pk}`, Node 1.0 `{pk}&{dn}_aliyun-iot-device-sdk-js`.
    for core in [
        format!("{pk}.meter-a"),
        format!("{pk}&meter-a"),
        format!("meter-a.{pk}"),
        format!("{pk}&meter-a_aliyun-iot-device-sdk-js"),
    ] {
        let (_, connack) = fleet
            .connect(&connect_packet(&login(&squatter, &core, ""), None))
            .await;
        assert_eq!(connack, NOT_AUTHORIZED, "{core}");
    }
    // Its own, and a CORE that names no registered device, are fine.
    for core in [format!("{pk}.meter-e"), "SN.1928339".to_owned()] {
        let (_stream, connack) = fleet
            .connect(&connect_packet(&login(&squatter, &core, ""), None))
            .await;
        assert_eq!(connack, ACCEPTED, "{core}");
    }
    // Without the device's secret, a CORE naming a registered device is refused as one naming
    // none: the code does not tell which device names exist.
    for core in [format!("{pk}.meter-a"), format!("{pk}.meter-zz")] {
        let mut creds = login(&squatter, &core, "");
        creds.password = "0".repeat(64);
        let (_, connack) = fleet.connect(&connect_packet(&creds, None)).await;
        assert_eq!(connack, BAD_CREDENTIALS, "{core}");
    }
}

/// A `regnwl` CONNECT in Link SDK 4.x's exact shape (`components/dynreg-mqtt`), with
/// `securemode` and an optional `instanceId` as given.
fn regnwl_creds(product: &ProductRecord, name: &str, secure_mode: &str, instance: &str) -> Creds {
    use hmac::{KeyInit, Mac};
    let (pk, random) = (product.product_key.as_str(), "3154792371");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(
        product.product_secret.expose_secret().as_bytes(),
    )
    .unwrap();
    mac.update(format!("deviceName{name}productKey{pk}random{random}").as_bytes());
    Creds {
        client_id: format!(
            "{name}.{pk}|random={random},authType=regnwl,securemode={secure_mode},signmethod=hmacsha256{instance}|"
        ),
        username: format!("{name}&{pk}"),
        password: hex::encode(mac.finalize().into_bytes()),
    }
}

/// Reads what the broker sends on a registration connection until it closes it; the JSON
/// published on `topic`.
async fn registration_payload(stream: &mut TcpStream, topic: &str) -> serde_json::Value {
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut received))
        .await
        .expect("the broker closes the registration connection")
        .unwrap();
    let mut buffer = BytesMut::from(&received[..]);
    while let Ok(packet) = rumqttc::Packet::read(&mut buffer, 4096) {
        if let rumqttc::Packet::Publish(publish) = packet {
            assert_eq!(publish.topic, topic);
            return serde_json::from_slice(&publish.payload).unwrap();
        }
    }
    panic!("nothing published on {topic}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regnwl_on_the_broker_port_issues_a_client_id_and_token_that_log_in_with_connwl() {
    let fleet = Fleet::new().await;
    let setting = iotauth::store::PreRegistrationFree {
        on: true,
        device_quota: 10,
    };
    fleet
        .admin
        .set_pre_registration_free(&fleet.product.product_key, setting)
        .await
        .unwrap();
    let pk = fleet.product.product_key;
    for (name, secure_mode, instance) in [
        ("nwl-01", "2", ""),
        ("nwl-02", "-2", ""),
        ("nwl-03", "2", ",instanceId=iot-06z00ab1cdefghi"),
    ] {
        let creds = regnwl_creds(&fleet.product, name, secure_mode, instance);
        let (mut stream, connack) = fleet.connect(&connect_packet(&creds, None)).await;
        assert_eq!(connack, ACCEPTED, "{name}");
        let issued = registration_payload(&mut stream, "/ext/regnwl").await;
        assert_eq!(issued["productKey"], pk.as_str());
        assert_eq!(issued["deviceName"], name);
        let (client_id, token) = (
            issued["clientId"].as_str().unwrap().to_owned(),
            issued["deviceToken"].as_str().unwrap().to_owned(),
        );
        let stored = fleet
            .store
            .device(&pk, &DeviceName::new(name).unwrap())
            .await
            .unwrap()
            .expect("the device was created");
        assert_eq!(stored.client_ids.len(), 1);
        assert_eq!(stored.client_ids[0].client_id.as_str(), client_id);

        // connwl, as Link SDK 4.x sends it: the ClientID is the CORE, the token the password.
        let connwl = Creds {
            client_id: format!(
                "{client_id}|authType=connwl,securemode=-2,_ss=1,ext=3,_v=sdk-c-4.2.0|"
            ),
            username: format!("{name}&{pk}"),
            password: token.clone(),
        };
        let (_stream, connack) = fleet.connect(&connect_packet(&connwl, None)).await;
        assert_eq!(connack, ACCEPTED, "connwl of {name}");
        let wrong = Creds {
            password: "0".repeat(32),
            ..connwl
        };
        let (_, connack) = fleet.connect(&connect_packet(&wrong, None)).await;
        assert_eq!(connack, [0x20, 0x02, 0x00, 0x04], "a wrong token");
    }

    // Five ClientIDs per device: four more for nwl-01, then a sixth is "not authorized".
    for _ in 1..IssuedClientId::MAX_PER_DEVICE {
        let creds = regnwl_creds(&fleet.product, "nwl-01", "2", "");
        let (mut stream, connack) = fleet.connect(&connect_packet(&creds, None)).await;
        assert_eq!(connack, ACCEPTED);
        registration_payload(&mut stream, "/ext/regnwl").await;
    }
    let creds = regnwl_creds(&fleet.product, "nwl-01", "2", "");
    let (_, connack) = fleet.connect(&connect_packet(&creds, None)).await;
    assert_eq!(connack, NOT_AUTHORIZED, "a sixth ClientID");

    // A full quota: a new device is "not authorized", and is not created.
    fleet
        .admin
        .set_pre_registration_free(
            &pk,
            iotauth::store::PreRegistrationFree {
                on: true,
                device_quota: 3,
            },
        )
        .await
        .unwrap();
    let creds = regnwl_creds(&fleet.product, "nwl-05", "2", "");
    let (_, connack) = fleet.connect(&connect_packet(&creds, None)).await;
    assert_eq!(connack, NOT_AUTHORIZED, "over the quota");

    // Switched off: regnwl is "not authorized", and creates nothing.
    fleet
        .admin
        .set_pre_registration_free(
            &pk,
            iotauth::store::PreRegistrationFree {
                on: false,
                device_quota: 10,
            },
        )
        .await
        .unwrap();
    let creds = regnwl_creds(&fleet.product, "nwl-04", "2", "");
    let (_, connack) = fleet.connect(&connect_packet(&creds, None)).await;
    assert_eq!(connack, NOT_AUTHORIZED);
    assert!(
        fleet
            .store
            .device(&pk, &DeviceName::new("nwl-04").unwrap())
            .await
            .unwrap()
            .is_none()
    );
}
