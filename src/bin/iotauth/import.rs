//! `iotauth product import FILE` and `iotauth device import FILE`: products and device
//! certificates issued by Alibaba Cloud IoT Platform, brought in unchanged, from JSON lines or
//! CSV with a header row, with the field names Alibaba's exports use.
//!
//! Every line is parsed and checked against the store before anything is written: a bad line
//! (named by its number and field, never its value) or a secret that differs from a stored
//! one aborts the whole file. Fields other than the ones read are ignored, so an export is
//! imported as it is; a field read twice in one row is refused.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use iotauth::service::{Admin, AdminError, Imported};
use iotauth::store::{DeviceRecord, Store};
use iotauth::{
    DeviceName, DeviceSecret, DeviceState, DeviceStatus, DynamicRegistration, ProductKey,
    ProductSecret,
};
use serde::Serialize;
use serde::de::{Deserializer, MapAccess, Visitor};

use crate::{Failure, print_json};

/// The most bytes an import file may have (a million devices are about 100 MB).
const MAX_FILE_BYTES: u64 = 256 << 20;

/// One row: its line number and the fields read from it.
struct Row {
    line: u64,
    fields: HashMap<&'static str, String>,
}

impl Row {
    fn refused(&self, field: &str, why: impl std::fmt::Display) -> Failure {
        Failure::Rejected(format!("line {}: {field}: {why}", self.line))
    }

    fn optional(&self, field: &'static str) -> Option<&str> {
        self.fields.get(field).map(String::as_str)
    }

    fn required(&self, field: &'static str) -> Result<&str, Failure> {
        self.optional(field)
            .ok_or_else(|| self.refused(field, "missing"))
    }

    fn parsed<T, E: std::fmt::Display>(
        &self,
        field: &'static str,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<T, Failure> {
        parse(self.required(field)?).map_err(|e| self.refused(field, e))
    }
}

/// The rows of `path`, keeping the `fields` it names: JSON lines when its first character
/// (after white space) is `{`, else CSV with a header row.
fn read_rows(path: &Path, fields: &[&'static str]) -> Result<Vec<Row>, Failure> {
    let cannot =
        |e: std::io::Error| Failure::Rejected(format!("cannot read {}: {e}", path.display()));
    if std::fs::metadata(path).map_err(cannot)?.len() > MAX_FILE_BYTES {
        return Err(Failure::Rejected(format!(
            "{} is over {} MiB",
            path.display(),
            MAX_FILE_BYTES >> 20
        )));
    }
    let text = std::fs::read_to_string(path).map_err(cannot)?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    if text.trim_start().starts_with('{') {
        json_rows(text, fields)
    } else {
        csv_rows(text, fields)
    }
}

fn json_rows(text: &str, fields: &[&'static str]) -> Result<Vec<Row>, Failure> {
    let mut rows = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line_number = index as u64 + 1;
        if line.trim().is_empty() {
            continue;
        }
        let refused = |why: &str| Failure::Rejected(format!("line {line_number}: {why}"));
        let mut deserializer = serde_json::Deserializer::from_str(line);
        let object = deserializer
            .deserialize_map(RowVisitor { fields })
            .map_err(|_| refused("not a JSON object of strings, numbers and booleans"))?;
        deserializer
            .end()
            .map_err(|_| refused("more than one JSON value"))?;
        let fields = object.map_err(|field| refused(&format!("{field} appears twice")))?;
        rows.push(Row {
            line: line_number,
            fields,
        });
    }
    Ok(rows)
}

/// Reads one JSON object, keeping `fields` (as text) and skipping the others.
struct RowVisitor<'f> {
    fields: &'f [&'static str],
}

