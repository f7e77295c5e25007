//! Topic metadata on disk and the assignment of partitions to shards.
//!
//! Owns: topic name rules, the layout `data_dir/topics/<topic>/topic.toml` (partition count
//! and owning shard of each partition) next to `data_dir/topics/<topic>/<partition>/` (one
//! partition log each), and the rule that picks a partition's shard.
//! Must never: touch a partition's log files; those belong to the owning shard.
//!
//! Invariants: `topic.toml` is replaced atomically (write tmp, fsync, rename, fsync dir), and
//! it is the commit point of a topic: created before any partition is opened, removed before
//! any partition directory is. So a topic directory without `topic.toml` is a creation or
//! deletion that a crash interrupted, and loading removes it. Ownership is decided once, at
//! creation, and survives restarts; only a change of the shard count re-assigns it.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{Error, Result, meta_err};
use crate::storage::fsutil::{create_dir_all_durable, sync_dir};

/// Longest topic name, in bytes. A name is one directory name, `data_dir/topics/<topic>/`,
/// which a file system bounds at 255 bytes; 249 is Kafka's limit, kept so that names move
/// between the two.
pub const TOPIC_NAME_BYTES_MAX: usize = 249;
const META_FILE: &str = "topic.toml";
const META_TMP: &str = "topic.toml.tmp";

/// The topic-name rule, the only copy of it: 1 to `bytes_max` bytes of `[a-zA-Z0-9._-]`,
/// and not `.` or `..` (they name directories). `bytes_max` is at most
/// [`TOPIC_NAME_BYTES_MAX`] (the server may configure a lower one). Returns why a name is
/// refused.
pub fn check_topic_name(name: &str, bytes_max: usize) -> std::result::Result<(), String> {
    let bytes_max = bytes_max.min(TOPIC_NAME_BYTES_MAX);
    if name.is_empty() || name.len() > bytes_max {
        return Err(format!("a topic name must be 1 to {bytes_max} bytes long"));
    }
    if name == "." || name == ".." {
        return Err("\".\" and \"..\" are not topic names".to_owned());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("only ASCII letters, digits, '.', '_' and '-' are allowed".to_owned());
    }
    Ok(())
}

/// True when `name` passes [`check_topic_name`] with `bytes_max`.
pub fn is_valid_topic_name(name: &str, bytes_max: usize) -> bool {
    check_topic_name(name, bytes_max).is_ok()
}

/// Checks a topic name against [`check_topic_name`] with [`TOPIC_NAME_BYTES_MAX`].
pub fn validate_topic_name(name: &str) -> Result<()> {
    check_topic_name(name, TOPIC_NAME_BYTES_MAX).map_err(|reason| Error::InvalidTopicName {
        name: name.chars().take(TOPIC_NAME_BYTES_MAX + 8).collect(),
        reason,
    })
}

/// What `topic.toml` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TopicMeta {
    pub name: String,
    pub partitions: u32,
    /// The shard count `shards` was computed for.
    pub shard_count: u32,
    /// The owning shard of each partition, indexed by partition id.
    pub shards: Vec<u32>,
    pub created_ms: i64,
    /// The nodes holding each partition, indexed by partition id; empty (a topic of a
    /// single node, or made before replication) means every partition is solo.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<Vec<u64>>,
    /// Which creation of the name this is, as the cluster's metadata log numbers them
    /// (`cluster::metadata`); 0 = unknown (outside a cluster, or made before the controller).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub incarnation: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl TopicMeta {
    pub fn new(name: &str, partitions: u32, shard_count: usize) -> TopicMeta {
        TopicMeta {
            name: name.to_owned(),
            partitions,
            shard_count: shard_count as u32,
            shards: assign(name, partitions, shard_count),
            created_ms: crate::storage::now_ms(),
            replicas: Vec::new(),
            incarnation: 0,
        }
    }
}

/// True for an internal topic (a name starting with `__`, such as the controller's metadata
/// log): the server keeps clients off it, and retention never deletes from it, since its
/// whole history is its meaning.
pub fn is_internal_topic(name: &str) -> bool {
    name.starts_with("__")
}

/// Partition `p` of `topic` goes to shard `(crc32(topic) + p) % shard_count`: a topic's
/// partitions spread over consecutive shards, and different topics start at different ones.
/// crc32 rather than std's hasher because the result must not change between builds.
pub(crate) fn assign(topic: &str, partitions: u32, shard_count: usize) -> Vec<u32> {
    assert!(shard_count > 0, "assign needs at least one shard");
    let start = u64::from(crc32fast::hash(topic.as_bytes()));
    (0..u64::from(partitions))
        .map(|p| ((start + p) % shard_count as u64) as u32)
        .collect()
}

pub(crate) fn topics_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("topics")
}

