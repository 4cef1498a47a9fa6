//! The manual: what the API reference does not say.
//!
//! This module holds documentation only. Its pages:
//!
//! * `threat_model`: what an attacker can reach before authentication, what the crate does
//!   about it, and what it leaves out.
//! * `compatibility`: wire compatibility with Alibaba Cloud IoT Platform and its device SDKs:
//!   sign content, `securemode`, CONNACK codes, HTTP replies, TLS suites, `regnwl` and `connwl`.
//! * `design`: why the crate is built the way it is: validated newtypes, secret handling, one
//!   sign-content function, one transition function, issue-once as a compare-and-set, stores,
//!   the event log, front ends over one service layer.
//! * `performance`: measured figures and the commands that measured them.
//!
//! Operators of the `iotauth` command find its reference in the README.

pub mod threat_model {
    #![doc = include_str!("doc/manual/threat_model.md")]
}

pub mod compatibility {
    #![doc = include_str!("doc/manual/compatibility.md")]
}

pub mod design {
    #![doc = include_str!("doc/manual/design.md")]
}

pub mod performance {
    #![doc = include_str!("doc/manual/performance.md")]
}
