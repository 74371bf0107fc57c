// SPDX-License-Identifier: GPL-2.0

//! Driver for ivshmem PCI devices (1af4:1110), plain and doorbell, as exposed by QEMU and by the
//! kvmshm VMM.
//!
//! Every device gets a misc character device, `/dev/kvmshm0`, `/dev/kvmshm1`, ... in probe
//! order. Through it user space can `mmap()` the shared memory (BAR2), `read()`/`write()` it at
//! the file position, ask for its size, IVPosition and vectors and choose the caching mode of
//! later mappings with `ioctl()`. On an ivshmem-doorbell device (one with an MSI-X BAR) it can
//! also ring other peers' vectors and wait for its own ([`doorbell`]). See README.md for the
//! user-space interface.
//!
//! # Mapping and memory type
//!
//! `mmap()` maps the requested window of BAR2 with `remap_pfn_range()`, all of it at once: no
//! page faults later, and one x86 PAT memtype reservation per mapping instead of a lookup per
//! page (each costs thousands of emulated instructions on hosts without hardware
//! virtualisation). Except where a 2 MiB page fits: the parts of the window whose addresses and
//! physical addresses are both 2 MiB-aligned are left to the fault handler, which maps each with
//! one PMD on first touch ([`pmd_part`]). Those cost a fault per 2 MiB instead of nothing, and
//! need one TLB entry per 2 MiB instead of 512 for as long as the mapping is used: writes to
//! random pages of 64 MiB ran 1.16 times as fast so in a guest, 1.17 to 1.18 on the host (the
//! benchmark's page size section; the host backed the region with 2 MiB pages too). The faults
//! take their memory type from PAT's reservations, so while such a mapping exists the driver
//! holds one for the whole BAR: a kernel mapping of it, [`MapState::hold`]. The kernel places
//! a mapping made without a fixed address so that its address and offset agree modulo 2 MiB
//! (`PMD_ALIGNED_MAPPINGS`, images/patches/0027): a plain `mmap(NULL, ...)` of a 1 GiB device
//! otherwise took 4 KiB pages throughout, 8.6 s of `remap_pfn_range()` on such a host.
//!
//! The memory type (write-back by default, write-combining or uncached) belongs to the device,
//! not to a file or a mapping: x86 forbids mapping the same physical memory with different
//! types at once, and PAT refuses it. It can change only while nothing maps the device; `read()`
//! and `write()` map the bytes they copy with the same type, for the duration of the call.
//!
//! # Device removal
//!
//! Removal ([`Shared::revoke`]) sets `gone`, waits with SRCU for every `mmap()`, `read()` and
//! `write()` that may still have seen the device, and then zaps the user mappings of every open
//! file. The kernel links a new mapping into its file's reverse map (which the zap walks) only
//! after `mmap()` has returned, still holding the mapping process's mmap lock; so removal first
//! takes that lock once for every process that mapped the device, which waits for any such
//! `mmap()` to be complete. Afterwards an access to a zapped mapping faults, and the fault
//! handler, seeing `gone`, answers `SIGBUS`; system calls get `ENODEV`. A fault that had not seen
//! `gone` is in an SRCU read-side section, so removal waits for it before zapping what it mapped.

use core::{
    ops::Range,
    ptr::{self, NonNull},
};
use kernel::{
    bindings, container_of,
    error::to_result,
    mm::{Mm, MmWithUser},
    device::{Bound, Core},
    fs::{File, Kiocb},
    io::Io,
    ioctl::{_IOR, _IOW, _IOWR},
    iov::{IovIterDest, IovIterSource},
    miscdevice::{MiscDevice, MiscDeviceOptions, MiscDeviceRegistration},
    mm::virt::{flags as vm_flags, VmaNew, VmaRef},
    new_mutex, new_srcu,
    page::{PAGE_SHIFT, PAGE_SIZE},
    pci,
    prelude::*,
    transmute::FromBytes,
    sync::{
        atomic::{Acquire, Atomic, Relaxed, Release},
        srcu::Guard,
        aref::ARef,
        Arc, Mutex, Srcu,
    },
    uaccess::{UserSlice, UserSliceReader, UserSliceWriter},
};
use zerocopy_derive::Immutable;

mod doorbell;

use doorbell::{Doorbell, Interrupts};

/// Size of BAR0, the register block.
const BAR0_SIZE: usize = 256;
/// Offset of the read-only IVPosition register (the device's id) in BAR0.
const IVPOSITION: usize = 8;
/// Offset of the write-only Doorbell register in BAR0.
const DOORBELL: usize = 12;
/// The BAR holding the MSI-X table of an ivshmem-doorbell device.
const MSIX_BAR: u32 = 1;
/// The BAR holding the shared memory.
const SHMEM_BAR: u32 = 2;

/// Returns a [`KvmShmInfo`] for the device behind the file.
const KVMSHM_IOC_INFO: u32 = _IOR::<KvmShmInfo>('K' as u32, 1);
/// Sets the [`Caching`] mode of later `mmap()`s through this open file.
const KVMSHM_IOC_SET_CACHING: u32 = _IOW::<u32>('K' as u32, 2);
/// Rings a peer's vector: the argument is `peer << 16 | vector`, the Doorbell register's format.
const KVMSHM_IOC_RING: u32 = _IOW::<u32>('K' as u32, 3);
/// Registers an eventfd for a vector ([`KvmShmEventFd`]).
const KVMSHM_IOC_SET_EVENTFD: u32 = _IOW::<KvmShmEventFd>('K' as u32, 4);
/// Waits for interrupts ([`KvmShmWait`]).
const KVMSHM_IOC_WAIT: u32 = _IOWR::<KvmShmWait>('K' as u32, 5);

