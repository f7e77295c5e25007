//! The small state files of a partition besides its segments: the leader-epoch checkpoint
//! (`leader_epochs`) and the vote (`raft_state`).
//!
//! Owns: their byte layouts, versions and CRCs, and the rules of the epoch map (epochs and
//! start offsets strictly increase).
//! Must never: do I/O. The log reads and replaces these files through its engine
//! (`Engine::read_small_file`, `Engine::replace_file_atomic`), so they are written atomically
//! and the crash test can crash inside them.
//!
//! Both files: `magic` (4 bytes), `version` (u16), the body, then a CRC32 of every byte
//! before it (u32). Little-endian.
//!
//! `leader_epochs` body: `count` (u32), then `count` × (`epoch` u64, `start_offset` u64).
//! `raft_state` body: `term` (u64), `voted_for` (u64, the node id + 1; 0 = no vote).
//! `raft_rejoin` body: `lost_from` (u64, the first offset the replica lost: where a damaged
//! log was cut, or 0 for a wiped one). Present only while the replica catches up.
//! `raft_applied` body: `term` (u64) and `index` (u64) of the last applied entry, `next_offset`
//! (u64, the offset after its batch: the commit mark it restores), then `context_len` (u32)
//! and that many opaque bytes (the consensus layer's own record of its membership; at most
//! [`APPLIED_CONTEXT_BYTES_MAX`]).

use super::format::crc32;

pub const LEADER_EPOCHS_FILE: &str = "leader_epochs";
pub const RAFT_STATE_FILE: &str = "raft_state";
pub const RAFT_APPLIED_FILE: &str = "raft_applied";
pub const RAFT_SNAPSHOT_FILE: &str = "raft_snapshot";
pub const RAFT_PURGED_FILE: &str = "raft_purged";
pub const RAFT_REJOIN_FILE: &str = "raft_rejoin";

/// The marks a replicated log keeps for its consensus layer, each in its own file with the
/// `raft_applied` layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkFile {
    /// How far the log is applied (saved lazily; may lag).
    Applied,
    /// The last snapshot: the entry it covers up to, where the log goes on after it, and the
    /// membership as of it (saved before the log is purged or reset to it).
    Snapshot,
    /// The last entry purged from the log's front (saved before the purge).
    Purged,
}

impl MarkFile {
    pub fn name(self) -> &'static str {
        match self {
            MarkFile::Applied => RAFT_APPLIED_FILE,
            MarkFile::Snapshot => RAFT_SNAPSHOT_FILE,
            MarkFile::Purged => RAFT_PURGED_FILE,
        }
    }
}
/// Largest opaque context an applied mark carries.
pub const APPLIED_CONTEXT_BYTES_MAX: usize = 64 * 1024;

const EPOCHS_MAGIC: [u8; 4] = *b"WALE";
const VOTE_MAGIC: [u8; 4] = *b"WALV";
const APPLIED_MAGIC: [u8; 4] = *b"WALA";
const REJOIN_MAGIC: [u8; 4] = *b"WALJ";
const REJOIN_BODY_LEN: usize = 8;
const APPLIED_FIXED_LEN: usize = 8 + 8 + 8 + 4;
const STATE_VERSION: u16 = 1;
const PREAMBLE_LEN: usize = 4 + 2;
const CRC_LEN: usize = 4;
const EPOCH_ENTRY_LEN: usize = 8 + 8;
const VOTE_BODY_LEN: usize = 8 + 8;
const _: () = assert!(PREAMBLE_LEN + VOTE_BODY_LEN + CRC_LEN == 26);
const _: () = assert!(PREAMBLE_LEN + REJOIN_BODY_LEN + CRC_LEN == 18);

/// One entry of the leader-epoch map: from `start_offset` on, batches carry `epoch` (until
/// the next entry's start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochStart {
    pub epoch: u64,
    pub start_offset: u64,
}

/// The durable vote of a partition's Raft group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Vote {
    /// The latest term this node has seen.
    pub term: u64,
    /// The node it voted for in `term`, if any.
    pub voted_for: Option<u64>,
}

/// How far a replicated partition's consensus layer has applied its log: the commit mark
/// a restart restores without replaying the log, with the layer's opaque context.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AppliedMark {
    pub term: u64,
    pub index: u64,
    /// The offset after the applied entry's batch.
    pub next_offset: u64,
    /// Opaque to storage (at most [`APPLIED_CONTEXT_BYTES_MAX`] bytes).
    pub context: Vec<u8>,
}

