//! Opening and mapping a kvmshm device: the driver's interface (UAPI), spelt
//! out here and nowhere else in the guest programs.
//!
//! A path to a regular file works too, so that the guest programs can be
//! tested on the host against a plain file.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::io::AsRawFd;

use shm_layout::{HEADER_LEN, LayoutError, Region};

/// The driver's `struct kvmshm_info`.
#[repr(C)]
#[derive(Default)]
struct Info {
    size: u64,
    iv_position: u32,
    caching: u32,
    vectors: u32,
    _reserved: u32,
}

/// The driver's `struct kvmshm_wait`.
#[repr(C)]
#[derive(Default)]
struct Wait {
    vectors: u64,
    timeout_ms: u32,
    _reserved: u32,
    fired: u64,
}

/// Linux's `_IOC(dir, type, nr, size)` encoding.
const fn ioc(dir: u32, nr: u32, size: usize) -> libc::Ioctl {
    // The kernel takes the number as an unsigned int; the cast keeps its bits
    // whether libc spells the parameter c_int (musl) or c_ulong (glibc).
    ((dir << 30) | ((size as u32) << 16) | ((b'K' as u32) << 8) | nr) as libc::Ioctl
}

const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;
/// `_IOR('K', 1, struct kvmshm_info)`: the region's size.
const KVMSHM_IOC_INFO: libc::Ioctl = ioc(IOC_READ, 1, size_of::<Info>());
/// `_IOW('K', 2, __u32)`: the device's memory type (EBUSY while it is mapped).
const KVMSHM_IOC_SET_CACHING: libc::Ioctl = ioc(IOC_WRITE, 2, size_of::<u32>());
/// `_IOW('K', 3, __u32)`: ring `peer << 16 | vector`.
const KVMSHM_IOC_RING: libc::Ioctl = ioc(IOC_WRITE, 3, size_of::<u32>());
/// `_IOWR('K', 5, struct kvmshm_wait)`: wait for this file's unseen interrupts.
const KVMSHM_IOC_WAIT: libc::Ioctl = ioc(IOC_READ | IOC_WRITE, 5, size_of::<Wait>());

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Caching {
    WriteBack = 0,
    WriteCombining = 1,
    Uncached = 2,
}

impl Caching {
    pub fn name(self) -> &'static str {
        match self {
            Self::WriteBack => "wb",
            Self::WriteCombining => "wc",
            Self::Uncached => "uc",
        }
    }

    const ALL: [Self; 3] = [Self::WriteBack, Self::WriteCombining, Self::Uncached];

    /// Parses the short names `wb`, `wc` and `uc`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == s)
    }

    /// The mode the driver's value `v` stands for.
    fn from_u32(v: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|c| *c as u32 == v)
    }
}

