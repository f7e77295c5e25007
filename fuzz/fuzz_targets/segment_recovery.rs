//! cargo-fuzz target `segment_recovery`: the invariants are in `walrs::fuzzing::segment_recovery`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walrs::fuzzing::segment_recovery(data));
