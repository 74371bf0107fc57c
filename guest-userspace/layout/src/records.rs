//! Guest→host records: each writer process appends checksummed records to a
//! block of its own, so writers never contend, and publishes them by bumping
//! the block's commit counter.
//!
//! Header parameters: `[writers, records per writer, seed, 0]`. The area is
//! one block per writer, writer `i`'s at `area + i * stride` with
//! `stride = 64 + 64 * records per writer`:
//!
//! ```text
//! block + 0        committed: u64, alone on its cache line; records
//!                  0..committed are complete (release store by the writer,
//!                  acquire load by readers)
//! block + 64 + 64n record n:
//!     +0   seq: u64, equal to n
//!     +8   writer: u32
//!     +12  payload: 44 bytes, derived from (seed, writer, seq)
//!     +56  checksum: u64 over bytes 0..56
//! ```
//! A record's place is fixed by its (writer, seq), so "each record exactly
//! once" is the same as "every slot below the target holds its own record".

use core::fmt;
use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use core::time::Duration;

use crate::header::HEADER_LEN;
use crate::{Checksum, Header, LayoutError, Mode, Region, SplitMix64};

pub const RECORD_LEN: usize = 64;
/// How long a writer of the demo's `scale` and of the benchmark's host
/// threads appends in a round after the first, at most ([`round_goes_on`]):
/// one limit, so that the two measure the same thing.
pub const SCALE_ROUND: Duration = Duration::from_millis(500);
pub const PAYLOAD_LEN: usize = 44;
const CONTROL_LEN: usize = 64;
const PAYLOAD_AT: usize = 12;
const CHECKSUM_AT: usize = PAYLOAD_AT + PAYLOAD_LEN;

/// Records per second over rounds of `(records, seconds)`: all the records
/// of the rounds after the first (which pays for first touches of the
/// block) over all their time, the first's alone if it is the only one. A
/// round that an interruption hit counts for what it cost, which a median
/// of short rounds would leave out. The demo's `scale` and the benchmark's
/// host threads both report this.
pub fn overall_rate(rounds: &[(u64, f64)]) -> f64 {
    let (records, seconds) = counted_rounds(rounds).iter().fold((0, 0.0), |(n, t), &(rn, rt)| (n + rn, t + rt));
    records as f64 / seconds
}

/// The rounds [`overall_rate`] counts: all but the first, unless it is the only one.
pub fn counted_rounds<T>(rounds: &[T]) -> &[T] {
    if rounds.len() > 1 { &rounds[1..] } else { rounds }
}

/// Whether a writer of the demo's `scale` or of the benchmark's host threads
/// appends on ([`Writer::fill_block_while`]), `elapsed` into round `round`
/// (0 the first). The first round fills its whole block, so that the rounds
/// [`overall_rate`] counts find every page written before: first touches
/// cost several times a rewrite in a guest, and a first round cut short by
/// the limit left some to the second. Later rounds stop after [`SCALE_ROUND`].
pub fn round_goes_on(round: u64, elapsed: Duration) -> bool {
    round == 0 || elapsed < SCALE_ROUND
}

/// The bytes of a writer's block: `None` if that overflows a u64.
fn stride(records: u64) -> Option<u64> {
    records.checked_mul(RECORD_LEN as u64)?.checked_add(CONTROL_LEN as u64)
}

fn area_len(writers: u64, records: u64) -> Option<u64> {
    stride(records)?.checked_mul(writers)
}

fn payload_key(seed: u64, writer: u32, seq: u64) -> u64 {
    Checksum::new().word(seed).word(u64::from(writer)).word(seq).finish()
}

/// The payload of record `seq` of `writer` in a run seeded with `seed`.
pub fn payload(seed: u64, writer: u32, seq: u64) -> [u8; PAYLOAD_LEN] {
    let mut p = [0; PAYLOAD_LEN];
    SplitMix64::new(payload_key(seed, writer, seq)).fill_bytes(&mut p);
    p
}