#[derive(Debug)]
pub enum DeviceError {
    Io { step: &'static str, source: io::Error },
    Layout(LayoutError),
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { step, source } => write!(f, "{step}: {source}"),
            Self::Layout(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for DeviceError {}

fn io_error(step: &'static str) -> impl FnOnce(io::Error) -> DeviceError {
    move |source| DeviceError::Io { step, source }
}

/// Opens `path` read-write and asks the driver what it is; a plain file
/// standing in for a device is `size` bytes of write-back memory.
fn open_unmapped(path: &str) -> Result<(File, Info), DeviceError> {
    let file = OpenOptions::new().read(true).write(true).open(path).map_err(io_error("cannot open"))?;
    let mut info = Info::default();
    // SAFETY: KVMSHM_IOC_INFO writes one struct kvmshm_info, which `info` is.
    if unsafe { libc::ioctl(file.as_raw_fd(), KVMSHM_IOC_INFO, &mut info) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENOTTY) {
            return Err(io_error("KVMSHM_IOC_INFO")(e));
        }
        info.size = file.metadata().map_err(io_error("cannot stat"))?.len();
        info.caching = Caching::WriteBack as u32;
    }
    Ok((file, info))
}

/// The size of the driver's large pages: a 2 MiB-aligned part of a mapping
/// whose shared-memory offset is 2 MiB-aligned too (the region is, in
/// physical memory: its BAR is aligned to its size) is mapped with 2 MiB
/// page table entries (PMDs) instead of 4 KiB ones.
pub const HUGE_PAGE: usize = 2 << 20;

/// Maps `len` bytes of `fd` from `offset`, shared and read-write, where the
/// kernel chooses: for the driver's devices an address congruent to
/// `offset` modulo [`HUGE_PAGE`] wherever the mapping holds a whole aligned
/// 2 MiB (the driver asks for that), so that it maps them with 2 MiB pages.
pub fn map_device(fd: i32, len: usize, offset: u64) -> io::Result<*mut u8> {
    let offset = libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: a fresh shared mapping (addr NULL), which replaces nothing.
    let map = unsafe {
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        libc::mmap(std::ptr::null_mut(), len, rw, libc::MAP_SHARED, fd, offset)
    };
    if map == libc::MAP_FAILED { Err(io::Error::last_os_error()) } else { Ok(map.cast()) }
}

/// Maps `len` bytes of `fd` from `offset`, shared and read-write, at an
/// address `skew` bytes past a multiple of [`HUGE_PAGE`] if `len` is at
/// least that, whatever the kernel would choose: a `skew` other than
/// `offset` % [`HUGE_PAGE`] gets a mapping in 4 KiB pages only.
pub fn map_shared(fd: i32, len: usize, offset: u64, skew: usize) -> io::Result<*mut u8> {
    let slack = if len >= HUGE_PAGE { HUGE_PAGE } else { 0 };
    let offset = libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: reserves fresh address space (addr NULL, no access), in which
    // only the mapping below is made; the rest is unmapped below.
    let reserved = unsafe {
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        libc::mmap(std::ptr::null_mut(), len + slack, libc::PROT_NONE, flags, -1, 0)
    };
    if reserved == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let start = reserved as usize;
    let base = if slack == 0 { start } else { start + skew.wrapping_sub(start) % HUGE_PAGE };
    // SAFETY: MAP_FIXED over `len` bytes inside the reservation just made,
    // which nothing else uses.
    let map = unsafe {
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        libc::mmap(base as *mut libc::c_void, len, rw, libc::MAP_SHARED | libc::MAP_FIXED, fd, offset)
    };
    let result = if map == libc::MAP_FAILED { Err(io::Error::last_os_error()) } else { Ok(base as *mut u8) };
    // What is left of the reservation: all of it if the mapping failed.
    let left = match result {
        Ok(_) => [(start, base - start), (base + len, start + slack - base)],
        Err(_) => [(start, len + slack), (0, 0)],
    };
    for (at, len) in left.into_iter().filter(|&(_, len)| len > 0) {
        // SAFETY: unmaps parts of the reservation made above that hold no mapping of ours.
        unsafe { libc::munmap(at as *mut libc::c_void, len) };
    }
    result
}

/// A device (or file) mapped shared and read-write.
pub struct Device {
    base: *mut u8,
    size: usize,
    /// The memory type of the mapping, as the driver reports it.
    caching: Caching,
    /// IVPosition: the doorbell id of an ivshmem-doorbell device.
    iv_position: u32,
    /// Doorbell vectors: 0 for ivshmem-plain (and a plain file).
    vectors: u32,
    file: File,
}

impl Device {
    /// Opens and maps `path` whole, first selecting `caching` if given.
    pub fn open(path: &str, caching: Option<Caching>) -> Result<Self, DeviceError> {
        let (file, info) = open_unmapped(path)?;
        let fd = file.as_raw_fd();
        let (size, driver_caching) = (info.size, Caching::from_u32(info.caching));
        if let Some(caching) = caching {
            let mode = caching as u32;
            // SAFETY: KVMSHM_IOC_SET_CACHING reads one u32, which `mode` is.
            if unsafe { libc::ioctl(fd, KVMSHM_IOC_SET_CACHING, &mode) } != 0 {
                return Err(io_error("KVMSHM_IOC_SET_CACHING")(io::Error::last_os_error()));
            }
        }
        let caching = caching.or(driver_caching).unwrap_or(Caching::WriteBack);
        let too_small = LayoutError::TooSmall { what: "the header", needed: HEADER_LEN as u64, available: size };
        let size = usize::try_from(size).ok().filter(|&s| s >= HEADER_LEN).ok_or(DeviceError::Layout(too_small))?;
        let base = map_device(fd, size, 0).map_err(io_error("cannot map"))?;
        Ok(Self { base, size, caching, iv_position: info.iv_position, vectors: info.vectors, file })
    }

    /// IVPosition: the doorbell id of an ivshmem-doorbell device.
    pub fn iv_position(&self) -> u32 {
        self.iv_position
    }

    /// Doorbell vectors: 0 for ivshmem-plain.
    pub fn vectors(&self) -> u32 {
        self.vectors
    }

    /// Rings `vector` of `peer` (the Doorbell register).
    pub fn ring(&self, peer: u16, vector: u16) -> io::Result<()> {
        let value = u32::from(peer) << 16 | u32::from(vector);
        // SAFETY: KVMSHM_IOC_RING reads one u32, which `value` is.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), KVMSHM_IOC_RING, &value) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout_ms` for interrupts this open file has not seen on the vectors in
    /// `mask`; returns the mask of those that had one (0 after the timeout).
    pub fn wait(&self, mask: u64, timeout_ms: u32) -> io::Result<u64> {
        let mut wait = Wait { vectors: mask, timeout_ms, ..Default::default() };
        // SAFETY: KVMSHM_IOC_WAIT reads and writes one struct kvmshm_wait, which `wait` is.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), KVMSHM_IOC_WAIT, &mut wait) } != 0 {
            let e = io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::ETIMEDOUT) { Ok(0) } else { Err(e) };
        }
        Ok(wait.fired)
    }

    pub fn caching(&self) -> Caching {
        self.caching
    }

    /// The open device, for system calls other than the mapping.
    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn region(&self) -> Region<'_> {
        // SAFETY: the mapping lives until Drop, which the borrow of self
        // outlasts, and this type makes no references into it. mmap returns
        // page-aligned memory, and open() checked the size.
        unsafe { Region::new(self.base, self.size) }.expect("checked in open()")
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in open(); every Region of
        // it borrowed self, so none is left.
        unsafe { libc::munmap(self.base.cast(), self.size) };
    }
}

