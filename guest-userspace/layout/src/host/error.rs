use std::io;
use std::path::PathBuf;
use std::time::Duration;

use super::{AnswerFault, Seen};
use crate::{HEADER_LEN, LayoutError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: cannot open", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("{}: cannot map {size} bytes shared", path.display())]
    Map { path: PathBuf, size: u64, source: io::Error },
    #[error("{}: {len} bytes is too short for the {HEADER_LEN}-byte header", path.display())]
    TooShort { path: PathBuf, len: u64 },
    #[error("cannot format {size} bytes: the size must be between the header's {HEADER_LEN} and the file's {len}")]
    FillSize { size: u64, len: u64 },
    #[error(
        "the file shrank to {} while this process used it (it maps {size} bytes); stopped",
        now.map_or("fewer bytes".into(), |n| format!("{n} bytes"))
    )]
    Shrunk { path: PathBuf, size: u64, now: Option<u64> },
    #[error("a mapped file shrank while this process waited on it; stopped (see the file's own error)")]
    MappingLost,
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("the doorbell")]
    Doorbell(#[from] super::ivshmem::Error),
    #[error("no live echo server within {waited:?}: {seen}")]
    NoServer { waited: Duration, seen: Seen },
    #[error("the mailbox is busy: request {pending} is unanswered (another client?)")]
    Busy { pending: u64 },
    #[error("no answer to request {seq} within {timeout:?}")]
    Timeout { seq: u64, timeout: Duration },
    #[error("the echo server stopped without answering request {seq}")]
    ServerStopped { seq: u64 },
    #[error("bad answer to request {seq}: {fault}")]
    BadAnswer { seq: u64, fault: AnswerFault },
    #[error("no reader finished with the clock within {waited:?} (published it {published} times)")]
    NoClockReader { waited: Duration, published: u64 },
}
