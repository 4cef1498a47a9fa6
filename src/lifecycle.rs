//! The device lifecycle: states, events, and the one transition function.
//!
//! | state \ event | Issue | IssueClientId | LoginOk | Disable / Enable | Reset | Delete |
//! |---|---|---|---|---|---|---|
//! | Inactive | → Issued, deliver | → Issued, new ClientID | → Active | flag | stays, new secret | removed |
//! | Issued | refused (`Once`) / same secret again (`RedeliverUntilFirstLogin`) | new ClientID if it holds one already, else refused | → Active | flag | → Inactive, new secret | removed |
//! | Active | refused | new ClientID if it holds one already, else refused | stays | flag | → Inactive, new secret | removed |
//!
//! A disabled device can neither register (Issue, IssueClientId) nor log in (LoginOk); the
//! product's switches gate Issue and IssueClientId and nothing else. A device holds at most
//! [`IssuedClientId::MAX_PER_DEVICE`] ClientIDs (see the [compatibility notes](crate::manual::compatibility)), and gets one only while it is Inactive or
//! holds one already: a device whose DeviceSecret was delivered or used is not handed a
//! second credential by whoever holds the ProductSecret. Reset always rotates the secret and revokes
//! every ClientID, also from Inactive: a secret handed out by an operator may have leaked
//! before first use.

use crate::id::IssuedClientId;
use core::fmt;

/// Where a device is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum DeviceState {
    /// Registered; its secret has not been delivered by dynamic registration, and it has not
    /// logged in.
    Inactive,
    /// Its secret was delivered once by dynamic registration; it has not logged in yet.
    Issued,
    /// It has logged in at least once.
    Active,
}

impl DeviceState {
    /// Every state.
    pub const ALL: [Self; 3] = [Self::Inactive, Self::Issued, Self::Active];

    /// The lowercase name (`inactive`, `issued`, `active`), as stored and printed.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Inactive => "inactive",
            Self::Issued => "issued",
            Self::Active => "active",
        }
    }

    /// The state with this name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl fmt::Display for DeviceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A device's state plus the disabled flag beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct DeviceStatus {
    /// The lifecycle state.
    pub state: DeviceState,
    /// `false` when an operator disabled the device.
    pub enabled: bool,
}

impl DeviceStatus {
    /// `state`, enabled or disabled.
    pub const fn new(state: DeviceState, enabled: bool) -> Self {
        Self { state, enabled }
    }

    /// A freshly registered device: Inactive and enabled.
    pub const NEW: Self = Self {
        state: DeviceState::Inactive,
        enabled: true,
    };
}

/// The product's dynamic-registration switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DynamicRegistration {
    /// Devices of the product may obtain their secret.
    On,
    /// New activations are refused; activated devices are not affected.
    Off,
}

impl IssuedClientId {
    /// The most ClientIDs (with their DeviceTokens) one device holds: Alibaba's limit for
    /// registration without pre-registration.
    pub const MAX_PER_DEVICE: usize = 5;
}

/// What happens to a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Event {
    /// Dynamic registration asks for the device's secret.
    Issue(DynamicRegistration),
    /// Registration without pre-registration (`regnwl`) asks for a new ClientID and
    /// DeviceToken.
    IssueClientId {
        /// On only while the product allows both dynamic registration and registration
        /// without pre-registration.
        registration: DynamicRegistration,
        /// How many ClientIDs the device holds already.
        held: usize,
    },
    /// The device logged in with a good signature.
    LoginOk,
    /// An operator disables the device.
    Disable,
    /// An operator enables the device.
    Enable,
    /// An operator resets the device: back to Inactive with a new secret.
    Reset,
    /// An operator deletes the device.
    Delete,
}

impl Event {
    /// The event's name, for errors and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Issue(_) => "issue",
            Self::IssueClientId { .. } => "issue-client-id",
            Self::LoginOk => "login",
            Self::Disable => "disable",
            Self::Enable => "enable",
            Self::Reset => "reset",
            Self::Delete => "delete",
        }
    }
}

/// How often a device's secret may be delivered by dynamic registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum IssuancePolicy {
    /// Once, ever, until the device is reset or deleted (the platform's rule for activated
    /// devices, applied from the first delivery).
    #[default]
    Once,
    /// The same secret again while the device is Issued and has never logged in: survives a
    /// lost reply without Alibaba's "latest registration wins" race.
    RedeliverUntilFirstLogin,
}

impl IssuancePolicy {
    /// The policy's name in configuration: `once`, `redeliver-until-first-login`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Once => "once",
            Self::RedeliverUntilFirstLogin => "redeliver-until-first-login",
        }
    }
}

impl std::str::FromStr for IssuancePolicy {
    type Err = crate::error::ParseError;

    /// Parses [`IssuancePolicy::name`].
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        [Self::Once, Self::RedeliverUntilFirstLogin]
            .into_iter()
            .find(|policy| policy.name() == text)
            .ok_or(crate::error::ParseError::Malformed {
                field: "issuance",
                expected: "once or redeliver-until-first-login",
            })
    }
}

