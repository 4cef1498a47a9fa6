#![doc = include_str!("doc/crate.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
// docs.rs builds with `--cfg docsrs` on nightly: each feature-gated item says its feature.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod acl;
mod ascii;
#[cfg(feature = "broker")]
pub mod broker;
mod cert;
mod error;
#[cfg(feature = "server")]
pub mod http;
mod id;
mod lifecycle;
#[cfg(feature = "listener")]
pub mod listener;
pub mod manual;
mod mqtt;
mod policy;
mod random;
mod register;
mod secret;
pub mod service;
mod sign;
pub mod store;
mod verified;

pub use acl::{Access, TopicRule};
pub use cert::{DeviceCertificate, ProductCertificate};
pub use error::{ErrorChain, ParseError};
pub use id::{DeviceName, IssuedClientId, ProductKey};
pub use lifecycle::{
    DeviceState, DeviceStatus, DynamicRegistration, Event, Expected, IssuancePolicy, SecretEffect,
    Transition, TransitionError, transition,
};
pub use mqtt::{
    ClientId, ConnectCredentials, ConnectKind, ConnectRequest, LoginOptions, RegisterOptions,
    SecureMode, build_login, build_register_connect, build_token_login, parse_username,
};
pub use policy::{Clock, FixedClock, Freshness, SystemClock, UnixMillis};
pub use random::{Entropy, EntropyError, OsEntropy};
pub use register::{
    RefusalCode, RegisterForm, RegisterFormBody, RegisterReply, build_register_form,
    registration_random,
};
pub use secret::{DeviceSecret, DeviceToken, ProductSecret, TokenDigest};
pub use sign::{SignContent, SignMethod, Signature, SigningKey, VerifyError, sign, verify};
pub use verified::{DeviceIdentity, Verified};

/// The README's code blocks, compiled and run as doctests (the crate documentation is
/// `src/doc/crate.md`; the README is the operators' guide).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
