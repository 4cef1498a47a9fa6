//! Parsing and verifying a CONNECT never touches the heap, measured by the
//! `allocation-counter` crate (a counting global allocator, per thread).

use iotauth::*;

#[test]
fn parse_and_verify_allocate_nothing() {
    let cert = DeviceCertificate::new(
        ProductKey::new("a2SHaReD0k1").unwrap(),
        DeviceName::new("shared-dev-01").unwrap(),
        DeviceSecret::new("Sh4r3dS3cr3tV4lu3F0rT3st1ngXyZ09").unwrap(),
    );
    for method in SignMethod::ALL {
        let options = LoginOptions::default()
            .with_client_id("a2SHaReD0k1&shared-dev-01")
            .with_timestamp("1710000000")
            .with_sign_method(method);
        // Signing computes the secret's key schedule for this method and keeps it with the
        // secret (one allocation per secret, not per login), as a server's first
        // verification would.
        let creds = build_login(&cert, &options).unwrap();
        let password = creds.expose_password();
        let mut verified = false;
        let info = allocation_counter::measure(|| {
            let request =
                ConnectRequest::parse(creds.client_id(), creds.username(), &password).unwrap();
            verified = request
                .verify_login(cert.device_secret(), Freshness::Unchecked, UnixMillis(0))
                .is_ok();
        });
        assert!(verified, "{method}");
        assert_eq!(info.count_total, 0, "{method}: parse + verify allocated");
    }
    // The counter counts: a String does allocate.
    let info = allocation_counter::measure(|| drop(std::hint::black_box(String::from("x"))));
    assert_eq!(info.count_total, 1);
}
