//! How much of its time a process that never leaves user space gets: it
//! spins reading the clock, and every jump between two reads in a row is
//! time it stood still while something else ran (the guest kernel's timer
//! ticks and interrupts, the host's). The scale benchmark's writers lose
//! the same share; the demo measures it in the guest and the benchmark on
//! a host thread, with this one loop.
//!
//! Where guest kernel code is emulated, each guest tick costs milliseconds,
//! so the guest's figure is mostly its ticks: hence the two classes, the
//! jumps of a millisecond or more and the shorter ones.

use core::fmt;

/// A jump of the clock longer than this between two reads is an
/// interruption; reading the clock itself takes tens of nanoseconds.
pub const GAP_NS: u64 = 2_000;
/// Interruptions this long or longer are counted apart from the others.
pub const LONG_GAP_NS: u64 = 1_000_000;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Interruptions {
    /// The time spun, interruptions included.
    pub spun_ns: u64,
    /// Interruptions shorter than [`LONG_GAP_NS`]: how many, and their time.
    pub short: (u64, u64),
    /// Interruptions of [`LONG_GAP_NS`] or more: how many, and their time.
    pub long: (u64, u64),
    pub longest_ns: u64,
}

impl Interruptions {
    /// Spins for `duration_ns` on `now`, a monotonic clock in nanoseconds.
    pub fn measure(duration_ns: u64, mut now: impl FnMut() -> u64) -> Self {
        let start = now();
        let mut last = start;
        let mut seen = Self::default();
        while last - start < duration_ns {
            let t = now();
            let gap = t.saturating_sub(last);
            if gap >= LONG_GAP_NS {
                seen.long = (seen.long.0 + 1, seen.long.1 + gap);
            } else if gap > GAP_NS {
                seen.short = (seen.short.0 + 1, seen.short.1 + gap);
            }
            seen.longest_ns = seen.longest_ns.max(gap);
            last = t;
        }
        seen.spun_ns = last - start;
        seen
    }

    /// The share of the time spun that went to interruptions, 0 to 1.
    pub fn lost(&self) -> f64 {
        (self.short.1 + self.long.1) as f64 / self.spun_ns.max(1) as f64
    }

    /// The share that went to interruptions of [`LONG_GAP_NS`] or more.
    pub fn lost_long(&self) -> f64 {
        self.long.1 as f64 / self.spun_ns.max(1) as f64
    }

    pub fn long_per_second(&self) -> f64 {
        self.long.0 as f64 * 1e9 / self.spun_ns.max(1) as f64
    }

    pub fn long_mean_ms(&self) -> f64 {
        self.long.1 as f64 / self.long.0.max(1) as f64 / 1e6
    }
}

/// "lost 11.7% of 5.0 s: 12.4 a second of 1 ms or more (2.71 ms on
/// average, 9.9%), 310 a second shorter; the longest 46.2 ms"
impl fmt::Display for Interruptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per_second = |n: u64| n as f64 * 1e9 / self.spun_ns.max(1) as f64;
        write!(
            f,
            "lost {:.1}% of {:.1} s: {:.1} a second of 1 ms or more ({:.2} ms on average, {:.1}%), \
             {:.0} a second shorter; the longest {:.1} ms",
            self.lost() * 100.0,
            self.spun_ns as f64 / 1e9,
            self.long_per_second(),
            self.long_mean_ms(),
            self.lost_long() * 100.0,
            per_second(self.short.0),
            self.longest_ns as f64 / 1e6,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_of_the_clock_are_the_time_lost() {
        // A clock that advances 100 ns a read, with a 3 ms jump at the
        // 1,000th read and a 10 us one at the 2,000th.
        let mut reads = 0u64;
        let mut t = 0u64;
        let seen = Interruptions::measure(10_000_000, || {
            reads += 1;
            t += match reads {
                1000 => 3_000_000,
                2000 => 10_000,
                _ => 100,
            };
            t
        });
        assert_eq!(seen.long, (1, 3_000_000));
        assert_eq!(seen.short, (1, 10_000));
        assert_eq!(seen.longest_ns, 3_000_000);
        assert!(seen.spun_ns >= 10_000_000 && seen.spun_ns < 10_000_200, "{}", seen.spun_ns);
        assert!((seen.lost() - 0.301).abs() < 0.001, "{}", seen.lost());
        assert!((seen.long_per_second() - 100.0).abs() < 0.1);
        assert!(seen.to_string().starts_with("lost 30.1% of 0.0 s: 100.0 a second of 1 ms or more (3.00 ms"));
    }
}
