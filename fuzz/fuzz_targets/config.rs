#![no_main]
//! `huddle::fuzz::config` (src/fuzz.rs): the invariants are there.
libfuzzer_sys::fuzz_target!(|data: &[u8]| huddle::fuzz::config(data));
