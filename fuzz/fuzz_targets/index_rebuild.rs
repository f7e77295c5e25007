//! cargo-fuzz target `index_rebuild`: the invariants are in `walrs::fuzzing::index_rebuild`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walrs::fuzzing::index_rebuild(data));
