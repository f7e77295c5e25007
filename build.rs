//! Build script: compiles `proto/walrs/v1/log.proto` and `replication.proto` into Rust with protox (a pure-Rust
//! protobuf compiler, so no `protoc` install is needed) and tonic-prost-build, and writes
//! the encoded file descriptor set beside the generated code for tonic-reflection.
//! It must never depend on tools outside the crate's build-dependencies.

use std::path::PathBuf;

const PROTOS: [&str; 2] = [
    "proto/walrs/v1/log.proto",
    "proto/walrs/v1/replication.proto",
];
const INCLUDE: &str = "proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    println!("cargo:rerun-if-changed=build.rs");

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut compiler = protox::Compiler::new([INCLUDE])?;
    compiler
        .include_source_info(true)
        .include_imports(true)
        .open_files(PROTOS)?;
    std::fs::write(
        out_dir.join("walrs_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Record keys, values and header values are `bytes::Bytes`: decoded as slices of
        // the request buffer, and carried to the shards without a copy.
        .bytes(".")
        // Decode failures are the sender's mistake: INVALID_ARGUMENT, not INTERNAL.
        .codec_path("crate::proto::codec::ProtoCodec")
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
