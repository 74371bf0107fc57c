//! The host side of a shared-memory device: a file mapped `MAP_SHARED`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: size {size} is not a power of two of at least 4096 bytes")]
    Size { path: PathBuf, size: u64 },
    #[error("{path}: cannot open: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("{path}: the file is {len} bytes, shorter than the requested size {size}; it was left untouched")]
    TooShort { path: PathBuf, len: u64, size: u64 },
    #[error("{path}: not a regular file")]
    NotRegular { path: PathBuf },
    #[error("{path}: cannot size the new file to {size} bytes: {source}")]
    Truncate { path: PathBuf, size: u64, source: io::Error },
    #[error(
        "{path}: cannot map {size} bytes shared (on hugetlbfs the size must be a multiple of the huge page size): {source}"
    )]
    Map { path: PathBuf, size: u64, source: io::Error },
}

/// A file of `size` bytes mapped shared and read-write into this process.
/// The guest's writes land in the file's pages, so any other process that
/// maps the file sees them at once, and they survive the VMM's death.
pub struct SharedFile {
    path: PathBuf,
    addr: NonNull<u8>,
    size: u64,
    _file: File,
}

// SAFETY: the mapping is plain shared memory; SharedFile hands out only its
// address, and concurrent access through it is the point of the device.
unsafe impl Send for SharedFile {}
// SAFETY: as above; SharedFile itself has no interior state to race on.
unsafe impl Sync for SharedFile {}

impl SharedFile {
    /// Opens `path`, creating it (mode 0600, sized with `ftruncate`) if it
    /// does not exist. An existing file must hold at least `size` bytes: it is
    /// never truncated or extended, because mapping past its end would give
    /// the guest SIGBUS-backed memory and resizing it would lose data.
    pub fn open(path: &Path, size: u64) -> Result<Self, Error> {
        let path_buf = path.to_path_buf();
        if !size.is_power_of_two() || size < 4096 {
            return Err(Error::Size { path: path_buf, size });
        }
        let open = |create: bool| OpenOptions::new().read(true).write(true).create_new(create).mode(0o600).open(path);
        let (file, created) = match open(true) {
            Ok(f) => (f, true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                (open(false).map_err(|source| Error::Open { path: path_buf.clone(), source })?, false)
            }
            Err(source) => return Err(Error::Open { path: path_buf, source }),
        };
        let meta = file.metadata().map_err(|source| Error::Open { path: path_buf.clone(), source })?;
        if !meta.file_type().is_file() {
            return Err(Error::NotRegular { path: path_buf });
        }
        if created {
            if let Err(source) = file.set_len(size) {
                let _ = std::fs::remove_file(path);
                return Err(Error::Truncate { path: path_buf, size, source });
            }
        } else if meta.len() < size {
            return Err(Error::TooShort { path: path_buf, len: meta.len(), size });
        }
        // SAFETY: a fresh mapping (addr NULL) of a file we opened read-write;
        // the result is checked before use and unmapped only in Drop.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            let source = io::Error::last_os_error();
            if created {
                let _ = std::fs::remove_file(path);
            }
            return Err(Error::Map { path: path_buf, size, source });
        }
        let addr = NonNull::new(addr.cast()).expect("mmap returned NULL without MAP_FIXED");
        Ok(Self { path: path_buf, addr, size, _file: file })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.addr.as_ptr()
    }

    pub fn size(&self) -> u64 {
        self.size
    }
}

impl Drop for SharedFile {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in open(); KVM's memory
        // slot over it is gone once the VM fd is closed, which Vm ensures by
        // dropping its VmFd before its devices.
        unsafe { libc::munmap(self.addr.as_ptr().cast(), self.size as usize) };
    }
}

/// Parses a size in bytes with an optional K, M or G suffix (binary units),
/// as `--shm size=` and the host tool take it.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (digits, shift) = match s.as_bytes().last() {
        Some(b'k' | b'K') => (&s[..s.len() - 1], 10),
        Some(b'm' | b'M') => (&s[..s.len() - 1], 20),
        Some(b'g' | b'G') => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let n: u64 = digits.parse().map_err(|_| format!("bad size {s:?}"))?;
    n.checked_mul(1 << shift).ok_or_else(|| format!("size {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kvmshm-shm-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn creates_missing_file_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let p = temp("new");
        let _ = std::fs::remove_file(&p);
        let f = SharedFile::open(&p, 1 << 16).unwrap();
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!(meta.len(), 1 << 16);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // SAFETY: the mapping is 64 KiB long.
        unsafe { f.as_ptr().add(100).write(42) };
        drop(f);
        assert_eq!(std::fs::read(&p).unwrap()[100], 42);
    }

    #[test]
    fn short_existing_file_is_an_error_and_untouched() {
        let p = temp("short");
        std::fs::write(&p, b"precious").unwrap();
        let e = SharedFile::open(&p, 4096).err().unwrap();
        assert!(matches!(e, Error::TooShort { len: 8, size: 4096, .. }), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), b"precious");
    }

    #[test]
    fn size_must_be_a_power_of_two() {
        let p = temp("odd");
        let _ = std::fs::remove_file(&p);
        assert!(matches!(SharedFile::open(&p, 3 << 12), Err(Error::Size { .. })));
        assert!(!p.exists());
    }
}
