//! One `walrs serve` process, crashed again and again under load (issue 15, single node).
//!
//! Each cycle starts the server (on the same data dir), checks what it serves against
//! everything acknowledged so far, runs producers that append batches of unique values of
//! random sizes to random partitions, and after a random delay (one in five within 50 ms of
//! the producers' start, the others 10-1510 ms after the cycle's first acknowledgement,
//! which must come) either kills the process
//! with SIGKILL or cuts the power: SIGKILL, then a power cut of the powerfs mount that holds
//! the data dir (tools/powerfs: every byte and directory entry not covered by a completed
//! fsync is forgotten). A SIGKILL alone leaves the page cache — and powerfs's unsynced bytes
//! — intact, so only the power cut tests that an acknowledged append was really fsynced.
//!
//! After every restart the checker requires: every acknowledged record is served at its
//! offset, byte for byte (`lost`, `inconsistent-offsets` otherwise); every record served is
//! one the producers sent, at one offset only (`unknown`, `duplicated`), not one the server
//! refused definitely (`failed-but-visible`); an offset once served keeps its value in every
//! later cycle and does not disappear (`inconsistent-offsets`, `served-then-lost`); reads do
//! not fail (`read-error`); and appends are acknowledged again. Retention (4 MiB per
//! partition, 256 KiB segments) deletes segments while the crashes come and keeps every
//! full read bounded: acknowledged records below a partition's start offset count as
//! expired, and a record that reappears below it is still checked by its fingerprint.
//!
//! Variants: the io_uring engine and the portable engine, each with SIGKILL on the real disk
//! and with SIGKILLs and power cuts (two in three faults) on powerfs, where both engines run
//! (O_DIRECT and glommio's io_uring reads, writes and fdatasync work through FUSE). Cycles per variant: `WALRS_CHAOS_CYCLES` (default 3, for `make
//! test`); `WALRS_CHAOS_DURATION_S` stops a variant early once that long has passed. The run
//! prints its seed (`WALRS_TEST_SEED` replays the same choices, as far as thread scheduling
//! allows); a violation writes the whole history to a file under `WALRS_CHAOS_OUT` (default
//! `target/…/tmp/chaos`) and names it. A summary line per variant goes to
//! `WALRS_CHAOS_OUT/summary.jsonl`.

mod seeded;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::Code;
use walrs::client::{Client, ClientTls, ReadOptions};
use walrs::proto::v1::Record;

use seeded::{Rng, seed};

const TOPIC: &str = "crash";
const PARTITIONS: u32 = 2;
const PRODUCERS: u32 = 3;
const BATCH_RECORDS_MAX: u64 = 16;
const VALUE_BYTES_MAX: u64 = 2000;
/// Per partition: retention keeps each log (and each verification's full read) bounded, and
/// deletes segments while the crashes come.
const RETENTION_BYTES: u64 = 4 << 20;
/// The server must be serving again this soon after a restart.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a single append or read may take before it counts as a timeout.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest a cycle's load runs before its fault.
const LOAD_MS_MAX: u64 = 1500;
/// Batches one producer sends in one cycle, at most.
const BATCHES_PER_CYCLE_MAX: u64 = 1_000_000;
/// Reads per partition in one verification, at most (each returns at least one record).
const READS_MAX: usize = 1_000_000;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name} is a number")))
}

