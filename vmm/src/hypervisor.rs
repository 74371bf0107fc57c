//! What the device model asks of the hypervisor, and how KVM does it.
//!
//! | the device model asks for | KVM |
//! |---|---|
//! | host memory at a guest address (a memory BAR) | a memory slot (`KVM_SET_USER_MEMORY_REGION`) |
//!
//! The device model holds an `Arc<dyn Hypervisor>`: [`KvmHypervisor`] in
//! the VM, a model in the unit tests and the fuzzer.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;

use crate::device_manager::BarId;
use crate::lock;
use crate::pci::HostMemory;

pub type Error = vmm_sys_util::errno::Error;

pub trait Hypervisor: Send + Sync {
    /// Maps `host` at `guest_addr` for `bar`, which is not mapped.
    fn map_memory(&self, bar: BarId, guest_addr: u64, host: HostMemory) -> Result<(), Error>;
    /// Removes the mapping of `bar`, which is mapped.
    fn unmap_memory(&self, bar: BarId) -> Result<(), Error>;
}

/// KVM, for the device model of a VM.
pub struct KvmHypervisor {
    vm: Arc<VmFd>,
    /// Memory slots of BARs. Slot 0 is RAM; a BAR takes the next free
    /// number when it is first mapped and keeps it.
    slots: Mutex<BTreeMap<BarId, u32>>,
}

impl KvmHypervisor {
    pub fn new(vm: Arc<VmFd>) -> Self {
        Self { vm, slots: Mutex::default() }
    }

    fn set_slot(&self, bar: BarId, guest_addr: u64, host: Option<HostMemory>) -> Result<(), Error> {
        let mut slots = lock(&self.slots);
        let next = slots.len() as u32 + 1;
        let slot = *slots.entry(bar).or_insert(next);
        let region = kvm_userspace_memory_region {
            slot,
            guest_phys_addr: guest_addr,
            // Size 0 deletes the slot.
            memory_size: host.map_or(0, |h| h.len),
            userspace_addr: host.map_or(0, |h| h.addr as u64),
            flags: 0,
        };
        // SAFETY: the host range is a BackingFile's mapping, which its device
        // keeps. The Vm drops its vCPU before its devices (field order), so
        // no guest runs once the mapping can be gone.
        unsafe { self.vm.set_user_memory_region(region) }
    }
}

impl Hypervisor for KvmHypervisor {
    fn map_memory(&self, bar: BarId, guest_addr: u64, host: HostMemory) -> Result<(), Error> {
        self.set_slot(bar, guest_addr, Some(host))
    }

    fn unmap_memory(&self, bar: BarId) -> Result<(), Error> {
        self.set_slot(bar, 0, None)
    }
}