/// Record `seq` of `writer` as its eight little-endian words, the same bytes
/// as the layout above with [`payload`]. Built word by word in registers: a
/// byte array assembled on the stack and then copied made the writer stall
/// on loads that straddle earlier stores, by an amount that moved with code
/// layout (the same source ran 31 to 36 M records/s as built four ways).
fn encode(seed: u64, writer: u32, seq: u64) -> [u64; RECORD_LEN / 8] {
    let mut stream = SplitMix64::new(payload_key(seed, writer, seq));
    // The payload starts 4 bytes into word 1: each record word holds the
    // high half of one stream word and the low half of the next.
    let mut low = u64::from(writer);
    let mut rec = [0; RECORD_LEN / 8];
    rec[0] = seq;
    for word in &mut rec[1..CHECKSUM_AT / 8] {
        let next = stream.next_u64();
        *word = low | next << 32;
        low = next >> 32;
    }
    let sum = rec[..CHECKSUM_AT / 8].iter().fold(Checksum::new(), |sum, &w| sum.word(w));
    rec[CHECKSUM_AT / 8] = sum.word(CHECKSUM_AT as u64).finish();
    rec
}

/// What is wrong with the record in `slot` of `writer`'s block, if anything.
fn classify(seed: u64, writer: u64, slot: u64, rec: &[u8; RECORD_LEN]) -> Result<(), FaultKind> {
    let word = |at: usize| u64::from_le_bytes(rec[at..at + 8].try_into().expect("8 bytes"));
    if Checksum::new().bytes(&rec[..CHECKSUM_AT]).finish() != word(CHECKSUM_AT) {
        return Err(FaultKind::Checksum);
    }
    let seq = word(0);
    let id = u32::from_le_bytes(rec[8..PAYLOAD_AT].try_into().expect("4 bytes"));
    if seq != slot || u64::from(id) != writer {
        return Err(FaultKind::Misplaced { writer: id, seq });
    }
    if rec[PAYLOAD_AT..CHECKSUM_AT] != payload(seed, id, seq) {
        return Err(FaultKind::Payload);
    }
    Ok(())
}

/// A records area: its geometry, read from or written to the header.
#[derive(Clone, Copy, Debug)]
pub struct Records<'a> {
    region: Region<'a>,
    area: usize,
    writers: u64,
    records: u64,
    seed: u64,
}

impl<'a> Records<'a> {
    /// The region size needed for `writers` x `records`; `u64::MAX` if
    /// that does not fit in a u64.
    pub fn required_size(writers: u64, records: u64) -> u64 {
        area_len(writers, records).and_then(|a| a.checked_add(HEADER_LEN as u64)).unwrap_or(u64::MAX)
    }

    /// Formats `region` for `writers` processes writing `records` each.
    pub fn format(region: Region<'a>, writers: u64, records: u64, seed: u64) -> Result<Self, LayoutError> {
        if writers > u64::from(u32::MAX) + 1 {
            return Err(LayoutError::BadGeometry("more writers than a record's 32-bit writer id names"));
        }
        let len = area_len(writers, records).unwrap_or(u64::MAX);
        let header = Header::new(&region, Mode::Records, len, [writers, records, seed, 0])?;
        Header::retract(&region);
        let this = Self { region, area: header.area().0, writers, records, seed };
        for w in 0..writers {
            region.u64(this.block(w)).store(0, Relaxed);
        }
        header.publish(&region);
        Ok(this)
    }

    /// The records area of a formatted region.
    pub fn open(region: Region<'a>) -> Result<Self, LayoutError> {
        let header = Header::expect(&region, Mode::Records)?;
        let [writers, records, seed, _] = header.params;
        if area_len(writers, records) != Some(header.area_len) {
            return Err(LayoutError::BadGeometry("the records area does not match writers x records"));
        }
        Ok(Self { region, area: header.area().0, writers, records, seed })
    }

    pub fn writers(&self) -> u64 {
        self.writers
    }

    pub fn records(&self) -> u64 {
        self.records
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    fn block(&self, writer: u64) -> usize {
        assert!(writer < self.writers, "writer {writer} of {}", self.writers);
        // open()/format() checked that every block lies inside the region.
        self.area + (writer * stride(self.records).expect("checked geometry")) as usize
    }

    fn slot(&self, writer: u64, n: u64) -> usize {
        self.block(writer) + CONTROL_LEN + n as usize * RECORD_LEN
    }

    /// How many records `writer` has published (its raw commit counter).
    pub fn published(&self, writer: u64) -> u64 {
        self.region.u64(self.block(writer)).load(Acquire)
    }

    /// The appender for `writer`'s block in a freshly formatted area.
    pub fn writer(&self, writer: u64) -> Writer<'a> {
        Writer {
            area: *self,
            block: self.block(writer),
            id: u32::try_from(writer).expect("format() caps writers"),
            next: 0,
        }
    }