// README.md gives these numbers to user space.
static_assert!(KVMSHM_IOC_INFO == 0x8018_4b01);
static_assert!(KVMSHM_IOC_SET_CACHING == 0x4004_4b02);
static_assert!(KVMSHM_IOC_RING == 0x4004_4b03);
static_assert!(KVMSHM_IOC_SET_EVENTFD == 0x4008_4b04);
static_assert!(KVMSHM_IOC_WAIT == 0xc018_4b05);

/// The argument of `KVMSHM_IOC_INFO` (`struct kvmshm_info`).
#[repr(C)]
#[derive(IntoBytes, Immutable)]
struct KvmShmInfo {
    size: u64,
    iv_position: u32,
    caching: u32,
    /// Interrupt vectors: 0 for an ivshmem-plain device.
    vectors: u32,
    reserved: u32,
}

/// The argument of `KVMSHM_IOC_SET_EVENTFD` (`struct kvmshm_eventfd`): signal eventfd `fd` on
/// each interrupt of `vector` (`fd` -1: none).
#[repr(C)]
struct KvmShmEventFd {
    vector: u32,
    fd: i32,
}

// SAFETY: Two 32-bit integers without padding: every bit pattern is a valid value.
unsafe impl FromBytes for KvmShmEventFd {}

/// The argument of `KVMSHM_IOC_WAIT` (`struct kvmshm_wait`): wait up to `timeout_ms`
/// (`0xffffffff`: without limit) for an interrupt of a vector in `vectors` (a mask; 0: any)
/// that this open file has not seen yet; `fired` returns the vectors that had one.
#[repr(C)]
#[derive(IntoBytes, Immutable)]
struct KvmShmWait {
    vectors: u64,
    timeout_ms: u32,
    reserved: u32,
    fired: u64,
}

// SAFETY: Integers without padding (24 bytes, 8-aligned): every bit pattern is a valid value.
unsafe impl FromBytes for KvmShmWait {}

/// Caching mode of a user mapping, the argument of `KVMSHM_IOC_SET_CACHING`.
#[derive(Clone, Copy, PartialEq)]
#[repr(i32)]
enum Caching {
    /// Write-back: the vma's default protection, right for host RAM.
    WriteBack = 0,
    /// Write-combining (`pgprot_writecombine()`).
    WriteCombining = 1,
    /// Uncached, UC- (`pgprot_noncached()`).
    Uncached = 2,
}

impl TryFrom<u32> for Caching {
    type Error = Error;

    fn try_from(value: u32) -> Result<Self> {
        match value {
            0 => Ok(Self::WriteBack),
            1 => Ok(Self::WriteCombining),
            2 => Ok(Self::Uncached),
            _ => Err(EINVAL),
        }
    }
}

impl Caching {
    /// Returns `prot`, the protection of a new vma, with this caching mode.
    fn page_prot(self, prot: bindings::pgprot_t) -> bindings::pgprot_t {
        match self {
            Self::WriteBack => prot,
            // SAFETY: `pgprot_writecombine()` (x86: arch/x86/mm/pat/memtype.c) only computes a
            // value from its argument.
            Self::WriteCombining => unsafe { bindings::pgprot_writecombine(prot) },
            // x86's `pgprot_noncached()` is a macro: it adds the PTE bits that the kernel's
            // cache mode table gives for UC-. `cachemode2protval()` reads that table.
            Self::Uncached => bindings::pgprot_t {
                // SAFETY: `cachemode2protval()` only reads a table; any mode is a valid index.
                pgprot: prot.pgprot
                    | unsafe {
                        bindings::cachemode2protval(
                            bindings::page_cache_mode__PAGE_CACHE_MODE_UC_MINUS,
                        )
                    },
            },
        }
    }
}

/// The most devices the driver handles at once: as many as the kvmshm VMM can create (its PCI
/// bus 0 has 32 slots, one of them the host bridge's).
const MAX_DEVICES: usize = 31;

/// Misc device names; a misc device name must live as long as its registration.
static NAMES: [&CStr; MAX_DEVICES] = [
    c"kvmshm0",
    c"kvmshm1",
    c"kvmshm2",
    c"kvmshm3",
    c"kvmshm4",
    c"kvmshm5",
    c"kvmshm6",
    c"kvmshm7",
    c"kvmshm8",
    c"kvmshm9",
    c"kvmshm10",
    c"kvmshm11",
    c"kvmshm12",
    c"kvmshm13",
    c"kvmshm14",
    c"kvmshm15",
    c"kvmshm16",
    c"kvmshm17",
    c"kvmshm18",
    c"kvmshm19",
    c"kvmshm20",
    c"kvmshm21",
    c"kvmshm22",
    c"kvmshm23",
    c"kvmshm24",
    c"kvmshm25",
    c"kvmshm26",
    c"kvmshm27",
    c"kvmshm28",
    c"kvmshm29",
    c"kvmshm30",
];

/// Bit `i` is set while the name `NAMES[i]` belongs to a device.
static USED_INDICES: Atomic<u32> = Atomic::new(0);
static_assert!(MAX_DEVICES <= u32::BITS as usize);

/// An index into [`NAMES`], owned until dropped.
struct DeviceIndex(usize);

impl DeviceIndex {
    /// Takes the lowest free index.
    fn alloc() -> Result<Self> {
        let mut used = USED_INDICES.load(Relaxed);
        loop {
            let index = used.trailing_ones() as usize;
            if index >= MAX_DEVICES {
                return Err(ENOSPC);
            }
            match USED_INDICES.cmpxchg(used, used | (1 << index), Acquire) {
                Ok(_) => return Ok(Self(index)),
                Err(now) => used = now,
            }
        }
    }

    fn name(&self) -> &'static CStr {
        NAMES[self.0]
    }
}

