//! Clock: the host publishes its real-time clock, so that a guest can
//! compare its own with it through memory rather than through a console
//! or a socket, whose delays are larger than the differences that matter.
//!
//! Header parameters: all 0. The area is one page:
//!
//! ```text
//! area + 0x000  host_ns: u64, the host's CLOCK_REALTIME in ns since the
//!               epoch, stored (release) by the publisher about every
//!               PUBLISH_EVERY; 0 until its first store
//! area + 0x040  done: u64, set to 1 (release) by a reader that has what it
//!               needs; the publisher then stops
//! ```
//!
//! A reader that spins on `host_ns` and reads its own clock as soon as the
//! value changes sees the two clocks' difference plus the time the store
//! took to reach it: at least the true difference, and within
//! microseconds of it unless something interrupted the reader.

use core::sync::atomic::AtomicU64;
use core::sync::atomic::Ordering::{Acquire, Release};

use crate::{Header, LayoutError, Mode, Region};

pub const AREA_LEN: usize = 4096;
/// How often the host publishes: often enough for thousands of readings a
/// second, rarely enough to leave a small host's cores to the vCPUs.
pub const PUBLISH_EVERY: core::time::Duration = core::time::Duration::from_millis(1);

const HOST_NS: usize = 0x000;
const DONE: usize = 0x040;

/// The clock area of a region.
#[derive(Clone, Copy, Debug)]
pub struct Clock<'a> {
    region: Region<'a>,
    area: usize,
}

impl<'a> Clock<'a> {
    /// Formats `region` for a publisher that has not published yet.
    pub fn format(region: Region<'a>) -> Result<Self, LayoutError> {
        let area = Header::format_fixed(&region, Mode::Clock, AREA_LEN, &[HOST_NS, DONE])?;
        Ok(Self { region, area })
    }

    pub fn open(region: Region<'a>) -> Result<Self, LayoutError> {
        let area = Header::open_fixed(&region, Mode::Clock, AREA_LEN, "the clock area is not one page")?;
        Ok(Self { region, area })
    }

    fn u64(&self, field: usize) -> &'a AtomicU64 {
        self.region.u64(self.area + field)
    }

    /// The host's clock as last published, 0 if it was not yet.
    pub fn host_ns(&self) -> u64 {
        self.u64(HOST_NS).load(Acquire)
    }

    pub fn publish(&self, host_ns: u64) {
        self.u64(HOST_NS).store(host_ns, Release);
    }

    /// Tells the publisher that this reader is done.
    pub fn finish(&self) {
        self.u64(DONE).store(1, Release);
    }

    pub fn finished(&self) -> bool {
        self.u64(DONE).load(Acquire) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HEADER_LEN;
    use crate::region::TestMemory;

    #[test]
    fn a_reader_sees_what_was_published_and_the_publisher_its_finish() {
        let mut mem = TestMemory::new(HEADER_LEN + AREA_LEN);
        let region = mem.region();
        assert!(Clock::open(region).is_err());
        let host = Clock::format(region).unwrap();
        let guest = Clock::open(region).unwrap();
        assert_eq!(guest.host_ns(), 0);
        host.publish(1_700_000_000_123_456_789);
        assert_eq!(guest.host_ns(), 1_700_000_000_123_456_789);
        assert!(!host.finished());
        guest.finish();
        assert!(host.finished());
        // A new publisher starts with no reader done.
        assert!(!Clock::format(region).unwrap().finished());
    }

    #[test]
    fn the_area_must_be_one_page() {
        let mut mem = TestMemory::new(HEADER_LEN + AREA_LEN);
        let region = mem.region();
        Header::new(&region, Mode::Clock, 64, [0; 4]).unwrap().publish(&region);
        assert!(matches!(Clock::open(region), Err(LayoutError::BadGeometry(_))));
    }
}