    /// Checks every published record against the run that was expected.
    pub fn check(&self, expected_writers: u64, expected_records: u64) -> Result<RecordsReport, LayoutError> {
        if (self.writers, self.records) != (expected_writers, expected_records) {
            return Err(LayoutError::RecordsMismatch {
                writers: self.writers,
                records: self.records,
                expected_writers,
                expected_records,
            });
        }
        let mut report = RecordsReport { writers: self.writers, records: self.records, ..Default::default() };
        for w in 0..self.writers {
            let committed = self.published(w);
            if committed > self.records {
                report.fault(Fault { writer: w, slot: self.records, kind: FaultKind::Counter { committed } });
            }
            let published = committed.min(self.records);
            report.published += published;
            let mut rec = [0; RECORD_LEN];
            for slot in 0..published {
                self.region.read(self.slot(w, slot), &mut rec);
                match classify(self.seed, w, slot, &rec) {
                    Ok(()) => report.intact += 1,
                    Err(kind) => report.fault(Fault { writer: w, slot, kind }),
                }
            }
        }
        Ok(report)
    }
}

/// Appends one writer's records. Each writer is the only one to touch its
/// block, so appending needs no atomic read-modify-write.
pub struct Writer<'a> {
    area: Records<'a>,
    block: usize,
    id: u32,
    next: u64,
}

impl Writer<'_> {
    /// Writes the next record and publishes it; false once the block is full.
    pub fn append(&mut self) -> bool {
        if self.next == self.area.records {
            return false;
        }
        let rec = encode(self.area.seed, self.id, self.next);
        self.area.region.write_words(self.area.slot(u64::from(self.id), self.next), rec);
        self.next += 1;
        // Release: whoever acquires the new count also sees the record.
        self.area.region.u64(self.block).store(self.next, Release);
        true
    }

    /// Appends until the block is full or `go_on` says stop (asked after
    /// every 1,024 records, so at least those are written even by a writer
    /// that was preempted past its deadline); returns how many records were
    /// appended. The loop of the demo's `scale` writers and of the
    /// benchmark's host threads alike.
    pub fn fill_block_while(&mut self, mut go_on: impl FnMut() -> bool) -> u64 {
        let first = self.next;
        while (self.next == first || !self.next.is_multiple_of(1024) || go_on()) && self.append() {}
        self.next - first
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Torn or damaged bytes.
    Checksum,
    /// An intact record of another slot: a duplicate or a stray.
    Misplaced { writer: u32, seq: u64 },
    /// An intact record whose payload is not the one its (seed, writer, seq)
    /// gives: the writer derived it wrongly.
    Payload,
    /// A commit counter beyond the block's capacity.
    Counter { committed: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    pub writer: u64,
    pub slot: u64,
    pub kind: FaultKind,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { writer, slot, kind } = *self;
        match kind {
            FaultKind::Checksum => write!(f, "writer {writer} record {slot}: checksum mismatch"),
            FaultKind::Misplaced { writer: w, seq } => {
                write!(f, "writer {writer} record {slot}: holds writer {w}'s record {seq}")
            }
            FaultKind::Payload => write!(f, "writer {writer} record {slot}: wrong payload"),
            FaultKind::Counter { committed } => {
                write!(f, "writer {writer}: commit counter {committed} beyond its {slot} slots")
            }
        }
    }
}

/// The outcome of checking a records area.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordsReport {
    pub writers: u64,
    /// Expected per writer.
    pub records: u64,
    /// Records the writers published (commit counters, capped at capacity).
    pub published: u64,
    /// Published records found in their slot and correct.
    pub intact: u64,
    pub corrupt: u64,
    pub misplaced: u64,
    pub wrong_payload: u64,
    pub bad_counters: u64,
    pub first_fault: Option<Fault>,
}

impl RecordsReport {
    fn fault(&mut self, fault: Fault) {
        match fault.kind {
            FaultKind::Checksum => self.corrupt += 1,
            FaultKind::Misplaced { .. } => self.misplaced += 1,
            FaultKind::Payload => self.wrong_payload += 1,
            FaultKind::Counter { .. } => self.bad_counters += 1,
        }
        self.first_fault.get_or_insert(fault);
    }