impl Drop for DeviceIndex {
    fn drop(&mut self) {
        // Our bit is set (by `alloc`), so subtracting it clears exactly that bit.
        USED_INDICES.fetch_sub(1u32 << self.0, Release);
    }
}

/// A kernel mapping of part of BAR2 with the device's memory type: for one `read()` or `write()`,
/// or the whole BAR as [`MapState::hold`].
///
/// # Invariants
///
/// `addr` is the start of a live mapping of `len` bytes made by `memremap()` (write-back,
/// write-combining) or `ioremap()` (uncached), as `caching` says.
struct KernelWindow {
    addr: NonNull<u8>,
    caching: Caching,
}

impl KernelWindow {
    fn new(phys: bindings::resource_size_t, len: usize, caching: Caching) -> Result<Self> {
        // CAST: the `MEMREMAP_*` flags are small constants.
        //
        // SAFETY: `memremap()` and `ioremap()` accept any range and fail if it cannot be mapped
        // with the type asked for (for example because PAT finds another type in use). The
        // range is inside BAR2 of a device bound to this driver (checked by the caller).
        let addr = unsafe {
            match caching {
                Caching::WriteBack => bindings::memremap(phys, len, bindings::MEMREMAP_WB as c_ulong),
                Caching::WriteCombining => {
                    bindings::memremap(phys, len, bindings::MEMREMAP_WC as c_ulong)
                }
                // CAST: `usize` and `c_ulong` are the same size on x86_64.
                Caching::Uncached => bindings::ioremap(phys, len as c_ulong),
            }
        };
        // INVARIANT: the mapping was made as `caching` says, or `addr` is NULL.
        NonNull::new(addr.cast())
            .map(|addr| Self { addr, caching })
            .ok_or(EBUSY)
    }
}

// SAFETY: A `KernelWindow` is the address of a kernel mapping, the same in every thread, and
// `memunmap()` and `iounmap()` may be called from any thread that may sleep, as `drop` is.
unsafe impl Send for KernelWindow {}

impl Drop for KernelWindow {
    fn drop(&mut self) {
        let addr = self.addr.as_ptr().cast();
        // SAFETY: By the type invariant `addr` is a live mapping made by the function that
        // `caching` names, unmapped only here, by its counterpart.
        unsafe {
            match self.caching {
                Caching::Uncached => bindings::iounmap(addr),
                _ => bindings::memunmap(addr),
            }
        }
    }
}

/// The `address_space` (`f_mapping`) of an open kvmshm file: user mappings of the file are found
/// through it.
#[derive(Clone, Copy, PartialEq)]
struct FileMapping(NonNull<bindings::address_space>);

// SAFETY: `FileMapping` is only an address; using it is `unsafe` and justified where it happens
// (`Shared::revoke`), from whichever thread.
unsafe impl Send for FileMapping {}
// SAFETY: See `Send`.
unsafe impl Sync for FileMapping {}

/// The memory type of the device and how many user mappings use it.
struct MapState {
    caching: Caching,
    /// Live vmas mapping the device (counted by `mmap()` and the vm operations).
    vmas: usize,
    /// A kernel mapping of all of BAR2 with `caching`, made by the first `mmap()` that leaves
    /// parts to the fault handler and dropped with the last vma (or at removal): its PAT
    /// reservation gives the faults their memory type. Without one, PAT would map them UC-.
    hold: Option<KernelWindow>,
}

impl MapState {
    /// Drops the hold if no vma maps the device any more: it must not outlive them, or a later
    /// change of the memory type would conflict with its reservation.
    fn release_unused_hold(&mut self) {
        if self.vmas == 0 {
            self.hold = None;
        }
    }
}

/// State of one device, shared by its PCI driver data and its open files.
#[pin_data]
struct Shared {
    /// Physical address of BAR2.
    phys: bindings::resource_size_t,
    /// Size of BAR2 in bytes, a non-zero multiple of the page size.
    size: usize,
    iv_position: u32,
    /// BAR0, the registers, claimed and mapped until the device is unbound.
    registers: pci::DevresBar<BAR0_SIZE>,
    /// The interrupts of an ivshmem-doorbell device.
    doorbell: Option<Arc<Doorbell>>,
    /// Set once when the device goes away (unbind or removal).
    gone: Atomic<bool>,
    /// Protects every use of the BAR (mmap, read, write) against [`Shared::revoke`].
    #[pin]
    srcu: Srcu,
    #[pin]
    state: Mutex<MapState>,
    /// The address spaces that have mapped the device and still have users, for
    /// [`Shared::revoke`]. One entry per address space: it holds its `mm_struct` (not the
    /// memory), and entries of exited processes are pruned whenever one is added.
    #[pin]
    mappers: Mutex<KVec<ARef<Mm>>>,
    /// One entry per open file, for [`Shared::revoke`].
    ///
    /// Invariant: each entry is the `f_mapping` of an open file whose [`KvmShmFile`] is alive;
    /// that `KvmShmFile` removes the entry, under this lock, when it is dropped.
    #[pin]
    mappings: Mutex<KVec<FileMapping>>,
}

impl Shared {
    fn new(
        pdev: &pci::Device<Core<'_>>,
        registers: pci::DevresBar<BAR0_SIZE>,
        iv_position: u32,
        doorbell: Option<Arc<Doorbell>>,
    ) -> Result<Arc<Self>> {
        let phys = pdev.resource_start(SHMEM_BAR)?;
        let size = usize::try_from(pdev.resource_len(SHMEM_BAR)?)?;
        if size == 0 || size % PAGE_SIZE != 0 || phys % PAGE_SIZE as u64 != 0 {
            return Err(ENODEV);
        }
        Arc::pin_init(
            try_pin_init!(Self {
                phys,
                size,
                iv_position,
                registers,
                doorbell,
                gone: Atomic::new(false),
                srcu <- new_srcu!(),
                state <- new_mutex!(MapState { caching: Caching::WriteBack, vmas: 0, hold: None }),
                mappers <- new_mutex!(KVec::new()),
                mappings <- new_mutex!(KVec::new()),
            }),
            GFP_KERNEL,
        )
    }