/// The echo protocol's doorbell: waits and rings through the driver.
pub struct DeviceWake<'a>(pub &'a Device);

impl shm_layout::echo::Wake for DeviceWake<'_> {
    fn id(&self) -> Option<u16> {
        u16::try_from(self.0.iv_position).ok()
    }

    fn wait(&mut self, timeout: std::time::Duration) {
        let ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX - 1).max(1);
        // A failure ends the wait like a timeout: the server polls again.
        let _ = self.0.wait(1 << shm_layout::echo::VECTOR, ms);
    }

    fn ring(&mut self, peer: u16) {
        let _ = self.0.ring(peer, shm_layout::echo::VECTOR);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;

    #[test]
    fn ioctl_numbers_match_the_linux_encoding() {
        // The values guest-driver/README.md gives and the driver checks.
        assert_eq!(KVMSHM_IOC_INFO as u32, 0x8018_4b01);
        assert_eq!(KVMSHM_IOC_SET_CACHING as u32, 0x4004_4b02);
        assert_eq!(KVMSHM_IOC_RING as u32, 0x4004_4b03);
        assert_eq!(KVMSHM_IOC_WAIT as u32, 0xc018_4b05);
    }

    #[test]
    fn map_shared_places_the_mapping_at_the_skew_and_leaves_no_reservation() {
        let path = std::env::temp_dir().join(format!("kvmshm-map-shared-{}", std::process::id()));
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        file.set_len(4 * HUGE_PAGE as u64).unwrap();
        file.write_all_at(b"kvmshm", HUGE_PAGE as u64 + 8).unwrap();
        // The mappings that overlap [lo, hi), as (start, end, whether it is
        // inaccessible anonymous memory, as the reservation is).
        let maps_in = |lo: usize, hi: usize| {
            let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
            maps.lines()
                .filter_map(|l| {
                    let mut fields = l.split_whitespace();
                    let (start, end) = fields.next()?.split_once('-')?;
                    let perms = fields.next()?;
                    let inode = fields.nth(2)?;
                    let reserved = perms.starts_with("---") && inode == "0" && fields.next().is_none();
                    Some((usize::from_str_radix(start, 16).ok()?, usize::from_str_radix(end, 16).ok()?, reserved))
                })
                .filter(|&(start, end, _)| start < hi && end > lo)
                .collect::<Vec<_>>()
        };
        for (len, offset, skew, expect) in [
            (4 * HUGE_PAGE, 0, 0, 0),
            (3 * HUGE_PAGE, HUGE_PAGE as u64, 0, 0),
            (2 * HUGE_PAGE, 0, 4096, 4096),
            // Shorter than a large page: wherever the kernel puts it.
            (8192, HUGE_PAGE as u64, 4096, usize::MAX),
        ] {
            let map = map_shared(file.as_raw_fd(), len, offset, skew).unwrap();
            if expect != usize::MAX {
                assert_eq!(map as usize % HUGE_PAGE, expect, "len {len} skew {skew}");
            }
            // Where the file's bytes at HUGE_PAGE + 8 are in the mapping.
            let at = HUGE_PAGE + 8 - offset as usize;
            let mut seen = [0u8; 6];
            // SAFETY: `map` maps `len` bytes, and `at + 6` <= `len` in every case above.
            unsafe { std::ptr::copy_nonoverlapping(map.add(at), seen.as_mut_ptr(), 6) };
            assert_eq!(&seen, b"kvmshm", "len {len} offset {offset}");
            // The one mapping is all that is left of the reservation (len plus
            // a large page, around it, where one was made): what was left of
            // it would be inaccessible anonymous memory next to the mapping.
            // Other tests' threads map and unmap meanwhile, into the space
            // freed too: their mappings are not looked at.
            let (start, end) = (map as usize, map as usize + len);
            let margin = if expect == usize::MAX { 0 } else { HUGE_PAGE };
            let near = maps_in(start - margin, end + margin);
            assert!(near.contains(&(start, end, false)), "len {len} skew {skew}: {near:x?}");
            let left = near.iter().filter(|&&(s, e, reserved)| reserved && (e == start || s == end));
            assert_eq!(left.count(), 0, "len {len} skew {skew}: {near:x?}");
            // SAFETY: the mapping just made, no longer used.
            unsafe { libc::munmap(map.cast(), len) };
        }
    }
}
