//! The echo client: sends requests one at a time through the mailbox and
//! checks every answer, never waiting longer than it was told to. It polls
//! for answers, or, given an ivshmem [`Peer`], rings the server and waits
//! for its ring (when the server waits for interrupts too).

use std::fmt;
use std::hint::spin_loop;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::time::{Duration, Instant};

use super::Error;
use super::ivshmem::Peer;
use crate::echo::{
    CHECKSUM_AT, CLIENT_PEER, HEARTBEAT, IDLE_WAKE, KIND_AT, KIND_DATA, KIND_STOP, MAX_PAYLOAD, Mailbox, PAYLOAD_AT,
    REQ_LEN_AT, REQ_SEQ, REQUEST, RESP_LEN_AT, RESP_SEQ, RESPONSE, ServerState, VECTOR, answer_checksum, stored_id,
};
use crate::{LayoutError, Region, SplitMix64};

/// How long to spin on an answer before polling with sleeps: a live server
/// answers in microseconds, and spinning for longer would take a core from
/// the VM's vCPUs on a small host.
const SPIN_FOR: Duration = Duration::from_millis(1);
const POLL_EVERY: Duration = Duration::from_micros(50);
/// The server may still be booting; polling faster would not find it sooner.
const CONNECT_POLL: Duration = Duration::from_millis(1);

/// What a client waiting for a server last found in the region.
#[derive(Clone, Copy, Debug)]
pub enum Seen {
    NotEcho(LayoutError),
    State(ServerState),
    NoHeartbeat,
}

impl fmt::Display for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotEcho(e) => write!(f, "the region is no echo mailbox: {e}"),
            Self::State(ServerState::Idle) => write!(f, "the mailbox is formatted but not served yet"),
            Self::State(ServerState::Serving) => write!(f, "the server is serving"),
            Self::State(ServerState::Stopped) => write!(f, "the last server has stopped"),
            Self::State(ServerState::Unknown(v)) => write!(f, "the server state is {v}, which no server sets"),
            Self::NoHeartbeat => write!(f, "the mailbox says serving but has no heartbeat (a server that died?)"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnswerFault {
    /// The server published an answer number other than the one awaited.
    Sequence {
        found: u64,
    },
    Length {
        expected: usize,
        found: usize,
    },
    /// The answer's payload is not the request's reversed.
    Payload {
        offset: usize,
    },
    /// The checksum is not that of the request: the server read something else.
    Checksum,
}

impl fmt::Display for AnswerFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Sequence { found } => write!(f, "the server published answer {found}"),
            Self::Length { expected, found } => write!(f, "{found} bytes, expected {expected}"),
            Self::Payload { offset } => write!(f, "byte {offset} is not the request's reversed"),
            Self::Checksum => write!(f, "the checksum is not the request's"),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EchoStats {
    pub requests: u64,
    /// Payload bytes sent (and as many received).
    pub bytes: u64,
    pub elapsed: Duration,
    pub min_rtt: Duration,
    pub max_rtt: Duration,
    pub total_rtt: Duration,
}

impl EchoStats {
    fn add(&mut self, len: usize, rtt: Duration) {
        self.min_rtt = if self.requests == 0 { rtt } else { self.min_rtt.min(rtt) };
        self.max_rtt = self.max_rtt.max(rtt);
        self.total_rtt += rtt;
        self.requests += 1;
        self.bytes += len as u64;
    }
}

impl fmt::Display for EchoStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} requests, {} bytes each way, in {:.3?}", self.requests, self.bytes, self.elapsed)?;
        if let Ok(n) = u32::try_from(self.requests)
            && n > 0
        {
            let mean = self.total_rtt / n;
            write!(f, "; round trip min {:.1?}, mean {mean:.1?}, max {:.1?}", self.min_rtt, self.max_rtt)?;
        }
        Ok(())
    }
}

/// The payload of request `seq`. 1021 is coprime to `MAX_PAYLOAD + 1`, so
/// any `MAX_PAYLOAD + 1` consecutive requests cover every length, empty and
/// full included.
fn request_payload(seq: u64, buf: &mut [u8; MAX_PAYLOAD]) -> usize {
    let len = (seq.wrapping_mul(1021) % (MAX_PAYLOAD as u64 + 1)) as usize;
    SplitMix64::new(seq).fill_bytes(&mut buf[..len]);
    len
}