fn out_dir() -> PathBuf {
    let dir = std::env::var_os("WALRS_CHAOS_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("chaos"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// What a producer knows about a value it sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Sent; no answer, a timeout, or an error that leaves it unknown.
    Indeterminate,
    /// Refused with an error that means nothing was written.
    Failed,
    /// Acknowledged at this offset.
    Acked(u64),
}

/// A value's fingerprint (values are unique by construction; 64 bits make a collision in a
/// run of millions of values vanishingly unlikely).
fn fingerprint(value: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// Everything sent, acknowledged and served, and the history of the run.
#[derive(Default)]
struct Ledger {
    /// (partition, offset) → value, for every acknowledged record not yet removed by
    /// retention (bytes, for the byte-for-byte check).
    acked: BTreeMap<(u32, u64), Vec<u8>>,
    /// fingerprint of every value ever sent → (partition it was sent to, outcome).
    sent: HashMap<u64, (u32, Outcome)>,
    /// (partition, offset) → fingerprint, for every record a verification read (above the
    /// partition's start).
    served: BTreeMap<(u32, u64), u64>,
    /// Acknowledged records removed by retention (below a partition's start offset).
    expired: u64,
    /// Violations seen by the producers (an offset acknowledged twice), for the next check.
    ack_violations: Vec<String>,
    history: Vec<String>,
    definite_failures: u64,
    indeterminate: u64,
}

impl Ledger {
    fn note(&mut self, line: String) {
        self.history.push(line);
    }
}

type Shared = Arc<Mutex<Ledger>>;

/// Figures of one variant's run.
#[derive(Debug, Default)]
struct Figures {
    cycles: u64,
    kills: u64,
    power_cuts: u64,
    acked_checked: u64,
    records_read: u64,
    appends_acked: u64,
    records_acked: u64,
    expired: u64,
}

/// A running (or stopped) `walrs serve`.
struct Server {
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Server {
    /// Starts the server and waits for its "serving" line: (address, "engine (why)").
    fn start(&mut self) -> Result<(String, String), String> {
        assert!(self.child.is_none(), "the server is already running");
        let mut child = Command::new(env!("CARGO_BIN_EXE_walrs"))
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info,openraft=error")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawning walrs: {e}"))?;
        let stderr = child.stderr.take().unwrap();
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                writeln!(log, "{line}").unwrap();
                if line.contains("walrs serving")
                    && let Some(tx) = tx.take()
                {
                    let field = |name: &str| {
                        line.split(&format!("{name}="))
                            .nth(1)
                            .and_then(|rest| rest.split_whitespace().next())
                            .unwrap_or("")
                            .trim_matches('"')
                            .to_string()
                    };
                    // The receiver is gone only when start() gave up: nothing to tell.
                    let reason = line
                        .split("engine_reason=")
                        .nth(1)
                        .and_then(|rest| rest.split(" shards=").next())
                        .unwrap_or("")
                        .to_string();
                    drop(tx.send((field("address"), format!("{} ({reason})", field("engine")))));
                }
            }
        });
        self.child = Some(child);
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(found) => Ok(found),
            Err(_) => {
                self.kill();
                Err(format!(
                    "walrs did not start within {START_TIMEOUT:?}; its log: {}",
                    self.log.display()
                ))
            }
        }
    }

    /// SIGKILL, and wait until the process is gone (every file it had open is closed).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The server's config; `storage_extra` is more `[storage]` lines.
fn write_config(dir: &Path, data_dir: &Path, engine: &str, storage_extra: &str) -> PathBuf {
    let certs = dir.join("certs");
    walrs::certs::generate(&certs, false).unwrap();
    let text = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = \"{data}\"\ndefault_partitions = {PARTITIONS}\n\
         [storage]\n{storage_extra}engine = \"{engine}\"\nshards = 2\nrecord_bytes_max = 65536\n\
         batch_bytes_max = 131072\nsegment_bytes_max = 262144\n\
         retention_bytes = {RETENTION_BYTES}\nmaintenance_interval_ms = 200\n\
         [tls]\ncert = \"{cert}\"\nkey = \"{key}\"\nclient_ca = \"{ca}\"\n\
         [[acl]]\nidentity = \"root\"\ntopics = [\"*\"]\nactions = [\"produce\", \"consume\", \"admin\"]\n\
         [metrics]\nenabled = false\n",
        data = data_dir.display(),
        cert = certs.join("server.pem").display(),
        key = certs.join("server-key.pem").display(),
        ca = certs.join("ca.pem").display(),
    );
    let path = dir.join("walrs.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn connect(addr: &str, certs: &Path) -> Result<Client, String> {
    Client::connect(addr, Some(ClientTls::from_dir(certs, "root")))
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))
}

/// The value of one record: its identity, then filler derived from it, `len` bytes in all.
fn value(label: &str, cycle: u64, producer: u32, seq: u64, len: usize) -> Vec<u8> {
    let mut v = format!("{label}/c{cycle}/p{producer}/s{seq}/").into_bytes();
    let mut x = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(producer);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(b'a' + (x % 26) as u8);
    }
    v
}

