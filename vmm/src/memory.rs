//! Guest RAM: anonymous host memory, registered with KVM as memory slot 0
//! at guest physical address 0.

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

/// `size` bytes of RAM for `vm`. The caller keeps the memory for as long as
/// `vm` lives: the slot points into it.
pub fn create_ram(vm: &VmFd, size: u64) -> Result<GuestMemoryMmap, Error> {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size as usize)])
        .map_err(|e| Error::Allocate(size, e))?;
    let ram = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: size,
        userspace_addr: mem.get_host_address(GuestAddress(0)).map_err(Error::Address)? as u64,
        flags: 0,
    };
    // SAFETY: the slot points into `mem`'s mapping, which the caller keeps
    // for as long as `vm` lives (see above); KVM checks the range itself.
    unsafe { vm.set_user_memory_region(ram) }.map_err(Error::Slot)?;
    Ok(mem)
}
