//! Idempotent producers on one real server over mutual TLS: a retried batch is answered
//! with its original offsets and written once; gaps and retries older than the window are
//! refused and change nothing; pipelined batches keep their order; the windows survive a
//! restart (rebuilt from the batch headers, across segments); and two identities using one
//! producer id are two producers. (Leader changes: `tests/cluster.rs`.)

mod common;

use std::path::Path;

use futures::StreamExt;
use tonic::Code;
use walrs::client::{Client, ClientTls, ReadOptions, record};
use walrs::config::{AclEntry, Config};
use walrs::proto::v1::{AppendRequest, AppendResponse};
use walrs::server::acl::Action;

const TOPIC: &str = "events";

fn config(dir: &Path) -> Config {
    let mut config = common::mtls_config(dir);
    config.metrics.enabled = false;
    // Small segments, so a producer's window spans several of them.
    config.storage.record_bytes_max = 1024;
    config.storage.batch_bytes_max = 4096;
    config.storage.segment_bytes_max = 4096;
    config.storage.flush_bytes_max = 1 << 20;
    config.server.read_bytes_max = 1 << 20;
    // A second identity with the right to produce.
    walrs::certs::add_client(&dir.join("certs"), "alice", "alice", false).unwrap();
    config.acl.push(AclEntry {
        identity: "alice".into(),
        topics: vec!["*".into()],
        actions: vec![Action::Produce, Action::Consume],
    });
    config
}

struct Server {
    dir: tempfile::TempDir,
    config: Config,
    running: Option<walrs::server::Running>,
}

impl Server {
    async fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let mut server = Server {
            dir,
            config,
            running: None,
        };
        server.restart().await;
        server
    }

    /// Starts the server (again) on the same data directory.
    async fn restart(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await.unwrap();
        }
        // A new port each time (127.0.0.1:0): clients connect again anyway.
        let running = walrs::server::start(self.config.clone()).await.unwrap();
        self.running = Some(running);
    }

    async fn client(&self, name: &str) -> Client {
        let addr = self.running.as_ref().unwrap().local_addr().to_string();
        let tls = ClientTls::from_dir(self.dir.path().join("certs"), name);
        Client::connect(&addr, Some(tls)).await.unwrap()
    }

    async fn shutdown(mut self) {
        self.running.take().unwrap().shutdown().await.unwrap();
    }
}

fn request(producer_id: u64, sequence: u64, value: &str) -> AppendRequest {
    AppendRequest {
        topic: TOPIC.into(),
        partition: Some(0),
        records: vec![record("", value), record("", format!("{value}+"))],
        correlation_id: sequence,
        producer_id,
        sequence,
    }
}

async fn send(client: &Client, request: AppendRequest) -> Result<AppendResponse, tonic::Status> {
    Ok(client.log_client().append(request).await?.into_inner())
}

/// Every value of partition 0, in offset order.
async fn values(client: &Client) -> Vec<String> {
    let mut values = Vec::new();
    let mut offset = 0;
    loop {
        let read = client
            .read(TOPIC, 0, offset, ReadOptions::default())
            .await
            .unwrap();
        if read.records.is_empty() {
            return values;
        }
        values.extend(
            read.records
                .iter()
                .map(|r| String::from_utf8(r.value.to_vec()).unwrap()),
        );
        offset = read.next_offset;
    }
}

async fn create_topic(client: &Client) {
    client.create_topic(TOPIC, 2).await.unwrap();
}

