//! A real Mosquitto broker on a free loopback port, and a raw MQTT 3.1.1 CONNECT client:
//! shared by tests/mosquitto_plugin.rs and benches/mosquitto.rs.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("mosquitto.log")).unwrap())
            .spawn()
            .expect("mosquitto (Debian's mosquitto package) must be installed");
        let broker = Self {
            child,
            port,
            dir: dir.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not come up: {}",
                broker.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        broker
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
    let mut connect = rumqttc::Connect::new(client_id);
    connect.set_login(username, password);
    connect.keep_alive = 30;
    let mut packet = bytes::BytesMut::new();
    if connect.write(&mut packet).is_err() {
        return false;
    }
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if stream.write_all(&packet).is_err() {
        return false;
    }
    let mut connack = [0u8; 4];
    let accepted = stream.read_exact(&mut connack).is_ok() && connack[0] == 0x20 && connack[3] == 0;
    let _ = stream.write_all(&[0xE0, 0x00]); // DISCONNECT
    accepted
}
