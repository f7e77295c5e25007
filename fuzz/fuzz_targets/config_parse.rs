//! cargo-fuzz target `config_parse`: the invariants are in `walrs::fuzzing::config_parse`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walrs::fuzzing::config_parse(data));
