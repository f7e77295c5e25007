//! Replays the committed fuzz seed corpus (`fuzz/seeds/<target>/`) and every regression
//! input of a crash the fuzzers found (`fuzz/regressions/<target>/`) through the targets'
//! invariants (`walrs::fuzzing`), so that `make test` keeps them passing without cargo-fuzz.

use std::path::Path;

fn replay(root: &str) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(root);
    let mut inputs = 0;
    for target in walrs::fuzzing::TARGETS {
        let dir = root.join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut paths: Vec<_> = entries.map(|e| e.expect("dir entry").path()).collect();
        paths.sort();
        for path in paths {
            let data = std::fs::read(&path).expect("corpus file");
            println!("{target}: {}", path.display());
            assert!(walrs::fuzzing::run(target, &data));
            inputs += 1;
        }
    }
    inputs
}

#[test]
fn the_seed_corpus_passes_every_target() {
    let inputs = replay("fuzz/seeds");
    assert!(
        inputs >= walrs::fuzzing::TARGETS.len(),
        "only {inputs} seeds"
    );
}

/// The config seeds are copies of the example config and a cluster node's: a key added to
/// the example reaches the config fuzzer's start (regression: the seed had fallen behind by
/// a dozen keys). After changing either file, run `write_seed_corpus` (below).
#[test]
fn the_config_seeds_are_the_files_they_copy() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for name in CONFIG_SEEDS {
        let source = std::fs::read(root.join(name)).unwrap();
        let seed = std::fs::read(
            root.join("fuzz/seeds/config_parse")
                .join(name.replace('/', "-")),
        )
        .unwrap();
        assert!(
            seed == source,
            "fuzz/seeds/config_parse/{} differs from {name}: run \
             `cargo test --test fuzz_corpus -- --ignored write_seed_corpus`",
            name.replace('/', "-")
        );
    }
}

/// The config files copied into the seed corpus.
const CONFIG_SEEDS: [&str; 2] = ["walrs.example.toml", "cluster/node-1.toml"];

#[test]
fn every_crash_the_fuzzers_found_stays_fixed() {
    replay("fuzz/regressions");
}

