//! Echo: a request/response mailbox for live round trips. The guest serves,
//! the host sends.
//!
//! Header parameters: all 0. The area is three pages:
//!
//! ```text
//! area + 0x000   state: u64, set by the server: 0 idle, 1 serving, 2 stopped
//! area + 0x040   heartbeat: u64, bumped by the server while it waits
//! area + 0x080   req_seq: u64, the client's latest request
//! area + 0x0c0   resp_seq: u64, the server's latest answer
//! area + 0x100   server_peer: u64, the server's doorbell id + 1 (0: it polls)
//! area + 0x140   client_peer: u64, the client's doorbell id + 1 (0: it polls)
//! area + 0x1000  request:  kind u32 (1 data, 2 stop), len u32, payload at +16
//! area + 0x2000  response: checksum u64, len u32, payload at +16
//! ```
//! Each counter has its own cache line, so polling one does not disturb the
//! writer of another.
//!
//! The client writes request `n = resp_seq + 1`, then stores `req_seq = n`
//! (release). The server, polling `req_seq` (acquire), reads the request,
//! writes the answer and stores `resp_seq = n` (release); the client, polling
//! `resp_seq`, reads it. With one request in flight nothing can be reordered
//! or lost. The answer to a data request is `answer_checksum(n, payload)`
//! and the payload reversed; the answer to stop is empty and ends the server.
//!
//! The heartbeat lets a client tell a live server from a mailbox left behind
//! by one that died: a client that sent to the latter would have its request
//! wiped when the next server formats the mailbox.
//!
//! Either side may wait with doorbell interrupts ([`Wake`]) instead of
//! spinning: it announces its doorbell id (ivshmem's IVPosition) in the
//! mailbox, and the other side rings its vector 0 after each store it waits
//! for. A server that waits for interrupts wakes at least every
//! [`IDLE_WAKE`] to beat its heartbeat (so a client may wait two of them to
//! find it); a side that polls rings nobody.

use core::fmt;
use core::hint::spin_loop;
use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use core::sync::atomic::{AtomicU32, AtomicU64};

use crate::{Checksum, Header, LayoutError, Mode, Region};

pub const AREA_LEN: usize = 3 * 4096;
/// The largest payload of a request (and so of its answer).
pub const MAX_PAYLOAD: usize = 4096 - PAYLOAD_AT;

pub(crate) const STATE: usize = 0x000;
pub(crate) const HEARTBEAT: usize = 0x040;
pub(crate) const REQ_SEQ: usize = 0x080;
pub(crate) const RESP_SEQ: usize = 0x0c0;
pub(crate) const SERVER_PEER: usize = 0x100;
pub(crate) const CLIENT_PEER: usize = 0x140;
pub(crate) const REQUEST: usize = 0x1000;
pub(crate) const RESPONSE: usize = 0x2000;
pub(crate) const KIND_AT: usize = 0;
pub(crate) const REQ_LEN_AT: usize = 4;
pub(crate) const CHECKSUM_AT: usize = 0;
pub(crate) const RESP_LEN_AT: usize = 8;
pub(crate) const PAYLOAD_AT: usize = 16;

pub(crate) const KIND_DATA: u32 = 1;
pub(crate) const KIND_STOP: u32 = 2;

/// The longest a server waiting for interrupts sleeps between heartbeats.
/// Each wake costs a system call, which is slow where guest kernel code is
/// emulated: once a second keeps an idle server cheap.
pub const IDLE_WAKE: core::time::Duration = core::time::Duration::from_secs(1);
/// The vector each side is rung on.
pub const VECTOR: u16 = 0;

/// How one side of the mailbox waits for the other and wakes it.
pub trait Wake {
    /// This side's doorbell id, announced to the other side; `None` if it polls.
    fn id(&self) -> Option<u16>;
    /// Waits until the other side may have written: after a ring on
    /// [`VECTOR`], or `timeout`, whichever comes first (a poller returns at once).
    fn wait(&mut self, timeout: core::time::Duration);
    /// Rings `peer`'s [`VECTOR`].
    fn ring(&mut self, peer: u16);
}

/// Waiting by spinning: no doorbell.
pub struct Polling;

impl Wake for Polling {
    fn id(&self) -> Option<u16> {
        None
    }
    fn wait(&mut self, _: core::time::Duration) {
        spin_loop();
    }
    fn ring(&mut self, _: u16) {}
}

/// The doorbell id stored in `field` (id + 1, 0 for none).
pub(crate) fn peer_id(stored: u64) -> Option<u16> {
    stored.checked_sub(1).and_then(|id| u16::try_from(id).ok())
}

pub(crate) fn stored_id(id: Option<u16>) -> u64 {
    id.map_or(0, |id| u64::from(id) + 1)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerState {
    /// Formatted, not yet serving.
    Idle,
    Serving,
    /// Ended by a stop request or a protocol error.
    Stopped,
    Unknown(u64),
}

impl ServerState {
    fn from_u64(v: u64) -> Self {
        match v {
            0 => Self::Idle,
            1 => Self::Serving,
            2 => Self::Stopped,
            v => Self::Unknown(v),
        }
    }

    fn to_u64(self) -> u64 {
        match self {
            Self::Idle => 0,
            Self::Serving => 1,
            Self::Stopped => 2,
            Self::Unknown(v) => v,
        }
    }
}

/// What the server answers for request `seq` carrying `payload`, besides the
/// payload reversed. Covering `seq` makes a stale answer detectable.
pub fn answer_checksum(seq: u64, payload: &[u8]) -> u64 {
    Checksum::new().word(seq).bytes(payload).finish()
}

/// Why a server gave up. The client's misbehaviour, never the server's, so
/// the server stops rather than guessing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EchoError {
    OutOfOrder { expected: u64, found: u64 },
    BadKind { seq: u64, kind: u32 },
    TooLong { seq: u64, len: u32 },
}

