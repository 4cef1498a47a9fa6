//! The transition function over every state × event (with the disabled flag, both switch
//! positions and both issuance policies): one test per state and event, each against the
//! table in DESIGN.md.

use iotauth::DeviceState::{Active, Inactive, Issued};
use iotauth::IssuancePolicy::{Once, RedeliverUntilFirstLogin};
use iotauth::*;

fn status(state: DeviceState, enabled: bool) -> DeviceStatus {
    DeviceStatus::new(state, enabled)
}

fn run(
    state: DeviceState,
    enabled: bool,
    event: Event,
    policy: IssuancePolicy,
) -> Result<Outcome, TransitionError> {
    transition(status(state, enabled), event, policy).map(|t| (t.to, t.secret))
}

/// A transition's new status and what happens to the secret.
type Outcome = (Option<DeviceStatus>, SecretEffect);

fn to(state: DeviceState, enabled: bool, secret: SecretEffect) -> Result<Outcome, TransitionError> {
    Ok((Some(status(state, enabled)), secret))
}

const ON: Event = Event::Issue(DynamicRegistration::On);
const OFF: Event = Event::Issue(DynamicRegistration::Off);

fn wrong_state(expected: &[DeviceState], got: DeviceState, policy: IssuancePolicy) -> bool {
    matches!(run(got, true, ON, policy), Err(TransitionError::WrongState { event: Event::Issue(_), expected: e, got: g }) if e.states() == expected && g == got)
}

/// Disabled devices refuse Issue and LoginOk whatever the state, policy or switch.
fn refused_when_disabled(state: DeviceState, event: Event) {
    for policy in [Once, RedeliverUntilFirstLogin] {
        assert!(
            matches!(
                run(state, false, event, policy),
                Err(TransitionError::Disabled { .. })
            ),
            "{state} {event:?} {policy:?}"
        );
    }
}

/// Operator events behave the same under both policies.
fn same_under_both_policies(
    state: DeviceState,
    enabled: bool,
    event: Event,
) -> Result<Outcome, TransitionError> {
    let once = run(state, enabled, event, Once);
    assert_eq!(once, run(state, enabled, event, RedeliverUntilFirstLogin));
    once
}

#[test]
fn inactive_issue_delivers_and_becomes_issued() {
    for policy in [Once, RedeliverUntilFirstLogin] {
        assert_eq!(
            run(Inactive, true, ON, policy),
            to(Issued, true, SecretEffect::Deliver)
        );
        assert_eq!(
            run(Inactive, true, OFF, policy),
            Err(TransitionError::DynamicRegistrationOff)
        );
    }
    refused_when_disabled(Inactive, ON);
}

#[test]
fn issued_issue_is_refused_once_and_redelivered_under_the_redeliver_policy() {
    assert!(wrong_state(&[Inactive], Issued, Once));
    assert_eq!(
        run(Issued, true, ON, RedeliverUntilFirstLogin),
        to(Issued, true, SecretEffect::Redeliver)
    );
    assert_eq!(
        run(Issued, true, OFF, RedeliverUntilFirstLogin),
        Err(TransitionError::DynamicRegistrationOff)
    );
    refused_when_disabled(Issued, ON);
}

#[test]
fn active_issue_is_refused_under_both_policies() {
    assert!(wrong_state(&[Inactive], Active, Once));
    assert!(wrong_state(
        &[Inactive, Issued],
        Active,
        RedeliverUntilFirstLogin
    ));
    refused_when_disabled(Active, ON);
}

#[test]
fn inactive_login_becomes_active() {
    assert_eq!(
        same_under_both_policies(Inactive, true, Event::LoginOk),
        to(Active, true, SecretEffect::Keep)
    );
    refused_when_disabled(Inactive, Event::LoginOk);
}

#[test]
fn issued_login_becomes_active() {
    assert_eq!(
        same_under_both_policies(Issued, true, Event::LoginOk),
        to(Active, true, SecretEffect::Keep)
    );
    refused_when_disabled(Issued, Event::LoginOk);
}

#[test]
fn active_login_stays_active() {
    assert_eq!(
        same_under_both_policies(Active, true, Event::LoginOk),
        to(Active, true, SecretEffect::Keep)
    );
    refused_when_disabled(Active, Event::LoginOk);
}

fn flag_events_only_flip_the_flag(state: DeviceState) {
    for enabled in [true, false] {
        assert_eq!(
            same_under_both_policies(state, enabled, Event::Disable),
            to(state, false, SecretEffect::Keep)
        );
        assert_eq!(
            same_under_both_policies(state, enabled, Event::Enable),
            to(state, true, SecretEffect::Keep)
        );
    }
}

