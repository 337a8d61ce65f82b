#![no_main]
//! `huddle::fuzz::h264` (src/fuzz.rs): the invariants are there.
libfuzzer_sys::fuzz_target!(|data: &[u8]| huddle::fuzz::h264(data));
