#![no_main]
//! `huddle::fuzz::flv_tags` (src/fuzz.rs): the invariants are there.
libfuzzer_sys::fuzz_target!(|data: &[u8]| huddle::fuzz::flv_tags(data));
