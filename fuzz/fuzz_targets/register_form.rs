#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| iotauth_fuzzing::register_form(data));
