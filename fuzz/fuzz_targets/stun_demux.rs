#![no_main]
//! `huddle::fuzz::stun_demux` (src/fuzz.rs): the invariants are there.
libfuzzer_sys::fuzz_target!(|data: &[u8]| huddle::fuzz::stun_demux(data));