    fn check_present(&self) -> Result {
        if self.gone.load(Acquire) {
            Err(ENODEV)
        } else {
            Ok(())
        }
    }

    /// Enters a read-side section in which the BAR may be used, unless the device is gone.
    fn enter(&self) -> Result<Guard<'_>> {
        let guard = self.srcu.read_lock();
        self.check_present()?;
        Ok(guard)
    }

    /// Marks the device gone and removes all user mappings of it.
    ///
    /// When this returns, no `read()` or `write()` uses the BAR any more, no user PTE points to
    /// it, and none will again.
    fn revoke(&self) {
        self.gone.store(true, Release);
        if let Some(doorbell) = &self.doorbell {
            doorbell.close();
        }
        // Every mmap, read or write that starts from now on sees `gone` (the SRCU grace period
        // guarantee); wait for those that may have missed it.
        self.srcu.synchronize();
        // Those mmaps have returned, but their vmas may not be linked into the reverse map yet:
        // the kernel does that after `mmap()`, under the process's mmap write lock. Taking that
        // lock waits for it. The list is taken out first: `mmap()` takes `mappers` with the mmap
        // lock held, so holding `mappers` while taking an mmap lock could deadlock.
        let mappers = core::mem::take(&mut *self.mappers.lock());
        for mm in mappers.iter().filter_map(|mm| mm.mmget_not_zero()) {
            drop(mm.mmap_read_lock());
        }
        // A fork copying PTEs concurrently links the child's vma after the parent's, so zapping
        // the address spaces removes the child's copies as well.
        for mapping in self.mappings.lock().iter() {
            // SAFETY: By the invariant of `mappings`, the entry belongs to an open file, which
            // holds its inode, and so the inode's `address_space`, alive; the entry cannot be
            // removed while we hold the lock.
            unsafe { bindings::unmap_mapping_range(mapping.0.as_ptr(), 0, 0, 1) };
        }
        // The faults that could use it answer SIGBUS from now on.
        self.state.lock().hold = None;
    }

    /// Records that `mm` maps the device, for [`Shared::revoke`].
    fn add_mapper(&self, mm: &Mm) -> Result {
        let mut mappers = self.mappers.lock();
        // The probe reference may turn out to be the last user of another
        // process's mm; mmput_async leaves its teardown to a workqueue instead
        // of running it here, under this lock and the caller's mmap lock.
        mappers.retain(|m| m.mmget_not_zero().map(MmWithUser::into_mmput_async).is_some());
        if !mappers.iter().any(|m| ptr::eq(&**m, mm)) {
            mappers.push(ARef::from(mm), GFP_KERNEL)?;
        }
        Ok(())
    }

    /// The doorbell, for the doorbell requests; a plain device has none.
    fn doorbell(&self) -> Result<&Doorbell> {
        self.check_present()?;
        self.doorbell.as_deref().ok_or(EOPNOTSUPP)
    }

    /// Writes `value` (`peer << 16 | vector`) to the Doorbell register.
    fn ring(&self, value: u32) -> Result {
        self.doorbell()?;
        let registers = self.registers.try_access().ok_or(ENODEV)?;
        registers.write32(value, DOORBELL);
        Ok(())
    }

    fn set_caching(&self, caching: Caching) -> Result {
        let mut state = self.state.lock();
        if state.vmas != 0 && state.caching != caching {
            return Err(EBUSY);
        }
        state.caching = caching;
        Ok(())
    }

    /// Maps bytes `start..start + len` of BAR2 into the kernel for one copy, clamping `len` to
    /// the end of the BAR.
    fn window(&self, start: usize, len: usize) -> Result<(KernelWindow, usize)> {
        let len = len.min(self.size - start);
        let caching = self.state.lock().caching;
        // CAST: `usize` fits in `resource_size_t` (u64).
        let window = KernelWindow::new(self.phys + start as u64, len.max(1), caching)?;
        Ok((window, len))
    }

    fn read(&self, pos: &mut i64, iov: &mut IovIterDest<'_>) -> Result<usize> {
        let _guard = self.enter()?;
        let start = usize::try_from(*pos).map_err(|_| EINVAL)?;
        if start >= self.size || iov.is_empty() {
            return Ok(0);
        }
        let (window, len) = self.window(start, iov.len())?;
        // SAFETY: The window maps `len` bytes and lives until the end of this function. The
        // memory is shared with other parties, so it is read through a raw pointer and not a
        // Rust reference. The SRCU guard keeps removal from completing while we copy.
        let copied = unsafe { bindings::_copy_to_iter(window.addr.as_ptr().cast(), len, iov.as_raw()) };
        if copied == 0 {
            return Err(EFAULT);
        }
        *pos = i64::try_from(start + copied)?;
        Ok(copied)
    }

    fn write(&self, pos: &mut i64, iov: &mut IovIterSource<'_>) -> Result<usize> {
        let _guard = self.enter()?;
        if iov.is_empty() {
            return Ok(0);
        }
        let start = usize::try_from(*pos).map_err(|_| EINVAL)?;
        if start >= self.size {
            return Err(ENOSPC);
        }
        let (window, len) = self.window(start, iov.len())?;
        // SAFETY: As in `read`: the window maps `len` bytes, written through a raw pointer, with
        // removal held off by the SRCU guard.
        let copied =
            unsafe { bindings::_copy_from_iter(window.addr.as_ptr().cast(), len, iov.as_raw()) };
        if copied == 0 {
            return Err(EFAULT);
        }
        *pos = i64::try_from(start + copied)?;
        Ok(copied)
    }
}