#[test]
fn inactive_disable_and_enable_flip_the_flag() {
    flag_events_only_flip_the_flag(Inactive);
}

#[test]
fn issued_disable_and_enable_flip_the_flag() {
    flag_events_only_flip_the_flag(Issued);
}

#[test]
fn active_disable_and_enable_flip_the_flag() {
    flag_events_only_flip_the_flag(Active);
}

fn reset_rotates_into_inactive(state: DeviceState) {
    for enabled in [true, false] {
        assert_eq!(
            same_under_both_policies(state, enabled, Event::Reset),
            to(Inactive, enabled, SecretEffect::Rotate)
        );
    }
}

#[test]
fn inactive_reset_stays_inactive_with_a_new_secret() {
    reset_rotates_into_inactive(Inactive);
}

#[test]
fn issued_reset_becomes_inactive_with_a_new_secret() {
    reset_rotates_into_inactive(Issued);
}

#[test]
fn active_reset_becomes_inactive_with_a_new_secret() {
    reset_rotates_into_inactive(Active);
}

fn delete_removes(state: DeviceState) {
    for enabled in [true, false] {
        assert_eq!(
            same_under_both_policies(state, enabled, Event::Delete),
            Ok((None, SecretEffect::Keep))
        );
    }
}

#[test]
fn inactive_delete_removes() {
    delete_removes(Inactive);
}

#[test]
fn issued_delete_removes() {
    delete_removes(Issued);
}

#[test]
fn active_delete_removes() {
    delete_removes(Active);
}

#[test]
fn switch_off_gates_issue_and_nothing_else() {
    for state in DeviceState::ALL {
        for event in [
            Event::LoginOk,
            Event::Disable,
            Event::Enable,
            Event::Reset,
            Event::Delete,
        ] {
            assert!(run(state, true, event, Once).is_ok(), "{state} {event:?}");
        }
    }
}

#[test]
fn wrong_state_error_reads_expected_versus_got() {
    let err = run(Active, true, ON, RedeliverUntilFirstLogin).unwrap_err();
    assert_eq!(
        err.to_string(),
        "issue refused: expected the device inactive or issued, got active"
    );
}

fn issue_client_id(held: usize) -> Event {
    Event::IssueClientId {
        registration: DynamicRegistration::On,
        held,
    }
}

#[test]
fn inactive_issue_client_id_adds_one_and_becomes_issued() {
    for policy in [Once, RedeliverUntilFirstLogin] {
        assert_eq!(
            run(Inactive, true, issue_client_id(0), policy),
            to(Issued, true, SecretEffect::AddClientId)
        );
    }
}

#[test]
fn issued_and_active_issue_client_id_adds_one_and_stays() {
    for state in [Issued, Active] {
        for policy in [Once, RedeliverUntilFirstLogin] {
            assert_eq!(
                run(
                    state,
                    true,
                    issue_client_id(IssuedClientId::MAX_PER_DEVICE - 1),
                    policy
                ),
                to(state, true, SecretEffect::AddClientId),
                "{state} {policy:?}"
            );
        }
    }
}

#[test]
fn a_sixth_client_id_is_refused_in_every_state() {
    for state in DeviceState::ALL {
        assert_eq!(
            run(
                state,
                true,
                issue_client_id(IssuedClientId::MAX_PER_DEVICE),
                Once
            ),
            Err(TransitionError::TooManyClientIds),
            "{state}"
        );
    }
}

#[test]
fn issue_client_id_is_refused_when_disabled_or_switched_off() {
    for state in DeviceState::ALL {
        refused_when_disabled(state, issue_client_id(0));
        let off = Event::IssueClientId {
            registration: DynamicRegistration::Off,
            held: 0,
        };
        assert_eq!(
            run(state, true, off, Once),
            Err(TransitionError::DynamicRegistrationOff),
            "{state}"
        );
    }
}

#[test]
fn a_device_with_its_own_credential_gets_no_client_id() {
    for state in [Issued, Active] {
        for policy in [Once, RedeliverUntilFirstLogin] {
            assert!(
                matches!(
                    run(state, true, issue_client_id(0), policy),
                    Err(TransitionError::WrongState { event: Event::IssueClientId { .. }, got, .. }) if got == state
                ),
                "{state} {policy:?}"
            );
        }
    }
}