/// Appends batches until `stop`, recording every value sent and every answer.
async fn produce(
    client: Client,
    ledger: Shared,
    stop: Arc<tokio::sync::Notify>,
    (label, cycle, producer, seed): (String, u64, u32, u64),
) {
    let mut rng = Rng(seed | 1);
    let stopping = stop.notified();
    tokio::pin!(stopping);
    stopping.as_mut().enable();
    // Bounded: the stop ends it long before (a cycle's load lasts at most 1.5 s).
    for seq in 0..BATCHES_PER_CYCLE_MAX {
        let partition = rng.below(u64::from(PARTITIONS)) as u32;
        let count = rng.below(BATCH_RECORDS_MAX) + 1;
        let values: Vec<Vec<u8>> = (0..count)
            .map(|i| {
                let len = rng.below(VALUE_BYTES_MAX) as usize;
                value(&label, cycle, producer, seq * 100 + i, len)
            })
            .collect();
        {
            let mut l = ledger.lock().unwrap();
            for v in &values {
                l.sent
                    .insert(fingerprint(v), (partition, Outcome::Indeterminate));
            }
        }
        let records: Vec<Record> = values
            .iter()
            .map(|v| walrs::client::record(format!("p{producer}"), v.clone()))
            .collect();
        let append =
            tokio::time::timeout(CALL_TIMEOUT, client.append(TOPIC, Some(partition), records));
        let result = tokio::select! {
            result = append => result,
            () = &mut stopping => {
                ledger.lock().unwrap().indeterminate += count;
                return;
            }
        };
        let pause = {
            let mut l = ledger.lock().unwrap();
            match result {
                Ok(Ok(ack)) => {
                    assert_eq!(ack.count as u64, count, "an ack counts the batch's records");
                    assert_eq!(ack.partition, partition, "an ack names the partition asked");
                    for (i, v) in values.iter().enumerate() {
                        let offset = ack.base_offset + i as u64;
                        if let Some(old) = l.acked.insert((partition, offset), v.clone()) {
                            let line = format!(
                                "inconsistent-offsets: p{partition} o{offset} acknowledged \
                                 twice: {:?} then {:?}",
                                String::from_utf8_lossy(&old[..old.len().min(40)]),
                                String::from_utf8_lossy(&v[..v.len().min(40)])
                            );
                            l.note(format!("VIOLATION {line}"));
                            l.ack_violations.push(line);
                        }
                        l.sent
                            .insert(fingerprint(v), (partition, Outcome::Acked(offset)));
                    }
                    l.note(format!(
                        "ack c{cycle} producer {producer} seq {seq}: p{partition} o{}+{count}",
                        ack.base_offset
                    ));
                    false
                }
                Ok(Err(status)) => {
                    let definite = matches!(
                        status.code(),
                        Code::InvalidArgument
                            | Code::ResourceExhausted
                            | Code::NotFound
                            | Code::PermissionDenied
                            | Code::Unauthenticated
                    );
                    if definite {
                        l.definite_failures += count;
                        for v in &values {
                            l.sent.insert(fingerprint(v), (partition, Outcome::Failed));
                        }
                    } else {
                        l.indeterminate += count;
                    }
                    l.note(format!(
                    "error c{cycle} producer {producer} seq {seq}: p{partition} {count} records: \
                     {:?} {}",
                    status.code(),
                    status.message()
                ));
                    true
                }
                Err(_) => {
                    l.indeterminate += count;
                    l.note(format!(
                    "timeout c{cycle} producer {producer} seq {seq}: p{partition} {count} records"
                ));
                    false
                }
            }
        };
        if pause {
            // The server is likely gone (killed): wait for the stop, bounded.
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
                () = &mut stopping => return,
            }
        }
    }
}