/// A client connected to a live echo server.
pub struct EchoClient<'a> {
    mailbox: Mailbox<'a>,
    /// The last request answered.
    last: u64,
    timeout: Duration,
    /// The doorbell, when the client and the server both use one.
    doorbell: Option<(&'a mut Peer, u16)>,
}

impl<'a> EchoClient<'a> {
    /// Waits up to `wait` for a live server in `region` (the guest may still
    /// be booting); `timeout` then bounds the wait for each answer.
    pub fn connect(region: Region<'a>, wait: Duration, timeout: Duration) -> Result<Self, Error> {
        Self::connect_with(region, wait, timeout, None)
    }

    /// As [`EchoClient::connect`]; with `peer`, rings the server and waits
    /// for its rings if the server waits for interrupts (else it polls).
    pub fn connect_with(
        region: Region<'a>,
        wait: Duration,
        timeout: Duration,
        peer: Option<&'a mut Peer>,
    ) -> Result<Self, Error> {
        let mut client = Self::find_server(region, wait, timeout)?;
        if let (Some(peer), Some(server)) = (peer, client.mailbox.server_peer()) {
            // A server that joined the ivshmem server after this peer is
            // known once the news of it has arrived; without it, rings fail
            // with NoPeer, which says so.
            peer.await_peer(server, timeout);
            client.doorbell = Some((peer, server));
        }
        let id = client.doorbell.as_ref().map(|(peer, _)| peer.id());
        client.mailbox.u64(CLIENT_PEER).store(stored_id(id), Relaxed);
        Ok(client)
    }

    /// Whether requests and answers go with rings.
    pub fn uses_interrupts(&self) -> bool {
        self.doorbell.is_some()
    }

    fn find_server(region: Region<'a>, wait: Duration, timeout: Duration) -> Result<Self, Error> {
        let start = Instant::now();
        let mut last_beat = None;
        loop {
            let seen = match Mailbox::open(region) {
                Err(e) => Seen::NotEcho(e),
                Ok(mailbox) => match mailbox.state() {
                    ServerState::Serving => {
                        let beat = mailbox.u64(HEARTBEAT).load(Acquire);
                        if last_beat.is_some_and(|b| b != beat) {
                            return Self::start(mailbox, timeout);
                        }
                        last_beat = Some(beat);
                        Seen::NoHeartbeat
                    }
                    state => Seen::State(state),
                },
            };
            if !matches!(seen, Seen::NoHeartbeat) {
                last_beat = None;
            }
            if start.elapsed() >= wait {
                return Err(Error::NoServer { waited: wait, seen });
            }
            if super::sigbus::faulted_at(region.base()) {
                return Err(Error::MappingLost);
            }
            std::thread::sleep(CONNECT_POLL);
        }
    }

    fn start(mailbox: Mailbox<'a>, timeout: Duration) -> Result<Self, Error> {
        // Acquire: the heartbeat was published after the server's format.
        let (pending, last) = (mailbox.u64(REQ_SEQ).load(Acquire), mailbox.u64(RESP_SEQ).load(Acquire));
        if pending != last {
            return Err(Error::Busy { pending });
        }
        Ok(Self { mailbox, last, timeout, doorbell: None })
    }

    /// Sends `count` requests one by one, checking each answer in order.
    pub fn send(&mut self, count: u64) -> Result<EchoStats, Error> {
        let mut stats = EchoStats::default();
        let (mut request, mut answer) = ([0; MAX_PAYLOAD], [0; MAX_PAYLOAD]);
        let start = Instant::now();
        for _ in 0..count {
            let seq = self.last + 1;
            let len = request_payload(seq, &mut request);
            let sent = Instant::now();
            self.post(seq, KIND_DATA, &request[..len])?;
            self.wait(seq)?;
            let rtt = sent.elapsed();
            self.check(seq, &request[..len], &mut answer)?;
            stats.add(len, rtt);
            self.last = seq;
        }
        stats.elapsed = start.elapsed();
        Ok(stats)
    }

    /// Tells the server to stop and waits for it to acknowledge.
    pub fn stop(mut self) -> Result<(), Error> {
        let seq = self.last + 1;
        self.post(seq, KIND_STOP, &[])?;
        self.wait(seq)?;
        self.check(seq, &[], &mut [0; MAX_PAYLOAD])
    }

