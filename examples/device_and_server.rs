//! The whole flow in one process on the memory store: an operator creates a product and
//! pre-registers a device; the device obtains its secret by dynamic registration (once), signs
//! its MQTT CONNECT, and the server authenticates it.
//!
//! Run with `cargo run --example device_and_server`.

use std::sync::Arc;

use iotauth::service::{Admin, Authenticator, Registrar};
use iotauth::store::{DeviceStore, MemoryStore};
use iotauth::*;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = Arc::new(MemoryStore::new());
    let admin = Admin::new(store.clone());
    let product = admin.create_product(None, DynamicRegistration::On).await?;
    let name = DeviceName::new("meter-01")?;
    admin.register_device(product.product_key, name).await?;
    println!(
        "operator: product {} with device {name}",
        product.product_key
    );

    // Device side: only the product certificate is in the firmware.
    let product_cert = ProductCertificate::new(product.product_key, product.product_secret);
    let random = registration_random(&OsEntropy)?;
    let form = build_register_form(&product_cert, name, &random, SignMethod::HmacSha256)?;

    // Server side: POST /auth/register/device.
    let registrar = Registrar::new(store.clone());
    let reply = match registrar.register_form(form.body().as_bytes()).await {
        Ok(issued) => issued.into_reply(),
        Err(refusal) => refusal.to_reply(),
    };
    let wire = reply.to_json_exposing_secret();
    let second = registrar.register_form(form.body().as_bytes()).await;
    println!(
        "server: second registration refused with code {}",
        second.err().map_or(200, |e| e.code().code())
    );

    // Device side: parse the reply and sign the CONNECT.
    let RegisterReply::Issued {
        product_key,
        device_name,
        device_secret,
    } = RegisterReply::parse(wire.as_bytes())?
    else {
        return Err("registration refused".into());
    };
    let cert = DeviceCertificate::new(product_key, device_name, device_secret);
    let creds = build_login(&cert, &LoginOptions::default())?;
    println!(
        "device: CONNECT client id {} user name {}",
        creds.client_id(),
        creds.username()
    );

    // Server side: the broker's auth hook.
    let who = Authenticator::new(store.clone())
        .authenticate(
            creds.client_id(),
            creds.username(),
            &creds.expose_password(),
        )
        .await?;
    let state = store
        .device(&who.product_key(), &who.device_name())
        .await?
        .map(|d| d.status.state);
    println!(
        "server: authenticated {}/{}, now {:?}",
        who.product_key(),
        who.device_name(),
        state
    );
    Ok(())
}