/// Reads every partition from its start to its high watermark and checks it against the
/// ledger. Returns the violations found, the records read and the acknowledged records
/// checked (those at or above their partition's start offset).
async fn verify(client: &Client, ledger: &Shared, cycle: u64) -> (Vec<String>, u64, u64) {
    let mut violations = std::mem::take(&mut ledger.lock().unwrap().ack_violations);
    let mut read_total = 0u64;
    let topic = match tokio::time::timeout(CALL_TIMEOUT, client.describe_topic(TOPIC)).await {
        Ok(Ok(t)) => t,
        Ok(Err(status))
            if status.code() == Code::NotFound && ledger.lock().unwrap().acked.is_empty() =>
        {
            return (violations, 0, 0);
        }
        other => {
            violations.push(format!("read-error: describing the topic: {other:?}"));
            return (violations, 0, 0);
        }
    };
    let mut read: BTreeMap<(u32, u64), Vec<u8>> = BTreeMap::new();
    let mut ends: HashMap<u32, u64> = HashMap::new();
    let mut starts: HashMap<u32, u64> = HashMap::new();
    for p in &topic.partitions {
        ends.insert(p.id, p.high_watermark);
        starts.insert(p.id, p.start_offset);
        let mut offset = p.start_offset;
        for _ in 0..READS_MAX {
            if offset >= p.high_watermark {
                break;
            }
            let r = match tokio::time::timeout(
                CALL_TIMEOUT,
                client.read(TOPIC, p.id, offset, ReadOptions::default()),
            )
            .await
            {
                Ok(Ok(r)) => r,
                Ok(Err(status)) if status.code() == Code::OutOfRange => {
                    // Retention ran during the read: go on from the new start, if it moved.
                    let start = match client.describe_topic(TOPIC).await {
                        Ok(t) => t
                            .partitions
                            .iter()
                            .find(|q| q.id == p.id)
                            .map_or(0, |q| q.start_offset),
                        Err(_) => 0,
                    };
                    if start > offset {
                        starts.insert(p.id, start);
                        read.retain(|(q, o), _| *q != p.id || *o >= start);
                        offset = start;
                        continue;
                    }
                    violations.push(format!(
                        "read-error: p{} from o{offset} (start {start}, high watermark {}): \
                         {status:?}",
                        p.id, p.high_watermark
                    ));
                    break;
                }
                other => {
                    violations.push(format!(
                        "read-error: p{} from o{offset} (high watermark {}): {other:?}",
                        p.id, p.high_watermark
                    ));
                    break;
                }
            };
            if r.next_offset <= offset || r.records.is_empty() {
                violations.push(format!(
                    "read-error: p{} from o{offset} made no progress (next {}, {} records, \
                     high watermark {})",
                    p.id,
                    r.next_offset,
                    r.records.len(),
                    p.high_watermark
                ));
                break;
            }
            let mut last = None;
            for rec in &r.records {
                if rec.offset < offset || last.is_some_and(|l| rec.offset <= l) {
                    violations.push(format!(
                        "nonmonotonic: p{} read from o{offset} returned o{} after {last:?}",
                        p.id, rec.offset
                    ));
                }
                last = Some(rec.offset);
                if rec.offset < p.high_watermark {
                    read.insert((p.id, rec.offset), rec.value.to_vec());
                }
            }
            offset = r.next_offset;
        }
    }
    let mut l = ledger.lock().unwrap();
    let l = &mut *l;
    let text = |v: &[u8]| String::from_utf8_lossy(&v[..v.len().min(48)]).into_owned();
    let mut positions: HashMap<u64, (u32, u64)> = HashMap::new();
    for (&(p, o), v) in &read {
        read_total += 1;
        let f = fingerprint(v);
        if let Some(other) = positions.insert(f, (p, o)) {
            violations.push(format!(
                "duplicated: {} at p{} o{} and p{p} o{o}",
                text(v),
                other.0,
                other.1
            ));
        }
        if let Some(acked) = l.acked.get(&(p, o))
            && acked != v
        {
            violations.push(format!(
                "inconsistent-offsets: p{p} o{o} acknowledged as {:?}, served as {}",
                text(acked),
                text(v)
            ));
            continue;
        }
        match l.sent.get(&f) {
            None => violations.push(format!(
                "unknown: p{p} o{o} serves {} (never sent)",
                text(v)
            )),
            Some((sent_p, _)) if *sent_p != p => violations.push(format!(
                "unknown: p{p} o{o} serves {}, sent to p{sent_p}",
                text(v)
            )),
            Some((_, Outcome::Failed)) => violations.push(format!(
                "failed-but-visible: p{p} o{o} serves {}, refused definitely",
                text(v)
            )),
            Some((_, Outcome::Acked(at))) if *at != o => violations.push(format!(
                "inconsistent-offsets: p{p} o{o} serves {}, acknowledged at o{at}",
                text(v)
            )),
            Some(_) => {}
        }
        if let Some(before) = l.served.get(&(p, o))
            && *before != f
        {
            violations.push(format!(
                "inconsistent-offsets: p{p} o{o} was served with another value before, now {}",
                text(v)
            ));
        }
    }
    let start_of = |p: u32| starts.get(&p).copied().unwrap_or(0);
    let mut checked = 0u64;
    for ((p, o), v) in &l.acked {
        if *o < start_of(*p) {
            continue;
        }
        checked += 1;
        if !read.contains_key(&(*p, *o)) {
            violations.push(format!(
                "lost: p{p} o{o} acknowledged ({:?}), not served (start {}, high watermark {:?})",
                text(v),
                start_of(*p),
                ends.get(p)
            ));
        }
    }
    for (p, o) in l.served.keys() {
        if *o >= start_of(*p) && !read.contains_key(&(*p, *o)) {
            violations.push(format!(
                "served-then-lost: p{p} o{o} was served, now gone (start {}, high watermark {:?})",
                start_of(*p),
                ends.get(p)
            ));
        }
    }
    // Retention removed what is below each start: forget it (the fingerprints stay, so a
    // record that reappears is still checked).
    let before = l.acked.len();
    l.acked.retain(|(p, o), _| *o >= start_of(*p));
    l.expired += (before - l.acked.len()) as u64;
    l.served.retain(|(p, o), _| *o >= start_of(*p));
    let mut summary = format!("verify c{cycle}: read {read_total} records;");
    for (p, end) in &ends {
        write!(summary, " p{p} hw {end}").unwrap();
    }
    l.note(summary);
    for (k, v) in read {
        l.served.insert(k, fingerprint(&v));
    }
    (violations, read_total, checked)
}