    fn post(&mut self, seq: u64, kind: u32, payload: &[u8]) -> Result<(), Error> {
        let len = u32::try_from(payload.len()).expect("payloads fit the mailbox");
        self.mailbox.region.write(self.mailbox.area + REQUEST + PAYLOAD_AT, payload);
        self.mailbox.u32(REQUEST + KIND_AT).store(kind, Relaxed);
        self.mailbox.u32(REQUEST + REQ_LEN_AT).store(len, Relaxed);
        // Release: the server that acquires req_seq sees the whole request.
        self.mailbox.u64(REQ_SEQ).store(seq, Release);
        if let Some((peer, server)) = &self.doorbell {
            peer.ring(*server, VECTOR.into())?;
        }
        Ok(())
    }

    fn wait(&mut self, seq: u64) -> Result<(), Error> {
        let start = Instant::now();
        loop {
            // The state first: the server stores Stopped after its last
            // answer, so Stopped followed by no answer means none is coming.
            let stopped = self.mailbox.state() == ServerState::Stopped;
            match self.mailbox.u64(RESP_SEQ).load(Acquire) {
                answered if answered == seq => return Ok(()),
                found if found != self.last => {
                    return Err(Error::BadAnswer { seq, fault: AnswerFault::Sequence { found } });
                }
                _ if stopped => return Err(Error::ServerStopped { seq }),
                _ => {}
            }
            let waited = start.elapsed();
            let spinning = self.doorbell.is_none() && waited < SPIN_FOR;
            if waited >= self.timeout {
                return Err(Error::Timeout { seq, timeout: self.timeout });
            } else if !spinning && super::sigbus::faulted_at(self.mailbox.region.base()) {
                // The file shrank: the mailbox reads zeros from now on.
                return Err(Error::MappingLost);
            } else if let Some((peer, _)) = &mut self.doorbell {
                // The server rings after each answer; a ring taken early
                // (for an answer already read) only makes one pass more.
                peer.wait((self.timeout - waited).min(IDLE_WAKE))?;
            } else if spinning {
                spin_loop();
            } else {
                std::thread::sleep(POLL_EVERY);
            }
        }
    }

    fn check(&self, seq: u64, sent: &[u8], answer: &mut [u8; MAX_PAYLOAD]) -> Result<(), Error> {
        let fault = |fault| Err(Error::BadAnswer { seq, fault });
        let len = self.mailbox.u32(RESPONSE + RESP_LEN_AT).load(Relaxed) as usize;
        if len != sent.len() {
            return fault(AnswerFault::Length { expected: sent.len(), found: len });
        }
        let answer = &mut answer[..len];
        self.mailbox.region.read(self.mailbox.area + RESPONSE + PAYLOAD_AT, answer);
        if let Some(offset) = answer.iter().zip(sent.iter().rev()).position(|(a, s)| a != s) {
            return fault(AnswerFault::Payload { offset });
        }
        if self.mailbox.u64(RESPONSE + CHECKSUM_AT).load(Relaxed) != answer_checksum(seq, sent) {
            return fault(AnswerFault::Checksum);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::atomic::Ordering::SeqCst;

    use super::*;
    use crate::echo::{AREA_LEN, EchoError};
    use crate::host::{MappedFile, temp_file};

    const SIZE: u64 = (crate::HEADER_LEN + AREA_LEN) as u64;
    const LONG: Duration = Duration::from_secs(10);
    const SHORT: Duration = Duration::from_millis(100);

    #[test]
    fn round_trips_in_order_then_stop() {
        let file = MappedFile::open(&temp_file("echo", SIZE)).unwrap();
        let region = file.region();
        std::thread::scope(|s| {
            // Started after the client, as a booting guest would be.
            let server = s.spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                Mailbox::format(region).unwrap().serve()
            });
            let mut client = EchoClient::connect(region, LONG, LONG).unwrap();
            // More than MAX_PAYLOAD + 1 requests: every length once.
            let stats = client.send(5000).unwrap();
            assert_eq!(stats.requests, 5000);
            assert!(stats.min_rtt <= stats.max_rtt && stats.total_rtt <= stats.elapsed);
            client.stop().unwrap();
            assert_eq!(server.join().unwrap(), Ok(5000));
        });
        assert_eq!(Mailbox::open(region).unwrap().state(), ServerState::Stopped);
    }

