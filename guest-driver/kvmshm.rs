// SPDX-License-Identifier: GPL-2.0

//! Driver for ivshmem-plain PCI devices (1af4:1110), as exposed by QEMU and by the kvmshm VMM.
//!
//! Every device gets a misc character device, `/dev/kvmshm0`, `/dev/kvmshm1`, ... in probe
//! order. Through it user space can `mmap()` the shared memory (BAR2), `read()`/`write()` it at
//! the file position, ask for its size and IVPosition and choose the caching mode of later
//! mappings with `ioctl()`. See README.md for the user-space interface.
//!
//! # Device removal
//!
//! User mappings are not populated in `mmap()` but page by page from a fault handler (2 MiB
//! around the faulting address at a time). `mmap()` runs before the new VMA is linked into the
//! file's reverse map, so PTEs installed there could be missed by a concurrent
//! `unmap_mapping_range()`; a fault runs only on a VMA that is already linked.
//!
//! Removal ([`Shared::revoke`]) sets `gone`, waits with SRCU for every fault, `read()` and
//! `write()` that may still have seen the device, and then zaps the mappings of every open
//! file. Later faults get `SIGBUS`, later system calls `ENODEV`. The kernel mapping of BAR2 stays
//! until the last open file is released, but nothing uses it after removal.

use core::ptr::{self, NonNull};
use kernel::{
    bindings, container_of,
    device::Core,
    fs::{File, Kiocb},
    io::Io,
    ioctl::{_IOR, _IOW},
    iov::{IovIterDest, IovIterSource},
    miscdevice::{MiscDevice, MiscDeviceOptions, MiscDeviceRegistration},
    mm::virt::{flags as vm_flags, VmaNew, VmaRef},
    new_mutex, new_srcu,
    page::{PAGE_SHIFT, PAGE_SIZE},
    pci,
    prelude::*,
    sizes::SZ_2M,
    sync::{
        atomic::{Acquire, Atomic, AtomicType, Relaxed, Release},
        srcu::Guard,
        Arc, Mutex, Srcu,
    },
    uaccess::{UserSlice, UserSliceReader, UserSliceWriter},
};
use zerocopy_derive::Immutable;

/// Size of BAR0, the register block.
const BAR0_SIZE: usize = 256;
/// Offset of the read-only IVPosition register (the device's id) in BAR0.
const IVPOSITION: usize = 8;
/// The BAR holding the shared memory.
const SHMEM_BAR: u32 = 2;

/// Returns a [`KvmShmInfo`] for the device behind the file.
const KVMSHM_IOC_INFO: u32 = _IOR::<KvmShmInfo>('K' as u32, 1);
/// Sets the [`Caching`] mode of later `mmap()`s through this open file.
const KVMSHM_IOC_SET_CACHING: u32 = _IOW::<u32>('K' as u32, 2);

// README.md gives these numbers to user space.
static_assert!(KVMSHM_IOC_INFO == 0x8010_4b01);
static_assert!(KVMSHM_IOC_SET_CACHING == 0x4004_4b02);

/// The argument of `KVMSHM_IOC_INFO` (`struct kvmshm_info`).
#[repr(C)]
#[derive(IntoBytes, Immutable)]
struct KvmShmInfo {
    size: u64,
    iv_position: u32,
    caching: u32,
}

/// Caching mode of a user mapping, the argument of `KVMSHM_IOC_SET_CACHING`.
#[derive(Clone, Copy)]
#[repr(i32)]
enum Caching {
    /// Write-back: the vma's default protection, right for host RAM.
    WriteBack = 0,
    /// Write-combining (`pgprot_writecombine()`).
    WriteCombining = 1,
    /// Uncached, UC- (`pgprot_noncached()`).
    Uncached = 2,
}

// SAFETY: `Caching` is `repr(i32)`, so it has the size and alignment of `i32`, and each of its
// values is an `i32` that converts back to the same value.
unsafe impl AtomicType for Caching {
    type Repr = i32;
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

/// The most devices the driver handles at once.
const MAX_DEVICES: usize = 16;

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
];