pub(crate) fn partition_dir(topics_dir: &Path, topic: &str, partition: u32) -> PathBuf {
    topics_dir.join(topic).join(partition.to_string())
}

/// Writes `topic.toml` atomically, creating the topic directory (durably) when needed.
pub(crate) fn write_meta(topics_dir: &Path, meta: &TopicMeta) -> Result<()> {
    let dir = topics_dir.join(&meta.name);
    if !dir.exists() {
        fs::create_dir(&dir).map_err(meta_err("create topic dir", &dir))?;
        sync_dir(topics_dir).map_err(meta_err("sync topics dir", topics_dir))?;
    }
    let text = toml::to_string(meta).expect("topic metadata serializes");
    let tmp = dir.join(META_TMP);
    let path = dir.join(META_FILE);
    let write = || -> std::io::Result<()> {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, &path)?;
        sync_dir(&dir)
    };
    write().map_err(meta_err("write topic metadata", &path))
}

/// Removes `topic.toml` durably: from here on the topic does not exist, even after a crash.
pub(crate) fn remove_meta(topics_dir: &Path, topic: &str) -> Result<()> {
    let dir = topics_dir.join(topic);
    let path = dir.join(META_FILE);
    fs::remove_file(&path).map_err(meta_err("remove topic metadata", &path))?;
    sync_dir(&dir).map_err(meta_err("sync topic dir", &dir))
}

/// Removes what is left of a topic directory, durably.
pub(crate) fn remove_topic_dir(topics_dir: &Path, topic: &str) -> Result<()> {
    let dir = topics_dir.join(topic);
    match fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(meta_err("remove topic dir", &dir)(e)),
    }
    sync_dir(topics_dir).map_err(meta_err("sync topics dir", topics_dir))
}

/// The suffix a partition directory gets while it is being removed.
const REMOVING_SUFFIX: &str = ".removing";

/// Removes a closed partition's directory `dir`: renamed first (durably) to
/// `<partition>.removing`, then deleted. A crash part-way leaves only a `.removing`
/// directory, which [`load_all`] deletes at the next start, never a partition directory
/// whose files are half gone (a replica moved back later starts empty).
pub(crate) fn remove_partition_dir(dir: &Path) -> std::io::Result<()> {
    let mut removing = dir.as_os_str().to_owned();
    removing.push(REMOVING_SUFFIX);
    let removing = PathBuf::from(removing);
    fs::rename(dir, &removing)?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    fs::remove_dir_all(&removing)
}

/// Deletes the `.removing` directories an interrupted [`remove_partition_dir`] left in the
/// topic directory `dir`.
fn remove_interrupted_removals(dir: &Path) -> Result<()> {
    let entries = fs::read_dir(dir).map_err(meta_err("list topic dir", dir))?;
    for entry in entries {
        let path = entry.map_err(meta_err("list topic dir", dir))?.path();
        let interrupted = path.is_dir()
            && path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(REMOVING_SUFFIX));
        if interrupted {
            tracing::warn!(dir = %path.display(), "removing what an interrupted removal of a replica left");
            fs::remove_dir_all(&path).map_err(meta_err("remove an interrupted removal", &path))?;
            sync_dir(dir).map_err(meta_err("sync topic dir", dir))?;
        }
    }
    Ok(())
}

/// The metadata in a topic's directory `dir`; `None` when it has none.
pub(crate) fn read_meta(dir: &Path, name: &str) -> Result<Option<TopicMeta>> {
    let path = dir.join(META_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(meta_err("read topic metadata", &path)(e)),
    };
    let corrupt = |reason: String| Error::MetadataCorrupt {
        path: path.clone(),
        reason,
    };
    let meta: TopicMeta = toml::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
    if meta.name != name {
        return Err(corrupt(format!(
            "names topic {:?} but lives in directory {name:?}",
            meta.name
        )));
    }
    if meta.partitions == 0 || meta.shards.len() != meta.partitions as usize {
        return Err(corrupt(format!(
            "{} partitions but {} shard assignments",
            meta.partitions,
            meta.shards.len()
        )));
    }
    Ok(Some(meta))
}

