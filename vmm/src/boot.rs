//! Loading Linux: the ELF vmlinux at its own address, the initramfs at the
//! top of RAM below 4 GiB, the command line and the zero page of the 64-bit
//! boot protocol.

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{Elf, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kernel {path}")]
    KernelOpen { path: PathBuf, source: std::io::Error },
    #[error(
        "kernel {path}: not an ELF vmlinux (this VMM boots the uncompressed vmlinux, images/out/vmlinux, not a bzImage)"
    )]
    KernelFormat { path: PathBuf, source: linux_loader::loader::Error },
    #[error("initramfs {path}")]
    InitrdOpen { path: PathBuf, source: std::io::Error },
    #[error(
        "initramfs {path} ({size} bytes) does not fit in guest memory above the kernel (which ends at {kernel_end:#x}); give the guest more memory with --memory"
    )]
    InitrdTooBig { path: PathBuf, size: u64, kernel_end: u64 },
    #[error("writing the initramfs into guest memory")]
    InitrdWrite(#[source] vm_memory::GuestMemoryError),
    #[error("kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    #[error("writing the kernel command line into guest memory")]
    CmdlineWrite(#[source] linux_loader::loader::Error),
    #[error("writing the zero page into guest memory")]
    ZeroPage(#[source] linux_loader::configurator::Error),
    #[error("a random seed for the guest from the host's getrandom")]
    RngSeed(#[source] std::io::Error),
    #[error("writing the guest's random seed into guest memory")]
    RngSeedWrite(#[source] vm_memory::GuestMemoryError),
}

/// The `setup_data` type of a seed for the kernel's random number generator
/// (arch/x86/include/uapi/asm/bootparam.h).
const SETUP_RNG_SEED: u32 = 9;
/// The 256 bits the kernel's CRNG needs to be ready: the kernel credits a
/// boot loader's seed in full (`random.trust_bootloader`, on by default).
const RNG_SEED_LEN: usize = 32;

/// The kernel's entry point and what the zero page must say about it.
pub struct Kernel {
    pub entry: u64,
    pub end: u64,
}

pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<Kernel, Error> {
    let mut file = File::open(path).map_err(|source| Error::KernelOpen { path: path.into(), source })?;
    let loaded = Elf::load(mem, None, &mut file, Some(GuestAddress(layout::HIGH_RAM)))
        .map_err(|source| Error::KernelFormat { path: path.into(), source })?;
    Ok(Kernel { entry: loaded.kernel_load.raw_value(), end: loaded.kernel_end })
}

pub struct Initrd {
    pub addr: u64,
    pub size: u64,
}

/// Places the initramfs page-aligned at the top of RAM below 4 GiB (the
/// zero page's address of it has 32 bits), as boot loaders do: the end of
/// the first of the `ram` ranges ([`layout::ram_ranges`]).
pub fn load_initrd(mem: &GuestMemoryMmap, path: &Path, ram: &[Range<u64>], kernel: &Kernel) -> Result<Initrd, Error> {
    let data = std::fs::read(path).map_err(|source| Error::InitrdOpen { path: path.into(), source })?;
    let size = data.len() as u64;
    let too_big = || Error::InitrdTooBig { path: path.into(), size, kernel_end: kernel.end };
    let top = ram.first().map_or(0, |r| r.end);
    let addr = top.checked_sub(size).ok_or_else(too_big)? & !0xfff;
    // Keep a quarter of RAM above the kernel free for the kernel's own early allocations.
    if addr < kernel.end + (top - kernel.end) / 4 {
        return Err(too_big());
    }
    mem.write_slice(&data, GuestAddress(addr)).map_err(Error::InitrdWrite)?;
    Ok(Initrd { addr, size })
}

pub fn build_cmdline(parts: &[&str]) -> Result<Cmdline, Error> {
    let mut cmdline = Cmdline::new(layout::CMDLINE_MAX).map_err(Error::Cmdline)?;
    for part in parts.iter().filter(|p| !p.trim().is_empty()) {
        cmdline.insert_str(part.trim()).map_err(Error::Cmdline)?;
    }
    Ok(cmdline)
}

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;

/// The e820 map for RAM at `ram`, as (start, length, type): low memory up
/// to the MP table, the table, then each RAM range from 1 MiB.
fn e820(ram: &[Range<u64>]) -> Vec<(u64, u64, u32)> {
    let mut e820 =
        vec![(0, layout::MPTABLE, E820_RAM), (layout::MPTABLE, layout::EBDA_END - layout::MPTABLE, E820_RESERVED)];
    for r in ram {
        let start = r.start.max(layout::HIGH_RAM);
        e820.push((start, r.end - start, E820_RAM));
    }
    e820
}

/// Writes the command line, a random seed ([`write_rng_seed`]) and the zero
/// page, whose e820 map says where RAM is and which points to the other two.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    cmdline: &Cmdline,
    initrd: Option<&Initrd>,
    ram: &[Range<u64>],
) -> Result<(), Error> {
    linux_loader::loader::load_cmdline(mem, GuestAddress(layout::CMDLINE), cmdline).map_err(Error::CmdlineWrite)?;
    let cmdline_len = cmdline.as_cstring().map_err(Error::Cmdline)?.as_bytes().len();

    let mut params = boot_params::default();
    let hdr = &mut params.hdr;
    hdr.boot_flag = 0xaa55;
    hdr.header = 0x5372_6448; // "HdrS"
    hdr.type_of_loader = 0xff;
    hdr.cmd_line_ptr = layout::CMDLINE as u32;
    hdr.cmdline_size = cmdline_len as u32;
    hdr.kernel_alignment = 0x100_0000;
    hdr.setup_data = write_rng_seed(mem)?;
    if let Some(initrd) = initrd {
        hdr.ramdisk_image = initrd.addr as u32;
        hdr.ramdisk_size = initrd.size as u32;
    }
    let e820 = e820(ram);
    for (i, &(addr, size, type_)) in e820.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry { addr, size, r#type: type_ };
    }
    params.e820_entries = e820.len() as u8;
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new::<boot_params>(&params, GuestAddress(layout::ZERO_PAGE)),
        mem,
    )
    .map_err(Error::ZeroPage)
}

/// A seed from the host's random number generator, as a `setup_data` entry
/// at [`layout::SETUP_DATA`]; returns its address. Without one the guest's
/// CRNG has no entropy during the whole boot (no RDRAND where it is hidden,
/// few interrupts), and while it has none every `get_random_*` call, for
/// each fork, exec and hash table, hashes the input pool again: BLAKE2s was
/// 2% of the boot where kernel code is emulated. The kernel zeroes the seed
/// once it has used it. QEMU gives one to the kernels it boots too.
fn write_rng_seed(mem: &GuestMemoryMmap) -> Result<u64, Error> {
    let mut seed = [0u8; RNG_SEED_LEN];
    // SAFETY: getrandom writes at most `seed.len()` bytes into `seed`.
    let n = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
    if n != seed.len() as isize {
        // Up to 256 bytes come whole once the host's pool is ready, which
        // getrandom without flags waits for: a short count is an error.
        return Err(Error::RngSeed(if n < 0 {
            std::io::Error::last_os_error()
        } else {
            std::io::ErrorKind::UnexpectedEof.into()
        }));
    }
    // struct setup_data: next (none), type, len, then the data.
    let entry =
        [&0u64.to_le_bytes()[..], &SETUP_RNG_SEED.to_le_bytes(), &(RNG_SEED_LEN as u32).to_le_bytes(), &seed].concat();
    mem.write_slice(&entry, GuestAddress(layout::SETUP_DATA)).map_err(Error::RngSeedWrite)?;
    Ok(layout::SETUP_DATA)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn the_random_seed_is_a_setup_data_entry_of_fresh_host_randomness() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MIB as usize)]).unwrap();
        let read = |mem: &GuestMemoryMmap| {
            let mut entry = [0u8; 16 + RNG_SEED_LEN];
            mem.read_slice(&mut entry, GuestAddress(layout::SETUP_DATA)).unwrap();
            entry
        };
        assert_eq!(write_rng_seed(&mem).unwrap(), layout::SETUP_DATA);
        let first = read(&mem);
        // next = 0 (the last entry), type = SETUP_RNG_SEED, len = 32.
        assert_eq!(first[..16], [0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 32, 0, 0, 0]);
        write_rng_seed(&mem).unwrap();
        assert_ne!(read(&mem)[16..], first[16..], "two seeds alike");
    }

    #[test]
    fn ram_beyond_3_gib_continues_at_4_gib() {
        let low = |end| vec![(0, 0x9fc00, E820_RAM), (0x9fc00, 0x400, E820_RESERVED), (MIB, end - MIB, E820_RAM)];
        assert_eq!(e820(&layout::ram_ranges(128 * MIB)), low(128 * MIB));
        assert_eq!(e820(&layout::ram_ranges(3 * GIB)), low(3 * GIB));
        let with_high = |len| [low(3 * GIB), vec![(4 * GIB, len, E820_RAM)]].concat();
        assert_eq!(e820(&layout::ram_ranges(3 * GIB + MIB)), with_high(MIB));
        assert_eq!(e820(&layout::ram_ranges(4 * GIB)), with_high(GIB));
        let total: u64 = e820(&layout::ram_ranges(4 * GIB)).iter().filter(|e| e.2 == E820_RAM).map(|e| e.1).sum();
        assert_eq!(total, 4 * GIB - MIB + 0x9fc00, "all of it but the hole below 1 MiB");
    }
}