    pub fn expected(&self) -> u64 {
        self.writers * self.records
    }

    /// Records never published: the run was cut short (or is still going).
    pub fn shortfall(&self) -> u64 {
        self.expected() - self.published
    }

    pub fn faults(&self) -> u64 {
        self.corrupt + self.misplaced + self.wrong_payload + self.bad_counters
    }

    /// Every expected record is present, intact and in its own slot (so
    /// exactly once), and no counter claims more.
    pub fn is_complete(&self) -> bool {
        self.intact == self.expected() && self.bad_counters == 0
    }
}

impl fmt::Display for RecordsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (w, r) = (self.writers, self.records);
        if self.is_complete() {
            return write!(f, "all {} records intact, each exactly once ({w} writers x {r})", self.expected());
        }
        write!(f, "{} of {} records intact ({w} writers x {r})", self.intact, self.expected())?;
        if self.shortfall() > 0 {
            write!(f, "; {} never published (run cut short)", self.shortfall())?;
        }
        if let Some(first) = self.first_fault {
            write!(
                f,
                "; {} corrupt, {} misplaced, {} wrong payload, {} bad counters; first: {first}",
                self.corrupt, self.misplaced, self.wrong_payload, self.bad_counters
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

    use super::*;
    use crate::region::TestMemory;

    fn formatted(region: Region<'_>, writers: u64, records: u64) -> Records<'_> {
        Records::format(region, writers, records, 42).unwrap()
    }

    fn write_all(records: &Records) {
        for w in 0..records.writers() {
            let mut writer = records.writer(w);
            while writer.append() {}
        }
    }

    #[test]
    fn the_overall_rate_leaves_out_the_first_round_and_weighs_rounds_by_time() {
        assert_eq!(overall_rate(&[(10, 1.0)]), 10.0);
        // 100 + 300 records in 1 + 2 seconds; the first round does not count.
        assert_eq!(overall_rate(&[(1, 1.0), (100, 1.0), (300, 2.0)]), 400.0 / 3.0);
    }

    #[test]
    fn only_rounds_after_the_first_stop_at_the_limit() {
        let past = SCALE_ROUND + Duration::from_millis(1);
        assert!(round_goes_on(0, past));
        assert!(round_goes_on(1, SCALE_ROUND - Duration::from_millis(1)));
        assert!(!round_goes_on(1, past));
        assert!(!round_goes_on(8, SCALE_ROUND));
    }

    #[test]
    fn complete_run_checks_clean() {
        let mut mem = TestMemory::new(Records::required_size(3, 100) as usize);
        let region = mem.region();
        let records = formatted(region, 3, 100);
        write_all(&records);
        let again = Records::open(region).unwrap();
        assert_eq!((again.writers(), again.records(), again.seed()), (3, 100, 42));
        let report = again.check(3, 100).unwrap();
        assert!(report.is_complete(), "{report}");
        assert_eq!((report.intact, report.published, report.faults()), (300, 300, 0));
    }

    #[test]
    fn concurrent_writers_lose_duplicate_and_tear_nothing() {
        const WRITERS: u64 = 4;
        const RECORDS: u64 = 20_000;
        let mut mem = TestMemory::new(Records::required_size(WRITERS, RECORDS) as usize);
        let region = mem.region();
        let records = formatted(region, WRITERS, RECORDS);
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            // A reader checking while the writers run: whatever it sees
            // published must already be complete.
            let reader = s.spawn(|| {
                let mut snapshots = 0;
                while !done.load(SeqCst) {
                    let report = records.check(WRITERS, RECORDS).unwrap();
                    assert_eq!(report.faults(), 0, "{report}");
                    assert_eq!(report.intact, report.published);
                    snapshots += 1;
                }
                snapshots
            });
            let writers: Vec<_> = (0..WRITERS)
                .map(|w| {
                    let mut writer = records.writer(w);
                    s.spawn(move || while writer.append() {})
                })
                .collect();
            writers.into_iter().for_each(|t| t.join().unwrap());
            done.store(true, SeqCst);
            assert!(reader.join().unwrap() > 0);
        });
        let report = records.check(WRITERS, RECORDS).unwrap();
        assert!(report.is_complete(), "{report}");
    }

    #[test]
    fn flipped_bytes_are_caught() {
        let mut mem = TestMemory::new(Records::required_size(2, 10) as usize);
        let region = mem.region();
        let records = formatted(region, 2, 10);
        write_all(&records);
        for at in [0, 8, PAYLOAD_AT + 3, CHECKSUM_AT + 7] {
            let offset = records.slot(1, 4) + at;
            let mut b = [0];
            region.read(offset, &mut b);
            region.write(offset, &[b[0] ^ 0x10]);
            let report = records.check(2, 10).unwrap();
            assert!(!report.is_complete());
            assert_eq!((report.corrupt, report.intact), (1, 19), "byte {at}");
            assert_eq!(report.first_fault, Some(Fault { writer: 1, slot: 4, kind: FaultKind::Checksum }));
            region.write(offset, &b);
        }
        assert!(records.check(2, 10).unwrap().is_complete());
    }

    #[test]
    fn duplicates_and_wrong_payloads_are_caught() {
        let mut mem = TestMemory::new(Records::required_size(2, 10) as usize);
        let region = mem.region();
        let records = formatted(region, 2, 10);
        write_all(&records);
        let mut rec = [0; RECORD_LEN];
        region.read(records.slot(0, 3), &mut rec);
        region.write(records.slot(1, 5), &rec);
        region.write_words(records.slot(1, 6), encode(43, 1, 6));
        let report = records.check(2, 10).unwrap();
        assert_eq!((report.intact, report.misplaced, report.wrong_payload), (18, 1, 1));
        let misplaced = FaultKind::Misplaced { writer: 0, seq: 3 };
        assert_eq!(report.first_fault, Some(Fault { writer: 1, slot: 5, kind: misplaced }));
        assert!(report.to_string().contains("writer 1 record 5: holds writer 0's record 3"), "{report}");
    }

    #[test]
    fn cut_short_run_checks_what_was_published_and_reports_the_shortfall() {
        let mut mem = TestMemory::new(Records::required_size(3, 100) as usize);
        let region = mem.region();
        let records = formatted(region, 3, 100);
        let mut w0 = records.writer(0);
        (0..10).for_each(|_| assert!(w0.append()));
        let mut w1 = records.writer(1);
        while w1.append() {}
        // Killed between writing record 10 and publishing it: the bytes are
        // garbage, and nothing reads them.
        region.write(records.slot(0, 10), &[0xAA; RECORD_LEN]);
        let report = records.check(3, 100).unwrap();
        assert_eq!((report.published, report.intact, report.faults()), (110, 110, 0));
        assert_eq!(report.shortfall(), 190);
        assert!(!report.is_complete());
        assert_eq!(
            report.to_string(),
            "110 of 300 records intact (3 writers x 100); 190 never published (run cut short)"
        );
    }

    #[test]
    fn counter_past_capacity_is_a_fault() {
        let mut mem = TestMemory::new(Records::required_size(1, 5) as usize);
        let region = mem.region();
        let records = formatted(region, 1, 5);
        write_all(&records);
        region.u64(records.block(0)).store(6, Relaxed);
        let report = records.check(1, 5).unwrap();
        assert_eq!((report.intact, report.bad_counters), (5, 1));
        assert!(!report.is_complete());
    }

    #[test]
    fn geometry_errors() {
        let mut mem = TestMemory::new(Records::required_size(2, 10) as usize);
        let region = mem.region();
        let records = formatted(region, 2, 10);
        let mismatch =
            LayoutError::RecordsMismatch { writers: 2, records: 10, expected_writers: 2, expected_records: 11 };
        assert_eq!(records.check(2, 11), Err(mismatch));
        let available = region.size() as u64;
        let needed = Records::required_size(3, 10);
        let e = Records::format(region, 3, 10, 0).unwrap_err();
        assert_eq!(e, LayoutError::TooSmall { what: "the records area", needed, available });
        assert_eq!(Records::required_size(u64::MAX, 2), u64::MAX);
        assert!(matches!(Records::format(region, u64::MAX, 0, 0), Err(LayoutError::BadGeometry(_))));
        // A failed format leaves the previous one in place.
        assert!(Records::open(region).unwrap().check(2, 10).is_ok());
    }
}
