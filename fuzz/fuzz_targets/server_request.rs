//! cargo-fuzz target `server_request`: the invariants are in `walrs::fuzzing::server_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walrs::fuzzing::server_request(data));
