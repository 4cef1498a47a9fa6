#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod ascii;
mod cert;
mod error;
mod id;
mod random;
mod secret;

pub use cert::{DeviceCertificate, ProductCertificate};
pub use error::ParseError;
pub use id::{DeviceName, ProductKey};
pub use random::{Entropy, EntropyError, OsEntropy};
pub use secret::{DeviceSecret, DeviceToken, ProductSecret};
