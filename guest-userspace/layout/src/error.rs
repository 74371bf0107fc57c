//! Why a region cannot be used as asked. Written by hand rather than with
//! thiserror so that guest programs get the core with no dependencies.

use core::fmt;

use crate::header::{MAGIC, Mode, VERSION};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// The mapping is null or not on an 8-byte boundary, which the atomics need.
    Misaligned,
    /// `needed` saturates at `u64::MAX` when the request overflows.
    TooSmall {
        what: &'static str,
        needed: u64,
        available: u64,
    },
    /// Nobody formatted the region, or it was overwritten.
    BadMagic(u64),
    BadVersion(u32),
    UnknownMode(u32),
    WrongMode {
        expected: Mode,
        found: Mode,
    },
    /// The formatter saw a larger region than this mapping: the host file
    /// was formatted at a size bigger than the guest's device, or vice versa.
    SizeMismatch {
        header: u64,
        mapped: u64,
    },
    /// Header fields that contradict each other.
    BadGeometry(&'static str),
    /// The records area was formatted for another run than the one checked.
    RecordsMismatch {
        writers: u64,
        records: u64,
        expected_writers: u64,
        expected_records: u64,
    },
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Misaligned => write!(f, "the mapping is null or not 8-byte aligned"),
            Self::TooSmall { what, needed: u64::MAX, available } => {
                write!(f, "too small: {what} needs more bytes than a u64 counts, the region has {available}")
            }
            Self::TooSmall { what, needed, available } => {
                write!(f, "too small: {what} needs {needed} bytes, the region has {available}")
            }
            Self::BadMagic(m) => {
                let bytes = MAGIC.to_le_bytes();
                let name = core::str::from_utf8(&bytes).unwrap_or("?");
                write!(f, "not formatted (magic {m:#x}, not {name:?})")
            }
            Self::BadVersion(v) => write!(f, "layout version {v}, this program knows version {VERSION}"),
            Self::UnknownMode(m) => write!(f, "unknown mode {m} (written by a newer program?)"),
            Self::WrongMode { expected, found } => {
                write!(f, "the region holds {} data, not {}", found.name(), expected.name())
            }
            Self::SizeMismatch { header, mapped } => {
                write!(f, "the region was formatted as {header} bytes but only {mapped} are mapped here")
            }
            Self::BadGeometry(why) => write!(f, "inconsistent header: {why}"),
            Self::RecordsMismatch { writers, records, expected_writers, expected_records } => write!(
                f,
                "the region was formatted for {writers} writers x {records} records, \
                 not {expected_writers} x {expected_records}"
            ),
        }
    }
}

impl core::error::Error for LayoutError {}
