//! Host→guest data: the host fills the area with a seeded pseudo-random
//! stream and the guest regenerates the stream to check it.
//!
//! Header parameters: `[seed, 0, 0, 0]`; the area is everything after the
//! header page. Byte `k` of the area is byte `k % 8` of the little-endian
//! `k / 8`-th output of `SplitMix64::new(seed)`.

use core::fmt;

use crate::header::HEADER_LEN;
use crate::{Header, LayoutError, Mode, Region, SplitMix64};

/// A multiple of 8, so that generating the stream chunk by chunk keeps it
/// continuous (see `SplitMix64::fill_bytes`).
const CHUNK: usize = 4096;

/// Formats `region` as filled with the stream of `seed`. The header is
/// published after the data, so a reader that finds it finds all the data.
pub fn fill(region: Region<'_>, seed: u64) -> Result<Header, LayoutError> {
    let area_len = (region.size() - HEADER_LEN) as u64;
    let header = Header::new(&region, Mode::Fill, area_len, [seed, 0, 0, 0])?;
    Header::retract(&region);
    let (start, len) = header.area();
    let mut stream = SplitMix64::new(seed);
    let mut buf = [0; CHUNK];
    for offset in (start..start + len).step_by(CHUNK) {
        let chunk = &mut buf[..CHUNK.min(start + len - offset)];
        stream.fill_bytes(chunk);
        region.write(offset, chunk);
    }
    header.publish(&region);
    Ok(header)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// From the start of the region, so that it matches a hex dump of the file.
    pub offset: u64,
    pub expected: u8,
    pub found: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FillReport {
    pub bytes: u64,
    pub first_mismatch: Option<Mismatch>,
}

impl fmt::Display for FillReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.first_mismatch {
            None => write!(f, "OK: all {} bytes match", self.bytes),
            Some(Mismatch { offset, expected, found }) => {
                write!(f, "MISMATCH at offset {offset:#x}: expected {expected:#04x}, found {found:#04x}")
            }
        }
    }
}

/// Checks that a filled region holds the stream of `seed`.
pub fn check(region: Region<'_>, seed: u64) -> Result<FillReport, LayoutError> {
    let header = Header::expect(&region, Mode::Fill)?;
    let (start, len) = header.area();
    let mut stream = SplitMix64::new(seed);
    let (mut expected, mut found) = ([0; CHUNK], [0; CHUNK]);
    for offset in (start..start + len).step_by(CHUNK) {
        let n = CHUNK.min(start + len - offset);
        stream.fill_bytes(&mut expected[..n]);
        region.read(offset, &mut found[..n]);
        if expected[..n] != found[..n] {
            let i = (0..n).find(|&i| expected[i] != found[i]).expect("the chunks differ");
            let mismatch = Mismatch { offset: (offset + i) as u64, expected: expected[i], found: found[i] };
            return Ok(FillReport { bytes: header.area_len, first_mismatch: Some(mismatch) });
        }
    }
    Ok(FillReport { bytes: header.area_len, first_mismatch: None })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::TestMemory;

    #[test]
    fn fill_then_check() {
        // Not a whole number of chunks or words: the tail is covered too.
        let mut mem = TestMemory::new(HEADER_LEN + 3 * CHUNK + 16);
        let region = mem.region().prefix(HEADER_LEN + 3 * CHUNK + 13).unwrap();
        let header = fill(region, 7).unwrap();
        assert_eq!(header.params[0], 7);
        let report = check(region, 7).unwrap();
        assert_eq!(report, FillReport { bytes: 3 * CHUNK as u64 + 13, first_mismatch: None });
        assert!(check(region, 8).unwrap().first_mismatch.is_some());
    }

    #[test]
    fn flipped_byte_is_found_at_its_offset() {
        let mut mem = TestMemory::new(HEADER_LEN + 4 * CHUNK);
        let region = mem.region();
        fill(region, 1).unwrap();
        for offset in [HEADER_LEN, HEADER_LEN + CHUNK + 5, region.size() - 1] {
            let mut b = [0];
            region.read(offset, &mut b);
            region.write(offset, &[!b[0]]);
            let mismatch = check(region, 1).unwrap().first_mismatch;
            let want = Mismatch { offset: offset as u64, expected: b[0], found: !b[0] };
            assert_eq!(mismatch, Some(want));
            region.write(offset, &b);
        }
        assert_eq!(check(region, 1).unwrap().first_mismatch, None);
    }

    #[test]
    fn check_needs_a_filled_region() {
        let mut mem = TestMemory::new(HEADER_LEN);
        assert_eq!(check(mem.region(), 1), Err(LayoutError::BadMagic(0)));
        // An empty area is a degenerate but valid fill.
        fill(mem.region(), 1).unwrap();
        assert_eq!(check(mem.region(), 1).unwrap().bytes, 0);
    }
}
