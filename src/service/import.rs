//! Products and device certificates issued by Alibaba Cloud IoT Platform, brought in unchanged
//! (feature `import`): `iotauth product import` / `device import` and the admin API's import
//! resources read them through this module, so that both accept the same files and refuse
//! the same lines.
//!
//! A file is JSON lines (one object a line) or CSV with a header row, with the field names
//! Alibaba's exports use: `ProductKey`, `ProductSecret`, `ProductName`, `DynamicRegistration`
//! for products; `ProductKey`, `DeviceName`, `DeviceSecret`, `Status` (the records of
//! QueryDeviceDetail and BatchQueryDeviceDetail replies, the `Data` objects, one per line;
//! the console's certificate CSV) for devices, and `State` (iotauth's own, which its exports
//! carry). A field that is `null` or empty is not given.
//! Other fields are ignored, so an export is imported as it is; a field given twice in one
//! row, or a product or device given twice in one file, is refused. Keys and secrets are
//! checked by the rules of [`ProductKey`], [`DeviceName`], [`ProductSecret`] and
//! [`DeviceSecret`], which accept every value Alibaba issues.
//!
//! Errors name the line and the field, never the value.

use std::collections::HashMap;

use serde::Serialize;
use serde::de::{Deserializer, MapAccess, Visitor};

use crate::id::{DeviceName, ProductKey};
use crate::lifecycle::{DeviceState, DeviceStatus, DynamicRegistration};
use crate::secret::{DeviceSecret, ProductSecret};

use super::AdminError;
use super::view::Exposed;

/// The most bytes an import may have (a million devices are about 100 MB).
pub const MAX_IMPORT_BYTES: usize = 256 << 20;

/// Why an import was refused, naming the line (1 is the first; a CSV file's header row is
/// line 1) and the field, never a value. Nothing was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// The input is over [`MAX_IMPORT_BYTES`].
    #[error("the import is over {} MiB", MAX_IMPORT_BYTES >> 20)]
    TooLarge,
    /// The input holds no product or device.
    #[error("the import holds no rows")]
    Empty,
    /// The input is not UTF-8.
    #[error("the import is not UTF-8 text")]
    NotText,
    /// A line is not a row: not a JSON object, or not a CSV row of the header's length.
    #[error("line {line}: {reason}")]
    Line {
        /// The line.
        line: u64,
        /// Why.
        reason: &'static str,
    },
    /// A field is missing, malformed, or repeats an earlier line's key.
    #[error("line {line}: {field}: {reason}")]
    Field {
        /// The line.
        line: u64,
        /// The field, by Alibaba's name.
        field: &'static str,
        /// Why (never the value).
        reason: String,
    },
    /// The store refused the write of the new devices (one was registered meanwhile) or
    /// failed: nothing was written.
    #[error("the write was refused: {source}")]
    Write {
        /// What the store said.
        #[source]
        source: AdminError,
    },
    /// The store refused the row (an unknown product, another secret) or failed.
    #[error("line {line}: {source}")]
    Store {
        /// The line.
        line: u64,
        /// What the store or the service said.
        #[source]
        source: AdminError,
    },
}

impl ImportError {
    fn field(line: u64, field: &'static str, reason: impl std::fmt::Display) -> Self {
        Self::Field {
            line,
            field,
            reason: reason.to_string(),
        }
    }
}

/// What an import did: how many products or devices it created, and how many it found as
/// given and left alone (a re-run of a file creates none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "admin-api", derive(utoipa::ToSchema))]
#[non_exhaustive]
pub struct ImportSummary {
    /// Created as given.
    pub created: u64,
    /// Already stored with the same secret: left as they are.
    pub unchanged: u64,
}

/// One product of an import.
#[derive(Debug)]
#[non_exhaustive]
pub struct ProductImport {
    /// Its line.
    pub line: u64,
    /// `ProductKey`.
    pub product_key: ProductKey,
    /// `ProductSecret`.
    pub product_secret: ProductSecret,
    /// `ProductName`, if given (checked when it is stored: 1–64 characters, no control
    /// characters).
    pub name: Option<String>,
    /// `DynamicRegistration`: `true`/`false`, `on`/`off`, `1`/`0`; off when not given.
    pub dynamic_registration: DynamicRegistration,
}

/// One device of an import.
#[derive(Debug)]
#[non_exhaustive]
pub struct DeviceImport {
    /// Its line.
    pub line: u64,
    /// `ProductKey`.
    pub product_key: ProductKey,
    /// `DeviceName`.
    pub device_name: DeviceName,
    /// `DeviceSecret`.
    pub device_secret: DeviceSecret,
    /// `Status` ([`status_of_alibaba`]); a new device's (Inactive, enabled) when not given.
    pub status: DeviceStatus,
}

/// The product fields read.
const PRODUCT_FIELDS: [&str; 4] = [
    "ProductKey",
    "ProductSecret",
    "ProductName",
    "DynamicRegistration",
];

