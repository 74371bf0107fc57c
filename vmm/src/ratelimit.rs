//! Bounded logging of what the guest can make happen again and again.
//!
//! A guest can touch an unclaimed port, rewrite a BAR or hit a register
//! millions of times a second. Each source of such messages (a device, a
//! bus) owns a [`LogLimit`]: at most [`LogLimit::PER_SECOND`] of its messages
//! are logged per second; the others are counted, and the count is reported
//! with the next message that gets through, or by [`LogLimit::flush`] when
//! the VM ends. Warnings and errors have a budget of their own: a flood of
//! routine messages must not hide the one that says something went wrong.

use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct State {
    window_start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

/// The log budget of one source of guest-triggered messages.
#[derive(Debug, Default)]
pub struct LogLimit {
    name: String,
    /// Warnings and errors, then the other levels.
    state: [Mutex<State>; 2],
}

impl LogLimit {
    /// Messages logged per second and source; the rest are counted.
    pub const PER_SECOND: u32 = 5;

    /// `name` says whose messages these are, in the summary that [`LogLimit::flush`] logs.
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into(), state: Default::default() }
    }

    fn state(&self, level: log::Level) -> &Mutex<State> {
        &self.state[usize::from(level > log::Level::Warn)]
    }

    /// `Some(n)` if a message of `level` may be logged now, `n` being how
    /// many of its class (warnings and errors, or the rest) were held back
    /// since the last one that was; `None` if it must be dropped.
    pub fn admit(&self, level: log::Level) -> Option<u64> {
        self.admit_at(level, Instant::now())
    }

    fn admit_at(&self, level: log::Level, now: Instant) -> Option<u64> {
        let mut s = self.state(level).lock().unwrap_or_else(|e| e.into_inner());
        if s.window_start.is_none_or(|start| now.duration_since(start) >= WINDOW) {
            s.window_start = Some(now);
            s.logged = 0;
        }
        if s.logged < Self::PER_SECOND {
            s.logged += 1;
            Some(std::mem::take(&mut s.suppressed))
        } else {
            s.suppressed += 1;
            None
        }
    }

    /// Logs how many messages were held back since the last one logged, if any.
    pub fn flush(&self) {
        for (state, what) in self.state.iter().zip(["warnings", "messages"]) {
            let suppressed = std::mem::take(&mut state.lock().unwrap_or_else(|e| e.into_inner()).suppressed);
            if suppressed > 0 {
                log::warn!("{}: {suppressed} more {what} like the last ones were not logged", self.name);
            }
        }
    }
}

/// Logs through a [`LogLimit`]: `limited!(limit, Level::Warn, "format", args...)`.
/// Nothing is formatted or counted for a level the logger does not show.
#[macro_export]
macro_rules! limited {
    ($limit:expr, $level:expr, $($arg:tt)+) => {{
        let level: log::Level = $level;
        if log::log_enabled!(level) {
            match $limit.admit(level) {
                Some(0) => log::log!(level, $($arg)+),
                Some(held) => log::log!(level, "{} ({held} like it not logged before this)", format_args!($($arg)+)),
                None => {}
            }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    use log::Level::{Debug, Info, Warn};

    #[test]
    fn admits_a_few_per_second_and_counts_the_rest() {
        let limit = LogLimit::new("test");
        let t0 = Instant::now();
        for _ in 0..LogLimit::PER_SECOND {
            assert_eq!(limit.admit_at(Info, t0), Some(0));
        }
        for i in 0..1000 {
            assert_eq!(limit.admit_at(Debug, t0 + Duration::from_millis(i % 999)), None);
        }
        // A new window: the first message carries the count of those held back.
        assert_eq!(limit.admit_at(Info, t0 + WINDOW), Some(1000));
        assert_eq!(limit.admit_at(Info, t0 + WINDOW), Some(0));
    }

    #[test]
    fn warnings_get_through_a_flood_of_other_messages() {
        let limit = LogLimit::new("test");
        let t0 = Instant::now();
        for _ in 0..1000 {
            limit.admit_at(Debug, t0);
        }
        for _ in 0..LogLimit::PER_SECOND {
            assert_eq!(limit.admit_at(Warn, t0), Some(0));
        }
        assert_eq!(limit.admit_at(Warn, t0), None);
        assert_eq!(limit.admit_at(Warn, t0 + WINDOW), Some(1));
        assert_eq!(limit.admit_at(Debug, t0 + WINDOW), Some(1000 - u64::from(LogLimit::PER_SECOND)));
    }
}
