// SPDX-License-Identifier: GPL-2.0

//! Doorbell interrupts of an ivshmem-doorbell device (one with an MSI-X BAR).
//!
//! Each MSI-X vector's interrupt is counted, wakes the processes waiting in `KVMSHM_IOC_WAIT`
//! and signals the eventfd that user space registered for the vector with
//! `KVMSHM_IOC_SET_EVENTFD` (as VFIO's `VFIO_DEVICE_SET_IRQS` does), so that it can wait with
//! `poll()` or `epoll` too. Counting makes waits lossless: a waiter compares the counts with
//! those it saw last, so an interrupt that arrives between two waits is seen by the second.
//!
//! The kernel crate allocates the vectors (`alloc_irq_vectors`), but its `irq::Registration`
//! borrows the allocation, which therefore cannot live in the same driver data; so the
//! handlers are requested with `request_irq()` directly ([`Interrupts`]).

use core::ptr::NonNull;
use kernel::{
    bindings,
    device::Bound,
    error::from_err_ptr,
    ffi::{c_int, c_void},
    new_condvar, new_spinlock_irq, pci,
    prelude::*,
    sync::{
        atomic::{Atomic, Relaxed},
        Arc, CondVar, CondVarTimeoutResult, SpinLockIrq,
    },
    time::{Jiffies, msecs_to_jiffies},
};

/// The most vectors a device gets: `KVMSHM_IOC_WAIT` takes them as a 64-bit mask.
pub(crate) const MAX_VECTORS: usize = 64;

/// A reference to an eventfd (`struct eventfd_ctx`), put when dropped.
///
/// # Invariants
///
/// The pointer holds a reference taken by `eventfd_ctx_fdget()`.
struct EventFdRef(NonNull<bindings::eventfd_ctx>);

// SAFETY: An eventfd context is reference counted and may be signalled and put from any
// thread (and from interrupt context).
unsafe impl Send for EventFdRef {}

impl EventFdRef {
    /// The eventfd of file descriptor `fd` of the calling process.
    fn get(fd: i32) -> Result<Self> {
        // SAFETY: `eventfd_ctx_fdget()` accepts any integer: it returns a new reference to the
        // eventfd behind the descriptor, or an error pointer.
        let ctx = from_err_ptr(unsafe { bindings::eventfd_ctx_fdget(fd) })?;
        // INVARIANT: `ctx` is the reference just taken.
        NonNull::new(ctx).map(Self).ok_or(EBADF)
    }

    fn signal(&self) {
        // SAFETY: By the type invariant the context is alive; `eventfd_signal_mask()` may be
        // called from interrupt context.
        unsafe { bindings::eventfd_signal_mask(self.0.as_ptr(), 0) };
    }
}

impl Drop for EventFdRef {
    fn drop(&mut self) {
        // SAFETY: By the type invariant we hold a reference, which we give back.
        unsafe { bindings::eventfd_ctx_put(self.0.as_ptr()) };
    }
}

/// What the interrupt handler and the waiters share.
struct Vectors {
    counts: KVec<u64>,
    eventfds: KVec<Option<EventFdRef>>,
    /// Set when the device goes away: waiters return `ENODEV`.
    gone: bool,
}

/// The interrupt state of one device.
#[pin_data]
pub(crate) struct Doorbell {
    vectors: usize,
    /// Taken by the interrupt handler, so with interrupts off.
    #[pin]
    state: SpinLockIrq<Vectors>,
    #[pin]
    changed: CondVar,
}

impl Doorbell {
    pub(crate) fn new(vectors: usize) -> Result<Arc<Self>> {
        let mut counts = KVec::with_capacity(vectors, GFP_KERNEL)?;
        let mut eventfds = KVec::with_capacity(vectors, GFP_KERNEL)?;
        for _ in 0..vectors {
            counts.push(0, GFP_KERNEL)?;
            eventfds.push(None, GFP_KERNEL)?;
        }
        Arc::pin_init(
            try_pin_init!(Self {
                vectors,
                state <- new_spinlock_irq!(Vectors { counts, eventfds, gone: false }),
                changed <- new_condvar!(),
            }),
            GFP_KERNEL,
        )
    }

    pub(crate) fn vectors(&self) -> usize {
        self.vectors
    }

    /// Vector `v` fired: called by the interrupt handler.
    fn interrupt(&self, v: usize) {
        let mut state = self.state.lock();
        if let Some(count) = state.counts.get_mut(v) {
            *count += 1;
        }
        if let Some(Some(eventfd)) = state.eventfds.get(v) {
            eventfd.signal();
        }
        drop(state);
        self.changed.notify_all();
    }

    /// The interrupt counts now, from which a new file's waits start.
    pub(crate) fn counts(&self) -> Result<KVec<Atomic<u64>>> {
        let mut counts = KVec::with_capacity(self.vectors, GFP_KERNEL)?;
        let state = self.state.lock();
        for &c in state.counts.iter() {
            // Within the capacity reserved above: no allocation under the spinlock.
            counts.push_within_capacity(Atomic::new(c)).map_err(|_| ENOMEM)?;
        }
        Ok(counts)
    }

    /// Signals the eventfd of `fd` on each interrupt of vector `v` from now on, in place of the
    /// one registered before; `fd` -1 registers none.
    pub(crate) fn set_eventfd(&self, v: usize, fd: i32) -> Result {
        if v >= self.vectors {
            return Err(EINVAL);
        }
        let new = if fd == -1 { None } else { Some(EventFdRef::get(fd)?) };
        let mut state = self.state.lock();
        if state.gone {
            return Err(ENODEV);
        }
        let old = core::mem::replace(&mut state.eventfds[v], new);
        drop(state);
        // Put outside the lock.
        drop(old);
        Ok(())
    }

