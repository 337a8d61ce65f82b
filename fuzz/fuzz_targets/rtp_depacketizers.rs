#![no_main]
//! `huddle::fuzz::rtp_depacketizers` (src/fuzz.rs): the invariants are there.
libfuzzer_sys::fuzz_target!(|data: &[u8]| huddle::fuzz::rtp_depacketizers(data));
