//! The limits of one partition log, their defaults and their one validation.
//!
//! Owns: [`LogLimits`] (record, batch, segment and index sizes, segment age, retention), the
//! only place these limits get a default and a check, and [`InvalidLimit`], the refusal
//! every layer's options use (the shard layer's too), so that the config file can name its
//! own key for a refused value. Callers choose how a limit is named: [`LogLimits::validate`]
//! names the fields, [`LogLimits::validate_as`] lets the config say `storage.batch_bytes_max`.
//! Must never: read files or the environment. The config file maps onto these limits; it does
//! not define or check them again.

use super::error::{Error, Result};
use super::format::{self, Record};
use super::index::ENTRY_LEN;

const GIB: u64 = 1 << 30;
const DAY_MS: u64 = 24 * 3600 * 1000;
/// Longest segment age and retention period a log accepts.
const SEGMENT_MS_MAX: u64 = 365 * DAY_MS;
const RETENTION_MS_MAX: u64 = 100 * 365 * DAY_MS;

/// Records that passed [`LogLimits::check`], with their encoded size (header included),
/// measured once. Only `check` makes one, so a `CheckedBatch` is never empty and never over
/// the limits it was checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedBatch {
    records: Vec<Record>,
    batch_bytes: usize,
    producer: Option<ProducerStamp>,
}

/// An idempotent producer's mark on a batch: written into the batch header
/// (`producer_id`, `producer_seq`), from which a partition rebuilds its producer window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerStamp {
    /// The producer id as stored (scoped to the client's identity by the server); never 0.
    pub producer_id: u64,
    /// The batch's number for this producer in this partition.
    pub sequence: u64,
}

impl CheckedBatch {
    /// Marks the batch as batch `stamp.sequence` of producer `stamp.producer_id` (which is
    /// not 0: 0 means "no producer" on disk).
    pub fn set_producer(&mut self, stamp: ProducerStamp) {
        assert_ne!(stamp.producer_id, 0, "producer id 0 means no producer");
        self.producer = Some(stamp);
    }
    /// The producer mark, when the batch comes from an idempotent producer.
    pub fn producer(&self) -> Option<ProducerStamp> {
        self.producer
    }
    pub fn records(&self) -> &[Record] {
        &self.records
    }
    /// Number of records; at least one.
    pub fn len(&self) -> usize {
        self.records.len()
    }
    /// Always false: an empty batch does not pass the check.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
    /// The encoded batch, header included.
    pub fn batch_bytes(&self) -> usize {
        self.batch_bytes
    }
    /// The records' encoded bytes, without the batch header.
    pub fn record_bytes(&self) -> u64 {
        (self.batch_bytes - format::BATCH_HEADER_LEN) as u64
    }
    /// The first record's key (empty when it has none), for choosing a partition.
    pub fn first_key(&self) -> &[u8] {
        self.records.first().map_or(&[], |r| &r.key[..])
    }
}

/// How a caller names a limit in messages: given a field name (`batch_bytes_max`), the name
/// to show (`storage.batch_bytes_max` in the config file).
pub type LimitName<'a> = &'a dyn Fn(&str) -> String;

/// A refused limit: its name (as the caller names it), its value, and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}` = {value} is not allowed: {allowed}")]
pub struct InvalidLimit {
    pub key: String,
    pub value: String,
    pub allowed: String,
}

impl InvalidLimit {
    pub fn new(
        key: impl Into<String>,
        value: impl std::fmt::Display,
        allowed: impl Into<String>,
    ) -> Self {
        InvalidLimit {
            key: key.into(),
            value: value.to_string(),
            allowed: allowed.into(),
        }
    }
}

impl From<InvalidLimit> for Error {
    fn from(invalid: InvalidLimit) -> Error {
        Error::Config(invalid.to_string())
    }
}

/// Checks `lo <= value <= hi` for the limit named `key`; `unit` follows the bounds in the
/// message (" bytes", " ms (0 = unlimited)").
pub fn check_range<T>(key: String, value: T, lo: T, hi: T, unit: &str) -> Result<(), InvalidLimit>
where
    T: PartialOrd + std::fmt::Display + Copy,
{
    if value < lo || value > hi {
        return Err(InvalidLimit::new(
            key,
            value,
            format!("must be between {lo} and {hi}{unit}"),
        ));
    }
    Ok(())
}

