#![no_main]
//! `huddle::fuzz::admin_api_body` (src/fuzz.rs): the invariants are there.
libfuzzer_sys::fuzz_target!(|data: &[u8]| huddle::fuzz::admin_api_body(data));
