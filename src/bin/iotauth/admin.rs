//! `iotauth product …` and `iotauth device …`: administration of a store.

use std::io::{BufRead, BufReader, Write};
use std::sync::Arc;

use clap::{Subcommand, ValueEnum};
use iotauth::service::{
    Admin, AdminError, DeviceView, IssuedDeviceView, ProductUpdate, ProductView,
};
use iotauth::store::Entity;
use iotauth::store::{
    DeviceRecord, KeyFileError, MasterKey, PreRegistrationFree, ProductRecord, SecretsAtRest,
    SqlStore, Store, StoreError,
};
use iotauth::{DeviceName, DynamicRegistration, Event, ProductKey};
use serde::Serialize;

use crate::{Failure, print_json};

#[derive(Subcommand)]
pub(crate) enum ProductCommand {
    /// Create a product with a generated ProductKey and ProductSecret.
    Create {
        /// A label for operators (1-64 characters).
        #[arg(long)]
        name: Option<String>,
        /// Turn dynamic registration on (off by default).
        #[arg(long)]
        dynamic_registration: bool,
        /// Also allow registration without pre-registration (MQTT authType=regnwl): a device
        /// not registered in advance is created by its first registration.
        #[arg(long, requires = "dynamic_registration")]
        pre_registration_free: bool,
        /// The most devices the product may have for regnwl to create another.
        #[arg(long, default_value_t = PreRegistrationFree::DEFAULT_DEVICE_QUOTA)]
        device_quota: u32,
    },
    /// Show one product (without its secret unless --show-secret).
    Show {
        product_key: String,
        /// Also print the secret(s).
        #[arg(long)]
        show_secret: bool,
    },
    /// List every product (without secrets unless --show-secret).
    List {
        /// Also print the secret(s).
        #[arg(long)]
        show_secret: bool,
    },
    /// Bring in products issued by Alibaba Cloud, keys and secrets unchanged: JSON lines or
    /// CSV with a header row, fields ProductKey, ProductSecret [, ProductName,
    /// DynamicRegistration (true/false)]; other fields are ignored. All or nothing; a re-run
    /// changes nothing. Prints {"created","unchanged"}.
    Import { file: std::path::PathBuf },
    /// Turn a product's dynamic registration on or off.
    DynamicRegistration { product_key: String, switch: Switch },
    /// Set a product's limits on dynamic registration: the issue rate (token bucket: --rate a
    /// second, bursts of --burst; beyond, code 429), the circuit breaker (more than
    /// --refusal-threshold refusals within --refusal-window-secs switch dynamic registration
    /// off; 0: never), and --unique-random (refuse a registration whose random was seen for
    /// the device). What is not given is kept. Prints the product.
    RegistrationLimit {
        product_key: String,
        /// Issues a second, 1-1000000 [new products: 10].
        #[arg(long)]
        rate: Option<u32>,
        /// Issues at once [new products: 100].
        #[arg(long)]
        burst: Option<u32>,
        /// Refusals (bad signature, unknown device, already issued, replayed random) that
        /// switch dynamic registration off; 0: never [new products: 100].
        #[arg(long)]
        refusal_threshold: Option<u32>,
        /// The window of --refusal-threshold, in seconds [new products: 60].
        #[arg(long)]
        refusal_window_secs: Option<u32>,
        /// Refuse a registration whose random was seen for the device (not for devices that
        /// send a constant random, as iotkit-embedded 3.x does) [new products: off].
        #[arg(long)]
        unique_random: Option<Switch>,
    },
    /// Turn a product's registration without pre-registration (regnwl) on or off; in effect
    /// only while dynamic registration is on.
    PreRegistrationFree {
        product_key: String,
        switch: Switch,
        /// A new device quota (kept when not given).
        #[arg(long)]
        device_quota: Option<u32>,
    },
}

