//! cargo-fuzz target `batch_decode`: the invariants are in `walrs::fuzzing::batch_decode`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walrs::fuzzing::batch_decode(data));
