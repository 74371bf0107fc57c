//! Streaming and ping-pong, for the benchmarks: bulk data through a ring of
//! chunks in each direction, then small messages bounced back and forth.
//!
//! Header parameters: `[chunk length, slots, chunks per direction, 0]`. The
//! area is a page of counters followed by the ring (`slots` chunks, each a
//! whole number of pages):
//!
//! ```text
//! area + 0x000  g2h_head: chunks the guest has published
//! area + 0x080  g2h_tail: chunks the host has consumed
//! area + 0x100  h2g_head: chunks the host has published
//! area + 0x180  h2g_tail: chunks the guest has consumed
//! area + 0x200  ping: the host's latest message (STOP ends the server)
//! area + 0x280  pong: the guest's latest answer
//! area + 0x1000 ring: chunk n lives in slot n % slots
//! ```
//! Each counter sits alone in 128 bytes, so that polling one never pulls in
//! the line (or its prefetch pair) another side writes. The producer copies
//! chunk `n` into its slot, stamps `n` into the chunk's first word and
//! publishes `head = n + 1` (release); the consumer waits until it acquires
//! `head > n`, copies the chunk out, checks the stamp and frees the slot with
//! `tail = n + 1` (release). The phases run in order: a first ping from the
//! host starts the guest's sending (so that the host can time the whole
//! transfer), then guest→host, host→guest and ping-pong; each side starts a
//! phase when the other has finished the one before.

use core::hint::spin_loop;
use core::sync::atomic::AtomicU64;
use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use crate::header::HEADER_LEN;
use crate::{Header, LayoutError, Mode, Region};

const CONTROL_LEN: usize = 4096;
const PAGE: u64 = 4096;
const G2H_HEAD: usize = 0x000;
const G2H_TAIL: usize = 0x080;
const H2G_HEAD: usize = 0x100;
const H2G_TAIL: usize = 0x180;
const PING: usize = 0x200;
const PONG: usize = 0x280;

/// The ping that ends [`Stream::serve_pings`].
pub const STOP: u64 = u64::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    GuestToHost,
    HostToGuest,
}

impl Direction {
    fn counters(self) -> (usize, usize) {
        match self {
            Self::GuestToHost => (G2H_HEAD, G2H_TAIL),
            Self::HostToGuest => (H2G_HEAD, H2G_TAIL),
        }
    }
}

/// A consumed chunk whose stamp is not its number: the ring lost or reordered data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadChunk {
    pub expected: u64,
    pub found: u64,
}

#[derive(Clone, Copy, Debug)]
pub struct Stream<'a> {
    region: Region<'a>,
    area: usize,
    chunk: usize,
    slots: u64,
    total: u64,
}

impl<'a> Stream<'a> {
    /// The region size needed for `slots` chunks of `chunk` bytes.
    pub fn required_size(chunk: u64, slots: u64) -> u64 {
        chunk.saturating_mul(slots).saturating_add((HEADER_LEN + CONTROL_LEN) as u64)
    }

    /// Formats `region` for `total` chunks of `chunk` bytes each way through
    /// a ring of `slots`. `chunk` is a non-zero multiple of the page size.
    pub fn format(region: Region<'a>, chunk: u64, slots: u64, total: u64) -> Result<Self, LayoutError> {
        if chunk == 0 || !chunk.is_multiple_of(PAGE) || slots == 0 {
            return Err(LayoutError::BadGeometry("stream chunks must be whole pages, and at least one slot"));
        }
        let len = Self::required_size(chunk, slots) - HEADER_LEN as u64;
        let header = Header::new(&region, Mode::Stream, len, [chunk, slots, total, 0])?;
        Header::retract(&region);
        let this = Self::from_header(region, &header);
        for field in [G2H_HEAD, G2H_TAIL, H2G_HEAD, H2G_TAIL, PING, PONG] {
            this.counter(field).store(0, Relaxed);
        }
        header.publish(&region);
        Ok(this)
    }

    pub fn open(region: Region<'a>) -> Result<Self, LayoutError> {
        let header = Header::expect(&region, Mode::Stream)?;
        let [chunk, slots, _, _] = header.params;
        if chunk == 0
            || !chunk.is_multiple_of(PAGE)
            || slots == 0
            || Self::required_size(chunk, slots) - HEADER_LEN as u64 != header.area_len
        {
            return Err(LayoutError::BadGeometry("the stream area does not match chunk x slots"));
        }
        Ok(Self::from_header(region, &header))
    }

    fn from_header(region: Region<'a>, header: &Header) -> Self {
        let [chunk, slots, total, _] = header.params;
        // Header::new/read checked that the area lies inside the mapping.
        Self { region, area: header.area().0, chunk: chunk as usize, slots, total }
    }

    pub fn chunk_len(&self) -> usize {
        self.chunk
    }

    /// Chunks each way.
    pub fn total(&self) -> u64 {
        self.total
    }

