//! libFuzzer entry point; the logic is [`opamp_fuzz::client_core`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| opamp_fuzz::client_core(data));
