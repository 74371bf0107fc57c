//! A summary of what a region holds, for people and scripts looking at a
//! backing file.

use std::fmt;
use std::sync::atomic::Ordering::Acquire;

use super::Error;
use crate::clock::Clock;
use crate::echo::{Mailbox, REQ_SEQ, RESP_SEQ, ServerState};
use crate::header::VERSION;
use crate::records::Records;
use crate::stream::{Direction, Stream};
use crate::{Header, Mode, Region};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Detail {
    /// The commit counter of each writer.
    Records {
        seed: u64,
        records: u64,
        published: Vec<u64>,
    },
    Fill {
        seed: u64,
    },
    Echo {
        state: ServerState,
        req_seq: u64,
        resp_seq: u64,
    },
    /// Chunks (published, consumed) in each direction.
    Stream {
        chunk: usize,
        total: u64,
        guest_to_host: (u64, u64),
        host_to_guest: (u64, u64),
    },
    Clock {
        host_ns: u64,
        finished: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub header: Header,
    pub detail: Detail,
}

impl Summary {
    pub(super) fn read(region: Region<'_>) -> Result<Self, Error> {
        let header = Header::read(&region)?;
        let detail = match header.mode {
            Mode::Records => {
                let records = Records::open(region)?;
                let published = (0..records.writers()).map(|w| records.published(w)).collect();
                Detail::Records { seed: records.seed(), records: records.records(), published }
            }
            Mode::Fill => Detail::Fill { seed: header.params[0] },
            Mode::Echo => {
                let mailbox = Mailbox::open(region)?;
                Detail::Echo {
                    state: mailbox.state(),
                    req_seq: mailbox.u64(REQ_SEQ).load(Acquire),
                    resp_seq: mailbox.u64(RESP_SEQ).load(Acquire),
                }
            }
            Mode::Stream => {
                let stream = Stream::open(region)?;
                Detail::Stream {
                    chunk: stream.chunk_len(),
                    total: stream.total(),
                    guest_to_host: stream.progress(Direction::GuestToHost),
                    host_to_guest: stream.progress(Direction::HostToGuest),
                }
            }
            Mode::Clock => {
                let clock = Clock::open(region)?;
                Detail::Clock { host_ns: clock.host_ns(), finished: clock.finished() }
            }
        };
        Ok(Self { header, detail })
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = &self.header;
        writeln!(
            f,
            "layout v{VERSION}, {} mode, {} bytes; area at {:#x}, {} bytes",
            h.mode.name(),
            h.size,
            h.area_offset,
            h.area_len
        )?;
        match &self.detail {
            Detail::Records { seed, records, published } => {
                let total: u64 = published.iter().sum();
                let (min, max) = (published.iter().min(), published.iter().max());
                write!(f, "{} writers x {records} records, seed {seed}; published {total}", published.len())?;
                if let (Some(min), Some(max)) = (min, max) {
                    write!(f, " (per writer {min}..={max})")?;
                }
                writeln!(f)
            }
            Detail::Fill { seed } => writeln!(f, "filled with seed {seed}"),
            Detail::Echo { state, req_seq, resp_seq } => {
                writeln!(f, "server {state:?}; last request {req_seq}, last answer {resp_seq}")
            }
            Detail::Stream { chunk, total, guest_to_host: (gp, gc), host_to_guest: (hp, hc) } => writeln!(
                f,
                "{total} chunks of {chunk} bytes each way; guest->host {gp} published, {gc} consumed; \
                 host->guest {hp} published, {hc} consumed"
            ),
            Detail::Clock { host_ns, finished } => {
                let reader = if *finished { "a reader finished" } else { "no reader finished yet" };
                writeln!(f, "the host's real-time clock, last published as {host_ns} ns; {reader}")
            }
        }
    }
}
