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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use kvm_bindings::kvm_run;
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::signal::{SIGRTMIN, register_signal_handler};

use crate::device_manager::{self, DeviceManager, Request};
use crate::emulator;
use crate::profile::Profiler;
use crate::ratelimit::LogLimit;

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

/// The signal that interrupts `KVM_RUN`: a real-time one, with a handler
/// that does nothing, so that the ioctl returns `EINTR`.
fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn ignore_signal(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// A handle that other threads use to interrupt the vCPU thread's
/// `KVM_RUN`, to sample it or to stop it.
#[derive(Clone)]
pub struct Kicker {
    thread: libc::pthread_t,
    stop: Arc<AtomicBool>,
}

impl Kicker {
    /// A kicker for the calling thread, the one that runs the vCPU. Every
    /// user of it must be done before that thread ends: the [`Profiler`] and
    /// the backing-file watch join their threads when dropped, and the
    /// vCPU thread owns them.
    pub fn for_this_thread() -> std::io::Result<Self> {
        register_signal_handler(kick_signal(), ignore_signal)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
        // SAFETY: pthread_self has no preconditions.
        let thread = unsafe { libc::pthread_self() };
        Ok(Self { thread, stop: Arc::new(AtomicBool::new(false)) })
    }

    /// Interrupts `KVM_RUN` if the vCPU is in it.
    pub fn kick(&self) {
        // SAFETY: the target thread is alive: see `for_this_thread`.
        unsafe { libc::pthread_kill(self.thread, kick_signal()) };
    }

    /// Asks the vCPU loop to return [`Stop::Kicked`] at its next exit and
    /// interrupts it. A kick that arrives just before the vCPU enters
    /// `KVM_RUN` is lost, so callers repeat it until the VM has stopped.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.kick();
    }

    fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

pub struct Vcpu {
    fd: VcpuFd,
    kicker: Kicker,
    profiler: Option<Profiler>,
    emulator_log: LogLimit,
}

impl Vcpu {
    /// Takes over `fd` for the calling thread, which will run it.
    pub fn new(fd: VcpuFd) -> std::io::Result<Self> {
        Ok(Self { fd, kicker: Kicker::for_this_thread()?, profiler: None, emulator_log: LogLimit::new("emulator") })
    }

    pub fn kicker(&self) -> Kicker {
        self.kicker.clone()
    }

    pub fn set_profiler(&mut self, profiler: Profiler) {
        self.profiler = Some(profiler);
    }

    pub fn profiler(&self) -> Option<&Profiler> {
        self.profiler.as_ref()
    }

    /// Runs the guest until it needs the VM's attention.
    pub fn run(&mut self, devices: &mut DeviceManager, mem: &GuestMemoryMmap) -> Result<Stop, Error> {
        let run: *const kvm_run = self.fd.get_kvm_run();
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
                    devices.pio_read(port, size.into(), data);
                    None
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    // SAFETY: as for IoIn.
                    let size = unsafe { (*run).__bindgen_anon_1.io.size };
                    devices.pio_write(port, size.into(), data)?
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    devices.mmio_read(addr, data);
                    None
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => devices.mmio_write(addr, data)?,
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
                    self.sample()?;
                    None
                }
                Ok(VcpuExit::MemoryFault { gpa, size, .. }) => return Err(Error::MemoryFault { gpa, size }),
                Ok(VcpuExit::Hlt) => return Err(Error::Halted),
                Ok(VcpuExit::FailEntry(reason, _)) => return Err(Error::FailEntry(reason)),
                Ok(other) => return Err(Error::UnexpectedExit(format!("{other:?}"))),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.sample()?;
                    None
                }
                Err(e) if e.errno() == libc::EFAULT => return Err(Error::Efault(e)),
                Err(e) => return Err(Error::Kvm { what: "run vCPU", source: e }),
            };
            if request == Some(Request::Reset) {
                return Ok(Stop::Reset);
            }
        }
    }

    fn sample(&mut self) -> Result<(), Error> {
        if let Some(profiler) = &mut self.profiler {
            profiler.record(self.fd.get_regs().map_err(kvm("get regs"))?.rip);
        }
        Ok(())
    }
}