/// Where the data dir lives, and which faults a cycle may inject.
enum Disk {
    /// The real disk: SIGKILL only.
    Real,
    /// powerfs: SIGKILL or a power cut.
    Power(powerfs::Mount),
}

async fn run_variant(label: &str, engine: &str, on_powerfs: bool) {
    let run_seed = seed();
    let seed = run_seed
        ^ label
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31) ^ u64::from(b));
    let cycles = env_u64("WALRS_CHAOS_CYCLES").unwrap_or(3);
    let duration = env_u64("WALRS_CHAOS_DURATION_S").map(Duration::from_secs);
    println!(
        "crash cycles {label}: seed {seed} (WALRS_TEST_SEED={run_seed} replays), {cycles} cycles"
    );
    let mut rng = Rng(seed);
    let mut dir = tempfile::Builder::new()
        .prefix(&format!("crash-{label}-"))
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    // Kept when the run fails (its server log and data dir); removed at the end otherwise.
    dir.disable_cleanup(true);
    let dir_path = dir.path().to_path_buf();
    let mut disk = if on_powerfs {
        let backing = dir.path().join("backing");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&backing).unwrap();
        std::fs::create_dir(&mnt).unwrap();
        Disk::Power(powerfs::Mount::new(&backing, &mnt).expect("mounting powerfs"))
    } else {
        Disk::Real
    };
    let data = match &disk {
        Disk::Power(m) => m.mountpoint().join("data"),
        Disk::Real => dir.path().join("data"),
    };
    let mut server = Server {
        config: write_config(dir.path(), &data, engine, ""),
        log: dir.path().join("walrs.log"),
        child: None,
    };
    let certs = dir.path().join("certs");
    let ledger: Shared = Arc::default();
    let mut figures = Figures::default();
    let mut engines_seen: BTreeMap<String, u64> = BTreeMap::new();
    let started = Instant::now();

    let fail = |ledger: &Shared, cycle: u64, violations: &[String]| -> ! {
        let path = out_dir().join(format!("crash-{label}-{seed}.history"));
        let mut text = String::new();
        writeln!(text, "seed {seed} variant {label} cycle {cycle}").unwrap();
        for v in violations {
            writeln!(text, "VIOLATION {v}").unwrap();
        }
        for line in &ledger.lock().unwrap().history {
            writeln!(text, "{line}").unwrap();
        }
        std::fs::write(&path, text).unwrap();
        panic!(
            "seed {seed} (WALRS_TEST_SEED={run_seed}): {label}: cycle {cycle}: {} violations, \
             first: {}; history in {}; server log and data under {}",
            violations.len(),
            violations[0],
            path.display(),
            dir_path.display()
        );
    };

    for cycle in 0..=cycles {
        let (addr, chosen) = match server.start() {
            Ok(found) => found,
            Err(err) => fail(&ledger, cycle, &[format!("restart: {err}")]),
        };
        if engines_seen.is_empty() {
            println!("crash cycles {label}: the server runs the {chosen} engine");
        }
        *engines_seen
            .entry(chosen.split(' ').next().unwrap_or("").to_string())
            .or_default() += 1;
        ledger
            .lock()
            .unwrap()
            .note(format!("start c{cycle}: {addr}, engine {chosen}"));
        let client = match connect(&addr, &certs).await {
            Ok(c) => c,
            Err(err) => fail(&ledger, cycle, &[err]),
        };
        let (violations, read, checked) = verify(&client, &ledger, cycle).await;
        figures.records_read += read;
        figures.acked_checked += checked;
        if !violations.is_empty() {
            server.kill();
            fail(&ledger, cycle, &violations);
        }
        if cycle == 0 {
            match client.create_topic(TOPIC, PARTITIONS).await {
                Ok(_) => {}
                Err(status) => fail(&ledger, cycle, &[format!("creating the topic: {status:?}")]),
            }
        }
        let last = cycle == cycles || duration.is_some_and(|d| started.elapsed() >= d);
        // Appends continue after a restart: one batch must be acknowledged.
        let acked_before = ledger.lock().unwrap().acked.len();
        let stop = Arc::new(tokio::sync::Notify::new());
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|producer| {
                tokio::spawn(produce(
                    client.clone(),
                    ledger.clone(),
                    stop.clone(),
                    (label.to_string(), cycle, producer, rng.below(u64::MAX)),
                ))
            })
            .collect();
        // One fault in five comes 0-50 ms after the producers start, maybe before any
        // acknowledgement (a crash among the first appends after a recovery); the others
        // come 10-1510 ms after the first acknowledgement, which must arrive: appends
        // continue after every restart.
        let early = !last && rng.below(5) == 0;
        let load_ms = if last {
            0
        } else if early {
            rng.below(51)
        } else {
            10 + rng.below(LOAD_MS_MAX)
        };
        if !early {
            let until = Instant::now() + CALL_TIMEOUT;
            while ledger.lock().unwrap().acked.len() == acked_before {
                if Instant::now() >= until {
                    server.kill();
                    stop.notify_waiters();
                    fail(
                        &ledger,
                        cycle,
                        &[format!(
                            "appends did not continue: none acknowledged in {CALL_TIMEOUT:?}"
                        )],
                    );
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(load_ms)).await;
        let power_cut = matches!(disk, Disk::Power(_)) && !last && rng.below(3) < 2;
        if last {
            stop.notify_waiters();
        }
        server.kill();
        if !last {
            stop.notify_waiters();
        }
        for p in producers {
            p.await.unwrap();
        }
        let mut fault = format!(
            "fault c{cycle}: SIGKILL {load_ms} ms after {}",
            if early {
                "the producers started"
            } else {
                "the first acknowledgement"
            }
        );
        if last {
            // The end of the run, not a fault: the producers were stopped first.
        } else if power_cut {
            let Disk::Power(mount) = &mut disk else {
                unreachable!()
            };
            let unsynced = mount.unsynced_bytes();
            let stats = match mount.power_cut_within(START_TIMEOUT) {
                Ok(stats) => stats,
                Err(err) => fail(&ledger, cycle, &[format!("power cut: {err}")]),
            };
            write!(
                fault,
                ", power cut forgetting {unsynced} unsynced bytes ({stats:?})"
            )
            .unwrap();
            figures.power_cuts += 1;
        } else {
            figures.kills += 1;
        }
        ledger.lock().unwrap().note(fault);
        if last {
            figures.cycles = cycle;
            break;
        }
        figures.cycles = cycle + 1;
        if figures.cycles % 100 == 0 {
            println!(
                "crash cycles {label}: {} cycles, {} SIGKILLs, {} power cuts, {} acknowledged \
                 records checked, {:.0} s",
                figures.cycles,
                figures.kills,
                figures.power_cuts,
                figures.acked_checked,
                started.elapsed().as_secs_f64()
            );
        }
    }
    // A final restart and check after the last fault.
    let (addr, _) = server
        .start()
        .unwrap_or_else(|e| fail(&ledger, figures.cycles + 1, &[e]));
    let client = connect(&addr, &certs).await.unwrap();
    let (violations, read, checked) = verify(&client, &ledger, figures.cycles + 1).await;
    figures.records_read += read;
    figures.acked_checked += checked;
    if !violations.is_empty() {
        server.kill();
        fail(&ledger, figures.cycles + 1, &violations);
    }
    server.kill();
    {
        let l = ledger.lock().unwrap();
        figures.records_acked = l
            .sent
            .values()
            .filter(|(_, o)| matches!(o, Outcome::Acked(_)))
            .count() as u64;
        figures.expired = l.expired;
        figures.appends_acked = l.history.iter().filter(|h| h.starts_with("ack ")).count() as u64;
    }
    let (indeterminate, definite) = {
        let l = ledger.lock().unwrap();
        (l.indeterminate, l.definite_failures)
    };
    let fs_stats = match &disk {
        Disk::Power(m) => format!("{:?}", m.stats()),
        Disk::Real => "none".into(),
    };
    let summary = format!(
        "{{\"variant\":\"{label}\",\"seed\":{seed},\"engine_config\":\"{engine}\",\
         \"engines\":\"{engines_seen:?}\",\"cycles\":{},\"sigkills\":{},\"power_cuts\":{},\
         \"appends_acked\":{},\"records_acked\":{},\"acked_records_checked\":{},\
         \"records_read\":{},\"acked_expired_by_retention\":{},\"indeterminate\":{indeterminate},\"definite_failures\":{definite},\
         \"seconds\":{:.1},\"powerfs\":\"{fs_stats}\"}}",
        figures.cycles,
        figures.kills,
        figures.power_cuts,
        figures.appends_acked,
        figures.records_acked,
        figures.acked_checked,
        figures.records_read,
        figures.expired,
        started.elapsed().as_secs_f64(),
    );
    println!("crash cycles summary: {summary}");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out_dir().join("summary.jsonl"))
        .unwrap();
    writeln!(file, "{summary}").unwrap();
    drop(server);
    if let Disk::Power(mount) = disk {
        mount.unmount().expect("unmounting powerfs");
    }
    dir.disable_cleanup(false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_cycles_on_the_uring_engine_lose_nothing_acknowledged() {
    run_variant("uring-sigkill", "uring", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_cycles_on_the_portable_engine_lose_nothing_acknowledged() {
    run_variant("portable-sigkill", "portable", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_on_the_uring_engine_lose_nothing_acknowledged() {
    run_variant("uring-powerfs", "uring", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_on_the_portable_engine_lose_nothing_acknowledged() {
    run_variant("portable-powerfs", "portable", true).await;
}

/// Regression: a fresh data dir was created without syncing its parent (and `topics/`
/// without syncing the data dir), so a power cut after the first acknowledged append lost
/// the whole data dir, topic and record included. Both engines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_right_after_the_first_ack_on_a_fresh_data_dir_keeps_it() {
    for engine in ["portable", "uring"] {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let backing = dir.path().join("backing");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&backing).unwrap();
        std::fs::create_dir(&mnt).unwrap();
        let mut mount = powerfs::Mount::new(&backing, &mnt).expect("mounting powerfs");
        let mut server = Server {
            config: write_config(dir.path(), &mnt.join("data"), engine, ""),
            log: dir.path().join("walrs.log"),
            child: None,
        };
        let certs = dir.path().join("certs");
        let (addr, chosen) = server.start().unwrap();
        assert!(
            chosen.starts_with(engine),
            "{engine}: the server runs {chosen}"
        );
        let client = connect(&addr, &certs).await.unwrap();
        client.create_topic(TOPIC, 1).await.unwrap();
        let ack = client
            .append(TOPIC, Some(0), vec![walrs::client::record("k", "first")])
            .await
            .unwrap();
        server.kill();
        let stats = mount.power_cut_within(START_TIMEOUT).unwrap();
        assert_eq!(stats.inodes_discarded, 0, "{engine}: {stats:?}");
        let (addr, _) = server.start().unwrap();
        let client = connect(&addr, &certs).await.unwrap();
        let read = client
            .read(TOPIC, 0, ack.base_offset, ReadOptions::default())
            .await
            .unwrap_or_else(|s| panic!("{engine}: after the power cut: {s:?}"));
        assert_eq!(read.records.len(), 1, "{engine}");
        assert_eq!(&read.records[0].value[..], b"first", "{engine}");
        server.kill();
        mount.unmount().unwrap();
    }
}

/// A powerfs mount under `dir` and a server (not started) whose data dir is on it, with
/// `engine` and `storage_extra` lines in `[storage]`.
fn on_powerfs(dir: &Path, engine: &str, storage_extra: &str) -> (powerfs::Mount, Server) {
    let backing = dir.join("backing");
    let mnt = dir.join("mnt");
    std::fs::create_dir(&backing).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    let mount = powerfs::Mount::new(&backing, &mnt).expect("mounting powerfs");
    let server = Server {
        config: write_config(dir, &mnt.join("data"), engine, storage_extra),
        log: dir.join("walrs.log"),
        child: None,
    };
    (mount, server)
}

/// Issue 14: with `storage.uring_write = "dsync"` the uring engine calls no fdatasync after
/// its writes; the store file is opened O_DSYNC, so each write is durable when it completes.
/// Single-record appends (which rewrite the partial last block, and extend the file every
/// few appends) are acknowledged one by one, then SIGKILL and a power cut: every
/// acknowledged record must be read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_keeps_every_ack_of_the_uring_dsync_write_mode() {
    power_cut_keeps_single_record_acks("uring", "uring_write = \"dsync\"\n").await;
}

/// Issue 14: with `storage.uring_write = "inline"` a small commit's O_DIRECT write and its
/// fdatasync are blocking calls on the shard thread instead of io_uring operations. The same
/// single-record acks, SIGKILL and power cut: every acknowledged record must be read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_keeps_every_ack_of_the_uring_inline_write_mode() {
    power_cut_keeps_single_record_acks("uring", "uring_write = \"inline\"\n").await;
}

/// Issue 14: with `storage.preallocate` (the default, set here explicitly) a small commit
/// that grows the store file first writes zeros past it, and the next commits overwrite
/// them: the file does not grow, so the `fdatasync` has no size to commit. Those overwrites
/// must still be durable when acknowledged, on both engines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_keeps_every_ack_written_over_preallocated_zeros_on_uring() {
    power_cut_keeps_single_record_acks("uring", "preallocate = true\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_keeps_every_ack_written_over_preallocated_zeros_on_portable() {
    power_cut_keeps_single_record_acks("portable", "preallocate = true\n").await;
}

/// Single-record appends on `engine` with `storage_extra`, acknowledged one by one, then
/// SIGKILL and a power cut: every acknowledged record must be read back.
async fn power_cut_keeps_single_record_acks(engine: &str, storage_extra: &str) {
    const RECORDS: usize = 40;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (mut mount, mut server) = on_powerfs(dir.path(), engine, storage_extra);
    let certs = dir.path().join("certs");
    let (addr, chosen) = server.start().unwrap();
    assert!(chosen.starts_with(engine), "the server runs {chosen}");
    let client = connect(&addr, &certs).await.unwrap();
    client.create_topic(TOPIC, 1).await.unwrap();
    let mut acked = Vec::with_capacity(RECORDS);
    for i in 0..RECORDS {
        // 700 to 1,900 bytes: appends that stay inside a block and appends that cross one.
        let value = format!("{i:04}-{}", "v".repeat(700 + (i * 397) % 1200));
        let ack = client
            .append(
                TOPIC,
                Some(0),
                vec![walrs::client::record("k", value.as_str())],
            )
            .await
            .unwrap();
        acked.push((ack.base_offset, value));
    }
    server.kill();
    let stats = mount.power_cut_within(START_TIMEOUT).unwrap();
    assert_eq!(stats.inodes_discarded, 0, "{stats:?}");
    let (addr, _) = server.start().unwrap();
    let client = connect(&addr, &certs).await.unwrap();
    for (offset, value) in &acked {
        let read = client
            .read(TOPIC, 0, *offset, ReadOptions::default())
            .await
            .unwrap_or_else(|s| panic!("offset {offset} after the power cut: {s:?}"));
        assert_eq!(
            read.records.first().map(|r| &r.value[..]),
            Some(value.as_bytes()),
            "acknowledged offset {offset} after the power cut"
        );
    }
    server.kill();
    mount.unmount().unwrap();
}

/// The control: with `durability = "none"` an append is acknowledged before any fdatasync.
/// A SIGKILL loses none of those records (the page cache — here powerfs's memory — keeps
/// them); a power cut loses them. This is what the power cut adds to the SIGKILL cycles,
/// and it shows that the harness's mount and checks can see a loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_fsync_a_sigkill_keeps_acknowledged_records_and_a_power_cut_loses_them() {
    const RECORDS: u64 = 50;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (mut mount, mut server) = on_powerfs(dir.path(), "portable", "durability = \"none\"\n");
    let certs = dir.path().join("certs");
    let served = |addr: String| {
        let certs = certs.clone();
        async move {
            let client = connect(&addr, &certs).await.unwrap();
            let t = client.describe_topic(TOPIC).await.unwrap();
            t.partitions[0].high_watermark - t.partitions[0].start_offset
        }
    };
    let append = |addr: String, from: u64| {
        let certs = certs.clone();
        async move {
            let client = connect(&addr, &certs).await.unwrap();
            for i in from..from + RECORDS {
                let value = format!("v{i}");
                let records = vec![walrs::client::record("k", value)];
                client.append(TOPIC, Some(0), records).await.unwrap();
            }
        }
    };
    let (addr, _) = server.start().unwrap();
    let client = connect(&addr, &certs).await.unwrap();
    client.create_topic(TOPIC, 1).await.unwrap();
    append(addr, 0).await;
    server.kill();
    let (addr, _) = server.start().unwrap();
    assert_eq!(
        served(addr.clone()).await,
        RECORDS,
        "a SIGKILL keeps unsynced records"
    );
    // (The restart's recovery may have synced those; the next ones are acknowledged unsynced.)
    append(addr, RECORDS).await;
    server.kill();
    let stats = mount.power_cut_within(START_TIMEOUT).unwrap();
    let (addr, _) = server.start().unwrap();
    let after = served(addr).await;
    assert!(
        after < 2 * RECORDS,
        "a power cut must lose acknowledged-but-unsynced records: {after} of {} \
         served ({stats:?})",
        2 * RECORDS
    );
    server.kill();
    mount.unmount().unwrap();
}