/// Returns the [`Shared`] of a vma set up by [`KvmShmFile::mmap`].
///
/// # Safety
///
/// `vma` must be such a vma, valid for `'a`.
unsafe fn vma_shared<'a>(vma: *mut bindings::vm_area_struct) -> &'a Shared {
    // SAFETY: `KvmShmFile::mmap` set `vm_private_data` to the `Shared` of the mapped file (a fork
    // or split copies it with `vm_file`). The vma holds a reference to `vm_file`, so the file has
    // not been released and its `KvmShmFile` still holds an `Arc` of this `Shared`.
    unsafe { &*(*vma).vm_private_data.cast::<Shared>() }
}

/// Called when a vma of the device is copied (fork) or split.
///
/// # Safety
///
/// Must only be called by the mm core as the `open` operation of a vma set up by
/// [`KvmShmFile::mmap`].
unsafe extern "C" fn kvmshm_vma_open(vma: *mut bindings::vm_area_struct) {
    // SAFETY: The mm core passes a valid vma of ours.
    unsafe { vma_shared(vma) }.state.lock().vmas += 1;
}

/// Called when a vma of the device is unmapped.
///
/// # Safety
///
/// As for [`kvmshm_vma_open`], as the `close` operation.
unsafe extern "C" fn kvmshm_vma_close(vma: *mut bindings::vm_area_struct) {
    // SAFETY: The mm core passes a valid vma of ours.
    let mut state = unsafe { vma_shared(vma) }.state.lock();
    state.vmas -= 1;
    state.release_unused_hold();
}

/// Maps the page at `vmf`'s address: where no 2 MiB page fits any more (splitting or moving a
/// vma off the alignment unmaps its PMDs), or after removal (which answers `SIGBUS`); `mmap()`
/// maps the rest itself.
///
/// # Safety
///
/// As for [`kvmshm_vma_open`], as the `fault` operation.
unsafe extern "C" fn kvmshm_vma_fault(vmf: *mut bindings::vm_fault) -> bindings::vm_fault_t {
    // SAFETY: Called as the `fault` operation, which is the `huge_fault` operation of order 0.
    unsafe { kvmshm_vma_huge_fault(vmf, 0) }
}

/// Maps the `PAGE_SIZE << order` bytes around `vmf`'s address with one entry, if they are in the
/// vma and in BAR2 and, for a PMD, 2 MiB-aligned in both; else falls back to smaller pages, and
/// for a single page outside answers `SIGBUS` (as after removal).
///
/// # Safety
///
/// As for [`kvmshm_vma_open`], as the `huge_fault` operation.
unsafe extern "C" fn kvmshm_vma_huge_fault(
    vmf: *mut bindings::vm_fault,
    order: c_uint,
) -> bindings::vm_fault_t {
    // SAFETY: The mm core passes a valid fault on a vma of ours and keeps the vma from being
    // unmapped or changed until the handler returns.
    let (vma, address) = unsafe {
        let fault = &(*vmf).__bindgen_anon_1;
        (fault.vma, fault.address as usize)
    };
    // SAFETY: As above.
    let shared = unsafe { vma_shared(vma) };
    let Ok(_guard) = shared.enter() else {
        return bindings::vm_fault_reason_VM_FAULT_SIGBUS;
    };
    // SAFETY: As above: the mm core holds the mmap or the vma read lock for the fault.
    let area = unsafe { VmaRef::from_raw(vma) };
    let (start, end) = (area.start(), area.end());
    // SAFETY: As above; `vm_pgoff` does not change while the vma is locked.
    let first = unsafe { (*vma).vm_pgoff } as usize;
    let len = PAGE_SIZE << order;
    let addr = address & !(len - 1);
    // The BAR page at `addr`, if all `len` bytes are in the vma and in the BAR.
    let page = Some(addr)
        .filter(|&addr| addr >= start && end - addr >= len)
        .and_then(|addr| first.checked_add((addr - start) >> PAGE_SHIFT))
        .filter(|&page| {
            let left = (shared.size >> PAGE_SHIFT).checked_sub(page);
            left.is_some_and(|left| left >= len >> PAGE_SHIFT)
        });
    let Some(page) = page else {
        return if order == 0 {
            bindings::vm_fault_reason_VM_FAULT_SIGBUS
        } else {
            bindings::vm_fault_reason_VM_FAULT_FALLBACK
        };
    };
    // CAST: `resource_size_t` and `usize` are both 64 bits on x86_64.
    let pfn = (shared.phys >> PAGE_SHIFT) as usize + page;
    match order {
        // SAFETY: The vma is a shared VM_PFNMAP vma of ours (set up by `KvmShmFile::mmap`), the
        // address is in it and the PFN is a page of BAR2 (both checked above). The memory type
        // comes from PAT, which `MapState::hold` or the vma's own reservation gives.
        0 => unsafe { bindings::vmf_insert_pfn(vma, addr as c_ulong, pfn as c_ulong) },
        // SAFETY: As above, for the 2 MiB at `addr`, all in the vma and in BAR2 (checked above),
        // with the PFN 2 MiB-aligned (checked here). `write` false: the entry is writable as the
        // vma is, and no dirty tracking applies to a PFN map.
        #[cfg(CONFIG_ARCH_SUPPORTS_PMD_PFNMAP)]
        bindings::PMD_ORDER if pfn % (1 << bindings::PMD_ORDER) == 0 => unsafe {
            bindings::vmf_insert_pfn_pmd(vmf, pfn as c_ulong, false)
        },
        _ => bindings::vm_fault_reason_VM_FAULT_FALLBACK,
    }
}