#[derive(Subcommand)]
pub(crate) enum StoreCommand {
    /// Re-seal every secret under a new master key (created, mode 0600, when the file does
    /// not exist); the current key (--master-key-file, or PATH.key beside a SQLite database)
    /// and any --previous-key-file still open what is sealed under them. Online: give every
    /// server the new key first (see the README). Prints the new key's id and the count.
    Rekey {
        /// The new master key file: read when it exists, else created with a fresh key.
        #[arg(long)]
        new_key_file: std::path::PathBuf,
    },
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RekeyedJson {
    key_id: String,
    key_file: String,
    resealed: u64,
}

/// `iotauth store …`, on its own single-threaded runtime (it needs the SQL store itself).
pub(crate) fn store(
    url: &str,
    mut secrets: SecretsAtRest,
    command: StoreCommand,
) -> Result<(), Failure> {
    let StoreCommand::Rekey { new_key_file } = command;
    if secrets.insecure_plaintext {
        return Err(Failure::Usage(
            "store rekey seals secrets: drop --insecure-plaintext-secrets".into(),
        ));
    }
    // A rekey works on a store that exists: a mistyped path would create an empty one.
    if let Some(database) = SqlStore::sqlite_file(url)
        && !database.exists()
    {
        return Err(Failure::rejected(format!(
            "no store at {}: nothing to re-seal",
            database.display()
        )));
    }
    let current = match (&secrets.master_key_file, SqlStore::default_key_file(url)) {
        (Some(file), _) => file.clone(),
        (None, Some(default)) => default,
        (None, None) => {
            return Err(Failure::Usage(
                "--master-key-file (the current key) is required".into(),
            ));
        }
    };
    let runtime = crate::current_thread_runtime()?;
    let (key_id, resealed) = runtime.block_on(async {
        // The store opens with the keys it has now (and the new one, when it exists: processes
        // given it may have sealed under it already) before a new key is made, so that a
        // refusal leaves no stray key file behind.
        let mut current_keys = secrets.clone();
        if new_key_file.exists() {
            current_keys.previous_key_files.push(new_key_file.clone());
        }
        SqlStore::connect_with(url, &current_keys)
            .await?
            .close()
            .await;
        match MasterKey::create_file(&new_key_file) {
            Ok(_) => eprintln!(
                "created {} (mode 0600): secrets are being re-sealed under it; give it to \
                 every process of this store",
                new_key_file.display()
            ),
            Err(KeyFileError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(StoreError::from(e)),
        }
        secrets.previous_key_files.insert(0, current);
        secrets.master_key_file = Some(new_key_file.clone());
        let store = SqlStore::connect_with(url, &secrets).await?;
        let resealed = store.rekey().await?;
        Ok::<_, StoreError>((store.sealing_key_id(), resealed))
    })?;
    print_json(&RekeyedJson {
        key_id: key_id.map(|id| id.to_string()).unwrap_or_default(),
        key_file: new_key_file.display().to_string(),
        resealed,
    })
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Switch {
    On,
    Off,
}

#[derive(Subcommand)]
pub(crate) enum DeviceCommand {
    /// Register a device (Inactive) with a generated DeviceSecret.
    Register {
        product_key: String,
        device_name: String,
    },
    /// Register the devices named in FILE, one a line (1 to 10,000), all or none; JSON lines
    /// out, with their secrets.
    RegisterBatch {
        product_key: String,
        file: std::path::PathBuf,
    },
    /// Bring in device certificates issued by Alibaba Cloud, secrets unchanged: JSON lines or
    /// CSV with a header row, fields ProductKey, DeviceName, DeviceSecret [, Status:
    /// UNACTIVE, ONLINE, OFFLINE, DISABLE] as QueryDeviceDetail returns them; other fields are
    /// ignored. All or nothing; a re-run changes nothing. Prints {"created","unchanged"}.
    Import { file: std::path::PathBuf },
    /// Show one device (never its secret).
    Show {
        product_key: String,
        device_name: String,
    },
    /// List a product's devices.
    List { product_key: String },
    /// A product's devices as JSON lines by Alibaba's field names (ProductKey, DeviceName,
    /// Status, and DeviceSecret with --show-secret): what `device import` reads back.
    Export {
        product_key: String,
        /// Also print the secret(s).
        #[arg(long)]
        show_secret: bool,
    },
    /// Disable a device: it can neither log in nor register.
    Disable {
        product_key: String,
        device_name: String,
    },
    /// Enable a device again.
    Enable {
        product_key: String,
        device_name: String,
    },
    /// Reset a device: back to Inactive with a new DeviceSecret (printed).
    Reset {
        product_key: String,
        device_name: String,
    },
    /// Delete a device.
    Delete {
        product_key: String,
        device_name: String,
    },
}

/// `product`, with its secret when `show_secret`.
fn product_view(product: &ProductRecord, show_secret: bool) -> ProductView<'_> {
    if show_secret {
        ProductView::exposing_secret(product)
    } else {
        ProductView::of(product)
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DeletedJson {
    product_key: ProductKey,
    device_name: DeviceName,
    deleted: bool,
}

type Administration = Admin<Arc<dyn Store>>;

/// `e` of an operation on product `pk`, an unknown product named.
fn of_product(e: AdminError, pk: &ProductKey) -> Failure {
    match e {
        AdminError::Store(StoreError::NotFound { .. }) => {
            Failure::rejected(format!("product {pk} not found"))
        }
        AdminError::Limit(e) => Failure::Usage(e.to_string()),
        other => other.into(),
    }
}

async fn product_of(admin: &Administration, pk: &ProductKey) -> Result<ProductRecord, Failure> {
    admin.product(pk).await.map_err(|e| of_product(e, pk))
}

async fn device_of(
    admin: &Administration,
    pk: &ProductKey,
    dn: &DeviceName,
) -> Result<DeviceRecord, Failure> {
    admin.device(pk, dn).await.map_err(|e| named(e, pk, dn))
}

fn named(e: AdminError, pk: &ProductKey, dn: &DeviceName) -> Failure {
    match e {
        AdminError::Store(StoreError::NotFound {
            what: Entity::Product,
        }) => Failure::rejected(format!("product {pk} not found")),
        AdminError::Store(StoreError::NotFound { .. }) => {
            Failure::rejected(format!("device {dn} of product {pk} not found"))
        }
        AdminError::Store(StoreError::AlreadyExists { .. }) => {
            Failure::rejected(format!("device {dn} of product {pk} is already registered"))
        }
        AdminError::Store(e) => e.into(),
        other => other.into(),
    }
}

pub(crate) async fn product(store: Arc<dyn Store>, command: ProductCommand) -> Result<(), Failure> {
    let admin = Admin::new(store.clone());
    let (product_key, update) = match command {
        ProductCommand::Create {
            name,
            dynamic_registration,
            pre_registration_free,
            device_quota,
        } => {
            let switch = if dynamic_registration {
                DynamicRegistration::On
            } else {
                DynamicRegistration::Off
            };
            let mut product = admin.create_product(name.as_deref(), switch).await?;
            let setting = PreRegistrationFree {
                on: pre_registration_free,
                device_quota,
            };
            if setting != product.pre_registration_free {
                let mut update = ProductUpdate::default();
                update.pre_registration_free = Some(pre_registration_free);
                update.device_quota = Some(device_quota);
                admin.update_product(&product.product_key, update).await?;
                product.pre_registration_free = setting;
            }
            return print_json(&ProductView::exposing_secret(&product));
        }
        ProductCommand::Show {
            product_key,
            show_secret,
        } => {
            let product_key = ProductKey::new(&product_key)?;
            let product = product_of(&admin, &product_key).await?;
            return print_json(&product_view(&product, show_secret));
        }
        ProductCommand::Import { file } => {
            return crate::import::import_products(store, &file).await;
        }
        ProductCommand::List { show_secret } => {
            let products = admin.products().await?;
            return print_json(
                &products
                    .iter()
                    .map(|p| product_view(p, show_secret))
                    .collect::<Vec<_>>(),
            );
        }
        ProductCommand::PreRegistrationFree {
            product_key,
            switch,
            device_quota,
        } => {
            let mut update = ProductUpdate::default();
            update.pre_registration_free = Some(matches!(switch, Switch::On));
            update.device_quota = device_quota;
            (product_key, update)
        }
        ProductCommand::RegistrationLimit {
            product_key,
            rate,
            burst,
            refusal_threshold,
            refusal_window_secs,
            unique_random,
        } => {
            let mut update = ProductUpdate::default();
            update.rate = rate;
            update.burst = burst;
            update.refusal_threshold = refusal_threshold;
            update.refusal_window_secs = refusal_window_secs;
            update.unique_random = unique_random.map(|s| matches!(s, Switch::On));
            (product_key, update)
        }
        ProductCommand::DynamicRegistration {
            product_key,
            switch,
        } => {
            let mut update = ProductUpdate::default();
            update.dynamic_registration = Some(match switch {
                Switch::On => DynamicRegistration::On,
                Switch::Off => DynamicRegistration::Off,
            });
            (product_key, update)
        }
    };
    let product_key = ProductKey::new(&product_key)?;
    let product = admin
        .update_product(&product_key, update)
        .await
        .map_err(|e| of_product(e, &product_key))?;
    print_json(&ProductView::of(&product))
}

/// Validates a product key and device name given on the command line (exit 1 when bad).
fn identify(product_key: &str, device_name: &str) -> Result<(ProductKey, DeviceName), Failure> {
    Ok((ProductKey::new(product_key)?, DeviceName::new(device_name)?))
}

pub(crate) async fn device(store: Arc<dyn Store>, command: DeviceCommand) -> Result<(), Failure> {
    let admin = Admin::new(store.clone());
    match command {
        DeviceCommand::Register {
            product_key,
            device_name,
        } => {
            let (product_key, device_name) = identify(&product_key, &device_name)?;
            let device = admin
                .register_device(product_key, device_name)
                .await
                .map_err(|e| named(e, &product_key, &device_name))?;
            print_json(&IssuedDeviceView::exposing_secret(&device))
        }
        DeviceCommand::Import { file } => crate::import::import_devices(store, &file).await,
        DeviceCommand::RegisterBatch { product_key, file } => {
            register_batch(&admin, ProductKey::new(&product_key)?, &file).await
        }
        DeviceCommand::Show {
            product_key,
            device_name,
        } => {
            let (pk, dn) = identify(&product_key, &device_name)?;
            print_json(&DeviceView::of(&device_of(&admin, &pk, &dn).await?))
        }
        DeviceCommand::Export {
            product_key,
            show_secret,
        } => {
            let product_key = ProductKey::new(&product_key)?;
            let devices = admin
                .devices(&product_key)
                .await
                .map_err(|e| of_product(e, &product_key))?;
            crate::import::export_devices(&devices, show_secret)
        }
        DeviceCommand::List { product_key } => {
            const PAGE: u32 = 1000;
            let product_key = ProductKey::new(&product_key)?;
            // Page by page: a listing reads no secret.
            let mut listed = Vec::new();
            loop {
                let (_, page) = admin
                    .device_page(&product_key, listed.len() as u64, PAGE)
                    .await
                    .map_err(|e| of_product(e, &product_key))?;
                let last = page.len() < PAGE as usize;
                listed.extend(page.into_iter().map(DeviceView::of_summary));
                if last {
                    break;
                }
            }
            print_json(&listed)
        }
        DeviceCommand::Disable {
            ref product_key,
            ref device_name,
        }
        | DeviceCommand::Enable {
            ref product_key,
            ref device_name,
        }
        | DeviceCommand::Reset {
            ref product_key,
            ref device_name,
        }
        | DeviceCommand::Delete {
            ref product_key,
            ref device_name,
        } => {
            let (pk, dn) = identify(product_key, device_name)?;
            let event = match command {
                DeviceCommand::Disable { .. } => Event::Disable,
                DeviceCommand::Enable { .. } => Event::Enable,
                DeviceCommand::Reset { .. } => Event::Reset,
                _ => Event::Delete,
            };
            admin
                .apply(&pk, &dn, event)
                .await
                .map_err(|e| named(e, &pk, &dn))?;
            match event {
                Event::Delete => print_json(&DeletedJson {
                    product_key: pk,
                    device_name: dn,
                    deleted: true,
                }),
                // The new secret must reach the device once: print it like `register` does.
                Event::Reset => print_json(&IssuedDeviceView::exposing_secret(
                    &device_of(&admin, &pk, &dn).await?,
                )),
                _ => print_json(&DeviceView::of(&device_of(&admin, &pk, &dn).await?)),
            }
        }
    }
}

/// Reads every name first (so a bad line writes nothing), then registers them all or none
/// (BatchRegisterDevice, [`Admin::register_devices`]), printing one JSON line each.
async fn register_batch(
    admin: &Administration,
    product_key: ProductKey,
    file: &std::path::Path,
) -> Result<(), Failure> {
    let reader = std::fs::File::open(file)
        .map_err(|e| Failure::rejected(format!("{}: {e}", file.display())))?;
    // (line number, name) of each non-empty line.
    let mut lines: Vec<(usize, DeviceName)> = Vec::new();
    for (index, line) in BufReader::new(reader).lines().enumerate() {
        let line = line.map_err(|e| Failure::rejected(format!("{}: {e}", file.display())))?;
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        let name = DeviceName::new(text)
            .map_err(|e| Failure::rejected(format!("line {}: {e}", index + 1)))?;
        lines.push((index + 1, name));
    }
    let names: Vec<DeviceName> = lines.iter().map(|(_, name)| *name).collect();
    let devices = admin
        .register_devices(product_key, &names)
        .await
        .map_err(|e| match e {
            AdminError::InBatch { index, reason } => Failure::rejected(format!(
                "line {}: device {} {reason}: none was registered",
                lines[index].0, lines[index].1
            )),
            other => of_product(other, &product_key),
        })?;
    let mut out = std::io::stdout().lock();
    for device in &devices {
        let line = serde_json::to_string(&IssuedDeviceView::exposing_secret(device))?;
        writeln!(out, "{line}").map_err(|e| Failure::rejected(e.to_string()))?;
    }
    Ok(())
}
