//! `iotauth product import FILE`, `iotauth device import FILE` and `iotauth device export`:
//! the files of [`iotauth::service::parse_device_import`] (JSON lines or CSV by Alibaba's
//! field names), read and written here, checked and stored by the service layer.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use iotauth::service::{
    Admin, DeviceExport, ImportError, MAX_IMPORT_BYTES, parse_device_import, parse_product_import,
};
use iotauth::store::{DeviceRecord, Store};

use crate::progress::Progress;
use crate::{Failure, print_json};

/// The bytes of `path`, refused unread when over [`MAX_IMPORT_BYTES`].
fn read(path: &Path) -> Result<Vec<u8>, Failure> {
    let cannot =
        |e: std::io::Error| Failure::rejected(format!("cannot read {}: {e}", path.display()));
    if std::fs::metadata(path).map_err(cannot)?.len() > MAX_IMPORT_BYTES as u64 {
        return Err(ImportError::TooLarge.into());
    }
    std::fs::read(path).map_err(cannot)
}

pub(crate) async fn import_products(store: Arc<dyn Store>, file: &Path) -> Result<(), Failure> {
    let products = parse_product_import(&read(file)?)?;
    let summary = Admin::new(store).import_products(products).await?;
    print_json(&summary)
}

pub(crate) async fn import_devices(store: Arc<dyn Store>, file: &Path) -> Result<(), Failure> {
    let devices = parse_device_import(&read(file)?)?;
    let progress = Progress::new("checked", devices.len());
    let summary = Admin::new(store)
        .import_devices(devices, |done| progress.set(done))
        .await?;
    progress.finish();
    print_json(&summary)
}

/// Prints `devices` as `device import` reads them, one JSON object a line; their secrets only
/// with `show_secret`. A closed pipe ends the output quietly.
pub(crate) fn export_devices(devices: &[DeviceRecord], show_secret: bool) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    for device in devices {
        let line = serde_json::to_string(&DeviceExport::of(device, show_secret))?;
        if writeln!(out, "{line}").is_err() {
            return Ok(());
        }
    }
    Ok(())
}
