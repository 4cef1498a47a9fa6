#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| iotauth::fuzzing::sign_verify_roundtrip(data));
