//! Ping-pong: two peers on one ivshmem server take turns, each writing
//! data for the other and ringing it, for `rounds` rounds. It shows data
//! and doorbell rings going both ways between two VMs (or a VM and a host
//! process), with no polling: each side sleeps until it is rung.
//!
//! No header: the two sides start at once and neither may format what the
//! other already uses, so the area must start zeroed (a new file). Each
//! side writes only its own half:
//!
//! ```text
//! 0x1000 + 0x40 × side   round: u64, the last round this side completed
//! 0x1100 + 0x80 × side   data: 64 bytes this side wrote in that round
//! ```
//! Side 0 (the lead) writes round k, rings; side 1 sees it, checks the
//! lead's data, writes its own round k, rings back; the lead checks that,
//! and goes on with round k + 1.

use core::fmt;
use core::sync::atomic::Ordering::{Acquire, Release};
use core::time::Duration;

use crate::Region;
use crate::echo::Wake;
use crate::prng::SplitMix64;

const ROUND: usize = 0x1000;
const DATA: usize = 0x1100;
const DATA_LEN: usize = 64;
/// How long a side waits for the other in one round; in the first, for as
/// long as a VM may take to boot (the other side may start later).
pub const ROUND_TIMEOUT: Duration = Duration::from_secs(30);
pub const FIRST_ROUND_TIMEOUT: Duration = Duration::from_secs(600);
const WAKE_EVERY: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PingPongError {
    /// The region is smaller than the ping-pong area.
    TooSmall,
    /// The other side did not complete `round` in time.
    Timeout { round: u64 },
    /// The other side's data of `round` was not what it should be.
    BadData { round: u64 },
}

impl fmt::Display for PingPongError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooSmall => write!(f, "the region has no room for the ping-pong area"),
            Self::Timeout { round } => {
                write!(f, "the other side did not complete round {round} within {ROUND_TIMEOUT:?}")
            }
            Self::BadData { round } => write!(f, "the other side's data of round {round} is wrong"),
        }
    }
}

/// The data `side` writes in `round`.
fn data(side: usize, round: u64) -> [u8; DATA_LEN] {
    let mut buf = [0; DATA_LEN];
    SplitMix64::new(round << 1 | side as u64).fill_bytes(&mut buf);
    buf
}

/// Plays `rounds` rounds as `side` (0 leads, 1 follows) against `peer`,
/// waiting and ringing with `wake`. `clock` gives the time elapsed since
/// some fixed point (the guest and the host measure time differently). The
/// lead hands each round trip (from its ring to the answer) to `round_trip`.
pub fn play(
    region: Region<'_>,
    side: usize,
    peer: u16,
    rounds: u64,
    wake: &mut impl Wake,
    clock: impl Fn() -> Duration,
    round_trip: &mut impl FnMut(Duration),
) -> Result<(), PingPongError> {
    if region.size() < DATA + 2 * 0x80 || side > 1 {
        return Err(PingPongError::TooSmall);
    }
    let other = 1 - side;
    // The lead opens each round and waits for the answer to the previous
    // one (and, at the end, to the last); the follower answers each round.
    let awaited = |round: u64| if side == 0 { round - 1 } else { round };
    let mut rang = clock();
    for round in 1..=rounds + (side == 0) as u64 {
        let done = awaited(round);
        await_round(region, other, done, wake, &clock)?;
        if side == 0 && done > 0 {
            round_trip(clock() - rang);
        }
        if round <= rounds {
            region.write(DATA + 0x80 * side, &data(side, round));
            // Release: the other side that acquires the round sees the data.
            region.u64(ROUND + 0x40 * side).store(round, Release);
            rang = clock();
            wake.ring(peer);
        }
    }
    Ok(())
}

/// Waits until `side` has completed `round` (0: nothing to wait for) and
/// checks its data.
fn await_round(
    region: Region<'_>,
    side: usize,
    round: u64,
    wake: &mut impl Wake,
    clock: &impl Fn() -> Duration,
) -> Result<(), PingPongError> {
    if round == 0 {
        return Ok(());
    }
    let start = clock();
    let timeout = if round == 1 { FIRST_ROUND_TIMEOUT } else { ROUND_TIMEOUT };
    while region.u64(ROUND + 0x40 * side).load(Acquire) < round {
        if clock() - start > timeout {
            return Err(PingPongError::Timeout { round });
        }
        wake.wait(WAKE_EVERY);
    }
    let mut got = [0; DATA_LEN];
    region.read(DATA + 0x80 * side, &mut got);
    if got != data(side, round) {
        return Err(PingPongError::BadData { round });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::echo::Polling;

    #[test]
    fn two_sides_play_every_round() {
        let mut memory = vec![0u64; 0x2000 / 8];
        // SAFETY: the vector lives until the end of the test; only Region accesses it.
        let region = unsafe { Region::new(memory.as_mut_ptr().cast(), 0x2000) }.unwrap();
        let start = Instant::now();
        let mut trips = 0;
        std::thread::scope(|s| {
            let follower = s.spawn(|| play(region, 1, 0, 500, &mut Polling, || start.elapsed(), &mut |_| {}));
            assert_eq!(play(region, 0, 1, 500, &mut Polling, || start.elapsed(), &mut |_| trips += 1), Ok(()));
            assert_eq!(follower.join().unwrap(), Ok(()));
        });
        assert_eq!(trips, 500, "the lead timed every round");
    }

    #[test]
    fn a_wrong_answer_is_caught() {
        let mut memory = vec![0u64; 0x2000 / 8];
        // SAFETY: as above.
        let region = unsafe { Region::new(memory.as_mut_ptr().cast(), 0x2000) }.unwrap();
        // The follower claims round 1 with the wrong data.
        region.write(DATA + 0x80, &[7; DATA_LEN]);
        region.u64(ROUND + 0x40).store(1, Release);
        let start = Instant::now();
        let result = play(region, 0, 1, 1, &mut Polling, || start.elapsed(), &mut |_| {});
        assert_eq!(result, Err(PingPongError::BadData { round: 1 }));
    }
}