/// Limits and policies of one partition log. Checked by [`LogLimits::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLimits {
    /// Largest encoded record (key, value, headers and framing).
    pub record_bytes_max: u64,
    /// Largest encoded batch (one append), header included.
    pub batch_bytes_max: u64,
    /// A segment rolls before an append would take it past this size.
    pub segment_bytes_max: u64,
    /// A segment rolls once its first record is this old; 0 = never by age.
    pub segment_ms: u64,
    /// Size of a segment's index file; a full index rolls the segment.
    pub index_bytes_max: u64,
    /// Old segments are deleted while the log is larger than this; 0 = unlimited.
    pub retention_bytes: u64,
    /// Segments last written longer ago than this are deleted; 0 = unlimited.
    pub retention_ms: u64,
}

impl LogLimits {
    /// Small limits for unit tests: segments of 1,000 bytes, so that a few batches roll them.
    #[cfg(test)]
    pub(crate) fn small_for_tests() -> LogLimits {
        LogLimits {
            record_bytes_max: 300,
            batch_bytes_max: 1000,
            segment_bytes_max: 1000,
            segment_ms: 0,
            index_bytes_max: 16 * 64,
            retention_bytes: 0,
            retention_ms: 0,
        }
    }
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            record_bytes_max: 1 << 20,
            batch_bytes_max: 4 << 20,
            segment_bytes_max: 256 << 20,
            segment_ms: 7 * DAY_MS,
            index_bytes_max: 10 << 20,
            retention_bytes: 0,
            retention_ms: 7 * DAY_MS,
        }
    }
}

impl LogLimits {
    /// Checks a batch against these limits without touching anything, and returns its
    /// encoded size, header included (the server checks before it creates a topic, so that
    /// a refused first append changes nothing).
    pub fn measure_batch(&self, records: &[Record]) -> Result<usize> {
        if records.is_empty() {
            return Err(Error::EmptyBatch);
        }
        let mut batch_bytes = format::BATCH_HEADER_LEN;
        for (index, record) in records.iter().enumerate() {
            let bytes = record.encoded_len();
            if bytes as u64 > self.record_bytes_max {
                return Err(Error::RecordTooLarge {
                    index,
                    bytes,
                    max: self.record_bytes_max,
                });
            }
            if let Some((name, _)) = record
                .headers
                .iter()
                .find(|(name, _)| name.len() > usize::from(u16::MAX))
            {
                return Err(Error::HeaderNameTooLong {
                    index,
                    bytes: name.len(),
                });
            }
            batch_bytes += bytes;
        }
        if batch_bytes as u64 > self.batch_bytes_max {
            return Err(Error::BatchTooLarge {
                bytes: batch_bytes,
                max: self.batch_bytes_max,
            });
        }
        Ok(batch_bytes)
    }

    /// Checks a batch against these limits and measures it once: the returned
    /// [`CheckedBatch`] carries its encoded size to [`Log::append_checked`](super::Log), so
    /// nothing on the way measures it again. A refused batch is dropped.
    pub fn check(&self, records: Vec<Record>) -> Result<CheckedBatch> {
        let batch_bytes = self.measure_batch(&records)?;
        Ok(CheckedBatch {
            records,
            batch_bytes,
            producer: None,
        })
    }

    /// Checks the limits against each other and against what the format can hold; the
    /// error names the field.
    pub fn validate(&self) -> Result<(), InvalidLimit> {
        self.validate_as(&|field| field.to_owned())
    }

