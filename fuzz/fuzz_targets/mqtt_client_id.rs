#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| iotauth_fuzzing::mqtt_client_id(data));