    fn counter(&self, field: usize) -> &'a AtomicU64 {
        self.region.u64(self.area + field)
    }

    fn slot(&self, n: u64) -> usize {
        self.area + CONTROL_LEN + (n % self.slots) as usize * self.chunk
    }

    /// Writes every page of the ring once, so that the transfers that follow
    /// run at steady state instead of paying for first touches (page faults
    /// in the host, for a fresh file). Only while no chunk is in flight.
    pub fn touch_ring(&self) {
        let zeros = [0u8; PAGE as usize];
        let ring = self.area + CONTROL_LEN;
        for page in (ring..ring + self.slots as usize * self.chunk).step_by(zeros.len()) {
            self.region.write(page, &zeros);
        }
    }

    /// Chunks published and consumed so far in `dir`.
    pub fn progress(&self, dir: Direction) -> (u64, u64) {
        let (head, tail) = dir.counters();
        (self.counter(head).load(Acquire), self.counter(tail).load(Acquire))
    }

    /// Publishes chunk `n` (the producer's next) with the bytes of `data`,
    /// which is one chunk long, once its slot is free.
    pub fn send(&self, dir: Direction, n: u64, data: &[u8]) {
        assert_eq!(data.len(), self.chunk, "a chunk is {} bytes", self.chunk);
        let (head, tail) = dir.counters();
        // Acquire: the consumer has finished copying the chunk that was here.
        while n - self.counter(tail).load(Acquire) >= self.slots {
            spin_loop();
        }
        let slot = self.slot(n);
        self.region.write(slot, data);
        self.region.u64(slot).store(n, Relaxed);
        self.counter(head).store(n + 1, Release);
    }

    /// Waits for chunk `n` (the consumer's next), copies it into `buf` and
    /// frees its slot.
    pub fn receive(&self, dir: Direction, n: u64, buf: &mut [u8]) -> Result<(), BadChunk> {
        assert_eq!(buf.len(), self.chunk, "a chunk is {} bytes", self.chunk);
        let (head, tail) = dir.counters();
        while self.counter(head).load(Acquire) <= n {
            spin_loop();
        }
        let slot = self.slot(n);
        self.region.read(slot, buf);
        let found = u64::from_le_bytes(buf[..8].try_into().expect("chunks are pages"));
        self.counter(tail).store(n + 1, Release);
        if found == n { Ok(()) } else { Err(BadChunk { expected: n, found }) }
    }

    /// Waits until the consumer in `dir` has taken every chunk.
    pub fn wait_drained(&self, dir: Direction) {
        let (_, tail) = dir.counters();
        while self.counter(tail).load(Acquire) < self.total {
            spin_loop();
        }
    }

    /// The host's side of one round trip: sends `seq` (never STOP) and waits
    /// for the answer.
    pub fn ping(&self, seq: u64) {
        self.counter(PING).store(seq, Release);
        while self.counter(PONG).load(Acquire) != seq {
            spin_loop();
        }
    }

    /// Ends the guest's [`Stream::serve_pings`].
    pub fn stop(&self) {
        self.counter(PING).store(STOP, Release);
    }

    /// The guest's side of one round trip: waits for a ping other than the
    /// last one answered, answers it and returns it; STOP is returned
    /// unanswered.
    pub fn answer_ping(&self) -> u64 {
        let (ping, pong) = (self.counter(PING), self.counter(PONG));
        let last = pong.load(Relaxed);
        loop {
            let seq = ping.load(Acquire);
            if seq == STOP {
                return STOP;
            }
            if seq != last {
                pong.store(seq, Release);
                return seq;
            }
            spin_loop();
        }
    }

    /// Answers every ping until STOP; returns how many.
    pub fn serve_pings(&self) -> u64 {
        let mut served = 0;
        while self.answer_ping() != STOP {
            served += 1;
        }
        served
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::TestMemory;

    #[test]
    fn both_directions_and_ping_pong_between_threads() {
        const CHUNK: usize = 2 * 4096;
        let mut mem = TestMemory::new(Stream::required_size(CHUNK as u64, 3) as usize);
        let region = mem.region();
        let stream = Stream::format(region, CHUNK as u64, 3, 50).unwrap();
        let peer = Stream::open(region).unwrap();
        assert_eq!((peer.chunk_len(), peer.total()), (CHUNK, 50));
        std::thread::scope(|s| {
            let guest = s.spawn(move || {
                let mut buf = vec![0; CHUNK];
                for n in 0..50 {
                    buf.fill(n as u8);
                    stream.send(Direction::GuestToHost, n, &buf);
                }
                for n in 0..50 {
                    stream.receive(Direction::HostToGuest, n, &mut buf).unwrap();
                    assert!(buf[8..].iter().all(|&b| b == !(n as u8)));
                }
                stream.serve_pings()
            });
            let mut buf = vec![0; CHUNK];
            for n in 0..50 {
                peer.receive(Direction::GuestToHost, n, &mut buf).unwrap();
                assert!(buf[8..].iter().all(|&b| b == n as u8));
            }
            for n in 0..50 {
                buf.fill(!(n as u8));
                peer.send(Direction::HostToGuest, n, &buf);
            }
            peer.wait_drained(Direction::HostToGuest);
            (1..=1000).for_each(|seq| peer.ping(seq));
            peer.stop();
            assert_eq!(guest.join().unwrap(), 1000);
        });
        assert_eq!(stream.progress(Direction::GuestToHost), (50, 50));
    }

    #[test]
    fn a_wrong_stamp_is_reported() {
        let mut mem = TestMemory::new(Stream::required_size(4096, 2) as usize);
        let stream = Stream::format(mem.region(), 4096, 2, 4).unwrap();
        let mut buf = vec![0; 4096];
        stream.send(Direction::GuestToHost, 0, &buf);
        stream.region.u64(stream.slot(0)).store(7, Relaxed);
        assert_eq!(stream.receive(Direction::GuestToHost, 0, &mut buf), Err(BadChunk { expected: 0, found: 7 }));
    }

    #[test]
    fn geometry() {
        let mut mem = TestMemory::new(Stream::required_size(4096, 2) as usize);
        assert!(matches!(Stream::format(mem.region(), 100, 2, 1), Err(LayoutError::BadGeometry(_))));
        assert!(matches!(Stream::format(mem.region(), 4096, 3, 1), Err(LayoutError::TooSmall { .. })));
    }
}