/// Bit `i` is set while the name `NAMES[i]` belongs to a device.
static USED_INDICES: Atomic<u32> = Atomic::new(0);

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

/// The kernel's write-back mapping of BAR2 (`memremap(MEMREMAP_WB)`).
///
/// # Invariants
///
/// `addr` is the start of a live `memremap()` mapping of the whole BAR.
struct KernelMapping {
    addr: NonNull<u8>,
}

// SAFETY: A `memremap()` mapping may be used and unmapped from any thread; `KernelMapping` only
// hands out its address, and every access through it is an `unsafe` operation justified where it
// is made.
unsafe impl Send for KernelMapping {}
// SAFETY: See `Send`; `&KernelMapping` allows nothing more than reading the address.
unsafe impl Sync for KernelMapping {}

impl KernelMapping {
    fn new(phys: bindings::resource_size_t, size: usize) -> Result<Self> {
        // CAST: `MEMREMAP_WB` is a small flag constant.
        //
        // SAFETY: `memremap()` accepts any range; it fails if the range is not mappable. Here it
        // is the BAR of a device that is bound to this driver.
        let addr = unsafe { bindings::memremap(phys, size, bindings::MEMREMAP_WB as c_ulong) };
        // INVARIANT: `memremap()` returned a mapping of the whole range, or NULL.
        NonNull::new(addr.cast())
            .map(|addr| Self { addr })
            .ok_or(ENOMEM)
    }

    /// Address of byte `offset` of the BAR.
    fn at(&self, offset: usize) -> *mut u8 {
        self.addr.as_ptr().wrapping_add(offset)
    }
}