/// The vm operations of kvmshm user mappings.
static KVMSHM_VM_OPS: bindings::vm_operations_struct = bindings::vm_operations_struct {
    open: Some(kvmshm_vma_open),
    close: Some(kvmshm_vma_close),
    fault: Some(kvmshm_vma_fault),
    huge_fault: Some(kvmshm_vma_huge_fault),
    ..pin_init::zeroed()
};

/// The PMD size (2 MiB on x86_64).
const PMD_SIZE: usize = 1 << bindings::PMD_SHIFT;

/// The part of a user mapping of `start..end` (addresses; `phys` the physical address of its
/// first byte) that the fault handler maps with PMDs: the 2 MiB-aligned part, if the physical
/// addresses are aligned alike. Empty where the kernel cannot map PFNs with PMDs.
fn pmd_part(start: usize, end: usize, phys: u64) -> Range<usize> {
    // CAST: `PMD_SIZE` fits any integer type here.
    let aligned = cfg!(CONFIG_ARCH_SUPPORTS_PMD_PFNMAP)
        && (phys as usize).wrapping_sub(start) % PMD_SIZE == 0;
    let first = start.next_multiple_of(PMD_SIZE);
    let last = end & !(PMD_SIZE - 1);
    if aligned && first < last {
        first..last
    } else {
        start..start
    }
}

/// Maps the addresses `range` of the vma `raw` to BAR2 from the page `pfn` on, with
/// `remap_pfn_range()`.
///
/// # Safety
///
/// `raw` must be a shared vma being set up in `f_op->mmap()`; `range` must be in it, and as long
/// from `pfn` on must be in BAR2 of a bound device.
unsafe fn remap(raw: *mut bindings::vm_area_struct, range: Range<usize>, pfn: usize) -> Result {
    if range.is_empty() {
        return Ok(());
    }
    // SAFETY: As the caller promises. `remap_pfn_range()` marks the vma VM_PFNMAP (with VM_IO,
    // VM_DONTEXPAND and VM_DONTDUMP). For the whole vma it reserves the memory type of the range
    // with PAT for the life of the vma; for part of one it takes the type PAT has reserved.
    to_result(unsafe {
        bindings::remap_pfn_range(
            raw,
            range.start as c_ulong,
            pfn as c_ulong,
            range.len() as c_ulong,
            (*raw).vm_page_prot,
        )
    })
}

/// An open kvmshm file.
struct KvmShmFile {
    shared: Arc<Shared>,
    /// This file's entry in `shared.mappings`.
    mapping: FileMapping,
    /// The interrupt counts this file's waits have seen (empty for a plain device).
    seen: KVec<Atomic<u64>>,
}

impl KvmShmFile {
    fn new(shared: &Arc<Shared>, file: &File) -> Result<KBox<Self>> {
        // SAFETY: `file` is valid; `f_mapping` is set before `open` and a character device file
        // never changes it.
        let mapping = unsafe { (*file.as_ptr()).f_mapping };
        let mapping = FileMapping(NonNull::new(mapping).ok_or(EINVAL)?);
        let seen = match &shared.doorbell {
            Some(doorbell) => doorbell.counts()?,
            None => KVec::new(),
        };
        let slot = KBox::new_uninit(GFP_KERNEL)?;
        // INVARIANT: The entry is added for the `KvmShmFile` created right after (which cannot
        // fail any more), and removed when it is dropped.
        shared.mappings.lock().push(mapping, GFP_KERNEL)?;
        Ok(KBox::write(
            slot,
            Self {
                shared: shared.clone(),
                mapping,
                seen,
            },
        ))
    }

    fn info(&self, mut writer: UserSliceWriter) -> Result {
        self.shared.check_present()?;
        let info = KvmShmInfo {
            // CAST: `usize` has 64 bits on x86_64.
            size: self.shared.size as u64,
            iv_position: self.shared.iv_position,
            caching: self.shared.state.lock().caching as u32,
            // CAST: at most `doorbell::MAX_VECTORS`.
            vectors: self.shared.doorbell.as_ref().map_or(0, |d| d.vectors() as u32),
            reserved: 0,
        };
        writer.write_slice(info.as_bytes())
    }

    fn set_eventfd(&self, mut reader: UserSliceReader) -> Result {
        let request = reader.read::<KvmShmEventFd>()?;
        self.shared.doorbell()?.set_eventfd(usize::try_from(request.vector)?, request.fd)
    }

    fn wait(&self, arg: UserPtr) -> Result {
        let (mut reader, mut writer) = UserSlice::new(arg, size_of::<KvmShmWait>()).reader_writer();
        let mut request = reader.read::<KvmShmWait>()?;
        let doorbell = self.shared.doorbell()?;
        request.fired = doorbell.wait(&self.seen, request.vectors, request.timeout_ms)?;
        writer.write_slice(request.as_bytes())
    }

    fn set_caching(&self, mut reader: UserSliceReader) -> Result {
        self.shared.check_present()?;
        self.shared.set_caching(Caching::try_from(reader.read::<u32>()?)?)
    }
}

impl Drop for KvmShmFile {
    fn drop(&mut self) {
        let mut mappings = self.shared.mappings.lock();
        if let Some(i) = mappings.iter().position(|m| *m == self.mapping) {
            // `i` is in bounds, so `remove` cannot fail.
            let _ = mappings.remove(i);
        }
    }
}

#[vtable]
impl MiscDevice for KvmShmFile {
    type Ptr = KBox<Self>;

    /// `mmap(NULL, ...)` gets an address at which the 2 MiB-aligned parts of the window can
    /// have their PMDs (see [`pmd_part`]); without it the kernel picks 4 KiB-aligned addresses for
    /// a device file, and the whole window would take 4 KiB pages, set up in `mmap()`.
    const PMD_ALIGNED_MAPPINGS: bool = true;

