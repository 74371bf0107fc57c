//! The system calls the VMM may make once the guest runs.
//!
//! After set-up (files opened, memory mapped, threads started), every thread
//! of the VMM runs under a seccomp filter that allows only what running a
//! guest needs: KVM's vCPU, memory-slot, ioeventfd, irqfd and routing
//! ioctls, reads and writes on open descriptors (and descriptors received
//! from an ivshmem server), memory allocation without `PROT_EXEC`, futexes,
//! timers, polling, signals and exit. No file can be opened, no process
//! started, no socket made. Any other system call raises `SIGSYS`, whose handler names the call
//! and ends the VMM (status 125), as Firecracker and cloud-hypervisor do.
//! `--seccomp off` leaves the filter out, for debugging; `--seccomp log`
//! allows everything but has the kernel log what the filter would refuse.

use std::collections::BTreeMap;

use kvm_bindings::{
    KVMIO, kvm_fpu, kvm_ioeventfd, kvm_irq_routing, kvm_irqfd, kvm_mp_state, kvm_regs, kvm_translation,
    kvm_userspace_memory_region, kvm_vcpu_events,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
};
use vmm_sys_util::signal::register_signal_handler;
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
ioctl_iow_nr!(KVM_SET_REGS, KVMIO, 0x82, kvm_regs);
ioctl_iowr_nr!(KVM_TRANSLATE, KVMIO, 0x85, kvm_translation);
ioctl_ior_nr!(KVM_GET_FPU, KVMIO, 0x8c, kvm_fpu);
ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
ioctl_iow_nr!(KVM_SET_VCPU_EVENTS, KVMIO, 0xa0, kvm_vcpu_events);
ioctl_iow_nr!(KVM_SET_USER_MEMORY_REGION, KVMIO, 0x46, kvm_userspace_memory_region);
ioctl_iow_nr!(KVM_SET_GSI_ROUTING, KVMIO, 0x6a, kvm_irq_routing);
ioctl_iow_nr!(KVM_IRQFD, KVMIO, 0x76, kvm_irqfd);
ioctl_iow_nr!(KVM_IOEVENTFD, KVMIO, 0x79, kvm_ioeventfd);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// The allowlist: any other system call ends the VMM.
    On,
    /// No filter.
    Off,
    /// Everything allowed; what the filter would refuse is logged by the kernel (audit).
    Log,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("building the seccomp filter")]
    Build(#[from] seccompiler::BackendError),
    #[error("installing the seccomp filter")]
    Install(#[from] seccompiler::Error),
    #[error("installing the SIGSYS handler")]
    Handler(#[source] vmm_sys_util::errno::Error),
}

/// The system calls the running VMM needs, each with the argument
/// conditions under which it is allowed (none: always).
fn allowlist() -> Result<BTreeMap<i64, Vec<SeccompRule>>, Error> {
    let arg_eq = |arg: u8, value: u64| SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value);
    let kvm_ioctls = [
        KVM_RUN(),
        KVM_GET_REGS(),
        KVM_SET_REGS(),
        KVM_TRANSLATE(),
        KVM_GET_FPU(),
        KVM_GET_MP_STATE(),
        KVM_GET_VCPU_EVENTS(),
        KVM_SET_VCPU_EVENTS(),
        KVM_SET_USER_MEMORY_REGION(),
        KVM_SET_GSI_ROUTING(),
        KVM_IRQFD(),
        KVM_IOEVENTFD(),
    ];
    let ioctl = kvm_ioctls
        .iter()
        .map(|&request| Ok(SeccompRule::new(vec![arg_eq(1, request)?])?))
        .collect::<Result<Vec<_>, Error>>()?;
    // Memory may be mapped and protected, never executable.
    let no_exec = || -> Result<Vec<SeccompRule>, Error> {
        let prot =
            SeccompCondition::new(2, SeccompCmpArgLen::Dword, SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64), 0)?;
        Ok(vec![SeccompRule::new(vec![prot])?])
    };
    // fstat is newfstatat(fd, "", buf, AT_EMPTY_PATH) in glibc: no paths.
    let fstatat = vec![SeccompRule::new(vec![arg_eq(3, libc::AT_EMPTY_PATH as u64)?])?];
    // An eventfd handle of a peer that joined is a duplicate (try_clone).
    let dup = vec![SeccompRule::new(vec![arg_eq(1, libc::F_DUPFD_CLOEXEC as u64)?])?];

    let always = [
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_recvmsg,
        libc::SYS_poll,
        libc::SYS_writev,
        libc::SYS_close,
        libc::SYS_fstat,
        libc::SYS_futex,
        libc::SYS_sched_yield,
        libc::SYS_clock_gettime,
        libc::SYS_clock_nanosleep,
        libc::SYS_nanosleep,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_madvise,
        libc::SYS_brk,
        libc::SYS_rt_sigreturn,
        libc::SYS_restart_syscall,
        libc::SYS_rt_sigprocmask,
        libc::SYS_sigaltstack,
        libc::SYS_getpid,
        libc::SYS_gettid,
        libc::SYS_tgkill,
        libc::SYS_exit,
        libc::SYS_exit_group,
    ];
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = always.iter().map(|&nr| (nr, Vec::new())).collect();
    rules.insert(libc::SYS_ioctl, ioctl);
    rules.insert(libc::SYS_mmap, no_exec()?);
    rules.insert(libc::SYS_mprotect, no_exec()?);
    rules.insert(libc::SYS_newfstatat, fstatat);
    rules.insert(libc::SYS_fcntl, dup);
    Ok(rules)
}