/// Why a state file's bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("{len} bytes is too short or the wrong length")]
    BadLength { len: usize },
    #[error("bad magic {found:02x?}")]
    BadMagic { found: [u8; 4] },
    #[error("unsupported state file version {version}")]
    BadVersion { version: u16 },
    #[error("CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("leader epochs are not strictly increasing at entry {index}")]
    OutOfOrder { index: usize },
}

fn seal(mut bytes: Vec<u8>) -> Vec<u8> {
    let crc = crc32(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

/// Checks magic, version and CRC; returns the body.
fn open(bytes: &[u8], magic: [u8; 4]) -> Result<&[u8], StateError> {
    if bytes.len() < PREAMBLE_LEN + CRC_LEN {
        return Err(StateError::BadLength { len: bytes.len() });
    }
    let found: [u8; 4] = bytes[..4].try_into().expect("4 bytes");
    if found != magic {
        return Err(StateError::BadMagic { found });
    }
    let (covered, crc) = bytes.split_at(bytes.len() - CRC_LEN);
    let stored = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    let computed = crc32(covered);
    if stored != computed {
        return Err(StateError::CrcMismatch { stored, computed });
    }
    let version = u16::from_le_bytes(bytes[4..6].try_into().expect("2 bytes"));
    if version != STATE_VERSION {
        return Err(StateError::BadVersion { version });
    }
    Ok(&covered[PREAMBLE_LEN..])
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

pub fn encode_epochs(epochs: &[EpochStart]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(PREAMBLE_LEN + 4 + epochs.len() * EPOCH_ENTRY_LEN + 4);
    bytes.extend_from_slice(&EPOCHS_MAGIC);
    bytes.extend_from_slice(&STATE_VERSION.to_le_bytes());
    bytes.extend_from_slice(&(epochs.len() as u32).to_le_bytes());
    for e in epochs {
        bytes.extend_from_slice(&e.epoch.to_le_bytes());
        bytes.extend_from_slice(&e.start_offset.to_le_bytes());
    }
    seal(bytes)
}

pub fn decode_epochs(bytes: &[u8]) -> Result<Vec<EpochStart>, StateError> {
    let body = open(bytes, EPOCHS_MAGIC)?;
    if body.len() < 4 {
        return Err(StateError::BadLength { len: bytes.len() });
    }
    let count = u32::from_le_bytes(body[..4].try_into().expect("4 bytes")) as usize;
    if body.len() != 4 + count * EPOCH_ENTRY_LEN {
        return Err(StateError::BadLength { len: bytes.len() });
    }
    let epochs: Vec<EpochStart> = (0..count)
        .map(|i| {
            let at = 4 + i * EPOCH_ENTRY_LEN;
            EpochStart {
                epoch: u64_at(body, at),
                start_offset: u64_at(body, at + 8),
            }
        })
        .collect();
    if let Some(index) = (1..epochs.len()).find(|&i| {
        epochs[i].epoch <= epochs[i - 1].epoch
            || epochs[i].start_offset <= epochs[i - 1].start_offset
    }) {
        return Err(StateError::OutOfOrder { index });
    }
    Ok(epochs)
}

pub fn encode_vote(vote: &Vote) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(PREAMBLE_LEN + VOTE_BODY_LEN + CRC_LEN);
    bytes.extend_from_slice(&VOTE_MAGIC);
    bytes.extend_from_slice(&STATE_VERSION.to_le_bytes());
    bytes.extend_from_slice(&vote.term.to_le_bytes());
    let voted_for = vote
        .voted_for
        .map_or(0, |id| id.checked_add(1).expect("node id < u64::MAX"));
    bytes.extend_from_slice(&voted_for.to_le_bytes());
    seal(bytes)
}

pub fn decode_vote(bytes: &[u8]) -> Result<Vote, StateError> {
    let body = open(bytes, VOTE_MAGIC)?;
    if body.len() != VOTE_BODY_LEN {
        return Err(StateError::BadLength { len: bytes.len() });
    }
    let voted_for = u64_at(body, 8);
    Ok(Vote {
        term: u64_at(body, 0),
        voted_for: voted_for.checked_sub(1),
    })
}

pub fn encode_applied(mark: &AppliedMark) -> Vec<u8> {
    assert!(
        mark.context.len() <= APPLIED_CONTEXT_BYTES_MAX,
        "an applied mark's context of {} bytes",
        mark.context.len()
    );
    let mut bytes =
        Vec::with_capacity(PREAMBLE_LEN + APPLIED_FIXED_LEN + mark.context.len() + CRC_LEN);
    bytes.extend_from_slice(&APPLIED_MAGIC);
    bytes.extend_from_slice(&STATE_VERSION.to_le_bytes());
    bytes.extend_from_slice(&mark.term.to_le_bytes());
    bytes.extend_from_slice(&mark.index.to_le_bytes());
    bytes.extend_from_slice(&mark.next_offset.to_le_bytes());
    bytes.extend_from_slice(&(mark.context.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&mark.context);
    seal(bytes)
}

pub fn decode_applied(bytes: &[u8]) -> Result<AppliedMark, StateError> {
    let body = open(bytes, APPLIED_MAGIC)?;
    if body.len() < APPLIED_FIXED_LEN {
        return Err(StateError::BadLength { len: bytes.len() });
    }
    let context_len = u32::from_le_bytes(body[24..28].try_into().expect("4 bytes")) as usize;
    if context_len > APPLIED_CONTEXT_BYTES_MAX || body.len() != APPLIED_FIXED_LEN + context_len {
        return Err(StateError::BadLength { len: bytes.len() });
    }
    Ok(AppliedMark {
        term: u64_at(body, 0),
        index: u64_at(body, 8),
        next_offset: u64_at(body, 16),
        context: body[APPLIED_FIXED_LEN..].to_vec(),
    })
}

pub fn encode_rejoin(lost_from: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(PREAMBLE_LEN + REJOIN_BODY_LEN + CRC_LEN);
    bytes.extend_from_slice(&REJOIN_MAGIC);
    bytes.extend_from_slice(&STATE_VERSION.to_le_bytes());
    bytes.extend_from_slice(&lost_from.to_le_bytes());
    seal(bytes)
}

/// The `lost_from` of a rejoin marker.
pub fn decode_rejoin(bytes: &[u8]) -> Result<u64, StateError> {
    let body = open(bytes, REJOIN_MAGIC)?;
    if body.len() != REJOIN_BODY_LEN {
        return Err(StateError::BadLength { len: bytes.len() });
    }
    Ok(u64_at(body, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_applied_mark_round_trips_and_every_flipped_byte_is_caught() {
        let mark = AppliedMark {
            term: 7,
            index: 1234,
            next_offset: 99_000,
            context: b"membership".to_vec(),
        };
        let bytes = encode_applied(&mark);
        assert_eq!(decode_applied(&bytes).unwrap(), mark);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(decode_applied(&bad).is_err(), "flipped byte {i} accepted");
        }
        assert!(decode_applied(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn a_rejoin_marker_round_trips_and_every_flipped_byte_is_caught() {
        let bytes = encode_rejoin(26_879);
        assert_eq!(decode_rejoin(&bytes), Ok(26_879));
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x08;
            assert!(decode_rejoin(&bad).is_err(), "flip at {at} unnoticed");
        }
        assert!(decode_rejoin(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode_rejoin(&encode_vote(&Vote::default())).is_err());
    }

    #[test]
    fn round_trips_and_every_flipped_byte_is_caught() {
        let epochs = vec![
            EpochStart {
                epoch: 1,
                start_offset: 0,
            },
            EpochStart {
                epoch: 4,
                start_offset: 17,
            },
        ];
        let bytes = encode_epochs(&epochs);
        assert_eq!(decode_epochs(&bytes).unwrap(), epochs);
        let vote = Vote {
            term: 9,
            voted_for: Some(0),
        };
        let vote_bytes = encode_vote(&vote);
        assert_eq!(vote_bytes.len(), 26);
        assert_eq!(decode_vote(&vote_bytes).unwrap(), vote);
        assert_eq!(
            decode_vote(&encode_vote(&Vote::default())).unwrap(),
            Vote::default()
        );
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            assert!(decode_epochs(&bad).is_err(), "flip at {at} unnoticed");
        }
        for at in 0..vote_bytes.len() {
            let mut bad = vote_bytes.clone();
            bad[at] ^= 0x10;
            assert!(decode_vote(&bad).is_err(), "flip at {at} unnoticed");
        }
        let unordered = encode_epochs(&[epochs[1], epochs[0]]);
        assert_eq!(
            decode_epochs(&unordered),
            Err(StateError::OutOfOrder { index: 1 })
        );
    }
}
