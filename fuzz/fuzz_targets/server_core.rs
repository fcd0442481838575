//! libFuzzer entry point; the logic is [`opamp_fuzz::server_core`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| opamp_fuzz::server_core(data));