/// Writes the seed corpus (run by hand after a format or message change:
/// `cargo test --test fuzz_corpus -- --ignored write_seed_corpus`). Every seed is a valid
/// input of its kind, so the fuzzers start past the first checks.
#[test]
#[ignore]
fn write_seed_corpus() {
    use bytes::Bytes;
    use prost::Message;
    use walrs::proto::v1 as pb;
    use walrs::storage::{Record, encode_batch};

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let write = |target: &str, name: &str, data: &[u8]| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), data).unwrap();
    };
    let with_mode = |mode: u8, body: &[u8]| [&[mode][..], body].concat();
    let record = |key: &'static [u8], value: &'static [u8], ts: i64| Record {
        offset: 0,
        timestamp_ms: ts,
        key: Bytes::from_static(key),
        value: Bytes::from_static(value),
        headers: vec![("trace".into(), Bytes::from_static(b"abc"))],
    };
    let one = encode_batch(
        0,
        0,
        0,
        &[
            record(b"k", b"hello", 1_700_000_000_000),
            record(b"", b"", 0),
        ],
    );
    let two = encode_batch(2, 1, 0, &[record(b"k2", &[7; 300], 1_700_000_000_500)]);
    let control = encode_batch(3, 1, walrs::storage::FLAG_CONTROL, &[record(b"", b"c", 5)]);

    // Batches: as they are, and with CRC fix-up on.
    write("batch_decode", "batch", &with_mode(0, &one));
    write("batch_decode", "batch-fixcrc", &with_mode(1, &one));
    write("batch_decode", "control", &with_mode(0, &control));
    let mut v1 = one.clone();
    v1[12] = 1; // version 1: header bytes 56..80 become the first record
    write("batch_decode", "version1-fixcrc", &with_mode(1, &v1));

    // Stores: three batches, then a torn one; a zero-padded tail; a bad second batch.
    let store = [&one[..], &two[..], &control[..]].concat();
    let torn = [&store[..], &two[..two.len() / 2]].concat();
    write("segment_recovery", "torn-tail", &with_mode(0, &torn));
    write("segment_recovery", "torn-tail-fixcrc", &with_mode(1, &torn));
    write(
        "segment_recovery",
        "padded",
        &with_mode(0, &[&store[..], &[0; 100]].concat()),
    );
    let mut bad = store.clone();
    bad[one.len() + 30] ^= 0xff;
    write("segment_recovery", "bad-second-batch", &with_mode(0, &bad));

    // index_rebuild reads a generator stream: mode bits (fix checks, base offset, sealed,
    // torn), then batches, then the index bytes.
    let mut seed = 0x5eed_u64;
    let mut random = |len: usize| -> Vec<u8> {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    };
    for mode in [0u8, 1, 3, 5, 7, 9, 13, 15] {
        let body = random(400);
        write(
            "index_rebuild",
            &format!("mode-{mode}"),
            &with_mode(mode, &body),
        );
    }
    for mode in [0u8, 1] {
        write(
            "batch_decode",
            &format!("random-{mode}"),
            &with_mode(mode, &random(300)),
        );
    }

    // Configs: the example and the cluster node files.
    for name in CONFIG_SEEDS {
        let text = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join(name)).unwrap();
        write("config_parse", &name.replace('/', "-"), &text);
    }
    write(
        "config_parse",
        "small",
        b"listen = \"127.0.0.1:7070\"\n[storage]\nshards = 2\nsegment_bytes_max = 1048576\n\
          [[acl]]\nidentity = \"root\"\ntopics = [\"*\"]\nactions = [\"produce\", \"admin\"]\n",
    );

    // Replication frames and metadata records.
    let raft_vote = pb::RaftVote {
        term: 3,
        node_id: 1,
        committed: true,
    };
    let vote = Some(raft_vote);
    let log_id = |term, index| Some(pb::RaftLogId { term, index });
    let membership = pb::RaftMembership {
        configs: vec![pb::RaftVoterSet {
            voters: vec![1, 2, 3],
        }],
        nodes: vec![1, 2, 3],
    };
    use pb::raft_entry::Payload;
    use pb::raft_envelope::Body;
    let entries = vec![
        pb::RaftEntry {
            log_id: log_id(3, 10),
            payload: Some(Payload::Blank(true)),
        },
        pb::RaftEntry {
            log_id: log_id(3, 11),
            payload: Some(Payload::Membership(membership.clone())),
        },
        pb::RaftEntry {
            log_id: log_id(3, 12),
            payload: Some(Payload::Batch(Bytes::from(one.clone()))),
        },
    ];
    let bodies = vec![
        Body::Vote(pb::RaftVoteRequest {
            vote,
            last_log_id: log_id(2, 9),
            leadership_transfer: false,
        }),
        Body::Append(pb::RaftAppendRequest {
            vote,
            prev_log_id: log_id(2, 9),
            entries,
            leader_commit: log_id(2, 9),
        }),
        Body::AppendResponse(pb::RaftAppendResponse {
            result: Some(pb::raft_append_response::Result::Conflict(true)),
        }),
        Body::InstallSnapshot(pb::RaftSnapshot {
            vote,
            last_log_id: log_id(3, 12),
            membership_log_id: log_id(3, 11),
            membership: Some(membership),
            snapshot_id: "3-12-4".into(),
            next_offset: 4,
        }),
        Body::SnapshotResponse(raft_vote),
    ];
    let frame = pb::RaftFrame {
        messages: bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| pb::RaftEnvelope {
                id: i as u64,
                topic: "t".into(),
                partition: 0,
                from_node: 1,
                incarnation: 1,
                to_node: 2,
                body: Some(body),
            })
            .collect(),
    };
    write(
        "replication_message",
        "frame",
        &with_mode(0, &frame.encode_to_vec()),
    );
    use pb::metadata_record::Kind;
    let created = pb::MetadataRecord {
        kind: Some(Kind::TopicCreated(pb::TopicCreated {
            name: "t".into(),
            partitions: 2,
            replicas: vec![
                pb::ReplicaSet { nodes: vec![1, 2] },
                pb::ReplicaSet { nodes: vec![2, 3] },
            ],
            request_id: 9,
            after: None,
        })),
    };
    let deleted = pb::MetadataRecord {
        kind: Some(Kind::TopicDeleted(pb::TopicDeleted {
            name: "t".into(),
            incarnation: 1,
        })),
    };
    let mut records = Vec::new();
    for (gap, record) in [(0u8, &created), (1, &deleted), (0, &created)] {
        let bytes = record.encode_to_vec();
        records.push(gap);
        records.extend((bytes.len() as u16).to_le_bytes());
        records.extend(bytes);
    }
    write("replication_message", "metadata", &with_mode(1, &records));

    // Requests: kind byte, node count byte, protobuf.
    let append = pb::AppendRequest {
        topic: "orders".into(),
        partition: Some(1),
        records: vec![pb::Record {
            offset: 0,
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
            timestamp_ms: 0,
            headers: [("h".to_owned(), Bytes::from_static(b"x"))].into(),
        }],
        correlation_id: 1,
        producer_id: 7,
        sequence: 0,
    };
    let request = |kind: u8, body: Vec<u8>| [&[kind, 3][..], &body].concat();
    write(
        "server_request",
        "append",
        &request(0, append.encode_to_vec()),
    );
    let read = pb::ReadRequest {
        topic: "orders".into(),
        max_bytes: 100,
        max_records: 5,
        ..Default::default()
    };
    write("server_request", "read", &request(1, read.encode_to_vec()));
    let create = pb::CreateTopicRequest {
        name: "orders".into(),
        partitions: 4,
        replication_factor: 3,
    };
    write(
        "server_request",
        "create",
        &request(2, create.encode_to_vec()),
    );
    let truncate = pb::TruncateRequest {
        topic: "..".into(),
        partition: 0,
        before_offset: 10,
    };
    write(
        "server_request",
        "truncate",
        &request(3, truncate.encode_to_vec()),
    );
}
