//! The embedded broker's configuration: rumqttd with one MQTT 3.1.1 listener whose logins go
//! through the authenticator. Shared, as a source file, by `iotauth serve` and by
//! `benches/connect_rate.rs`, so that the benchmark measures the broker `serve` runs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use iotauth::server::Services;
use rumqttd::{Config, ConnectionSettings, RouterConfig, ServerSettings};

/// The broker's configuration. `tls` names the PEM certificate chain and key. `services`
/// verifies each CONNECT; `None` leaves CONNECTs unauthenticated, which only the connect-rate
/// benchmark asks for (its baseline): `serve` always passes its services.
pub(crate) fn config(
    address: SocketAddr,
    tls: Option<(&Path, &Path)>,
    services: Option<Arc<Services>>,
) -> Config {
    let mut connections = ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: 256 * 1024,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    if let Some(services) = services {
        connections.set_auth_handler(
            move |client_id: String, username: String, password: String| {
                let services = services.clone();
                async move {
                    services
                        .login(&client_id, &username, &password)
                        .await
                        .is_ok()
                }
            },
        );
    }
    let server = ServerSettings {
        name: "iotauth".into(),
        listen: address,
        tls: tls.map(|(cert, key)| rumqttd::TlsConfig::Rustls {
            capath: None,
            certpath: cert.display().to_string(),
            keypath: key.display().to_string(),
        }),
        // rumqttd sleeps this long after every accepted connection. Even 0 waits for the next
        // 1 ms timer tick, so a listener admits about 1,000 connects/s at most (see
        // benches/connect_rate.rs); a longer delay would lower that further.
        next_connection_delay_ms: 0,
        connections,
    };
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: 10_000,
            max_outgoing_packet_count: 200,
            max_segment_size: 1 << 20,
            max_segment_count: 10,
            ..Default::default()
        },
        v4: Some(HashMap::from([("iotauth".to_string(), server)])),
        ..Default::default()
    }
}
