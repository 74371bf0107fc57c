//! Surviving a backing file that shrinks under its mapping.
//!
//! Another process (a user's `truncate`, say) can shorten a file that this
//! process has mapped; touching a page past the new end raises `SIGBUS`,
//! which would kill the process. A [`Guard`] registers a mapping with a
//! process-wide `SIGBUS` handler. When a fault hits a registered mapping, the
//! handler replaces the whole mapping with private zero pages, so that the
//! faulting access and every later one complete (reading zeros, writing
//! nowhere), and marks the mapping as faulted. The owner then reports an
//! error ([`Guard::faulted`]) instead of results computed from zeros, and
//! loops that wait on the memory give up ([`faulted_at`]). Faults outside
//! registered mappings get the action that was installed before.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Mappings that can be registered at once; one beyond gets no protection.
const SLOTS: usize = 64;

struct Slot {
    start: AtomicUsize,
    len: AtomicUsize,
    faulted: AtomicBool,
}

impl Slot {
    /// The mapping this slot registers: none while it is free (start 0) or
    /// being filled in (start `usize::MAX`). Only loads: the signal
    /// handler uses it.
    fn live_range(&self) -> Option<std::ops::Range<usize>> {
        let start = self.start.load(Ordering::Acquire);
        let len = self.len.load(Ordering::Relaxed);
        (start != 0 && start != usize::MAX).then(|| start..start.saturating_add(len))
    }
}

static REGISTRY: [Slot; SLOTS] =
    [const { Slot { start: AtomicUsize::new(0), len: AtomicUsize::new(0), faulted: AtomicBool::new(false) } }; SLOTS];
/// The `SIGBUS` action before ours, for faults that are not ours.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

/// A mapping registered with the `SIGBUS` handler until dropped.
pub struct Guard {
    slot: Option<usize>,
}

impl Guard {
    /// Registers `len` bytes at `start`, a mapping of a shared file that the
    /// caller unmaps only after dropping the guard.
    pub fn new(start: *mut u8, len: usize) -> Self {
        install();
        let slot = REGISTRY
            .iter()
            .position(|s| s.start.compare_exchange(0, usize::MAX, Ordering::AcqRel, Ordering::Acquire).is_ok());
        if let Some(i) = slot {
            // The slot was reserved with start = MAX, which no fault matches;
            // length first, then the real start, which publishes the slot.
            REGISTRY[i].faulted.store(false, Ordering::Relaxed);
            REGISTRY[i].len.store(len, Ordering::Relaxed);
            REGISTRY[i].start.store(start as usize, Ordering::Release);
        }
        Self { slot }
    }

    /// Whether a fault hit the mapping: it then holds zeros, not the file.
    pub fn faulted(&self) -> bool {
        self.slot.is_some_and(|i| REGISTRY[i].faulted.load(Ordering::Acquire))
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            REGISTRY[i].start.store(0, Ordering::Release);
        }
    }
}

/// Whether a fault hit the registered mapping that holds `addr`.
pub fn faulted_at(addr: *const u8) -> bool {
    let addr = addr as usize;
    REGISTRY.iter().any(|s| s.live_range().is_some_and(|r| r.contains(&addr)) && s.faulted.load(Ordering::Acquire))
}

fn install() {
    PREVIOUS.get_or_init(|| {
        // SAFETY: a zeroed sigaction is a valid value; sigaction() fills
        // `previous` and installs ours, whose handler only makes
        // async-signal-safe system calls (mmap, sigaction).
        unsafe {
            let mut ours: libc::sigaction = std::mem::zeroed();
            ours.sa_sigaction = on_sigbus as *const () as usize;
            ours.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut ours.sa_mask);
            let mut previous: libc::sigaction = std::mem::zeroed();
            libc::sigaction(libc::SIGBUS, &ours, &mut previous);
            previous
        }
    });
}

extern "C" fn on_sigbus(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t; for SIGBUS si_addr is set.
    let addr = unsafe { (*info).si_addr() } as usize;
    for slot in &REGISTRY {
        let Some(range) = slot.live_range().filter(|r| r.contains(&addr)) else { continue };
        let (start, len) = (range.start, range.len());
        // SAFETY: the range is a registered mapping of this process, which
        // its owner unmaps only after unregistering it; MAP_FIXED replaces
        // all of it (no split of the mapping, which hugetlbfs would refuse)
        // with private anonymous memory. mmap is async-signal-safe.
        let p = unsafe {
            libc::mmap(
                start as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            slot.faulted.store(true, Ordering::Release);
            return;
        }
    }
    // Not ours (or the mapping could not be replaced): the previous action
    // applies when the access faults again on return.
    if let Some(previous) = PREVIOUS.get() {
        // SAFETY: restores the action saved by install(); sigaction is async-signal-safe.
        unsafe { libc::sigaction(libc::SIGBUS, previous, std::ptr::null_mut()) };
    }
}