/// What the secret does in a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SecretEffect {
    /// Nothing happens to it.
    Keep,
    /// It is delivered to the device for the first time.
    Deliver,
    /// It is delivered again, unchanged (policy `RedeliverUntilFirstLogin`).
    Redeliver,
    /// It is replaced by a new one, and every ClientID is revoked.
    Rotate,
    /// It is kept; a new ClientID and DeviceToken are issued beside it.
    AddClientId,
}

/// The outcome of an allowed event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Transition {
    /// The new status; `None` when the device is removed.
    pub to: Option<DeviceStatus>,
    /// What happens to the secret.
    pub secret: SecretEffect,
}

/// Why an event is not allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum TransitionError {
    /// The device is disabled, and the event needs it enabled.
    #[error("{} refused: the device is disabled", event.name())]
    Disabled {
        /// The event.
        event: Event,
    },
    /// The product's dynamic-registration switch is off.
    #[error("issue refused: dynamic registration is off for the product")]
    DynamicRegistrationOff,
    /// The device is in a state the event does not accept.
    #[error("{} refused: expected the device {expected}, got {got}", event.name())]
    WrongState {
        /// The event.
        event: Event,
        /// The states the event accepts.
        expected: Expected,
        /// The device's state.
        got: DeviceState,
    },
    /// The device holds [`IssuedClientId::MAX_PER_DEVICE`] ClientIDs already.
    #[error("issue-client-id refused: the device holds the most ClientIDs it may")]
    TooManyClientIds,
}

/// The states an event accepts, for [`TransitionError::WrongState`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Expected(&'static [DeviceState]);

impl Expected {
    /// The accepted states.
    pub fn states(self) -> &'static [DeviceState] {
        self.0
    }
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, state) in self.0.iter().enumerate() {
            f.write_str(if i == 0 { "" } else { " or " })?;
            f.write_str(state.name())?;
        }
        Ok(())
    }
}

/// The one transition function: every state change of a device goes through it.
///
/// # Errors
/// [`TransitionError`] when the event is not allowed in `from` under `policy`.
///
/// ```
/// # use iotauth::*;
/// let issue = Event::Issue(DynamicRegistration::On);
/// let t = transition(DeviceStatus::NEW, issue, IssuancePolicy::Once)?;
/// assert_eq!(t.secret, SecretEffect::Deliver);
/// let issued = t.to.unwrap();
/// assert!(transition(issued, issue, IssuancePolicy::Once).is_err());
/// assert_eq!(transition(issued, issue, IssuancePolicy::RedeliverUntilFirstLogin)?.secret, SecretEffect::Redeliver);
/// # Ok::<(), TransitionError>(())
/// ```
pub fn transition(
    from: DeviceStatus,
    event: Event,
    policy: IssuancePolicy,
) -> Result<Transition, TransitionError> {
    use DeviceState::{Active, Inactive, Issued};
    let stay = |secret| Transition {
        to: Some(from),
        secret,
    };
    let become_ = |state, secret| Transition {
        to: Some(DeviceStatus { state, ..from }),
        secret,
    };
    match event {
        Event::Issue(_) | Event::IssueClientId { .. } | Event::LoginOk if !from.enabled => {
            Err(TransitionError::Disabled { event })
        }
        Event::Issue(DynamicRegistration::Off)
        | Event::IssueClientId {
            registration: DynamicRegistration::Off,
            ..
        } => Err(TransitionError::DynamicRegistrationOff),
        Event::IssueClientId { held, .. } if held >= IssuedClientId::MAX_PER_DEVICE => {
            Err(TransitionError::TooManyClientIds)
        }
        Event::IssueClientId { held, .. } => match from.state {
            Inactive => Ok(become_(Issued, SecretEffect::AddClientId)),
            // It registered this way before (and, say, lost its flash): one more.
            Issued | Active if held > 0 => Ok(stay(SecretEffect::AddClientId)),
            // Its DeviceSecret was delivered or used: a ClientID now would give whoever holds
            // the ProductSecret a second way in to a device that has its own credential.
            got => Err(TransitionError::WrongState {
                event,
                expected: Expected(&[Inactive]),
                got,
            }),
        },
        Event::Issue(DynamicRegistration::On) => match (from.state, policy) {
            (Inactive, _) => Ok(become_(Issued, SecretEffect::Deliver)),
            (Issued, IssuancePolicy::RedeliverUntilFirstLogin) => Ok(stay(SecretEffect::Redeliver)),
            (got, policy) => Err(TransitionError::WrongState {
                event,
                expected: Expected(match policy {
                    IssuancePolicy::Once => &[Inactive],
                    IssuancePolicy::RedeliverUntilFirstLogin => &[Inactive, Issued],
                }),
                got,
            }),
        },
        Event::LoginOk => Ok(become_(Active, SecretEffect::Keep)),
        Event::Disable => Ok(Transition {
            to: Some(DeviceStatus {
                enabled: false,
                ..from
            }),
            secret: SecretEffect::Keep,
        }),
        Event::Enable => Ok(Transition {
            to: Some(DeviceStatus {
                enabled: true,
                ..from
            }),
            secret: SecretEffect::Keep,
        }),
        Event::Reset => Ok(become_(Inactive, SecretEffect::Rotate)),
        Event::Delete => Ok(Transition {
            to: None,
            secret: SecretEffect::Keep,
        }),
    }
}