/// Loads every topic under `topics_dir` (created if missing), removing the leftovers of
/// interrupted creations and deletions, and re-assigning partitions (persisted) of topics
/// whose metadata was written for another shard count.
pub(crate) fn load_all(topics_dir: &Path, shard_count: usize) -> Result<Vec<TopicMeta>> {
    // Durably: a fresh data dir whose entry (or `topics`'s) is never synced is lost whole at
    // a power cut, with every topic under it (found by tests/crash_cycles.rs on powerfs).
    create_dir_all_durable(topics_dir).map_err(meta_err("create topics dir", topics_dir))?;
    let mut topics = Vec::new();
    let entries = fs::read_dir(topics_dir).map_err(meta_err("list topics dir", topics_dir))?;
    for entry in entries {
        let entry = entry.map_err(meta_err("list topics dir", topics_dir))?;
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            tracing::warn!(dir = %path.display(), "ignoring a topic directory whose name is not UTF-8");
            continue;
        };
        if validate_topic_name(&name).is_err() {
            tracing::warn!(dir = %path.display(), "ignoring a directory that is not a valid topic name");
            continue;
        }
        match fs::remove_file(path.join(META_TMP)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(meta_err("remove stale topic metadata", path.join(META_TMP))(e)),
        }
        remove_interrupted_removals(&path)?;
        let Some(mut meta) = read_meta(&path, &name)? else {
            tracing::warn!(
                dir = %path.display(),
                "topic directory has no topic.toml (a creation or deletion was interrupted); removing it"
            );
            remove_topic_dir(topics_dir, &name)?;
            continue;
        };
        let stale = meta.shard_count as usize != shard_count
            || meta.shards.iter().any(|&s| s as usize >= shard_count);
        if stale {
            tracing::warn!(
                topic = %name,
                old_shard_count = meta.shard_count,
                new_shard_count = shard_count,
                "shard count changed since the topic's partitions were assigned; re-assigning them to shards"
            );
            meta.shards = assign(&name, meta.partitions, shard_count);
            meta.shard_count = shard_count as u32;
            write_meta(topics_dir, &meta)?;
        }
        topics.push(meta);
    }
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(topics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        for ok in ["a", "orders", "a.b_c-D9", &"x".repeat(249)] {
            validate_topic_name(ok).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "a b", "é", &"x".repeat(250)] {
            assert!(
                matches!(
                    validate_topic_name(bad),
                    Err(Error::InvalidTopicName { .. })
                ),
                "{bad:?} must be refused"
            );
        }
        assert!(is_valid_topic_name("orders.v1_eu-west", 249));
        assert!(!is_valid_topic_name("abc", 2));
        assert!(is_valid_topic_name("ab", 2));
        // A configured maximum never passes the layout's.
        assert!(!is_valid_topic_name(&"x".repeat(250), 1000));
    }

    #[test]
    fn assignment_is_stable_and_spread() {
        let a = assign("orders", 8, 4);
        assert_eq!(a, assign("orders", 8, 4));
        for s in 0..4 {
            assert_eq!(a.iter().filter(|&&x| x == s).count(), 2);
        }
    }

    #[test]
    fn metadata_round_trip_cleanup_and_reassign() {
        let dir = tempfile::tempdir().unwrap();
        let topics = topics_dir(dir.path());
        fs::create_dir_all(&topics).unwrap();
        let meta = TopicMeta::new("t1", 3, 2);
        write_meta(&topics, &meta).unwrap();
        // A half-created topic: directory and partition dir, no metadata.
        fs::create_dir_all(topics.join("half").join("0")).unwrap();
        assert_eq!(load_all(&topics, 2).unwrap(), vec![meta.clone()]);
        assert!(!topics.join("half").exists());
        let loaded = load_all(&topics, 5).unwrap();
        assert_eq!(loaded[0].shards, assign("t1", 3, 5));
        assert_eq!(loaded[0].shard_count, 5);
        assert_eq!(
            load_all(&topics, 5).unwrap(),
            loaded,
            "re-assignment persisted"
        );
        remove_meta(&topics, "t1").unwrap();
        remove_topic_dir(&topics, "t1").unwrap();
        assert!(load_all(&topics, 5).unwrap().is_empty());
    }

    /// A replica's removal renames its directory first: a crash part-way leaves a
    /// `.removing` directory, which the next load deletes; the held partitions stay.
    #[test]
    fn an_interrupted_removal_of_a_replica_is_finished_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let topics = topics_dir(dir.path());
        fs::create_dir_all(&topics).unwrap();
        let meta = TopicMeta::new("moved", 2, 1);
        write_meta(&topics, &meta).unwrap();
        for partition in [0, 1] {
            let p = partition_dir(&topics, "moved", partition);
            fs::create_dir_all(&p).unwrap();
            fs::write(p.join("00000000000000000000.log"), b"batches").unwrap();
        }
        remove_partition_dir(&partition_dir(&topics, "moved", 0)).unwrap();
        assert!(!partition_dir(&topics, "moved", 0).exists());
        // The same removal, cut short after its rename.
        let interrupted = topics.join("moved").join("1.removing");
        fs::rename(partition_dir(&topics, "moved", 1), &interrupted).unwrap();
        fs::create_dir_all(partition_dir(&topics, "moved", 1)).unwrap();
        assert_eq!(load_all(&topics, 1).unwrap(), vec![meta]);
        assert!(!interrupted.exists());
        assert!(partition_dir(&topics, "moved", 1).exists());
    }
}