    #[test]
    fn no_server_is_an_error_not_a_hang() {
        let file = MappedFile::open(&temp_file("echo-none", SIZE)).unwrap();
        let e = EchoClient::connect(file.region(), SHORT, LONG).err().unwrap();
        assert!(matches!(e, Error::NoServer { seen: Seen::NotEcho(LayoutError::BadMagic(0)), .. }), "{e}");

        // Left behind by a server that died: serving, but no heartbeat.
        let mailbox = Mailbox::format(file.region()).unwrap();
        mailbox.u64(crate::echo::STATE).store(1, SeqCst);
        let e = EchoClient::connect(file.region(), SHORT, LONG).err().unwrap();
        assert!(matches!(e, Error::NoServer { seen: Seen::NoHeartbeat, .. }), "{e}");
    }

    /// A server that beats but answers only through `answer`, until `done`.
    fn fake_server(mailbox: Mailbox<'_>, done: &AtomicBool, answer: impl Fn(u64)) {
        mailbox.u64(crate::echo::STATE).store(1, SeqCst);
        let mut answered = 0;
        while !done.load(SeqCst) {
            mailbox.u64(HEARTBEAT).fetch_add(1, SeqCst);
            let seq = mailbox.u64(REQ_SEQ).load(SeqCst);
            if seq != answered {
                answer(seq);
                answered = seq;
            }
            spin_loop();
        }
    }

    #[test]
    fn silent_server_times_out() {
        let file = MappedFile::open(&temp_file("echo-silent", SIZE)).unwrap();
        let mailbox = Mailbox::format(file.region()).unwrap();
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| fake_server(mailbox, &done, |_| {}));
            let mut client = EchoClient::connect(file.region(), LONG, SHORT).unwrap();
            let start = Instant::now();
            let e = client.send(1).err().unwrap();
            assert!(matches!(e, Error::Timeout { seq: 1, .. }), "{e}");
            assert!(start.elapsed() >= SHORT);
            done.store(true, SeqCst);
        });
    }

    #[test]
    fn wrong_answers_are_caught() {
        let file = MappedFile::open(&temp_file("echo-wrong", SIZE)).unwrap();
        let mailbox = Mailbox::format(file.region()).unwrap();
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            // Answers every request with nothing.
            s.spawn(|| {
                fake_server(mailbox, &done, |seq| {
                    mailbox.u32(RESPONSE + RESP_LEN_AT).store(0, SeqCst);
                    mailbox.u64(RESP_SEQ).store(seq, SeqCst);
                })
            });
            let mut client = EchoClient::connect(file.region(), LONG, LONG).unwrap();
            let e = client.send(1).err().unwrap();
            let fault = AnswerFault::Length { expected: 1021, found: 0 };
            assert!(matches!(e, Error::BadAnswer { seq: 1, fault: f } if f == fault), "{e}");
            done.store(true, SeqCst);
        });
    }

    #[test]
    fn a_server_that_gives_up_is_reported_at_once() {
        let file = MappedFile::open(&temp_file("echo-bad-kind", SIZE)).unwrap();
        let region = file.region();
        std::thread::scope(|s| {
            let server = s.spawn(move || Mailbox::format(region).unwrap().serve());
            let mut client = EchoClient::connect(region, LONG, LONG).unwrap();
            client.post(1, 99, &[]).unwrap();
            let e = client.wait(1).err().unwrap();
            assert!(matches!(e, Error::ServerStopped { seq: 1 }), "{e}");
            assert_eq!(server.join().unwrap(), Err(EchoError::BadKind { seq: 1, kind: 99 }));
        });
    }

    #[test]
    fn a_second_client_finds_the_mailbox_busy() {
        let file = MappedFile::open(&temp_file("echo-busy", SIZE)).unwrap();
        let mailbox = Mailbox::format(file.region()).unwrap();
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| fake_server(mailbox, &done, |_| {}));
            let mut first = EchoClient::connect(file.region(), LONG, LONG).unwrap();
            first.post(1, KIND_DATA, &[1, 2, 3]).unwrap();
            let e = EchoClient::connect(file.region(), LONG, LONG).err().unwrap();
            assert!(matches!(e, Error::Busy { pending: 1 }), "{e}");
            done.store(true, SeqCst);
        });
    }
}
