//! Generated gRPC types and service stubs for `proto/walrs/v1/log.proto`, and the one place
//! where API records become storage records and back.
//!
//! This module owns the generated code, the encoded file descriptor set that
//! tonic-reflection serves, and the record conversions (`storage_records`, `From`); it must
//! never hold request logic (validation, limits, routing belong to the server and shards).
//! Bytes fields are `bytes::Bytes` (see build.rs), so a conversion moves buffers, it never
//! copies record bytes.

use crate::storage;

/// Package `walrs.v1`.
pub mod walrs {
    /// Version 1 of the API: the `Log` service and its messages.
    pub mod v1 {
        tonic::include_proto!("walrs.v1");
    }
}

pub use walrs::v1;

pub mod codec {
    //! The API's codec: tonic-prost's, except that a message that does not decode (garbage
    //! bytes, a truncated field, a wrong wire type, invalid UTF-8 in a string) is
    //! `INVALID_ARGUMENT` with the decoder's message, not `INTERNAL`: the sender sent it.
    //! The generated client uses it too, so a malformed response also reads as
    //! `INVALID_ARGUMENT` there.

    use std::marker::PhantomData;

    use tonic::Status;
    use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
    use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

    /// The status of a message that did not decode.
    pub fn malformed(error: prost::DecodeError) -> Status {
        Status::invalid_argument(format!("malformed message: {error}"))
    }

    /// [`ProstCodec`] with [`malformed`] for decode failures.
    #[derive(Debug, Clone, Copy)]
    pub struct ProtoCodec<T, U>(PhantomData<(T, U)>);

    impl<T, U> Default for ProtoCodec<T, U> {
        fn default() -> Self {
            ProtoCodec(PhantomData)
        }
    }

    impl<T, U> Codec for ProtoCodec<T, U>
    where
        T: prost::Message + Send + 'static,
        U: prost::Message + Default + Send + 'static,
    {
        type Encode = T;
        type Decode = U;
        type Encoder = ProstEncoder<T>;
        type Decoder = ProtoDecoder<U>;

        fn encoder(&mut self) -> Self::Encoder {
            ProstCodec::<T, U>::default().encoder()
        }

        fn decoder(&mut self) -> Self::Decoder {
            ProtoDecoder(PhantomData)
        }
    }

    /// Decodes one message with prost; see [`malformed`].
    #[derive(Debug)]
    pub struct ProtoDecoder<U>(PhantomData<U>);

    impl<U: prost::Message + Default> Decoder for ProtoDecoder<U> {
        type Item = U;
        type Error = Status;

        fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
            U::decode(buf).map(Some).map_err(malformed)
        }

        fn buffer_settings(&self) -> BufferSettings {
            ProstDecoder::<U>::default().buffer_settings()
        }
    }
}

/// The encoded `FileDescriptorSet` of the API, for `tonic_reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/walrs_descriptor.bin"));

/// The records of an append as storage records: offsets are left 0 (the log assigns them),
/// and a timestamp of 0 (unset) becomes `now_ms`.
pub(crate) fn storage_records(records: Vec<v1::Record>, now_ms: i64) -> Vec<storage::Record> {
    records
        .into_iter()
        .map(|r| {
            let mut record = storage::Record::from(r);
            if record.timestamp_ms == 0 {
                record.timestamp_ms = now_ms;
            }
            record
        })
        .collect()
}

impl From<v1::Record> for storage::Record {
    /// The record as given; its offset is the log's to assign.
    fn from(r: v1::Record) -> storage::Record {
        storage::Record {
            offset: 0,
            timestamp_ms: r.timestamp_ms,
            key: r.key,
            value: r.value,
            headers: r.headers.into_iter().collect(),
        }
    }
}

impl From<storage::Record> for v1::Record {
    fn from(r: storage::Record) -> v1::Record {
        v1::Record {
            offset: r.offset,
            key: r.key,
            value: r.value,
            timestamp_ms: r.timestamp_ms,
            headers: r.headers.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use prost::Message;

    use super::*;

    #[test]
    fn descriptor_set_builds_a_reflection_service() {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .with_service_name("walrs.v1.Log")
            .build_v1()
            .expect("the descriptor set is valid and names walrs.v1.Log");
    }

    fn sample() -> v1::Record {
        v1::Record {
            offset: 7,
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
            timestamp_ms: 1,
            headers: [("h".to_string(), Bytes::from_static(b"x"))].into(),
        }
    }

    #[test]
    fn record_fields_round_trip() {
        let record = sample();
        let bytes = record.encode_to_vec();
        assert_eq!(v1::Record::decode(bytes.as_slice()).unwrap(), record);
    }

    #[test]
    fn conversion_keeps_fields_and_leaves_the_offset_to_the_log() {
        let stored = storage::Record::from(sample());
        assert_eq!(stored.offset, 0);
        assert_eq!(stored.timestamp_ms, 1);
        assert_eq!(&stored.key[..], b"k");
        assert_eq!(&stored.value[..], b"v");
        assert_eq!(stored.headers.len(), 1);
        assert_eq!(stored.headers[0].0, "h");
        assert_eq!(&stored.headers[0].1[..], b"x");
        let back = v1::Record::from(stored);
        assert_eq!(
            back,
            v1::Record {
                offset: 0,
                ..sample()
            }
        );
    }

    #[test]
    fn an_unset_timestamp_becomes_now() {
        let unset = v1::Record {
            timestamp_ms: 0,
            ..sample()
        };
        let records = storage_records(vec![unset, sample()], 42);
        assert_eq!(records[0].timestamp_ms, 42);
        assert_eq!(records[1].timestamp_ms, 1, "a given timestamp is kept");
    }
}
