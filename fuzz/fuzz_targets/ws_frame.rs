//! libFuzzer entry point; the logic is [`opamp_fuzz::ws_frame`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| opamp_fuzz::ws_frame(data));
