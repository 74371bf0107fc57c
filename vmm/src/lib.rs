//! A minimal VMM on rust-vmm crates: it boots a Linux vmlinux directly in
//! 64-bit mode and gives the guest ivshmem-plain PCI devices whose shared
//! memory (BAR2) is a host file mapped `MAP_SHARED`.
//!
//! | module | concern |
//! |---|---|
//! | [`vm`] | building the VM (KVM, RAM, boot data, devices) and running it to a status |
//! | [`vcpu`] | the vCPU loop: exits to device accesses, signals, stops |
//! | [`vcpus`] | the vCPU threads: started together, stopped together |
//! | [`emulator`] | finishing instructions that KVM's emulator cannot run |
//! | [`device_manager`] | devices, buses and BAR mappings, without KVM |
//! | [`bus`], [`pci`], [`devices`] | the device model |
//! | [`backing`] | the host files behind shared memory |
//! | [`seccomp`] | the system-call allowlist the VMM runs under |

pub mod backing;
pub mod boot;
pub mod bus;
pub mod console;
pub mod cpu;
pub mod device_manager;
pub mod devices;
pub mod emulator;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
pub mod host;
pub mod hypervisor;
pub mod layout;
pub mod memory;
pub mod mptable;
pub mod pci;
pub mod pirq;
pub mod profile;
pub mod ratelimit;
pub mod seccomp;
pub mod vcpu;
pub mod vcpus;
pub mod vm;

pub use vm::{ShmConfig, Vm, VmConfig};

/// The exit status of the VMM when it or the guest failed (bad input, guest
/// panic, triple fault...), as opposed to the status of the guest's program.
pub const VMM_FAILURE: u8 = 125;

/// Locks `mutex`. A poisoned lock means a thread panicked while holding it;
/// the release build aborts on panic, so this happens only in tests, where
/// the state is still worth looking at.
pub fn lock<T: ?Sized>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Starts a thread named `name` and returns once it runs `f`. The thread's
/// start-up system calls (its name, signal stack, stack guard) are then
/// behind it: the seccomp filter, installed after every thread has started,
/// would refuse them.
pub fn spawn_started<F: FnOnce() + Send + 'static>(name: &str, f: F) -> std::io::Result<std::thread::JoinHandle<()>> {
    let (started, wait) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new().name(name.into()).spawn(move || {
        let _ = started.send(());
        f()
    })?;
    let _ = wait.recv();
    Ok(thread)
}
