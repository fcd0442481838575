//! libFuzzer entry point; the logic is [`opamp_fuzz::http_body`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| opamp_fuzz::http_body(data));
