//! The clock's publisher: stores the host's real-time clock into the
//! region until a reader says it is done.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::Error;
use crate::Region;
use crate::clock::{Clock, PUBLISH_EVERY};

/// Formats `region` as a clock and publishes the host's real-time clock
/// every [`PUBLISH_EVERY`] until a reader finishes or `wait` passes.
/// Returns how many times it published.
pub(super) fn publish(region: Region<'_>, wait: Duration) -> Result<u64, Error> {
    let clock = Clock::format(region)?;
    let start = Instant::now();
    let mut published = 0;
    while !clock.finished() {
        // A file shrunk under the mapping reads as zeros: no reader will finish.
        if super::sigbus::faulted_at(region.base()) {
            return Err(Error::MappingLost);
        }
        if start.elapsed() > wait {
            return Err(Error::NoClockReader { waited: wait, published });
        }
        clock.publish(realtime_ns());
        published += 1;
        std::thread::sleep(PUBLISH_EVERY);
    }
    Ok(published)
}

fn realtime_ns() -> u64 {
    // A host clock before 1970 or after 2554 is not one to compare with.
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{Detail, MappedFile, temp_file};

    #[test]
    fn publishes_the_real_time_until_the_reader_is_done() {
        let path = temp_file("clock", 1 << 16);
        let guest = MappedFile::open(&path).unwrap();
        std::thread::scope(|s| {
            let publisher = s.spawn(|| MappedFile::open(&path).unwrap().publish_clock(Duration::from_secs(60)));
            let clock = loop {
                match Clock::open(guest.region()) {
                    Ok(clock) if clock.host_ns() != 0 => break clock,
                    _ => std::thread::sleep(PUBLISH_EVERY),
                }
            };
            let seen = clock.host_ns().abs_diff(realtime_ns());
            assert!(seen < Duration::from_secs(10).as_nanos() as u64, "{seen} ns off the clock");
            clock.finish();
            assert!(publisher.join().unwrap().unwrap() >= 1);
        });
        let summary = guest.inspect().unwrap();
        assert!(matches!(summary.detail, Detail::Clock { host_ns: 1.., finished: true }), "{summary}");
    }

    #[test]
    fn a_file_that_shrinks_under_the_publisher_stops_it_at_once() {
        let path = temp_file("clock-shrinks", 1 << 16);
        let file = MappedFile::open(&path).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(0).unwrap();
            });
            let start = std::time::Instant::now();
            let e = file.publish_clock(Duration::from_secs(60)).unwrap_err();
            assert!(matches!(e, Error::Shrunk { now: Some(0), .. }), "{e}");
            assert!(start.elapsed() < Duration::from_secs(10), "gave up after {:?}", start.elapsed());
        });
    }

    #[test]
    fn without_a_reader_the_publisher_gives_up() {
        let path = temp_file("clock-alone", 1 << 16);
        let e = MappedFile::open(&path).unwrap().publish_clock(Duration::from_millis(20)).unwrap_err();
        assert!(matches!(e, Error::NoClockReader { published: 1.., .. }), "{e}");
    }
}
