#![no_main]
//! `huddle::fuzz::sdp_offer` (src/fuzz.rs): the invariants are there.
libfuzzer_sys::fuzz_target!(|data: &[u8]| huddle::fuzz::sdp_offer(data));