    fn open(file: &File, misc: &MiscDeviceRegistration<Self>) -> Result<KBox<Self>> {
        let misc = ptr::from_ref(misc).cast_mut();
        // SAFETY: Every `MiscDeviceRegistration<KvmShmFile>` is the `misc` field of a
        // `KvmShmDevice` (probe creates them only there), so `container_of!` yields that device.
        // `misc_open()` calls us with `misc_mtx` held, and `misc_deregister()`, run when the
        // device's `misc` field is dropped, takes `misc_mtx`. So the device cannot get past
        // dropping `misc` until we return, and `shared`, declared after `misc`, is dropped after
        // it: `shared` is valid for this call. Only that field is borrowed.
        let shared = unsafe { &(*container_of!(misc, KvmShmDevice<'_>, misc)).shared };
        Self::new(shared, file)
    }

    fn mmap(me: &Self, _file: &File, vma: &VmaNew) -> Result {
        let shared = &*me.shared;
        let _guard = shared.enter()?;
        // MAP_SHARED sets VM_MAYSHARE; VM_SHARED is dropped for read-only files.
        if vma.flags() & vm_flags::MAYSHARE == 0 {
            return Err(EINVAL);
        }
        // The kernel has rounded the length up to whole pages (and already refuses length 0).
        let len = vma.end() - vma.start();
        // SAFETY: The vma is being set up in `f_op->mmap()` (`VmaNew`), so nothing else accesses
        // it.
        let pgoff = unsafe { (*vma.as_ptr()).vm_pgoff };
        if len == 0
            || pgoff
                .checked_add(len >> PAGE_SHIFT)
                .is_none_or(|end| end > shared.size >> PAGE_SHIFT)
        {
            return Err(EINVAL);
        }
        shared.add_mapper(vma.mm())?;

        vma.set_io();
        vma.set_dontexpand();
        vma.set_dontdump();
        let mut state = shared.state.lock();
        let raw = vma.as_ptr();
        // CAST: `resource_size_t` and `usize` are both 64 bits on x86_64.
        let pfn = (shared.phys >> PAGE_SHIFT) as usize + pgoff;
        let (start, end) = (vma.start(), vma.end());
        // CAST: as above.
        let pmds = pmd_part(start, end, (pfn << PAGE_SHIFT) as u64);
        // SAFETY: As above, the vma is ours to set up. The protection keeps the vma's permission
        // bits and changes only the caching bits.
        unsafe { (*raw).vm_page_prot = state.caching.page_prot((*raw).vm_page_prot) };
        if pmds.is_empty() {
            // SAFETY: The vma is ours to set up and a shared mapping (checked above); its
            // pages from `pfn` on are inside BAR2 (checked above).
            unsafe { remap(raw, start..end, pfn) }?;
        } else {
            if state.hold.is_none() {
                state.hold = Some(KernelWindow::new(shared.phys, shared.size, state.caching)?);
            }
            let page = |addr: usize| pfn + ((addr - start) >> PAGE_SHIFT);
            // SAFETY: As above, for the parts before and after `pmds`, which are in the vma.
            // The flags are those `remap_pfn_range()` sets, set here for when both parts are
            // empty: the fault handler inserts PFNs, into a VM_PFNMAP vma.
            let mapped = unsafe {
                (*raw).__bindgen_anon_2.vm_flags |= vm_flags::PFNMAP;
                remap(raw, start..pmds.start, pfn)
                    .and_then(|()| remap(raw, pmds.end..end, page(pmds.end)))
            };
            if let Err(e) = mapped {
                state.release_unused_hold();
                return Err(e);
            }
        }
        // SAFETY: As above. `KVMSHM_VM_OPS` is static, and `vm_private_data` points to the
        // `Shared` that this file keeps alive for as long as the vma holds the file (see
        // `vma_shared`). The vma is counted before the lock is released, so the memory type
        // cannot change under it.
        unsafe {
            (*raw).vm_ops = &KVMSHM_VM_OPS;
            (*raw).vm_private_data = Arc::as_ptr(&me.shared).cast_mut().cast();
        }
        state.vmas += 1;
        Ok(())
    }

    fn read_iter(mut kiocb: Kiocb<'_, Self::Ptr>, iov: &mut IovIterDest<'_>) -> Result<usize> {
        let me = kiocb.file();
        me.shared.read(kiocb.ki_pos_mut(), iov)
    }

    fn write_iter(mut kiocb: Kiocb<'_, Self::Ptr>, iov: &mut IovIterSource<'_>) -> Result<usize> {
        let me = kiocb.file();
        me.shared.write(kiocb.ki_pos_mut(), iov)
    }

    fn ioctl(me: &Self, _file: &File, cmd: u32, arg: usize) -> Result<isize> {
        let arg = UserPtr::from_addr(arg);
        match cmd {
            KVMSHM_IOC_INFO => me.info(UserSlice::new(arg, size_of::<KvmShmInfo>()).writer())?,
            KVMSHM_IOC_SET_CACHING => {
                me.set_caching(UserSlice::new(arg, size_of::<u32>()).reader())?
            }
            KVMSHM_IOC_RING => me.shared.ring(UserSlice::new(arg, size_of::<u32>()).reader().read::<u32>()?)?,
            KVMSHM_IOC_SET_EVENTFD => {
                me.set_eventfd(UserSlice::new(arg, size_of::<KvmShmEventFd>()).reader())?
            }
            KVMSHM_IOC_WAIT => me.wait(arg)?,
            _ => return Err(ENOTTY),
        }
        Ok(0)
    }
}

/// A BAR claimed for this driver with `pci_request_region()`, as PCI drivers claim the BARs they
/// use (it then shows as "kvmshm" in `/proc/iomem`, and no other driver can claim it), until
/// dropped. The kernel crate claims a BAR only together with a kernel mapping of all of it
/// (`iomap_region`); BAR2, up to gigabytes of RAM, is mapped into the kernel only for each
/// `read()` and `write()` and, whole, while user mappings need [`MapState::hold`], each time with
/// the device's memory type, so it is claimed on its own.
///
/// # Invariants
///
/// `bar` of `pdev` is claimed by this object.
struct RegionClaim<'a> {
    pdev: &'a pci::Device<Bound>,
    bar: i32,
}

impl<'a> RegionClaim<'a> {
    fn new(pdev: &'a pci::Device<Bound>, bar: u32, name: &'static CStr) -> Result<Self> {
        // Checks that the BAR exists (`resource_len` fails for an invalid index).
        pdev.resource_len(bar)?;
        let bar = i32::try_from(bar)?;
        // SAFETY: `raw_pci_dev` gives the `pci_dev` of a bound device; `bar` is a valid index
        // (checked above) and `name` a static string.
        let ret = unsafe { bindings::pci_request_region(raw_pci_dev(pdev), bar, name.as_char_ptr()) };
        if ret != 0 {
            return Err(EBUSY);
        }
        // INVARIANT: the region was just claimed.
        Ok(Self { pdev, bar })
    }
}

impl Drop for RegionClaim<'_> {
    fn drop(&mut self) {
        // SAFETY: By the type invariant the region is claimed by us; the device is still bound
        // (`pdev` lives for the binding).
        unsafe { bindings::pci_release_region(raw_pci_dev(self.pdev), self.bar) };
    }
}

/// The C `struct pci_dev` of `pdev`, for the PCI calls the kernel crate has no wrapper for.
fn raw_pci_dev(pdev: &pci::Device<Bound>) -> *mut bindings::pci_dev {
    // CAST: `pci::Device` is `#[repr(transparent)]` over `Opaque<bindings::pci_dev>`, so a
    // pointer to it is a pointer to the `pci_dev`, which `Opaque` lets C code mutate.
    ptr::from_ref(pdev).cast::<bindings::pci_dev>().cast_mut()
}

/// PCI driver data of one device, for as long as it is bound (`'bound`).
///
/// Field order matters: fields are dropped in declaration order, `misc` (deregistration) first,
/// then `shared`, which `KvmShmFile::open` may use until deregistration, then `index`, so that
/// the name is only reused after it has been deregistered, then the interrupt handlers, and
/// BAR2 last, once nothing can reach it any more (unbind has revoked the user mappings).
#[pin_data]
struct KvmShmDevice<'bound> {
    #[pin]
    misc: MiscDeviceRegistration<KvmShmFile>,
    shared: Arc<Shared>,
    index: DeviceIndex,
    /// The MSI-X vectors of an ivshmem-doorbell device, with their handlers.
    _interrupts: Option<Interrupts<'bound>>,
    /// BAR2, the shared memory, claimed.
    _memory: RegionClaim<'bound>,
}