/// The device fields read.
const DEVICE_FIELDS: [&str; 5] = [
    "ProductKey",
    "DeviceName",
    "DeviceSecret",
    "Status",
    "State",
];

/// Parses the products of an import (JSON lines or CSV, see the module's documentation).
///
/// # Errors
/// [`ImportError::TooLarge`], [`ImportError::NotText`], [`ImportError::Empty`], or
/// [`ImportError::Line`] / [`ImportError::Field`] for the first line refused.
pub fn parse_product_import(input: &[u8]) -> Result<Vec<ProductImport>, ImportError> {
    let rows = rows(input, &PRODUCT_FIELDS)?;
    let mut seen: HashMap<ProductKey, u64> = HashMap::new();
    rows.iter()
        .map(|row| {
            let product_key = row.parsed("ProductKey", ProductKey::new)?;
            if let Some(first) = seen.insert(product_key, row.line) {
                return Err(row.refused("ProductKey", format!("repeats line {first}")));
            }
            Ok(ProductImport {
                line: row.line,
                product_key,
                product_secret: row.parsed("ProductSecret", ProductSecret::new)?,
                name: row.optional("ProductName").map(str::to_owned),
                dynamic_registration: match row.optional("DynamicRegistration") {
                    Some(_) => row.parsed("DynamicRegistration", switch)?,
                    None => DynamicRegistration::Off,
                },
            })
        })
        .collect()
}

/// Parses the devices of an import (JSON lines or CSV, see the module's documentation).
///
/// # Errors
/// [`ImportError::TooLarge`], [`ImportError::NotText`], [`ImportError::Empty`], or
/// [`ImportError::Line`] / [`ImportError::Field`] for the first line refused.
pub fn parse_device_import(input: &[u8]) -> Result<Vec<DeviceImport>, ImportError> {
    let rows = rows(input, &DEVICE_FIELDS)?;
    let mut seen: HashMap<(ProductKey, DeviceName), u64> = HashMap::new();
    rows.iter()
        .map(|row| {
            let product_key = row.parsed("ProductKey", ProductKey::new)?;
            let device_name = row.parsed("DeviceName", DeviceName::new)?;
            if let Some(first) = seen.insert((product_key, device_name), row.line) {
                return Err(row.refused("DeviceName", format!("repeats line {first}")));
            }
            Ok(DeviceImport {
                line: row.line,
                product_key,
                device_name,
                device_secret: row.parsed("DeviceSecret", DeviceSecret::new)?,
                status: row.status()?,
            })
        })
        .collect()
}

/// Alibaba's device `Status` (QueryDeviceDetail): `UNACTIVE` is Inactive; `ONLINE` and
/// `OFFLINE`, Active; `DISABLE`, Active and disabled.
///
/// # Errors
/// Any other text.
pub fn status_of_alibaba(text: &str) -> Result<DeviceStatus, &'static str> {
    let (state, enabled) = match text {
        "UNACTIVE" => (DeviceState::Inactive, true),
        "ONLINE" | "OFFLINE" => (DeviceState::Active, true),
        "DISABLE" => (DeviceState::Active, false),
        _ => return Err("must be UNACTIVE, ONLINE, OFFLINE or DISABLE"),
    };
    Ok(DeviceStatus { state, enabled })
}

/// Alibaba's device `Status` of a stored status, as an export gives it: `DISABLE` when
/// disabled, else `OFFLINE` once Active (whether it is online is the broker's to say), else
/// `UNACTIVE` (also for a device whose secret was issued and never used).
pub fn alibaba_status(status: DeviceStatus) -> &'static str {
    match (status.enabled, status.state) {
        (false, _) => "DISABLE",
        (true, DeviceState::Active) => "OFFLINE",
        (true, _) => "UNACTIVE",
    }
}

/// `DynamicRegistration` as a file gives it: `true`/`false`, `on`/`off`, `1`/`0`.
fn switch(text: &str) -> Result<DynamicRegistration, &'static str> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "on" | "1" => Ok(DynamicRegistration::On),
        "false" | "off" | "0" => Ok(DynamicRegistration::Off),
        _ => Err("must be true or false (or on/off, 1/0)"),
    }
}

/// One row: its line number and the fields read from it.
struct Row {
    line: u64,
    fields: HashMap<&'static str, String>,
}

impl Row {
    fn refused(&self, field: &'static str, why: impl std::fmt::Display) -> ImportError {
        ImportError::field(self.line, field, why)
    }

    /// A device's status: `Status` (Alibaba's), its state replaced by `State` (iotauth's
    /// own field, which exports carry) when given.
    fn status(&self) -> Result<DeviceStatus, ImportError> {
        let mut status = match self.optional("Status") {
            Some(_) => self.parsed("Status", status_of_alibaba)?,
            None => DeviceStatus::NEW,
        };
        if self.optional("State").is_some() {
            status.state = self.parsed("State", |text| {
                DeviceState::from_name(text).ok_or("must be inactive, issued or active")
            })?;
        }
        Ok(status)
    }

    fn optional(&self, field: &'static str) -> Option<&str> {
        self.fields.get(field).map(String::as_str)
    }

