#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| iotauth_fuzzing::sign_verify_roundtrip(data));