    /// Waits up to `timeout_ms` (`u32::MAX`: without limit) for an interrupt of a vector in
    /// `mask` (0: all) that `seen` does not count yet; returns the vectors that have one and
    /// updates `seen`. (Two waits on one open file at once may both report an interrupt.)
    pub(crate) fn wait(&self, seen: &[Atomic<u64>], mask: u64, timeout_ms: u32) -> Result<u64> {
        let mask = if mask == 0 { u64::MAX } else { mask };
        // The condition variable sleeps without limit for a count of jiffies too large for it.
        let mut jiffies = if timeout_ms == u32::MAX { Jiffies::MAX } else { msecs_to_jiffies(timeout_ms) };
        let mut state = self.state.lock();
        loop {
            if state.gone {
                return Err(ENODEV);
            }
            let mut fired = 0u64;
            for (v, (&count, seen)) in state.counts.iter().zip(seen).enumerate() {
                if mask & (1 << v) != 0 && count != seen.load(Relaxed) {
                    seen.store(count, Relaxed);
                    fired |= 1 << v;
                }
            }
            if fired != 0 {
                return Ok(fired);
            }
            match self.changed.wait_interruptible_timeout(&mut state, jiffies) {
                CondVarTimeoutResult::Timeout => return Err(ETIMEDOUT),
                CondVarTimeoutResult::Signal { .. } => return Err(EINTR),
                CondVarTimeoutResult::Woken { jiffies: left } => jiffies = left,
            }
        }
    }

    /// The device is going away: waiters return `ENODEV`, and the eventfds are let go.
    pub(crate) fn close(&self) {
        let mut state = self.state.lock();
        state.gone = true;
        let eventfds = core::mem::take(&mut state.eventfds);
        drop(state);
        drop(eventfds);
        self.changed.notify_all();
    }
}

/// The cookie of one vector's handler.
struct Cookie {
    doorbell: Arc<Doorbell>,
    vector: usize,
}

/// Handles an interrupt of one vector.
///
/// # Safety
///
/// Must only be called by the IRQ core for a handler requested by [`Interrupts::new`], with
/// the cookie it was requested with.
unsafe extern "C" fn kvmshm_irq(_irq: c_int, cookie: *mut c_void) -> bindings::irqreturn_t {
    // SAFETY: The cookie is a `Cookie` that `Interrupts` keeps until it has freed the handler
    // (see its `Drop`), so it is valid while the handler can run.
    let cookie = unsafe { &*cookie.cast::<Cookie>() };
    cookie.doorbell.interrupt(cookie.vector);
    bindings::irqreturn::IRQ_HANDLED
}

/// The device's MSI-X vectors, each with [`kvmshm_irq`] requested on it, until dropped.
///
/// # Invariants
///
/// Each `(irq, cookie)` in `handlers` is a handler requested with `request_irq()` on `irq`
/// with `cookie`'s address, not freed yet.
pub(crate) struct Interrupts<'a> {
    /// Freed (in `Drop`) before `vectors` is dropped.
    handlers: KVec<(u32, KBox<Cookie>)>,
    _vectors: pci::IrqVectorRegistration<'a>,
}

impl<'a> Interrupts<'a> {
    /// Allocates up to [`MAX_VECTORS`] MSI-X vectors of `pdev` (all it has).
    pub(crate) fn alloc(pdev: &'a pci::Device<Bound>) -> Result<pci::IrqVectorRegistration<'a>> {
        let msix = pci::IrqTypes::default().with(pci::IrqType::MsiX);
        pdev.alloc_irq_vectors(1, MAX_VECTORS as u32, msix)
    }

    /// Requests a handler on each of `vectors` that counts its interrupts in `doorbell`.
    pub(crate) fn new(vectors: pci::IrqVectorRegistration<'a>, doorbell: &Arc<Doorbell>) -> Result<Self> {
        let mut this = Self { handlers: KVec::with_capacity(vectors.len(), GFP_KERNEL)?, _vectors: vectors };
        for vector in 0..this._vectors.len() {
            let irq = kernel::irq::IrqRequest::from(this._vectors.index(vector)?).irq();
            let cookie = KBox::new(Cookie { doorbell: doorbell.clone(), vector }, GFP_KERNEL)?;
            // The cookie is in `handlers` before its handler is requested: a failure after the
            // request cannot free it under a live handler. (The box keeps its address.)
            let ptr = core::ptr::from_ref::<Cookie>(&cookie).cast_mut().cast::<c_void>();
            this.handlers.push((irq, cookie), GFP_KERNEL)?;
            // SAFETY: `irq` is a vector of this device; `kvmshm_irq` only uses the cookie, which
            // lives in `handlers` until the handler is freed. The name is static.
            let ret = unsafe { bindings::request_irq(irq, Some(kvmshm_irq), 0, c"kvmshm".as_char_ptr(), ptr) };
            if let Err(e) = kernel::error::to_result(ret) {
                // INVARIANT: only entries whose handler was requested stay in `handlers`.
                this.handlers.pop();
                return Err(e);
            }
        }
        Ok(this)
    }
}

impl Drop for Interrupts<'_> {
    fn drop(&mut self) {
        for (irq, cookie) in self.handlers.iter() {
            let ptr = core::ptr::from_ref::<Cookie>(cookie).cast_mut().cast::<c_void>();
            // SAFETY: By the type invariant the handler is requested on `irq` with this cookie
            // and not freed yet; `free_irq()` waits for a running handler to finish.
            unsafe { bindings::free_irq(*irq, ptr) };
        }
    }
}
