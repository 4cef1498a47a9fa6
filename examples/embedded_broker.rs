//! The embedded MQTT broker as a library: every decision (login, topic rule, registration,
//! revocation) is the services', on the memory store. A device logs in with its signed
//! CONNECT, receives what it publishes on its own topic, is refused another device's topics,
//! and is disconnected when an operator disables it.
//!
//! Run with `cargo run --example embedded_broker --features broker`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use iotauth::broker::{Broker, BrokerConfig};
use iotauth::http::{ServerConfig, Services};
use iotauth::service::Admin;
use iotauth::store::{MemoryStore, Store};
use iotauth::*;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let admin = Admin::new(store.clone());
    let product = admin.create_product(None, DynamicRegistration::Off).await?;
    let device = admin
        .register_device(product.product_key, DeviceName::new("meter-01")?)
        .await?;

    let services = Arc::new(Services::new(store, ServerConfig::default()));
    let config = BrokerConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
    let broker = Broker::start(&config, services.clone()).await?;
    let address = broker.local_addrs()[0].1;
    println!("broker on mqtt://{address}");

    // The device side: what Alibaba's SDKs send.
    let cert = DeviceCertificate::new(device.product_key, device.device_name, device.device_secret);
    let creds = build_login(&cert, &LoginOptions::default())?;
    let mut options = MqttOptions::new(creds.client_id(), address.ip().to_string(), address.port());
    options.set_credentials(creds.username(), creds.expose_password().as_str());
    let (client, mut events) = AsyncClient::new(options, 10);

    let own = format!("/{}/meter-01/user/update", device.product_key);
    let other = format!("/{}/meter-02/user/get", device.product_key);
    client.subscribe(&own, QoS::AtMostOnce).await?;
    client.subscribe(&other, QoS::AtMostOnce).await?;
    client
        .publish(&own, QoS::AtMostOnce, false, "21.5 °C")
        .await?;

    let mut disabled = false;
    loop {
        let event = tokio::time::timeout(Duration::from_secs(5), events.poll()).await?;
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => println!("CONNACK {:?}", ack.code),
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                println!("SUBACK {:?}", ack.return_codes);
            }
            Ok(Event::Incoming(Packet::Publish(message))) => {
                println!(
                    "received on {}: {}",
                    message.topic,
                    String::from_utf8_lossy(&message.payload)
                );
                // The operator disables the device: the broker ends its session at once. (Through
                // `Admin::apply` alone, a broker learns of it only while it follows the store's
                // event log: `Services::follow_store_events`.)
                services
                    .apply_operator_event(
                        &device.product_key,
                        &device.device_name,
                        iotauth::Event::Disable,
                    )
                    .await?;
                disabled = true;
            }
            Ok(_) => {}
            Err(e) if disabled => {
                println!("disconnected after the device was disabled: {e}");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
    }
}
