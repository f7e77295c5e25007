//! Generated gRPC types and service stubs for `proto/walrs/v1/log.proto`.
//! This module owns nothing but the generated code and the encoded file descriptor set
//! that tonic-reflection serves; it must never hold hand-written logic.

/// Package `walrs.v1`.
pub mod walrs {
    /// Version 1 of the API: the `Log` service and its messages.
    pub mod v1 {
        tonic::include_proto!("walrs.v1");
    }
}

pub use walrs::v1;

/// The encoded `FileDescriptorSet` of the API, for `tonic_reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/walrs_descriptor.bin"));

#[cfg(test)]
mod tests {
    use prost::Message;

    #[test]
    fn descriptor_set_builds_a_reflection_service() {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(super::FILE_DESCRIPTOR_SET)
            .with_service_name("walrs.v1.Log")
            .build_v1()
            .expect("the descriptor set is valid and names walrs.v1.Log");
    }

    #[test]
    fn record_fields_round_trip() {
        let record = super::v1::Record {
            offset: 7,
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            timestamp_ms: 1,
            headers: [("h".to_string(), b"x".to_vec())].into(),
        };
        let bytes = record.encode_to_vec();
        assert_eq!(super::v1::Record::decode(bytes.as_slice()).unwrap(), record);
    }
}
