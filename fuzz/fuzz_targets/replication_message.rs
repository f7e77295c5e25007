//! cargo-fuzz target `replication_message`: the invariants are in `walrs::fuzzing::replication_message`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walrs::fuzzing::replication_message(data));
