//! The header at offset 0: what the region holds and where.
//!
//! ```text
//! offset  size  field
//! 0x00    8     magic "KVMSHMEM", stored last with release ordering: it
//!               publishes every other field and the mode's initial state
//! 0x08    4     version
//! 0x0c    4     mode (see Mode)
//! 0x10    8     size of the region as the formatter saw it
//! 0x18    8     offset of the mode's area
//! 0x20    8     length of the mode's area
//! 0x28    32    four mode parameters (see each mode's module)
//! ```
//! The header owns the whole first page, so every area starts page-aligned
//! and no area shares a cache line with it.
//!
//! One mode at a time: a new protocol is a new mode with its own area and
//! parameters, and needs no new version.

use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use crate::{LayoutError, Region};

pub const MAGIC: u64 = u64::from_le_bytes(*b"KVMSHMEM");
pub const VERSION: u32 = 1;
pub const HEADER_LEN: usize = 4096;
pub const PARAMS: usize = 4;

const OFF_MAGIC: usize = 0x00;
const OFF_VERSION: usize = 0x08;
const OFF_MODE: usize = 0x0c;
const OFF_SIZE: usize = 0x10;
const OFF_AREA_OFFSET: usize = 0x18;
const OFF_AREA_LEN: usize = 0x20;
const OFF_PARAMS: usize = 0x28;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Mode {
    Records = 1,
    Fill = 2,
    Echo = 3,
    Stream = 4,
    Clock = 5,
}

impl Mode {
    fn from_u32(m: u32) -> Option<Self> {
        [Self::Records, Self::Fill, Self::Echo, Self::Stream, Self::Clock].into_iter().find(|mode| *mode as u32 == m)
    }

    /// What the area holds, for messages.
    fn area_name(self) -> &'static str {
        match self {
            Self::Records => "the records area",
            Self::Fill => "the fill area",
            Self::Echo => "the echo mailbox",
            Self::Stream => "the stream ring",
            Self::Clock => "the clock area",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Records => "records",
            Self::Fill => "fill",
            Self::Echo => "echo",
            Self::Stream => "stream",
            Self::Clock => "clock",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub mode: Mode,
    pub size: u64,
    pub area_offset: u64,
    pub area_len: u64,
    pub params: [u64; PARAMS],
}

impl Header {
    /// A header for `mode` covering all of `region`, its area starting right
    /// after the header page.
    pub(crate) fn new(
        region: &Region<'_>,
        mode: Mode,
        area_len: u64,
        params: [u64; PARAMS],
    ) -> Result<Self, LayoutError> {
        let header = Self { mode, size: region.size() as u64, area_offset: HEADER_LEN as u64, area_len, params };
        let needed = header.area_offset.saturating_add(area_len);
        if needed > header.size {
            return Err(LayoutError::TooSmall { what: mode.area_name(), needed, available: header.size });
        }
        Ok(header)
    }

    /// Reads and checks the header: the magic, version and mode are known and
    /// the area lies inside both the formatted size and this mapping.
    pub fn read(region: &Region<'_>) -> Result<Self, LayoutError> {
        let magic = region.u64(OFF_MAGIC).load(Acquire);
        if magic != MAGIC {
            return Err(LayoutError::BadMagic(magic));
        }
        let version = region.u32(OFF_VERSION).load(Relaxed);
        if version != VERSION {
            return Err(LayoutError::BadVersion(version));
        }
        let mode = region.u32(OFF_MODE).load(Relaxed);
        let mode = Mode::from_u32(mode).ok_or(LayoutError::UnknownMode(mode))?;
        let header = Self {
            mode,
            size: region.u64(OFF_SIZE).load(Relaxed),
            area_offset: region.u64(OFF_AREA_OFFSET).load(Relaxed),
            area_len: region.u64(OFF_AREA_LEN).load(Relaxed),
            params: core::array::from_fn(|i| region.u64(OFF_PARAMS + 8 * i).load(Relaxed)),
        };
        let mapped = region.size() as u64;
        if header.size > mapped {
            return Err(LayoutError::SizeMismatch { header: header.size, mapped });
        }
        if header.area_offset < HEADER_LEN as u64 || !header.area_offset.is_multiple_of(64) {
            return Err(LayoutError::BadGeometry("the area overlaps the header or is not cache-line aligned"));
        }
        if header.area_offset.checked_add(header.area_len).is_none_or(|end| end > header.size) {
            return Err(LayoutError::BadGeometry("the area ends beyond the region"));
        }
        Ok(header)
    }

    /// Reads the header and checks that the region holds `mode`.
    pub fn expect(region: &Region<'_>, mode: Mode) -> Result<Self, LayoutError> {
        let header = Self::read(region)?;
        if header.mode != mode {
            return Err(LayoutError::WrongMode { expected: mode, found: header.mode });
        }
        Ok(header)
    }

