//! Connects per second through the embedded broker of `iotauth serve`, with authentication and
//! without, side by side in one run.
//!
//! Three rumqttd brokers are built from the configuration `serve` uses
//! (`src/bin/iotauth/broker.rs`): one that authenticates against a SQLite file (the embedded
//! default, no cache: every CONNECT reads the store, as in a reconnect storm), one against the
//! memory store, and one that authenticates nothing (the baseline). `CONNECTIONS` tasks then
//! connect for `SECONDS` to each in turn, each connect being TCP + CONNECT + CONNACK +
//! DISCONNECT with the credentials of one of `DEVICES` active devices. The baseline runs first
//! and last, so drift over the run shows.
//!
//! rumqttd 0.20 sleeps after every accepted connection (`next_connection_delay_ms`, and a tokio
//! timer of 0 ms still waits for the next 1 ms tick), so one listener admits at most about
//! 1,000 connects/s whatever the authentication costs. The process CPU time per connect (this
//! process runs the brokers and the clients) is printed too: the difference between the
//! variants is what authentication costs the broker.
//!
//! ```sh
//! cargo bench --features cli --bench connect_rate        # IOTAUTH_CONNECT_SECONDS (default 10)
//! cargo bench --features cli --bench connect_rate -- --test   # 1 s each: a smoke run
//! ```

#[path = "../src/bin/iotauth/broker.rs"]
mod broker;
#[path = "support/run_size.rs"]
mod run_size;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use iotauth::server::{ServerConfig, Services};
use iotauth::service::Admin;
use iotauth::store::Store;
use iotauth::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use run_size::run_size;