    /// [`LogLimits::validate`], naming each limit `key(field)` in the error and in what it
    /// says is allowed. The first refused limit is returned.
    pub fn validate_as(&self, key: LimitName<'_>) -> Result<(), InvalidLimit> {
        let header = format::BATCH_HEADER_LEN as u64;
        let record_min = format::RECORD_FIXED_LEN as u64;
        let batch_min = header + record_min;
        if self.batch_bytes_max < batch_min {
            return Err(InvalidLimit::new(
                key("batch_bytes_max"),
                self.batch_bytes_max,
                format!("must be at least {batch_min} bytes (the smallest batch)"),
            ));
        }
        let record_max = self.batch_bytes_max - header;
        check_range(
            key("record_bytes_max"),
            self.record_bytes_max,
            record_min,
            record_max,
            &format!(
                " bytes (at most {} - {header}, so that a batch of one record of the largest \
                 size, with its {header}-byte header, fits)",
                key("batch_bytes_max")
            ),
        )?;
        check_range(
            key("batch_bytes_max"),
            self.batch_bytes_max,
            self.record_bytes_max + header,
            self.segment_bytes_max.min(GIB),
            &format!(
                " bytes (at least {} + {header}, at most {} and 1 GiB)",
                key("record_bytes_max"),
                key("segment_bytes_max")
            ),
        )?;
        check_range(
            key("segment_bytes_max"),
            self.segment_bytes_max,
            self.batch_bytes_max,
            u64::from(u32::MAX),
            &format!(
                " bytes (at least {}; positions in a segment are u32)",
                key("batch_bytes_max")
            ),
        )?;
        check_range(
            key("segment_ms"),
            self.segment_ms,
            0,
            SEGMENT_MS_MAX,
            " ms (365 days; 0 = never roll by age)",
        )?;
        let entry = ENTRY_LEN as u64;
        check_range(
            key("index_bytes_max"),
            self.index_bytes_max,
            entry,
            GIB,
            " bytes",
        )?;
        if !self.index_bytes_max.is_multiple_of(entry) {
            return Err(InvalidLimit::new(
                key("index_bytes_max"),
                self.index_bytes_max,
                format!("must be a multiple of {entry} (the index entry size)"),
            ));
        }
        check_range(
            key("retention_ms"),
            self.retention_ms,
            0,
            RETENTION_MS_MAX,
            " ms (100 years; 0 = unlimited)",
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        LogLimits::default().validate().unwrap();
    }

    #[test]
    fn a_record_of_the_largest_size_must_fit_one_batch() {
        let header = format::BATCH_HEADER_LEN as u64;
        let mut limits = LogLimits {
            record_bytes_max: 4096,
            batch_bytes_max: 4096,
            ..LogLimits::default()
        };
        let err = limits.validate().unwrap_err();
        assert_eq!(err.key, "record_bytes_max", "{err}");
        limits.record_bytes_max = 4096 - header;
        limits.validate().unwrap();
        // And such a record is accepted in a batch of its own.
        let value_bytes = limits.record_bytes_max as usize - Record::default().encoded_len();
        let record = Record {
            value: vec![7; value_bytes].into(),
            ..Record::default()
        };
        assert_eq!(record.encoded_len() as u64, limits.record_bytes_max);
        assert_eq!(
            limits.measure_batch(&[record]).unwrap() as u64,
            limits.batch_bytes_max
        );
    }

    #[test]
    fn errors_name_the_limit_as_the_caller_names_it() {
        let limits = LogLimits {
            index_bytes_max: 100,
            ..LogLimits::default()
        };
        assert_eq!(limits.validate().unwrap_err().key, "index_bytes_max");
        let err = limits
            .validate_as(&|field| format!("storage.{field}"))
            .unwrap_err();
        assert_eq!(err.key, "storage.index_bytes_max");
        let limits = LogLimits {
            segment_bytes_max: 1 << 20,
            ..LogLimits::default()
        };
        let err = limits
            .validate_as(&|field| format!("storage.{field}"))
            .unwrap_err();
        assert_eq!(err.key, "storage.batch_bytes_max");
        assert!(err.allowed.contains("storage.segment_bytes_max"), "{err}");
    }

    #[test]
    fn bounds_are_inclusive() {
        let limits = LogLimits {
            segment_ms: 0,
            retention_ms: RETENTION_MS_MAX,
            index_bytes_max: GIB,
            ..LogLimits::default()
        };
        limits.validate().unwrap();
        let limits = LogLimits {
            segment_ms: SEGMENT_MS_MAX + 1,
            ..LogLimits::default()
        };
        assert_eq!(limits.validate().unwrap_err().key, "segment_ms");
    }
}