impl<'de> Visitor<'de> for RowVisitor<'_> {
    type Value = Result<HashMap<&'static str, String>, &'static str>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut kept = HashMap::new();
        let mut twice = None;
        while let Some(key) = map.next_key::<String>()? {
            let value: serde_json::Value = map.next_value()?;
            let Some(field) = self.fields.iter().find(|f| **f == key) else {
                continue;
            };
            let text = match value {
                serde_json::Value::String(text) => text,
                serde_json::Value::Bool(flag) => flag.to_string(),
                serde_json::Value::Number(number) => number.to_string(),
                _ => return Err(serde::de::Error::custom("not text")),
            };
            if kept.insert(*field, text).is_some() {
                twice.get_or_insert(*field);
            }
        }
        Ok(twice.map_or(Ok(kept), Err))
    }
}

fn csv_rows(text: &str, fields: &[&'static str]) -> Result<Vec<Row>, Failure> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|_| Failure::Rejected("line 1: not a CSV header row".into()))?
        .clone();
    let mut columns: Vec<(usize, &'static str)> = Vec::new();
    for (index, header) in headers.iter().enumerate() {
        if let Some(field) = fields.iter().find(|f| **f == header) {
            if columns.iter().any(|(_, seen)| seen == field) {
                return Err(Failure::Rejected(format!("line 1: {field} appears twice")));
            }
            columns.push((index, field));
        }
    }
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, csv::Position::line);
            Failure::Rejected(format!("line {line}: not a CSV row of the header's length"))
        })?;
        let line = record.position().map_or(0, csv::Position::line);
        let fields = columns
            .iter()
            .filter_map(|(index, field)| {
                let value = record.get(*index)?;
                (!value.is_empty()).then(|| (*field, value.to_owned()))
            })
            .collect();
        rows.push(Row { line, fields });
    }
    Ok(rows)
}

/// `DynamicRegistration` as a file gives it: `true`/`false`, `on`/`off`, `1`/`0`.
fn switch(text: &str) -> Result<DynamicRegistration, &'static str> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "on" | "1" => Ok(DynamicRegistration::On),
        "false" | "off" | "0" => Ok(DynamicRegistration::Off),
        _ => Err("must be true or false"),
    }
}

/// Alibaba's device `Status` of a stored status, for `device export`: `DISABLE` when
/// disabled, else `OFFLINE` once active (whether it is online is the broker's to say), else
/// `UNACTIVE` (also for a device whose secret was issued and never used).
fn alibaba_status(status: DeviceStatus) -> &'static str {
    match (status.enabled, status.state) {
        (false, _) => "DISABLE",
        (true, DeviceState::Active) => "OFFLINE",
        (true, _) => "UNACTIVE",
    }
}

/// Alibaba's device `Status` (QueryDeviceDetail): `UNACTIVE` is inactive; `ONLINE` and
/// `OFFLINE`, active; `DISABLE`, active and disabled.
fn status(text: &str) -> Result<DeviceStatus, &'static str> {
    let (state, enabled) = match text {
        "UNACTIVE" => (DeviceState::Inactive, true),
        "ONLINE" | "OFFLINE" => (DeviceState::Active, true),
        "DISABLE" => (DeviceState::Active, false),
        _ => return Err("must be UNACTIVE, ONLINE, OFFLINE or DISABLE"),
    };
    Ok(DeviceStatus { state, enabled })
}

/// One line of `device export`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ExportedDevice<'a> {
    product_key: ProductKey,
    device_name: DeviceName,
    #[serde(skip_serializing_if = "Option::is_none")]
    device_secret: Option<&'a str>,
    status: &'static str,
}

