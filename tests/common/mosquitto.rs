//! A real Mosquitto broker on a free loopback port, and a raw MQTT 3.1.1 client: shared by
//! tests/mosquitto_plugin.rs and benches/mosquitto.rs (which uses only `Mosquitto::start` and
//! `connect_once`).
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rumqttc::{ConnectReturnCode, Packet, QoS};

/// A running `mosquitto -c` with its config and log in `dir`.
pub struct Mosquitto {
    pub child: Child,
    pub port: u16,
    pub dir: PathBuf,
}

impl Mosquitto {
    /// Starts Mosquitto with `lines` (plugin, password file, ...) after a loopback listener.
    /// It runs as root so that it can use the test's files (Mosquitto otherwise drops to its
    /// own user).
    pub fn start(dir: &Path, lines: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        // A free port is only free until someone binds it: another test may pick the same one
        // before this broker binds it, and then this broker exits ("Address already in use")
        // while the port answers for the other one. Such a start is retried on another port.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let config = dir.join("mosquitto.conf");
            let text = format!(
                "listener {port} 127.0.0.1\nallow_anonymous false\npersistence false\nuser root\n\
                 log_dest stderr\nlog_type all\n{lines}\n"
            );
            std::fs::write(&config, text).unwrap();
            let mut broker = Self {
                child: Self::spawn(dir),
                port,
                dir: dir.to_owned(),
            };
            if broker.wait_connectable() && broker.owns_its_port() {
                return broker;
            }
        }
        panic!("mosquitto found no free port in 5 tries");
    }

    /// Whether this broker, not another one, listens on its port: it logged opening it and is
    /// still running.
    fn owns_its_port(&mut self) -> bool {
        let opened = format!("listen socket on port {}.", self.port);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.child.try_wait().unwrap().is_some() {
                return false;
            }
            if self.log().contains(&opened) {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto did not say it listens: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `mosquitto -c DIR/mosquitto.conf`, appending to DIR/mosquitto.log.
    fn spawn(dir: &Path) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("mosquitto.log"))
            .unwrap();
        Command::new("mosquitto")
            .arg("-c")
            .arg(dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("mosquitto (Debian's mosquitto package) must be installed")
    }

    fn wait_up(&mut self) {
        assert!(
            self.wait_connectable(),
            "mosquitto did not come up: {}",
            self.log()
        );
    }

    /// Waits until the port accepts connections: `false` when the broker exited first.
    fn wait_connectable(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if self.child.try_wait().unwrap().is_some() {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto did not come up: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    /// Stops the broker the way a service manager does (SIGTERM: Mosquitto saves its
    /// persistence file, plugins clean up) and starts it again on the same config and port.
    pub fn restart(&mut self) {
        let stopped = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(stopped.success());
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "mosquitto stopped with {status}: {}",
            self.log()
        );
        self.child = Self::spawn(&self.dir);
        self.wait_up();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One CONNECT over a fresh TCP connection, then DISCONNECT; whether the broker accepted it.
pub fn connect_once(port: u16, client_id: &str, username: &str, password: &str) -> bool {
    MqttClient::connect(port, [client_id, username, password], true)
        .map(MqttClient::disconnect)
        .is_ok()
}

/// CONNECTs with `login` until the broker accepts it, every 20 ms within `wait`: a change that
/// lets the login in (a device enabled again) may take the broker a moment to read. The last
/// refusal's CONNACK code otherwise.
pub fn connect_when_allowed(
    port: u16,
    login: [&str; 3],
    wait: Duration,
) -> Result<MqttClient, Option<u8>> {
    let deadline = Instant::now() + wait;
    loop {
        match MqttClient::connect(port, login, true) {
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            outcome => return outcome,
        }
    }
}

/// How long a raw client waits for the broker's answer to CONNECT or SUBSCRIBE.
const ANSWER: Duration = Duration::from_secs(5);

/// A raw MQTT 3.1.1 client on one TCP connection that never reconnects (unlike `mosquitto_sub`),
/// so that a test sees when the broker closes it.
pub struct MqttClient {
    stream: TcpStream,
    /// Bytes read and not yet framed.
    unread: BytesMut,
}

/// What came from the broker.
pub enum Incoming {
    Packet(Packet),
    /// Nothing before the deadline; the connection is open.
    Nothing,
    /// The broker closed the connection.
    Closed,
}

impl MqttClient {
    /// CONNECT (keep-alive 30 s) with `[client id, user name, password]`: the client when the
    /// CONNACK accepts it, else the CONNACK's return code (`None`: no CONNACK at all).
    pub fn connect(
        port: u16,
        [id, user, password]: [&str; 3],
        clean: bool,
    ) -> Result<Self, Option<u8>> {
        let mut connect = rumqttc::Connect::new(id);
        connect.set_login(user, password);
        connect.keep_alive = 30;
        connect.clean_session = clean;
        let mut packet = BytesMut::new();
        connect.write(&mut packet).map_err(|_| None)?;
        let stream = TcpStream::connect(("127.0.0.1", port)).map_err(|_| None)?;
        let mut client = Self {
            stream,
            unread: BytesMut::new(),
        };
        client.stream.write_all(&packet).map_err(|_| None)?;
        match client.next(ANSWER) {
            Incoming::Packet(Packet::ConnAck(ack)) if ack.code == ConnectReturnCode::Success => {
                Ok(client)
            }
            Incoming::Packet(Packet::ConnAck(ack)) => Err(Some(ack.code as u8)),
            _ => Err(None),
        }
    }

    /// SUBSCRIBE to one filter; whether the SUBACK granted it.
    pub fn subscribe(&mut self, filter: &str, qos: QoS) -> bool {
        let mut subscribe = rumqttc::Subscribe::new(filter, qos);
        subscribe.pkid = 1;
        self.send(Packet::Subscribe(subscribe));
        match self.next(ANSWER) {
            Incoming::Packet(Packet::SubAck(ack)) => ack
                .return_codes
                .iter()
                .all(|code| *code != rumqttc::SubscribeReasonCode::Failure),
            _ => false,
        }
    }

    /// PUBLISH at QoS 0.
    pub fn publish(&mut self, topic: &str, payload: &str) {
        self.send(Packet::Publish(rumqttc::Publish::new(
            topic,
            QoS::AtMostOnce,
            payload,
        )));
    }

    /// The payload of the next PUBLISH within `wait`, skipping other packets.
    pub fn next_publish(&mut self, wait: Duration) -> Option<String> {
        let deadline = Instant::now() + wait;
        loop {
            match self.next(deadline.saturating_duration_since(Instant::now())) {
                Incoming::Packet(Packet::Publish(publish)) => {
                    return Some(String::from_utf8_lossy(&publish.payload).into_owned());
                }
                Incoming::Packet(_) => {}
                Incoming::Nothing | Incoming::Closed => return None,
            }
        }
    }

    /// Whether the broker still serves the connection: a PINGREQ answered within `wait`
    /// (anything the broker sent before the PINGRESP is dropped).
    pub fn is_served(&mut self, wait: Duration) -> bool {
        // A write to a connection the broker closed may succeed; the read tells.
        let _ = self.stream.write_all(&[0xC0, 0x00]);
        let deadline = Instant::now() + wait;
        loop {
            match self.next(deadline.saturating_duration_since(Instant::now())) {
                Incoming::Packet(Packet::PingResp) => return true,
                Incoming::Packet(_) => {}
                Incoming::Nothing | Incoming::Closed => return false,
            }
        }
    }

    /// Everything the broker sends within `wait`: the packets, and whether it then closed the
    /// connection.
    pub fn drain(&mut self, wait: Duration) -> (Vec<Packet>, bool) {
        let deadline = Instant::now() + wait;
        let mut packets = Vec::new();
        loop {
            match self.next(deadline.saturating_duration_since(Instant::now())) {
                Incoming::Packet(packet) => packets.push(packet),
                Incoming::Nothing => return (packets, false),
                Incoming::Closed => return (packets, true),
            }
        }
    }

    /// DISCONNECT, then close.
    pub fn disconnect(mut self) {
        let _ = self.stream.write_all(&[0xE0, 0x00]);
    }

    fn send(&mut self, packet: Packet) {
        let mut bytes = BytesMut::new();
        packet.write(&mut bytes, usize::MAX).unwrap();
        let _ = self.stream.write_all(&bytes);
    }

    /// The next packet within `wait`.
    pub fn next(&mut self, wait: Duration) -> Incoming {
        let deadline = Instant::now() + wait;
        loop {
            match Packet::read(&mut self.unread, 1 << 20) {
                Ok(packet) => return Incoming::Packet(packet),
                Err(rumqttc::Error::InsufficientBytes(_)) => {}
                Err(e) => panic!("the broker sent a malformed packet: {e}"),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Incoming::Nothing;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut buffer = [0u8; 4096];
            match self.stream.read(&mut buffer) {
                Ok(0) => return Incoming::Closed,
                Ok(n) => self.unread.extend_from_slice(&buffer[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Incoming::Nothing;
                }
                Err(_) => return Incoming::Closed,
            }
        }
    }
}