#[tokio::test]
async fn retries_are_answered_with_the_original_offsets_and_written_once() {
    let server = Server::start().await;
    let client = server.client("root").await;
    create_topic(&client).await;
    let mut acks = Vec::new();
    for s in 0..3 {
        acks.push(
            send(&client, request(77, s, &format!("v{s}")))
                .await
                .unwrap(),
        );
    }
    // A plain append in between takes its own offsets.
    client
        .append(TOPIC, Some(0), vec![record("", "plain")])
        .await
        .unwrap();
    for s in 0..3 {
        // Even with another payload: the sequence decides, the first answer stands.
        let mut retry = request(77, s, "changed");
        retry.correlation_id = 1000 + s;
        let again = send(&client, retry).await.unwrap();
        assert_eq!(again.base_offset, acks[s as usize].base_offset, "seq {s}");
        assert_eq!(again.count, 2);
        assert_eq!(again.partition, 0);
        assert_eq!(
            again.correlation_id,
            1000 + s,
            "the retry's own correlation id"
        );
    }
    assert_eq!(
        values(&client).await,
        ["v0", "v0+", "v1", "v1+", "v2", "v2+", "plain"],
        "one copy of each batch"
    );
    // The same producer id in another partition is another sequence.
    let mut other = request(77, 0, "p1");
    other.partition = Some(1);
    assert_eq!(send(&client, other).await.unwrap().base_offset, 0);
    // An idempotent append must name its partition.
    let mut unnamed = request(77, 3, "x");
    unnamed.partition = None;
    let refused = send(&client, unnamed).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn gaps_and_retries_older_than_the_window_are_refused_and_change_nothing() {
    let server = Server::start().await;
    let client = server.client("root").await;
    create_topic(&client).await;
    let mut acks = Vec::new();
    for s in 0..7 {
        acks.push(
            send(&client, request(5, s, &format!("v{s}")))
                .await
                .unwrap(),
        );
    }
    let gap = send(&client, request(5, 9, "gap")).await.unwrap_err();
    assert_eq!(gap.code(), Code::FailedPrecondition, "{gap:?}");
    assert!(
        gap.message().contains("next sequence here is 7"),
        "the expected sequence is named: {}",
        gap.message()
    );
    for s in [0, 1] {
        let old = send(&client, request(5, s, "old")).await.unwrap_err();
        assert_eq!(old.code(), Code::FailedPrecondition, "{old:?}");
        assert!(
            old.message().contains("older than the last 5"),
            "{}",
            old.message()
        );
    }
    // The window: sequences 2..=6 still answer.
    for s in 2..7 {
        let again = send(&client, request(5, s, "again")).await.unwrap();
        assert_eq!(again.base_offset, acks[s as usize].base_offset);
    }
    assert_eq!(
        values(&client).await.len(),
        14,
        "nothing refused was written"
    );
    // And the producer goes on where it was.
    let next = send(&client, request(5, 7, "v7")).await.unwrap();
    assert_eq!(next.base_offset, 14);
    server.shutdown().await;
}

#[tokio::test]
async fn pipelined_batches_keep_their_order_and_a_resent_window_is_not_written_again() {
    let server = Server::start().await;
    let client = server.client("root").await;
    create_topic(&client).await;
    let batches = 40u64;
    let requests = (0..batches).map(|s| request(9, s, &format!("v{s}")));
    let acks: Vec<AppendResponse> = client
        .append_stream(futures::stream::iter(requests))
        .await
        .unwrap()
        .map(|ack| ack.unwrap())
        .collect()
        .await;
    assert_eq!(acks.len() as u64, batches);
    for (s, ack) in acks.iter().enumerate() {
        assert_eq!(ack.correlation_id, s as u64);
        assert_eq!(
            ack.base_offset,
            2 * s as u64,
            "sequence order is offset order"
        );
    }
    // A client that lost its stream sends its last unacknowledged batches again, pipelined.
    let resent = (batches - 5..batches).map(|s| request(9, s, "resent"));
    let again: Vec<AppendResponse> = client
        .append_stream(futures::stream::iter(resent))
        .await
        .unwrap()
        .map(|ack| ack.unwrap())
        .collect()
        .await;
    for ack in &again {
        assert_eq!(
            ack.base_offset,
            acks[ack.correlation_id as usize].base_offset
        );
    }
    let all = values(&client).await;
    assert_eq!(all.len() as u64, 2 * batches);
    assert!(all.iter().all(|v| !v.starts_with("resent")));
    server.shutdown().await;
}

#[tokio::test]
async fn the_windows_survive_a_restart() {
    let mut server = Server::start().await;
    let client = server.client("root").await;
    create_topic(&client).await;
    // Batches of ~300 bytes in 4 KiB segments: the log rolls many times.
    let filler = "x".repeat(100);
    let mut acks = Vec::new();
    for s in 0..40 {
        acks.push(
            send(&client, request(3, s, &format!("{s}-{filler}")))
                .await
                .unwrap(),
        );
    }
    let mut alice_ack = send(&server.client("alice").await, request(3, 0, "alice"))
        .await
        .unwrap();
    server.restart().await;
    let client = server.client("root").await;
    for s in 35..40 {
        let again = send(&client, request(3, s, "after restart")).await.unwrap();
        assert_eq!(again.base_offset, acks[s as usize].base_offset, "seq {s}");
    }
    let old = send(&client, request(3, 34, "old")).await.unwrap_err();
    assert_eq!(old.code(), Code::FailedPrecondition, "{old:?}");
    let gap = send(&client, request(3, 41, "gap")).await.unwrap_err();
    assert!(
        gap.message().contains("next sequence here is 40"),
        "{gap:?}"
    );
    let alice = server.client("alice").await;
    let again = send(&alice, request(3, 0, "alice again")).await.unwrap();
    alice_ack.correlation_id = again.correlation_id;
    assert_eq!(
        again, alice_ack,
        "alice's producer 3 is rebuilt apart from root's"
    );
    assert_eq!(values(&client).await.len(), 82, "nothing written twice");
    server.shutdown().await;
}

#[tokio::test]
async fn two_identities_using_one_producer_id_do_not_interfere() {
    let server = Server::start().await;
    let root = server.client("root").await;
    let alice = server.client("alice").await;
    create_topic(&root).await;
    let root_0 = send(&root, request(42, 0, "root-0")).await.unwrap();
    let root_1 = send(&root, request(42, 1, "root-1")).await.unwrap();
    // Alice's producer 42 is not root's: her sequence 0 is new, not a retry of root's, and
    // her sequence 5 is not a gap in root's numbering (she is a new producer).
    let alice_0 = send(&alice, request(42, 0, "alice-0")).await.unwrap();
    assert_ne!(alice_0.base_offset, root_0.base_offset);
    let alice_gap = send(&alice, request(42, 5, "alice-5")).await.unwrap_err();
    assert_eq!(alice_gap.code(), Code::FailedPrecondition);
    assert!(alice_gap.message().contains("next sequence here is 1"));
    // Root's retries still get root's answers; alice's get hers.
    assert_eq!(
        send(&root, request(42, 1, "retry"))
            .await
            .unwrap()
            .base_offset,
        root_1.base_offset
    );
    assert_eq!(
        send(&alice, request(42, 0, "retry"))
            .await
            .unwrap()
            .base_offset,
        alice_0.base_offset
    );
    // Root goes on from its own next sequence, 2, unaffected by alice's.
    send(&root, request(42, 2, "root-2")).await.unwrap();
    assert_eq!(
        values(&root).await,
        [
            "root-0", "root-0+", "root-1", "root-1+", "alice-0", "alice-0+", "root-2", "root-2+"
        ]
    );
    server.shutdown().await;
}

/// `walrs produce` with the arguments after the connection's, `stdin` piped in.
fn walrs_produce(server: &Server, args: &[&str], stdin: &str) -> String {
    use std::io::Write;
    let addr = server.running.as_ref().unwrap().local_addr().to_string();
    let certs = server.dir.path().join("certs");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_walrs"))
        .arg("produce")
        .args(["--addr", &addr])
        .arg("--ca")
        .arg(certs.join("ca.pem"))
        .arg("--cert")
        .arg(certs.join("root.pem"))
        .arg("--tls-key")
        .arg(certs.join("root-key.pem"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "walrs produce {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The command's appends are idempotent by default (producer id and sequences stamped; the
/// partition chosen on the client side when none is given) and plain ones with
/// --no-idempotence; both write each record once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walrs_produce_is_idempotent_by_default() {
    let server = Server::start().await;
    let client = server.client("root").await;
    create_topic(&client).await;
    let one_batch = walrs_produce(&server, &[TOPIC, "--partition", "0", "a", "b"], "");
    assert!(
        one_batch.contains("partition 0 offsets 0..2"),
        "{one_batch}"
    );
    let lines = walrs_produce(&server, &[TOPIC, "--partition", "0"], "c\nd\ne\n");
    assert_eq!(lines.lines().count(), 3, "{lines}");
    let plain = walrs_produce(
        &server,
        &[TOPIC, "--partition", "0", "--no-idempotence"],
        "f\n",
    );
    assert!(plain.contains("offset 5"), "{plain}");
    // No --partition and no key: one partition for the whole run, chosen by the command.
    let anywhere = walrs_produce(&server, &[TOPIC], "g\nh\n");
    let partitions: std::collections::BTreeSet<&str> = anywhere
        .lines()
        .map(|l| l.split_whitespace().nth(2).unwrap())
        .collect();
    assert_eq!(partitions.len(), 1, "{anywhere}");
    assert_eq!(values(&client).await[..6], ["a", "b", "c", "d", "e", "f"]);
    server.shutdown().await;
}