impl fmt::Display for EchoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::OutOfOrder { expected, found } => write!(f, "expected request {expected}, got {found}"),
            Self::BadKind { seq, kind } => write!(f, "request {seq} has unknown kind {kind}"),
            Self::TooLong { seq, len } => write!(f, "request {seq} is {len} bytes, more than {MAX_PAYLOAD}"),
        }
    }
}

impl core::error::Error for EchoError {}

/// The echo area of a region.
#[derive(Clone, Copy, Debug)]
pub struct Mailbox<'a> {
    pub(crate) region: Region<'a>,
    pub(crate) area: usize,
}

impl<'a> Mailbox<'a> {
    /// Formats `region` as an idle mailbox with no request sent yet.
    pub fn format(region: Region<'a>) -> Result<Self, LayoutError> {
        // The heartbeat is left alone: clients look only at its changes.
        let fields = [STATE, REQ_SEQ, RESP_SEQ, SERVER_PEER, CLIENT_PEER];
        let area = Header::format_fixed(&region, Mode::Echo, AREA_LEN, &fields)?;
        Ok(Self { region, area })
    }

    pub fn open(region: Region<'a>) -> Result<Self, LayoutError> {
        let area = Header::open_fixed(&region, Mode::Echo, AREA_LEN, "the echo area is not three pages")?;
        Ok(Self { region, area })
    }

    pub(crate) fn u64(&self, field: usize) -> &'a AtomicU64 {
        self.region.u64(self.area + field)
    }

    pub(crate) fn u32(&self, field: usize) -> &'a AtomicU32 {
        self.region.u32(self.area + field)
    }

    pub fn state(&self) -> ServerState {
        ServerState::from_u64(self.u64(STATE).load(Acquire))
    }

    fn set_state(&self, state: ServerState) {
        // Release: a client that sees Stopped also sees the last answer.
        self.u64(STATE).store(state.to_u64(), Release);
    }

    /// Serves requests until a stop request, spinning on `req_seq` in
    /// between (no system calls: they are what is slow in the guest).
    /// Returns how many data requests were answered.
    pub fn serve(&self) -> Result<u64, EchoError> {
        self.serve_with(&mut Polling)
    }

    /// Serves requests until a stop request, waiting for them with `wake`.
    pub fn serve_with(&self, wake: &mut impl Wake) -> Result<u64, EchoError> {
        self.u64(SERVER_PEER).store(stored_id(wake.id()), Relaxed);
        self.set_state(ServerState::Serving);
        let result = self.serve_requests(wake);
        self.set_state(ServerState::Stopped);
        result
    }

    /// The server's doorbell id, if it waits for interrupts.
    pub fn server_peer(&self) -> Option<u16> {
        peer_id(self.u64(SERVER_PEER).load(Acquire))
    }

    fn serve_requests(&self, wake: &mut impl Wake) -> Result<u64, EchoError> {
        let (req_seq, resp_seq, heartbeat) = (self.u64(REQ_SEQ), self.u64(RESP_SEQ), self.u64(HEARTBEAT));
        let mut beat = heartbeat.load(Relaxed);
        let mut last = resp_seq.load(Relaxed);
        let mut buf = [0; MAX_PAYLOAD];
        let mut served = 0;
        loop {
            let seq = loop {
                let seq = req_seq.load(Acquire);
                if seq != last {
                    break seq;
                }
                beat = beat.wrapping_add(1);
                heartbeat.store(beat, Release);
                wake.wait(IDLE_WAKE);
            };
            if seq != last.wrapping_add(1) {
                return Err(EchoError::OutOfOrder { expected: last.wrapping_add(1), found: seq });
            }
            let len = self.u32(REQUEST + REQ_LEN_AT).load(Relaxed);
            let payload = buf.get_mut(..len as usize).ok_or(EchoError::TooLong { seq, len })?;
            match self.u32(REQUEST + KIND_AT).load(Relaxed) {
                KIND_DATA => {
                    self.region.read(self.area + REQUEST + PAYLOAD_AT, payload);
                    let sum = answer_checksum(seq, payload);
                    payload.reverse();
                    self.region.write(self.area + RESPONSE + PAYLOAD_AT, payload);
                    self.answer(seq, sum, len, wake);
                    served += 1;
                }
                KIND_STOP => {
                    self.answer(seq, answer_checksum(seq, &[]), 0, wake);
                    return Ok(served);
                }
                kind => return Err(EchoError::BadKind { seq, kind }),
            }
            last = seq;
        }
    }

    fn answer(&self, seq: u64, checksum: u64, len: u32, wake: &mut impl Wake) {
        self.u64(RESPONSE + CHECKSUM_AT).store(checksum, Relaxed);
        self.u32(RESPONSE + RESP_LEN_AT).store(len, Relaxed);
        // Release: the client that acquires resp_seq sees the whole answer.
        self.u64(RESP_SEQ).store(seq, Release);
        // The client stored its id before req_seq, which we acquired.
        if let Some(client) = peer_id(self.u64(CLIENT_PEER).load(Relaxed)) {
            wake.ring(client);
        }
    }
}