    fn parsed<T, E: std::fmt::Display>(
        &self,
        field: &'static str,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<T, ImportError> {
        let text = self
            .optional(field)
            .ok_or_else(|| self.refused(field, "missing"))?;
        parse(text).map_err(|e| self.refused(field, e))
    }
}

/// The rows of `input`, keeping `fields`: JSON lines when its first character (after a byte
/// order mark and white space) is `{`, else CSV with a header row.
fn rows(input: &[u8], fields: &[&'static str]) -> Result<Vec<Row>, ImportError> {
    if input.len() > MAX_IMPORT_BYTES {
        return Err(ImportError::TooLarge);
    }
    let text = std::str::from_utf8(input).map_err(|_| ImportError::NotText)?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let rows = if text.trim_start().starts_with('{') {
        json_rows(text, fields)?
    } else {
        csv_rows(text, fields)?
    };
    // An empty file is a mistake (a failed export, the wrong file), not an import of nothing.
    if rows.is_empty() {
        return Err(ImportError::Empty);
    }
    Ok(rows)
}

fn json_rows(text: &str, fields: &[&'static str]) -> Result<Vec<Row>, ImportError> {
    let mut rows = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line_number = index as u64 + 1;
        if line.trim().is_empty() {
            continue;
        }
        let refused = |reason| ImportError::Line {
            line: line_number,
            reason,
        };
        let mut deserializer = serde_json::Deserializer::from_str(line);
        let object = deserializer
            .deserialize_map(RowVisitor { fields })
            .map_err(|_| refused("not one JSON object on the line"))?;
        deserializer
            .end()
            .map_err(|_| refused("more than one JSON value"))?;
        let fields = object.map_err(|(field, why)| ImportError::field(line_number, field, why))?;
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

/// A field refused while reading a row: the field, and why.
type FieldFault = (&'static str, &'static str);

impl<'de> Visitor<'de> for RowVisitor<'_> {
    type Value = Result<HashMap<&'static str, String>, FieldFault>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut kept = HashMap::new();
        let mut seen = Vec::new();
        let mut fault = None;
        while let Some(key) = map.next_key::<String>()? {
            let value: serde_json::Value = map.next_value()?;
            let Some(field) = self.fields.iter().find(|f| **f == key) else {
                continue;
            };
            if seen.contains(field) {
                fault.get_or_insert((*field, "appears twice"));
            }
            seen.push(*field);
            // A number is refused, not turned into text: its text is not kept (a long one
            // would come back rounded), and keys, names and secrets are strings.
            let text = match value {
                serde_json::Value::String(text) => text,
                serde_json::Value::Bool(flag) => flag.to_string(),
                // As an empty CSV cell: not given.
                serde_json::Value::Null => continue,
                _ => {
                    fault.get_or_insert((*field, "must be a JSON string"));
                    continue;
                }
            };
            if !text.is_empty() {
                kept.insert(*field, text);
            }
        }
        Ok(fault.map_or(Ok(kept), Err))
    }
}

fn csv_rows(text: &str, fields: &[&'static str]) -> Result<Vec<Row>, ImportError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|_| ImportError::Line {
            line: 1,
            reason: "not a CSV header row",
        })?
        .clone();
    let mut columns: Vec<(usize, &'static str)> = Vec::new();
    for (index, header) in headers.iter().enumerate() {
        if let Some(field) = fields.iter().find(|f| **f == header) {
            if columns.iter().any(|(_, seen)| seen == field) {
                return Err(ImportError::field(1, field, "appears twice"));
            }
            columns.push((index, field));
        }
    }
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| ImportError::Line {
            line: e.position().map_or(0, csv::Position::line),
            reason: "not a CSV row of the header's length",
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

/// One device as an export gives it (`iotauth device export`): Alibaba's field names, its
/// secret only when asked for; what [`parse_device_import`] reads back.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
#[non_exhaustive]
pub struct DeviceExport<'a> {
    /// `ProductKey`.
    pub product_key: ProductKey,
    /// `DeviceName`.
    pub device_name: DeviceName,
    /// `DeviceSecret`: exposed, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_secret: Option<Exposed<'a>>,
    /// `Status` ([`alibaba_status`]).
    pub status: &'static str,
    /// `State`: iotauth's own field (`inactive`, `issued`, `active`), which Alibaba's Status
    /// cannot say (a device whose secret was delivered and not yet used is `UNACTIVE` there):
    /// read back by an import, so that a restored device is not issued its secret again.
    pub state: DeviceState,
}

impl<'a> DeviceExport<'a> {
    /// `device` as an export line, exposing its secret when `expose_secret`.
    pub fn of(device: &'a crate::store::DeviceRecord, expose_secret: bool) -> Self {
        Self {
            product_key: device.product_key,
            device_name: device.device_name,
            device_secret: expose_secret.then(|| Exposed(device.device_secret.expose_secret())),
            status: alibaba_status(device.status),
            state: device.status.state,
        }
    }
}
