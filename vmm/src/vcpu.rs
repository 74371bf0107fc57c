//! The vCPU loop: runs the guest and turns its exits into device accesses,
//! until something needs the VM's attention (a reset, a shutdown, a stop
//! asked for by another thread, an error).
//!
//! | exit | outcome |
//! |---|---|
//! | port I/O, 1, 2 or 4 bytes | one access on the port bus |
//! | string port I/O (`rep ins/outs`): count × size bytes | `count` accesses of `size` bytes, all at the same port |
//! | MMIO, 1 to 8 bytes | one access on the MMIO bus |
//! | internal error | [`emulator::finish_instruction`] |
//! | shutdown, system event | [`Stop`] for the VM to judge |
//! | a signal ([`Kicker`]) | a profiler sample, or [`Stop::Kicked`] if a stop was asked for |
//! | memory fault (or `EFAULT`) | [`Error::MemoryFault`] ([`Error::Efault`]) |
//! | anything else | an error naming the exit |

use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use kvm_bindings::{KVM_MP_STATE_INIT_RECEIVED, KVM_MP_STATE_UNINITIALIZED, kvm_regs, kvm_run};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::signal::{SIGRTMIN, register_signal_handler};

use crate::device_manager::{self, DeviceManager, Request};
use crate::profile::{self, Samples};
use crate::ratelimit::LogLimit;
use crate::{emulator, lock};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("KVM {what}")]
    Kvm { what: &'static str, source: kvm_ioctls::Error },
    #[error(transparent)]
    Device(#[from] device_manager::Error),
    #[error(transparent)]
    Emulator(#[from] emulator::Error),
    #[error("the guest touched memory the host cannot provide: {size} bytes at guest physical address {gpa:#x}")]
    MemoryFault { gpa: u64, size: u64 },
    #[error("KVM_RUN could not reach the guest's memory")]
    Efault(#[source] kvm_ioctls::Error),
    #[error("the vCPU halted")]
    Halted,
    #[error("KVM could not enter the guest (hardware reason {0:#x})")]
    FailEntry(u64),
    #[error("unexpected exit from KVM: {0}")]
    UnexpectedExit(String),
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

/// Why [`Vcpu::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The guest reset itself (our guests power off that way).
    Reset,
    /// The CPU shut down (a triple fault, or a reset by that route) at `rip`.
    Shutdown { rip: u64 },
    /// Another thread asked the vCPU to stop.
    Kicked,
}

/// The signal that interrupts `KVM_RUN`: a real-time one, whose handler
/// sets `immediate_exit` in the vCPU's `kvm_run` page (see [`on_kick`]).
fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

thread_local! {
    /// The `kvm_run` page of the vCPU this thread runs, for [`on_kick`]; null
    /// on other threads and before [`Vcpu::new`] or after its drop.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// Makes the current or next `KVM_RUN` of this thread's vCPU return at once.
/// A signal alone would be lost if it landed between the vCPU loop's check
/// of its stop flag and its entry into `KVM_RUN`; `immediate_exit` is how
/// KVM closes that gap.
extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // A const-initialised thread-local without a destructor is a plain TLS
    // load: nothing is allocated or registered, so it is signal-safe.
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: a non-null KVM_RUN is the kvm_run page of the Vcpu that
        // this thread owns (Vcpu is !Send): set in Vcpu::new, cleared in its
        // Drop before the page is unmapped, so the page is mapped. The
        // handler may interrupt kvm-ioctls code of this thread that holds a
        // reference to the page (VcpuFd::run reads the exit fields through
        // one); immediate_exit is a byte of its own that this module alone
        // writes, only through raw pointers, with volatile stores that
        // cannot tear, and that only KVM reads.
        unsafe { std::ptr::write_volatile(&raw mut (*run).immediate_exit, 1) };
    }
}

/// A handle that other threads use to interrupt a vCPU thread's `KVM_RUN`,
/// to sample it or to stop it.
#[derive(Clone)]
pub struct Kicker {
    thread: libc::pthread_t,
    stop: Arc<AtomicBool>,
}

impl Kicker {
    /// A kicker for the calling thread. The kick signal's handler only acts
    /// on a thread that runs a [`Vcpu`]; on others the kick just interrupts
    /// a blocking system call such as `KVM_RUN` (the host probe's).
    pub fn for_this_thread() -> std::io::Result<Self> {
        register_signal_handler(kick_signal(), on_kick).map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
        // SAFETY: pthread_self has no preconditions.
        let thread = unsafe { libc::pthread_self() };
        Ok(Self { thread, stop: Arc::new(AtomicBool::new(false)) })
    }

    /// Interrupts `KVM_RUN` if the vCPU is in it, or its next one.
    pub fn kick(&self) {
        // SAFETY: the target thread has not been joined: the vCPU threads
        // outlive every holder of their kickers (see `VcpuThreads`), and
        // the host probe's watchdog is joined before the probe returns.
        unsafe { libc::pthread_kill(self.thread, kick_signal()) };
    }

    /// Asks the vCPU loop to return [`Stop::Kicked`] and interrupts it.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.kick();
    }

    fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// The kickers of all the vCPUs of a VM.
#[derive(Clone)]
pub struct Kickers(Arc<[Kicker]>);

impl Kickers {
    pub fn new(kickers: Vec<Kicker>) -> Self {
        Self(kickers.into())
    }

    pub fn kick(&self) {
        self.0.iter().for_each(Kicker::kick);
    }

    /// Stops every vCPU (see [`Kicker::request_stop`]).
    pub fn request_stop(&self) {
        self.0.iter().for_each(Kicker::request_stop);
    }
}

pub struct Vcpu {
    fd: VcpuFd,
    kicker: Kicker,
    samples: Option<Samples>,
    emulator_log: LogLimit,
    /// The signal handler reaches this thread's `kvm_run` page through
    /// [`KVM_RUN`]: a Vcpu stays on the thread that made it.
    _not_send: PhantomData<*const ()>,
}

impl Vcpu {
    /// Takes over `fd` for the calling thread, which will run it. Each kick
    /// adds a sample of the guest's RIP to `samples`.
    pub fn new(index: usize, mut fd: VcpuFd, samples: Option<Samples>) -> std::io::Result<Self> {
        let kicker = Kicker::for_this_thread()?;
        KVM_RUN.with(|run| run.set(fd.get_kvm_run()));
        let emulator_log = LogLimit::new(format!("emulator (vCPU {index})"));
        Ok(Self { fd, kicker, samples, emulator_log, _not_send: PhantomData })
    }

    pub fn kicker(&self) -> Kicker {
        self.kicker.clone()
    }

    /// Runs the guest until it needs the VM's attention.
    pub fn run(&mut self, devices: &Mutex<DeviceManager>, mem: &GuestMemoryMmap) -> Result<Stop, Error> {
        let run: *mut kvm_run = self.fd.get_kvm_run();
        loop {
            if self.kicker.stop_requested() {
                return Ok(Stop::Kicked);
            }
            let request = match self.fd.run() {
                Ok(VcpuExit::IoIn(port, data)) => {
                    // SAFETY: `run` points to this vCPU's kvm_run page, mapped
                    // for as long as `self.fd` lives. After an I/O exit its
                    // `io` member is the one KVM filled in. The read is a
                    // plain copy of one field through the raw pointer; `data`
                    // covers other bytes of the page.
                    let size = unsafe { (*run).__bindgen_anon_1.io.size };
                    lock(devices).pio_read(port, size.into(), data);
                    None
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    // SAFETY: as for IoIn.
                    let size = unsafe { (*run).__bindgen_anon_1.io.size };
                    lock(devices).pio_write(port, size.into(), data)?
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    lock(devices).mmio_read(addr, data);
                    None
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => lock(devices).mmio_write(addr, data)?,
                Ok(VcpuExit::Shutdown) => {
                    let rip = self.fd.get_regs().map_err(kvm("get regs"))?.rip;
                    return Ok(Stop::Shutdown { rip });
                }
                Ok(VcpuExit::SystemEvent(..)) => Some(Request::Reset),
                Ok(VcpuExit::InternalError) => {
                    // SAFETY: after an internal-error exit, the `internal`
                    // member of the kvm_run union is the one KVM filled in.
                    let suberror = unsafe { (*run).__bindgen_anon_1.internal.suberror };
                    emulator::finish_instruction(&self.fd, mem, suberror, &self.emulator_log)?;
                    None
                }
                Ok(VcpuExit::Intr) => {
                    self.kicked(run, mem)?;
                    None
                }
                Ok(VcpuExit::MemoryFault { gpa, size, .. }) => return Err(Error::MemoryFault { gpa, size }),
                Ok(VcpuExit::Hlt) => return Err(Error::Halted),
                Ok(VcpuExit::FailEntry(reason, _)) => return Err(Error::FailEntry(reason)),
                Ok(other) => return Err(Error::UnexpectedExit(format!("{other:?}"))),
                Err(e) if e.errno() == libc::EINTR => {
                    self.kicked(run, mem)?;
                    None
                }
                // A vCPU waiting for its start woke without a signal.
                Err(e) if e.errno() == libc::EAGAIN => None,
                Err(e) if e.errno() == libc::EFAULT => return Err(Error::Efault(e)),
                Err(e) => return Err(Error::Kvm { what: "run vCPU", source: e }),
            };
            if request == Some(Request::Reset) {
                return Ok(Stop::Reset);
            }
        }
    }

    /// After a kick: re-arms `KVM_RUN` (before the loop looks at the stop
    /// flag again, so that a kick after this is not lost) and takes a
    /// sample, if the guest has started this vCPU.
    fn kicked(&mut self, run: *mut kvm_run, mem: &GuestMemoryMmap) -> Result<(), Error> {
        // SAFETY: `run` is this vCPU's kvm_run page, mapped while `self.fd`
        // lives; immediate_exit is written only this way (see on_kick).
        unsafe { std::ptr::write_volatile(&raw mut (*run).immediate_exit, 0) };
        if let Some(samples) = &self.samples
            && self.started()?
        {
            let regs = self.fd.get_regs().map_err(kvm("get regs"))?;
            samples.record(regs.rip, self.kernel_stack_top(&regs, mem));
        }
        Ok(())
    }

    /// The word on top of the guest kernel's stack (for the profiler's
    /// callers), or 0 in user space or where the stack is not mapped.
    fn kernel_stack_top(&self, regs: &kvm_regs, mem: &GuestMemoryMmap) -> u64 {
        if !profile::kernel_address(regs.rip) {
            return 0;
        }
        match self.fd.translate_gva(regs.rsp) {
            Ok(t) if t.valid != 0 => mem.read_obj(GuestAddress(t.physical_address)).unwrap_or(0),
            _ => 0,
        }
    }

    /// Whether the guest has started this vCPU: an application processor
    /// waits for its INIT and SIPI until then.
    pub fn started(&self) -> Result<bool, Error> {
        let state = self.fd.get_mp_state().map_err(kvm("get MP state"))?.mp_state;
        Ok(state != KVM_MP_STATE_UNINITIALIZED && state != KVM_MP_STATE_INIT_RECEIVED)
    }
}

impl Drop for Vcpu {
    fn drop(&mut self) {
        KVM_RUN.with(|run| run.set(std::ptr::null_mut()));
    }
}