const DEVICES: usize = 1_000;
const CONNECTIONS: usize = 64;
/// MQTT DISCONNECT.
const DISCONNECT: [u8; 2] = [0xe0, 0x00];

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

    let (sqlite, packets) = runtime.block_on(async {
        let url = format!("sqlite://{}", dir.join("devices.db").display());
        let sqlite = iotauth::store::open(&url).await.expect("the SQLite store");
        let packets = fleet(&sqlite).await;
        (sqlite, packets)
    });
    let memory: Arc<dyn Store> = Arc::new(iotauth::store::MemoryStore::new());
    let memory_packets = runtime.block_on(fleet(&memory));

    let open = start(None);
    let on_sqlite = start(Some(services(sqlite, &runtime, &packets)));
    let on_memory = start(Some(services(memory, &runtime, &memory_packets)));
    let duration = Duration::from_secs(seconds);
    println!(
        "{CONNECTIONS} concurrent clients, {DEVICES} devices, {seconds} s per broker; \
         each connect = TCP + CONNECT + CONNACK + DISCONNECT"
    );
    let mut baseline = Vec::new();
    for (name, address, packets) in [
        ("no authentication", open, &packets),
        ("iotauth, SQLite store", on_sqlite, &packets),
        ("iotauth, memory store", on_memory, &memory_packets),
        ("no authentication (again)", open, &packets),
    ] {
        let cpu_before = process_cpu_seconds();
        let (connects, elapsed, refused) =
            runtime.block_on(connect_rate(address, packets, duration));
        let cpu_micros_per_connect = (process_cpu_seconds() - cpu_before) * 1e6 / connects as f64;
        let rate = connects as f64 / elapsed;
        if address == open {
            baseline.push(rate);
        }
        let ratio = rate / baseline[0];
        println!(
            "connect_rate/{name:<26} {rate:>7.0} connects/s  {ratio:.3} x first baseline  \
             {cpu_micros_per_connect:>6.1} us CPU per connect  refused: {refused}"
        );
        assert_eq!(refused, 0, "{name}: good credentials were refused");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A product with `DEVICES` devices in `store`, and each device's CONNECT packet.
async fn fleet(store: &Arc<dyn Store>) -> Vec<Vec<u8>> {
    let admin = Admin::new(store.clone());
    let product = admin
        .create_product(None, DynamicRegistration::Off)
        .await
        .expect("a product");
    let mut packets = Vec::with_capacity(DEVICES);
    for i in 0..DEVICES {
        let name = DeviceName::new(&format!("storm-{i:05}")).expect("a device name");
        let device = admin
            .register_device(product.product_key, name)
            .await
            .expect("a device");
        let cert =
            DeviceCertificate::new(device.product_key, device.device_name, device.device_secret);
        let options = LoginOptions {
            timestamp: Some("1710000000000"),
            ..Default::default()
        };
        let creds = build_login(&cert, &options).expect("a login");
        let mut connect = rumqttc::Connect::new(creds.client_id());
        connect.keep_alive = 60;
        connect.set_login(creds.username(), creds.expose_password());
        let mut bytes = BytesMut::new();
        connect.write(&mut bytes).expect("an encodable CONNECT");
        packets.push(bytes.to_vec());
    }
    packets
}

/// Services over `store`, after one login of every device (so that the run measures logins
/// of active devices, which only read).
fn services(
    store: Arc<dyn Store>,
    runtime: &tokio::runtime::Runtime,
    packets: &[Vec<u8>],
) -> Arc<Services> {
    let services = Arc::new(Services::new(store, ServerConfig::default()));
    let address = start(Some(services.clone()));
    let (_, refused) = runtime.block_on(connect_each_once(address, packets));
    assert_eq!(refused, 0, "first logins refused");
    services
}

/// A broker on a free loopback port, on its own threads.
fn start(services: Option<Arc<Services>>) -> SocketAddr {
    let address = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let mut broker = rumqttd::Broker::new(broker::config(address, None, services));
    std::thread::spawn(move || {
        if let Err(e) = broker.start() {
            eprintln!("the broker on {address} stopped: {e}");
        }
    });
    for _ in 0..100 {
        if std::net::TcpStream::connect(address).is_ok() {
            return address;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the broker on {address} did not start");
}

/// One connect: `Ok(true)` when the broker accepted the CONNECT (CONNACK return code 0).
async fn connect_once(address: SocketAddr, packet: &[u8]) -> std::io::Result<bool> {
    let mut stream = TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    stream.write_all(packet).await?;
    let mut connack = [0u8; 4];
    if stream.read_exact(&mut connack).await.is_err() {
        // rumqttd refuses by closing the connection.
        return Ok(false);
    }
    stream.write_all(&DISCONNECT).await?;
    // The broker closes first, so the TIME_WAIT sockets are its (on its one port) rather than
    // ours, and a long run does not exhaust the ephemeral ports.
    let mut rest = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        while stream.read(&mut rest).await? > 0 {}
        Ok::<_, std::io::Error>(())
    });
    closed.await.map_err(std::io::Error::other)??;
    Ok(connack == [0x20, 0x02, 0x00, 0x00])
}

async fn connect_each_once(address: SocketAddr, packets: &[Vec<u8>]) -> (u64, u64) {
    let mut refused = 0;
    for packet in packets {
        if !connect_once(address, packet).await.unwrap_or(false) {
            refused += 1;
        }
    }
    (packets.len() as u64, refused)
}

/// This process's user + system CPU time, from `/proc/self/stat`.
fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
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

/// Accepted connects over `duration` from `CONNECTIONS` concurrent clients, the time taken, and
/// how many connects were refused or failed.
async fn connect_rate(
    address: SocketAddr,
    packets: &[Vec<u8>],
    duration: Duration,
) -> (u64, f64, u64) {
    let packets: Arc<Vec<Vec<u8>>> = Arc::new(packets.to_vec());
    let accepted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|client| {
            let (packets, accepted, refused) = (packets.clone(), accepted.clone(), refused.clone());
            tokio::spawn(async move {
                let mut next = client;
                while Instant::now() < deadline {
                    let packet = &packets[next % packets.len()];
                    next += CONNECTIONS;
                    match connect_once(address, packet).await {
                        Ok(true) => accepted.fetch_add(1, Ordering::Relaxed),
                        _ => refused.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for client in clients {
        client.await.expect("a client task");
    }
    (
        accepted.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
        refused.load(Ordering::Relaxed),
    )
}
