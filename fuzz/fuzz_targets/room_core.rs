#![no_main]
//! `huddle::fuzz::room_core` (src/fuzz.rs): the invariants are there.
libfuzzer_sys::fuzz_target!(|data: &[u8]| huddle::fuzz::room_core(data));
