//! Guest RAM: anonymous host memory, registered with KVM as memory slots
//! 0, 1, ..., one per range (for the guest: [`crate::layout::ram_ranges`]).

use std::ops::Range;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("allocating {0} bytes of guest RAM")]
    Allocate(u64, #[source] vm_memory::mmap::FromRangesError),
    #[error("guest RAM")]
    Address(#[source] vm_memory::GuestMemoryError),
    #[error("KVM add RAM slot")]
    Slot(#[source] kvm_ioctls::Error),
}

/// RAM for `vm` at the guest-physical `ranges`, in one memory slot per
/// range, from slot 0. The caller keeps the memory for as long as `vm`
/// lives: the slots point into it.
pub fn create_ram(vm: &VmFd, ranges: &[Range<u64>]) -> Result<GuestMemoryMmap, Error> {
    let regions: Vec<_> = ranges.iter().map(|r| (GuestAddress(r.start), (r.end - r.start) as usize)).collect();
    let size = ranges.iter().map(|r| r.end - r.start).sum();
    let mem = GuestMemoryMmap::<()>::from_ranges(&regions).map_err(|e| Error::Allocate(size, e))?;
    for (slot, r) in (0..).zip(ranges) {
        let ram = kvm_userspace_memory_region {
            slot,
            guest_phys_addr: r.start,
            memory_size: r.end - r.start,
            userspace_addr: mem.get_host_address(GuestAddress(r.start)).map_err(Error::Address)? as u64,
            flags: 0,
        };
        // SAFETY: the slot points into `mem`'s mapping of this range, which
        // the caller keeps for as long as `vm` lives (see above); KVM checks
        // the range itself.
        unsafe { vm.set_user_memory_region(ram) }.map_err(Error::Slot)?;
    }
    Ok(mem)
}