/// Prints `devices` as `device import` reads them, one JSON object a line; their secrets only
/// with `show_secret`. A closed pipe ends the output quietly.
pub(crate) fn export_devices(devices: &[DeviceRecord], show_secret: bool) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    for device in devices {
        let line = serde_json::to_string(&ExportedDevice {
            product_key: device.product_key,
            device_name: device.device_name,
            device_secret: show_secret.then(|| device.device_secret.expose_secret()),
            status: alibaba_status(device.status),
        })?;
        if writeln!(out, "{line}").is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// Says how far a long import got, on stderr, every 1,000 rows (files under 1,000 rows say
/// nothing).
fn progress(what: &str, done: usize, total: usize) {
    if total >= 1000 && (done.is_multiple_of(1000) || done == total) {
        eprintln!("{what} {done}/{total}");
    }
}

#[derive(Serialize)]
struct ImportJson {
    created: u64,
    unchanged: u64,
}

/// The error of one row's store check or write.
fn row_failure(row: &Row, e: AdminError) -> Failure {
    Failure::Rejected(format!("line {}: {}", row.line, iotauth::ErrorChain(&e)))
}

pub(crate) async fn import_products(store: Arc<dyn Store>, file: &Path) -> Result<(), Failure> {
    const FIELDS: [&str; 4] = [
        "ProductKey",
        "ProductSecret",
        "ProductName",
        "DynamicRegistration",
    ];
    let rows = read_rows(file, &FIELDS)?;
    let mut products = Vec::with_capacity(rows.len());
    let mut seen: HashMap<ProductKey, u64> = HashMap::new();
    for row in &rows {
        let product_key = row.parsed("ProductKey", ProductKey::new)?;
        if let Some(first) = seen.insert(product_key, row.line) {
            return Err(row.refused("ProductKey", format!("repeats line {first}")));
        }
        let product_secret = row.parsed("ProductSecret", ProductSecret::new)?;
        let switch = match row.optional("DynamicRegistration") {
            Some(_) => row.parsed("DynamicRegistration", switch)?,
            None => DynamicRegistration::Off,
        };
        products.push((row, product_key, product_secret, switch));
    }
    let admin = Admin::new(store);
    for (row, product_key, product_secret, _) in &products {
        admin
            .check_product_import(product_key, product_secret)
            .await
            .map_err(|e| row_failure(row, e))?;
    }
    let mut summary = ImportJson {
        created: 0,
        unchanged: 0,
    };
    for (row, product_key, product_secret, switch) in products {
        let name = row.optional("ProductName");
        match admin
            .import_product(product_key, product_secret, name, switch)
            .await
            .map_err(|e| row_failure(row, e))?
        {
            Imported::Created => summary.created += 1,
            _ => summary.unchanged += 1,
        }
    }
    print_json(&summary)
}

pub(crate) async fn import_devices(store: Arc<dyn Store>, file: &Path) -> Result<(), Failure> {
    const FIELDS: [&str; 4] = ["ProductKey", "DeviceName", "DeviceSecret", "Status"];
    let rows = read_rows(file, &FIELDS)?;
    let mut devices = Vec::with_capacity(rows.len());
    let mut seen: HashMap<(ProductKey, DeviceName), u64> = HashMap::new();
    for row in &rows {
        let product_key = row.parsed("ProductKey", ProductKey::new)?;
        let device_name = row.parsed("DeviceName", DeviceName::new)?;
        if let Some(first) = seen.insert((product_key, device_name), row.line) {
            return Err(row.refused("DeviceName", format!("repeats line {first}")));
        }
        let device_secret = row.parsed("DeviceSecret", DeviceSecret::new)?;
        let status = match row.optional("Status") {
            Some(_) => row.parsed("Status", status)?,
            None => DeviceStatus::NEW,
        };
        devices.push((row, product_key, device_name, device_secret, status));
    }
    let admin = Admin::new(store);
    let total = devices.len();
    for (done, (row, product_key, device_name, device_secret, _)) in devices.iter().enumerate() {
        admin
            .check_device_import(product_key, device_name, device_secret)
            .await
            .map_err(|e| row_failure(row, e))?;
        progress("checked", done + 1, total);
    }
    let mut summary = ImportJson {
        created: 0,
        unchanged: 0,
    };
    for (done, (row, product_key, device_name, device_secret, status)) in
        devices.into_iter().enumerate()
    {
        match admin
            .import_device(product_key, device_name, device_secret, status)
            .await
            .map_err(|e| row_failure(row, e))?
        {
            Imported::Created => summary.created += 1,
            _ => summary.unchanged += 1,
        }
        progress("imported", done + 1, total);
    }
    print_json(&summary)
}
