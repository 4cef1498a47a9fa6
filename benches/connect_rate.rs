//! Connects per second, and QoS 0 publish throughput, through the embedded broker
//! (`iotauth::broker`, the one `iotauth serve` runs) with authentication and without, and
//! through Mosquitto 2.0 without authentication and with the iotauth plugin: side by side in
//! one run.
//!
//! Connect rate: `CONNECTIONS` tasks connect for `SECONDS` in all to each broker, in `ROUNDS`
//! interleaved turns, each connect being TCP + CONNECT + CONNACK + DISCONNECT with the
//! credentials of one of `DEVICES` active devices. The process CPU time per connect is printed for the brokers in this process
//! (they share it with the clients); Mosquitto runs in its own process, whose CPU time is
//! read from `/proc` and added to the clients'.
//!
//! Publish throughput: `PUBLISHERS` devices each publish QoS 0 messages at `RATE` per second
//! to their own topic, to which they are subscribed, for `SECONDS`; delivered messages and the
//! CPU time per delivered message, with the topic rule (authenticated broker) and without it.
//!
//! ```sh
//! cargo build --example mosquitto_plugin --features mosquitto   # for the Mosquitto rows
//! IOTAUTH_MOSQUITTO_PLUGIN=$PWD/target/debug/examples/libmosquitto_plugin.so \
//!   cargo bench --features cli,danger-unauthenticated-broker --bench connect_rate     # IOTAUTH_CONNECT_SECONDS (default 10)
//! cargo bench --features cli,danger-unauthenticated-broker --bench connect_rate -- --test   # 1 s each: a smoke run
//! ```

#[path = "../tests/common/mosquitto.rs"]
mod mosquitto;
#[path = "support/run_size.rs"]
mod run_size;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use iotauth::broker::{Broker, BrokerConfig};
use iotauth::http::{ServerConfig, Services};
use iotauth::service::Admin;
use iotauth::store::{CachedStore, Store};
use iotauth::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use run_size::run_size;

const DEVICES: usize = 1_000;
const CONNECTIONS: usize = 64;
const PUBLISHERS: usize = 10;
/// Turns each broker takes in the connect-rate run.
const ROUNDS: u32 = 4;
/// Messages per second and publisher.
const RATE: u64 = 1_000;
/// MQTT DISCONNECT.
const DISCONNECT: [u8; 2] = [0xe0, 0x00];

/// A device's login: its identity and its CONNECT packet.
struct Login {
    device: DeviceIdentity,
    connect: Vec<u8>,
}