struct KvmShmDriver;

kernel::pci_device_table!(
    PCI_TABLE,
    <KvmShmDriver as pci::Driver>::IdInfo,
    [(
        pci::DeviceId::from_id(pci::Vendor::REDHAT_QUMRANET, 0x1110),
        ()
    )]
);

impl pci::Driver for KvmShmDriver {
    type IdInfo = ();
    type Data<'bound> = KvmShmDevice<'bound>;

    const ID_TABLE: pci::IdTable<Self::IdInfo> = &PCI_TABLE;

    fn probe<'bound>(
        pdev: &'bound pci::Device<Core<'_>>,
        _info: Option<&'bound Self::IdInfo>,
    ) -> impl PinInit<Self::Data<'bound>, Error> + 'bound {
        pin_init::pin_init_scope(move || {
            pdev.enable_device_mem()?;
            let registers = pdev.iomap_region_sized::<BAR0_SIZE>(0, c"kvmshm")?;
            let memory = RegionClaim::new(pdev, SHMEM_BAR, c"kvmshm")?;
            let iv_position = registers.read32(IVPOSITION);
            let registers = registers.into_devres()?;
            // An MSI-X BAR makes it ivshmem-doorbell.
            let (doorbell, interrupts) = if pdev.resource_len(MSIX_BAR).is_ok_and(|len| len > 0) {
                let vectors = Interrupts::alloc(pdev)?;
                let doorbell = Doorbell::new(vectors.len())?;
                let interrupts = Interrupts::new(vectors, &doorbell)?;
                (Some(doorbell), Some(interrupts))
            } else {
                (None, None)
            };
            let shared = Shared::new(pdev, registers, iv_position, doorbell)?;
            let index = DeviceIndex::alloc()?;
            let name = index.name();
            dev_info!(
                pdev,
                "kvmshm{}: {} bytes of shared memory, IVPosition {}, {} doorbell vectors\n",
                index.0,
                shared.size,
                iv_position,
                shared.doorbell.as_ref().map_or(0, |d| d.vectors())
            );

            // `shared` is initialised before `misc`: `open` may run as soon as `misc` is
            // registered.
            Ok(try_pin_init!(KvmShmDevice {
                shared,
                index,
                _interrupts: interrupts,
                _memory: memory,
                misc <- MiscDeviceRegistration::register(MiscDeviceOptions { name }),
            }))
        })
    }

    fn unbind<'bound>(_pdev: &'bound pci::Device<Core<'_>>, this: Pin<&Self::Data<'bound>>) {
        this.shared.revoke();
    }
}

kernel::module_pci_driver! {
    type: KvmShmDriver,
    name: "kvmshm",
    authors: ["kvmshm developers"],
    description: "Shared memory and doorbells of ivshmem PCI devices (1af4:1110)",
    license: "GPL",
}