impl Drop for KernelMapping {
    fn drop(&mut self) {
        // SAFETY: By the type invariant `addr` comes from `memremap()` and is unmapped only here.
        unsafe { bindings::memunmap(self.addr.as_ptr().cast()) };
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

/// State of one device, shared by its PCI driver data and its open files.
#[pin_data]
struct Shared {
    /// Page frame number of the start of BAR2.
    pfn: usize,
    /// Size of BAR2 in bytes, a non-zero multiple of the page size.
    size: usize,
    iv_position: u32,
    kmem: KernelMapping,
    /// Set once when the device goes away (unbind or removal).
    gone: Atomic<bool>,
    /// Protects every use of the BAR (read, write, fault) against [`Shared::revoke`].
    #[pin]
    srcu: Srcu,
    /// One entry per open file, for [`Shared::revoke`].
    ///
    /// Invariant: each entry is the `f_mapping` of an open file whose [`KvmShmFile`] is alive;
    /// that `KvmShmFile` removes the entry, under this lock, when it is dropped.
    #[pin]
    mappings: Mutex<KVec<FileMapping>>,
}

impl Shared {
    fn new(pdev: &pci::Device<Core<'_>>, iv_position: u32) -> Result<Arc<Self>> {
        let phys = pdev.resource_start(SHMEM_BAR)?;
        let size = usize::try_from(pdev.resource_len(SHMEM_BAR)?)?;
        if size == 0 || size % PAGE_SIZE != 0 || phys % PAGE_SIZE as u64 != 0 {
            return Err(ENODEV);
        }
        let pfn = usize::try_from(phys >> PAGE_SHIFT)?;
        let kmem = KernelMapping::new(phys, size)?;

        Arc::pin_init(
            try_pin_init!(Self {
                pfn,
                size,
                iv_position,
                kmem,
                gone: Atomic::new(false),
                srcu <- new_srcu!(),
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
    /// When this returns, no fault, `read()` or `write()` uses the BAR any more, no user PTE
    /// points to it, and none will again.
    fn revoke(&self) {
        self.gone.store(true, Release);
        // Every fault, read or write that starts from now on sees `gone` (the SRCU grace period
        // guarantee); wait for those that may have missed it.
        self.srcu.synchronize();
        // The faults that inserted PTEs have all finished, each in a vma that was already linked
        // into the reverse map of its file's `f_mapping` (faults only happen after `mmap()` has
        // completed). Zapping those address spaces therefore removes every PTE. A fork that is
        // copying PTEs concurrently links the child vma after the parent's, so the child's copies
        // are zapped too.
        for mapping in self.mappings.lock().iter() {
            // SAFETY: By the invariant of `mappings`, the entry belongs to an open file, which
            // holds its inode, and so the inode's `address_space`, alive; the entry cannot be
            // removed while we hold the lock.
            unsafe { bindings::unmap_mapping_range(mapping.0.as_ptr(), 0, 0, 1) };
        }
    }

    fn read(&self, pos: &mut i64, iov: &mut IovIterDest<'_>) -> Result<usize> {
        let _guard = self.enter()?;
        let start = usize::try_from(*pos).map_err(|_| EINVAL)?;
        if start >= self.size {
            return Ok(0);
        }
        let len = iov.len().min(self.size - start);
        // SAFETY: `start + len <= size`, so the source range is inside the kernel mapping, which
        // lives as long as `self`. The memory is shared with other parties, so it is read through
        // a raw pointer and not a Rust reference. The SRCU guard keeps removal from completing
        // while we copy.
        let copied =
            unsafe { bindings::_copy_to_iter(self.kmem.at(start).cast(), len, iov.as_raw()) };
        if copied == 0 && len != 0 {
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
        let len = iov.len().min(self.size - start);
        // SAFETY: As in `read`: the destination range is inside the live kernel mapping, written
        // through a raw pointer, with removal held off by the SRCU guard.
        let copied =
            unsafe { bindings::_copy_from_iter(self.kmem.at(start).cast(), len, iov.as_raw()) };
        if copied == 0 {
            return Err(EFAULT);
        }
        *pos = i64::try_from(start + copied)?;
        Ok(copied)
    }

    /// Handles a fault at page-aligned `address` of `vma`, whose first page is page `vm_pgoff` of
    /// the BAR: maps the 2 MiB-aligned block around `address` (clipped to the vma).
    fn fault(&self, vma: &VmaRef, vm_pgoff: usize, address: usize) -> bindings::vm_fault_t {
        const SIGBUS: bindings::vm_fault_t = bindings::vm_fault_reason_VM_FAULT_SIGBUS;
        const NOPAGE: bindings::vm_fault_t = bindings::vm_fault_reason_VM_FAULT_NOPAGE;

        let Ok(_guard) = self.enter() else {
            return SIGBUS;
        };
        let block = address & !(SZ_2M - 1);
        let (first, end) = (block.max(vma.start()), (block + SZ_2M).min(vma.end()));
        // Page of BAR2 mapped at `first`. The vma lies within BAR2 (checked by `mmap()`, and a
        // VM_DONTEXPAND vma cannot grow); check the block again rather than rely on that.
        let first_page = vm_pgoff.saturating_add((first - vma.start()) >> PAGE_SHIFT);
        if first_page.saturating_add((end - first) >> PAGE_SHIFT) > self.size >> PAGE_SHIFT {
            return SIGBUS;
        }
        let insert = |addr: usize| {
            let pfn = self.pfn + first_page + ((addr - first) >> PAGE_SHIFT);
            // SAFETY: We are in the fault handler of `vma`, which is locked for reading. The vma
            // is VM_PFNMAP and not VM_MIXEDMAP and, being shared, not a COW mapping (set up by
            // `KvmShmFile::mmap`). `addr` is inside it and `pfn` inside BAR2 (checked above).
            // The `gone` check above, under the SRCU guard, keeps the PTE from outliving the
            // device (see `Shared::revoke`).
            unsafe { bindings::vmf_insert_pfn(vma.as_ptr(), addr, pfn) }
        };

        let ret = insert(address);
        if ret == NOPAGE {
            // Map the rest of the block now; a page that fails here faults again on its own.
            for addr in (first..end).step_by(PAGE_SIZE).filter(|&a| a != address) {
                if insert(addr) != NOPAGE {
                    break;
                }
            }
        }
        ret
    }
}

/// Fault handler of kvmshm user mappings.
///
/// # Safety
///
/// Must only be called by the mm core as the `fault` handler of a vma set up by
/// [`KvmShmFile::mmap`].
unsafe extern "C" fn kvmshm_fault(vmf: *mut bindings::vm_fault) -> bindings::vm_fault_t {
    // SAFETY: The mm core passes a valid `vm_fault` for the duration of the call.
    let (vma, address) = unsafe { ((*vmf).__bindgen_anon_1.vma, (*vmf).__bindgen_anon_1.address) };
    // SAFETY: `vma` is valid and read-locked (mmap lock or vma lock) during a fault.
    let vma = unsafe { VmaRef::from_raw(vma) };
    // SAFETY: The vma is read-locked, so these fields are stable.
    let (vm_pgoff, private) =
        unsafe { ((*vma.as_ptr()).vm_pgoff, (*vma.as_ptr()).vm_private_data) };
    // SAFETY: `KvmShmFile::mmap` set `vm_private_data` to the `Shared` of the mapped file (a fork
    // or split copies it with `vm_file`). The vma holds a reference to `vm_file`, so the file has
    // not been released and its `KvmShmFile` still holds an `Arc` of this `Shared`.
    let shared = unsafe { &*private.cast::<Shared>() };
    shared.fault(vma, vm_pgoff, address)
}

/// The vm operations of kvmshm user mappings.
static KVMSHM_VM_OPS: bindings::vm_operations_struct = bindings::vm_operations_struct {
    fault: Some(kvmshm_fault),
    ..pin_init::zeroed()
};

/// An open kvmshm file.
struct KvmShmFile {
    shared: Arc<Shared>,
    /// Caching mode of later `mmap()`s through this file.
    caching: Atomic<Caching>,
    /// This file's entry in `shared.mappings`.
    mapping: FileMapping,
}

impl KvmShmFile {
    fn new(shared: &Arc<Shared>, file: &File) -> Result<KBox<Self>> {
        // SAFETY: `file` is valid; `f_mapping` is set before `open` and a character device file
        // never changes it.
        let mapping = unsafe { (*file.as_ptr()).f_mapping };
        let mapping = FileMapping(NonNull::new(mapping).ok_or(EINVAL)?);
        let slot = KBox::new_uninit(GFP_KERNEL)?;
        // INVARIANT: The entry is added for the `KvmShmFile` created right after (which cannot
        // fail any more), and removed when it is dropped.
        shared.mappings.lock().push(mapping, GFP_KERNEL)?;
        Ok(KBox::write(
            slot,
            Self {
                shared: shared.clone(),
                caching: Atomic::new(Caching::WriteBack),
                mapping,
            },
        ))
    }

    fn info(&self, mut writer: UserSliceWriter) -> Result {
        self.shared.check_present()?;
        let info = KvmShmInfo {
            // CAST: `usize` has 64 bits on x86_64.
            size: self.shared.size as u64,
            iv_position: self.shared.iv_position,
            caching: self.caching.load(Relaxed) as u32,
        };
        writer.write_slice(info.as_bytes())
    }

    fn set_caching(&self, mut reader: UserSliceReader) -> Result {
        self.shared.check_present()?;
        let caching = Caching::try_from(reader.read::<u32>()?)?;
        self.caching.store(caching, Relaxed);
        Ok(())
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

    fn open(file: &File, misc: &MiscDeviceRegistration<Self>) -> Result<KBox<Self>> {
        let misc = ptr::from_ref(misc).cast_mut();
        // SAFETY: Every `MiscDeviceRegistration<KvmShmFile>` is the `misc` field of a
        // `KvmShmDevice` (probe creates them only there), so `container_of!` yields that device.
        // `misc_open()` calls us with `misc_mtx` held, and `misc_deregister()`, run when the
        // device's `misc` field is dropped, takes `misc_mtx`. So the device cannot get past
        // dropping `misc` until we return, and `shared`, declared after `misc`, is dropped after
        // it: `shared` is valid for this call. Only that field is borrowed.
        let shared = unsafe { &(*container_of!(misc, KvmShmDevice, misc)).shared };
        Self::new(shared, file)
    }

    fn mmap(me: &Self, _file: &File, vma: &VmaNew) -> Result {
        me.shared.check_present()?;
        // MAP_SHARED sets VM_MAYSHARE; VM_SHARED is dropped for read-only files.
        if vma.flags() & vm_flags::MAYSHARE == 0 {
            return Err(EINVAL);
        }
        // The kernel has rounded the length up to whole pages (and already refuses length 0).
        let pages = (vma.end() - vma.start()) >> PAGE_SHIFT;
        // SAFETY: The vma is being set up in `f_op->mmap()` (`VmaNew`), so nothing else accesses
        // it.
        let pgoff = unsafe { (*vma.as_ptr()).vm_pgoff };
        if pages == 0
            || pgoff
                .checked_add(pages)
                .is_none_or(|end| end > me.shared.size >> PAGE_SHIFT)
        {
            return Err(EINVAL);
        }

        vma.set_io();
        vma.set_dontexpand();
        vma.set_dontdump();
        let raw = vma.as_ptr();
        // SAFETY: As above, the vma is ours to set up. VM_PFNMAP is valid with the flags already
        // set: VM_MIXEDMAP is never set by this driver, and a VM_MAYSHARE vma is not a COW
        // mapping. The protection keeps the vma's permission bits and changes only the caching
        // bits, which the mm core preserves (`pgprot_modify()`). `KVMSHM_VM_OPS` is static, and
        // `vm_private_data` points to the `Shared` that this file keeps alive for as long as the
        // vma holds the file (see `kvmshm_fault`).
        unsafe {
            (*raw).__bindgen_anon_2.vm_flags |= vm_flags::PFNMAP;
            (*raw).vm_page_prot = me.caching.load(Relaxed).page_prot((*raw).vm_page_prot);
            (*raw).vm_ops = &KVMSHM_VM_OPS;
            (*raw).vm_private_data = Arc::as_ptr(&me.shared).cast_mut().cast();
        }
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
            _ => return Err(ENOTTY),
        }
        Ok(0)
    }
}

/// PCI driver data of one device.
///
/// Field order matters: fields are dropped in declaration order, `misc` (deregistration) first,
/// then `shared`, which `KvmShmFile::open` may use until deregistration, then `index`, so that
/// the name is only reused after it has been deregistered.
#[pin_data]
struct KvmShmDevice {
    #[pin]
    misc: MiscDeviceRegistration<KvmShmFile>,
    shared: Arc<Shared>,
    index: DeviceIndex,
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
    type Data<'bound> = KvmShmDevice;

    const ID_TABLE: pci::IdTable<Self::IdInfo> = &PCI_TABLE;

    fn probe<'bound>(
        pdev: &'bound pci::Device<Core<'_>>,
        _info: Option<&'bound Self::IdInfo>,
    ) -> impl PinInit<Self::Data<'bound>, Error> + 'bound {
        pin_init::pin_init_scope(move || {
            pdev.enable_device_mem()?;
            // BAR0 is only needed for IVPosition: map it, read the register, unmap it.
            let iv_position = pdev
                .iomap_region_sized::<BAR0_SIZE>(0, c"kvmshm")?
                .read32(IVPOSITION);
            let shared = Shared::new(pdev, iv_position)?;
            let index = DeviceIndex::alloc()?;
            let name = index.name();
            dev_info!(
                pdev,
                "kvmshm{}: {} bytes of shared memory, IVPosition {}\n",
                index.0,
                shared.size,
                iv_position
            );

            // `shared` is initialised before `misc`: `open` may run as soon as `misc` is
            // registered.
            Ok(try_pin_init!(KvmShmDevice {
                shared,
                index,
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
    description: "Shared memory of ivshmem-plain PCI devices (1af4:1110)",
    license: "GPL",
}