/// Compiles the filter for `mode`; `None` for [`Mode::Off`].
pub fn filter(mode: Mode) -> Result<Option<BpfProgram>, Error> {
    let mismatch = match mode {
        Mode::Off => return Ok(None),
        Mode::On => SeccompAction::Trap,
        Mode::Log => SeccompAction::Log,
    };
    let arch = std::env::consts::ARCH.try_into().map_err(seccompiler::Error::Backend)?;
    let filter = SeccompFilter::new(allowlist()?, mismatch, SeccompAction::Allow, arch)?;
    Ok(Some(filter.try_into()?))
}

/// Installs the filter for `mode` on every thread of the process; threads
/// started later inherit it.
pub fn apply(mode: Mode) -> Result<(), Error> {
    let Some(program) = filter(mode)? else {
        log::warn!("seccomp: off (--seccomp off); the VMM can make any system call");
        return Ok(());
    };
    register_signal_handler(libc::SIGSYS, on_sigsys).map_err(Error::Handler)?;
    seccompiler::apply_filter_all_threads(&program)?;
    log::debug!("seccomp: filter installed ({mode:?})");
    Ok(())
}

/// The part of `siginfo_t` that the kernel fills in for `SIGSYS` (x86-64).
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

/// Names the refused system call on stderr and ends the process. Runs as a
/// signal handler: it formats into a stack buffer and makes only the two
/// system calls the filter allows for this (write, exit_group).
extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t, which for SIGSYS has the
    // layout of SigsysInfo at its start.
    let nr = unsafe { (*info.cast::<SigsysInfo>()).syscall };
    let name = usize::try_from(nr).ok().and_then(syscalls::Sysno::new).map_or("unknown", |s| s.name());
    let mut buf = [0u8; 256];
    let mut w = StackWriter { buf: &mut buf, len: 0 };
    let _ = std::fmt::Write::write_fmt(
        &mut w,
        format_args!("vmm: seccomp: system call {name} ({nr}) is not on the VMM's allowlist; stopping the VM\n"),
    );
    let len = w.len;
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer holds `len` bytes.
    unsafe {
        libc::write(libc::STDERR_FILENO, buf.as_ptr().cast(), len);
        libc::_exit(crate::VMM_FAILURE.into());
    }
}

/// A `fmt::Write` into a fixed buffer that drops what does not fit.
struct StackWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl std::fmt::Write for StackWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_compiles_for_each_mode() {
        assert!(filter(Mode::Off).unwrap().is_none());
        assert!(filter(Mode::On).unwrap().is_some_and(|p| p.len() > 20));
        assert!(filter(Mode::Log).unwrap().is_some());
    }

    #[test]
    fn the_ioctl_numbers_are_kvms() {
        assert_eq!(KVM_RUN(), 0xae80);
        assert_eq!(KVM_SET_USER_MEMORY_REGION(), 0x4020_ae46);
        assert_eq!(KVM_GET_REGS(), 0x8090_ae81);
    }
}
