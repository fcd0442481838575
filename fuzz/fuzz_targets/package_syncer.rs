//! libFuzzer entry point; the logic is [`opamp_fuzz::package_syncer`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| opamp_fuzz::package_syncer(data));