fn main() {
    let Some(seconds) = run_size("IOTAUTH_CONNECT_SECONDS", 10, 1) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let dir = std::env::temp_dir().join(format!("iotauth-connect-rate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let sqlite_url = format!("sqlite://{}", dir.join("devices.db").display());
    let duration = Duration::from_secs(seconds);

    let (open, on_memory, on_sqlite_cached, on_sqlite, logins, memory_logins) =
        runtime.block_on(async {
            let sqlite = iotauth::store::open(&sqlite_url)
                .await
                .expect("the SQLite store");
            let logins = fleet(&sqlite).await;
            let memory: Arc<dyn Store> = Arc::new(iotauth::store::MemoryStore::new());
            let memory_logins = fleet(&memory).await;
            let cached: Arc<dyn Store> =
                Arc::new(CachedStore::new(sqlite.clone(), Duration::from_secs(5)));
            (
                start(None).await,
                start(Some(activated(memory, &memory_logins).await)).await,
                start(Some(activated(cached, &logins).await)).await,
                start(Some(activated(sqlite, &logins).await)).await,
                logins,
                memory_logins,
            )
        });
    let mosquitto_open = mosquitto::Mosquitto::start(&dir.join("open"), "allow_anonymous true");
    let plugin = std::env::var("IOTAUTH_MOSQUITTO_PLUGIN").ok();
    let mosquitto_plugin = plugin.as_ref().map(|plugin| {
        let path = sqlite_url.trim_start_matches("sqlite://");
        mosquitto::Mosquitto::start(
            &dir.join("plugin"),
            &format!("plugin {plugin}\nplugin_opt_store sqlite://{path}\n"),
        )
    });
    if plugin.is_none() {
        println!("(IOTAUTH_MOSQUITTO_PLUGIN is not set: no Mosquitto + plugin row)");
    }
    let loopback = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));

    println!(
        "{CONNECTIONS} concurrent clients, {DEVICES} devices, {seconds} s per broker; \
         each connect = TCP + CONNECT + CONNACK + DISCONNECT"
    );
    let mut rows = vec![
        ("(a) embedded, no authentication", open, &logins, None),
        (
            "(b) embedded, iotauth, memory store",
            on_memory,
            &memory_logins,
            None,
        ),
        (
            "(c) embedded, iotauth, SQLite + 5 s cache",
            on_sqlite_cached,
            &logins,
            None,
        ),
        (
            "    embedded, iotauth, SQLite, no cache",
            on_sqlite,
            &logins,
            None,
        ),
        (
            "(d) Mosquitto, no authentication",
            loopback(mosquitto_open.port),
            &logins,
            Some(mosquitto_open.child.id()),
        ),
    ];
    if let Some(broker) = &mosquitto_plugin {
        rows.push((
            "(e) Mosquitto, iotauth plugin (SQLite)",
            loopback(broker.port),
            &logins,
            Some(broker.child.id()),
        ));
    }
    // The brokers take turns in ROUNDS short runs each, so that drift over the run (the
    // kernel's TIME_WAIT table grows with every connect) spreads evenly over them.
    // (accepted, seconds, refused, failed, CPU seconds) per broker.
    let mut totals = vec![(0u64, 0.0f64, 0u64, 0u64, 0.0f64); rows.len()];
    for _ in 0..ROUNDS {
        for ((_, address, logins, other_process), total) in rows.iter().zip(&mut totals) {
            let cpu_before = cpu_seconds(*other_process);
            let (tally, elapsed) =
                runtime.block_on(connect_rate(*address, logins, duration / ROUNDS));
            total.0 += tally.accepted.load(Ordering::Relaxed);
            total.1 += elapsed;
            total.2 += tally.refused.load(Ordering::Relaxed);
            total.3 += tally.failed.load(Ordering::Relaxed);
            total.4 += cpu_seconds(*other_process) - cpu_before;
        }
    }
    let baseline = totals[0].0 as f64 / totals[0].1;
    for ((name, ..), (connects, elapsed, refused, failed, cpu)) in rows.iter().zip(totals) {
        let rate = connects as f64 / elapsed;
        let cpu_micros_per_connect = cpu * 1e6 / connects as f64;
        println!(
            "connect_rate/{name:<42} {rate:>7.0} connects/s  {:.3} x (a)  \
             {cpu_micros_per_connect:>6.1} us CPU per connect  refused: {refused}  failed: {failed}",
            rate / baseline
        );
        assert_eq!(refused, 0, "{name}: good credentials were refused");
        assert!(
            failed * 100 <= connects,
            "{name}: {failed} connections failed before a CONNACK"
        );
    }

    let variants = [
        ("no topic rule (no authentication)", open),
        ("topic rule (iotauth, memory store)", on_memory),
    ];
    let mut totals = [(0u64, 0.0f64); 2];
    for _ in 0..ROUNDS {
        for ((_, address), total) in variants.iter().zip(&mut totals) {
            let cpu_before = cpu_seconds(None);
            total.0 += runtime.block_on(publish_rate(*address, &memory_logins, duration / ROUNDS));
            total.1 += cpu_seconds(None) - cpu_before;
        }
    }
    let baseline = totals[0].1 / totals[0].0.max(1) as f64;
    for ((name, _), (delivered, cpu)) in variants.iter().zip(totals) {
        let per_message = cpu / delivered.max(1) as f64;
        println!(
            "publish_rate/{name:<36} {:>7.0} delivered/s  {:>6.2} us CPU per message  {:.3} x",
            delivered as f64 / duration.as_secs_f64(),
            per_message * 1e6,
            per_message / baseline
        );
        assert!(delivered > 0, "{name}: nothing was delivered");
    }
    drop((mosquitto_open, mosquitto_plugin));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A product with `DEVICES` devices in `store`, and each device's login.
async fn fleet(store: &Arc<dyn Store>) -> Vec<Login> {
    let admin = Admin::new(store.clone());
    let product = admin
        .create_product(None, DynamicRegistration::Off)
        .await
        .expect("a product");
    let mut logins = Vec::with_capacity(DEVICES);
    for i in 0..DEVICES {
        let name = DeviceName::new(&format!("storm-{i:05}")).expect("a device name");
        let device = admin
            .register_device(product.product_key, name)
            .await
            .expect("a device");
        let identity = DeviceIdentity::new(device.product_key, device.device_name);
        let cert =
            DeviceCertificate::new(device.product_key, device.device_name, device.device_secret);
        let options = LoginOptions::default().with_timestamp("1710000000000");
        let creds = build_login(&cert, &options).expect("a login");
        let mut connect = rumqttc::Connect::new(creds.client_id());
        connect.keep_alive = 60;
        connect.set_login(creds.username(), creds.expose_password().as_str());
        let mut bytes = BytesMut::new();
        connect.write(&mut bytes).expect("an encodable CONNECT");
        logins.push(Login {
            device: identity,
            connect: bytes.to_vec(),
        });
    }
    logins
}

/// Services over `store`, after one login of every device (so that the runs measure logins of
/// active devices, which only read).
async fn activated(store: Arc<dyn Store>, logins: &[Login]) -> Arc<Services> {
    let services = Arc::new(Services::new(store, ServerConfig::default()));
    let address = start(Some(services.clone())).await;
    for login in logins {
        let accepted = connect_once(address, &login.connect).await;
        assert!(matches!(accepted, Ok(true)), "a first login: {accepted:?}");
    }
    services
}

/// A broker on a free loopback port; `None`: the one without authentication.
async fn start(services: Option<Arc<Services>>) -> SocketAddr {
    let config = BrokerConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
    let broker = match services {
        Some(services) => Broker::start(&config, services).await,
        None => Broker::start_without_authentication(&config).await,
    }
    .expect("a broker");
    broker.local_addrs()[0].1
}

/// One connect: `Ok(true)` when the broker accepted the CONNECT (CONNACK return code 0),
/// `Ok(false)` when it refused it (a CONNACK with another code); an error when the connection
/// failed before a CONNACK arrived.
async fn connect_once(address: SocketAddr, packet: &[u8]) -> std::io::Result<bool> {
    let mut stream = TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    stream.write_all(packet).await?;
    let mut connack = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut connack))
        .await
        .map_err(std::io::Error::other)??;
    // The verdict is in; how the connection ends does not change it. rmqtt waits for the
    // client to close after a DISCONNECT, so the client closes first; its TIME_WAIT sockets
    // are reused on loopback (Linux's default `tcp_tw_reuse = 2`), so a long run does not
    // exhaust the ephemeral ports.
    let _ = stream.write_all(&DISCONNECT).await;
    let _ = stream.shutdown().await;
    let mut rest = [0u8; 16];
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while matches!(stream.read(&mut rest).await, Ok(n) if n > 0) {}
    })
    .await;
    Ok(connack == [0x20, 0x02, 0x00, 0x00])
}

