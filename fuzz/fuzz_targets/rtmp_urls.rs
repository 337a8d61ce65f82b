#![no_main]
//! `huddle::fuzz::rtmp_urls` (src/fuzz.rs): the invariants are there.
libfuzzer_sys::fuzz_target!(|data: &[u8]| huddle::fuzz::rtmp_urls(data));