    /// The first step of formatting: a reader that looks while the mode's
    /// area is being set up finds no magic instead of a stale header.
    pub(crate) fn retract(region: &Region<'_>) {
        region.u64(OFF_MAGIC).store(0, Relaxed);
    }

    /// The last step of formatting: writes the fields, then the magic with
    /// release ordering, so a reader that acquires the magic sees them and
    /// every store the formatter made before.
    pub(crate) fn publish(&self, region: &Region<'_>) {
        region.u32(OFF_VERSION).store(VERSION, Relaxed);
        region.u32(OFF_MODE).store(self.mode as u32, Relaxed);
        region.u64(OFF_SIZE).store(self.size, Relaxed);
        region.u64(OFF_AREA_OFFSET).store(self.area_offset, Relaxed);
        region.u64(OFF_AREA_LEN).store(self.area_len, Relaxed);
        for (i, p) in self.params.iter().enumerate() {
            region.u64(OFF_PARAMS + 8 * i).store(*p, Relaxed);
        }
        region.u64(OFF_MAGIC).store(MAGIC, Release);
    }

    /// Formats `region` for `mode` with an area of `area_len` bytes after
    /// the header, no parameters, and the u64 `fields` of the area zeroed;
    /// returns the area's offset. For the modes whose area has one size.
    pub(crate) fn format_fixed(
        region: &Region<'_>,
        mode: Mode,
        area_len: usize,
        fields: &[usize],
    ) -> Result<usize, LayoutError> {
        let header = Self::new(region, mode, area_len as u64, [0; PARAMS])?;
        Self::retract(region);
        let area = header.area().0;
        for field in fields {
            region.u64(area + field).store(0, Relaxed);
        }
        header.publish(region);
        Ok(area)
    }

    /// Opens what [`Self::format_fixed`] formatted: the region must hold
    /// `mode` with an area of `area_len` bytes (else `BadGeometry(wrong_size)`).
    /// Returns the area's offset.
    pub(crate) fn open_fixed(
        region: &Region<'_>,
        mode: Mode,
        area_len: usize,
        wrong_size: &'static str,
    ) -> Result<usize, LayoutError> {
        let header = Self::expect(region, mode)?;
        if header.area_len != area_len as u64 {
            return Err(LayoutError::BadGeometry(wrong_size));
        }
        Ok(header.area().0)
    }

    /// The area as a (offset, length) pair of usizes; read() has checked that
    /// it lies inside the mapping, so the conversions cannot fail.
    pub(crate) fn area(&self) -> (usize, usize) {
        (self.area_offset as usize, self.area_len as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::TestMemory;

    #[test]
    fn round_trip() {
        let mut mem = TestMemory::new(3 * HEADER_LEN);
        let region = mem.region();
        assert_eq!(Header::read(&region), Err(LayoutError::BadMagic(0)));
        let h = Header::new(&region, Mode::Echo, HEADER_LEN as u64, [1, 2, 3, 4]).unwrap();
        h.publish(&region);
        assert_eq!(Header::read(&region), Ok(h));
        assert_eq!(
            Header::expect(&region, Mode::Fill),
            Err(LayoutError::WrongMode { expected: Mode::Fill, found: Mode::Echo })
        );
        Header::retract(&region);
        assert_eq!(Header::read(&region), Err(LayoutError::BadMagic(0)));
    }

    #[test]
    fn rejects_what_it_cannot_trust() {
        let mut mem = TestMemory::new(2 * HEADER_LEN);
        let region = mem.region();
        let h = Header::new(&region, Mode::Fill, HEADER_LEN as u64, [0; PARAMS]).unwrap();
        h.publish(&region);

        region.u32(OFF_VERSION).store(2, Relaxed);
        assert_eq!(Header::read(&region), Err(LayoutError::BadVersion(2)));
        h.publish(&region);
        region.u32(OFF_MODE).store(6, Relaxed);
        assert_eq!(Header::read(&region), Err(LayoutError::UnknownMode(6)));

        // Formatted by a side that mapped more than this one does.
        let half = region.prefix(HEADER_LEN).unwrap();
        h.publish(&region);
        let mapped = HEADER_LEN as u64;
        assert_eq!(Header::read(&half), Err(LayoutError::SizeMismatch { header: 2 * mapped, mapped }));

        region.u64(OFF_AREA_LEN).store(u64::MAX, Relaxed);
        assert!(matches!(Header::read(&region), Err(LayoutError::BadGeometry(_))));
    }

    #[test]
    fn area_must_fit() {
        let mut mem = TestMemory::new(2 * HEADER_LEN);
        let region = mem.region();
        let e = Header::new(&region, Mode::Echo, HEADER_LEN as u64 + 1, [0; PARAMS]).unwrap_err();
        assert_eq!(
            e,
            LayoutError::TooSmall {
                what: "the echo mailbox",
                needed: 2 * HEADER_LEN as u64 + 1,
                available: 2 * HEADER_LEN as u64
            }
        );
    }
}