/// User + system CPU time of this process, plus that of `other` (a broker's process id).
fn cpu_seconds(other: Option<u32>) -> f64 {
    let this = process_cpu_seconds("/proc/self/stat");
    this + other.map_or(0.0, |pid| process_cpu_seconds(&format!("/proc/{pid}/stat")))
}

/// A process's user + system CPU time, from its `stat` file.
fn process_cpu_seconds(stat: &str) -> f64 {
    let stat = std::fs::read_to_string(stat).expect("a /proc stat file");
    // The fields after the command name (which may hold spaces) start at field 3, `state`;
    // utime and stime are fields 14 and 15, in clock ticks.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("a stat line")
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    let per_second: f64 = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0);
    ticks / per_second
}

/// What `CONNECTIONS` concurrent clients got over a run: CONNECTs accepted and refused, and
/// connections that failed before a CONNACK (a busy loopback, not a verdict).
#[derive(Default)]
struct Tally {
    accepted: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
}

/// Connects for `duration` from `CONNECTIONS` concurrent clients; the tally and the time taken.
async fn connect_rate(
    address: SocketAddr,
    logins: &[Login],
    duration: Duration,
) -> (Arc<Tally>, f64) {
    let packets: Arc<Vec<Vec<u8>>> = Arc::new(logins.iter().map(|l| l.connect.clone()).collect());
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let deadline = started + duration;
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|client| {
            let (packets, tally) = (packets.clone(), tally.clone());
            tokio::spawn(async move {
                // Each client keeps to its own devices, so that no two connects of one device
                // overlap (a newer login closes the older connection).
                let mut next = client;
                while Instant::now() < deadline {
                    let packet = &packets[next];
                    next = (next + CONNECTIONS) % (packets.len() / CONNECTIONS * CONNECTIONS);
                    let count = match connect_once(address, packet).await {
                        Ok(true) => &tally.accepted,
                        Ok(false) => &tally.refused,
                        Err(_) => &tally.failed,
                    };
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for client in clients {
        client.await.expect("a client task");
    }
    (tally, started.elapsed().as_secs_f64())
}

/// Messages delivered to `PUBLISHERS` devices that publish to their own topic at `RATE`/s for
/// `duration` and are subscribed to it.
async fn publish_rate(address: SocketAddr, logins: &[Login], duration: Duration) -> u64 {
    let delivered = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = logins[..PUBLISHERS]
        .iter()
        .map(|login| {
            let topic = format!(
                "/{}/{}/user/update",
                login.device.product_key(),
                login.device.device_name()
            );
            let (connect, delivered) = (login.connect.clone(), delivered.clone());
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(address).await.expect("a connection");
                stream.set_nodelay(true).expect("TCP_NODELAY");
                stream.write_all(&connect).await.expect("CONNECT");
                let mut connack = [0u8; 4];
                stream.read_exact(&mut connack).await.expect("CONNACK");
                assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "CONNECT refused");
                let mut packet = BytesMut::new();
                let mut subscribe = rumqttc::Subscribe::new(&topic, rumqttc::QoS::AtMostOnce);
                subscribe.pkid = 1;
                subscribe.write(&mut packet).expect("SUBSCRIBE");
                stream.write_all(&packet).await.expect("SUBSCRIBE sent");
                let mut suback = [0u8; 5];
                stream.read_exact(&mut suback).await.expect("SUBACK");
                assert_eq!(suback[4], 0, "subscription refused");
                packet.clear();
                rumqttc::Publish::new(&topic, rumqttc::QoS::AtMostOnce, vec![b'x'; 64])
                    .write(&mut packet)
                    .expect("PUBLISH");
                let publish = packet.to_vec();
                let (mut reader, mut writer) = stream.into_split();
                let reading = tokio::spawn(async move {
                    let mut buffer = vec![0u8; 64 * 1024];
                    let mut bytes = 0;
                    while let Ok(Ok(n)) =
                        tokio::time::timeout(Duration::from_secs(1), reader.read(&mut buffer)).await
                    {
                        if n == 0 {
                            break;
                        }
                        bytes += n;
                    }
                    bytes / publish.len()
                });
                // Ten messages every 10 ms: RATE per second.
                let batch: Vec<u8> = packet.repeat((RATE / 100) as usize);
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                let deadline = Instant::now() + duration;
                while Instant::now() < deadline {
                    tick.tick().await;
                    writer.write_all(&batch).await.expect("PUBLISH sent");
                }
                let received = reading.await.expect("the reader");
                let _ = writer.write_all(&DISCONNECT).await;
                delivered.fetch_add(received as u64, Ordering::Relaxed);
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a publisher");
    }
    delivered.load(Ordering::Relaxed)
}
