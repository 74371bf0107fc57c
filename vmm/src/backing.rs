//! The host file behind a device's shared memory, mapped `MAP_SHARED`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vm_memory::FileOffset;
use vm_memory::mmap::{MmapRegion, MmapRegionError};

use crate::lock;
use crate::vcpu::Kickers;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: size {size} is not a power of two of at least 4096 bytes")]
    Size { path: PathBuf, size: u64 },
    #[error("{path}: cannot open")]
    Open { path: PathBuf, source: io::Error },
    #[error("{path}: the file is {len} bytes, shorter than the requested size {size}; it was left untouched")]
    TooShort { path: PathBuf, len: u64, size: u64 },
    #[error("{path}: not a regular file")]
    NotRegular { path: PathBuf },
    #[error("{path}: cannot size the new file to {size} bytes")]
    Truncate { path: PathBuf, size: u64, source: io::Error },
    #[error("{path}: cannot map {size} bytes shared (on hugetlbfs the size must be a multiple of the huge page size)")]
    Map {
        path: PathBuf,
        size: u64,
        #[source]
        source: MmapRegionError,
    },
}

/// A file of `size` bytes mapped shared and read-write into this process.
/// The guest's writes land in the file's pages, so any other process that
/// maps the file sees them at once, and they survive the VMM's death.
pub struct BackingFile {
    path: PathBuf,
    region: MmapRegion,
}

impl BackingFile {
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
        let result = Self::from_file(path_buf, file, size, created);
        if created && result.is_err() {
            let _ = std::fs::remove_file(path);
        }
        result
    }

    /// Maps `file`, which `path` names in messages; a `new` file is first
    /// sized to `size`, any other must already hold that much.
    pub fn from_file(path: PathBuf, file: File, size: u64, new: bool) -> Result<Self, Error> {
        let meta = file.metadata().map_err(|source| Error::Open { path: path.clone(), source })?;
        if !meta.file_type().is_file() {
            return Err(Error::NotRegular { path });
        }
        if new {
            file.set_len(size).map_err(|source| Error::Truncate { path: path.clone(), size, source })?;
        } else if meta.len() < size {
            return Err(Error::TooShort { path, len: meta.len(), size });
        }
        let len = usize::try_from(size).map_err(|_| Error::Size { path: path.clone(), size })?;
        let region = MmapRegion::from_file(FileOffset::new(file, 0), len).map_err(|source| Error::Map {
            path: path.clone(),
            size,
            source,
        })?;
        // Where the file system allows huge pages only on request (tmpfs
        // mounted huge=advise, or shmem_enabled=advise), ask: KVM maps the
        // guest's view with 2 MiB pages only where this mapping has them.
        // SAFETY: advice about the mapping just made, `len` bytes long; it
        // cannot change its contents. A refusal (EINVAL where the kernel has
        // no THP) leaves it as it was, which is fine.
        unsafe { libc::madvise(region.as_ptr().cast(), len, libc::MADV_HUGEPAGE) };
        Ok(Self { path, region })
    }

    /// Shared memory without a name (a memfd), for unit tests and the fuzzer.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn memfd(size: u64) -> Self {
        use std::os::fd::FromRawFd;
        // SAFETY: memfd_create reads a NUL-terminated name and returns a new
        // descriptor or -1.
        let fd = unsafe { libc::memfd_create(c"kvmshm-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        Self::from_file("(memfd)".into(), file, size, true).expect("map a memfd")
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self) -> &File {
        self.region.file_offset().expect("mapped from a file").file()
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.region.as_ptr()
    }

    pub fn size(&self) -> u64 {
        self.region.size() as u64
    }

    /// The file's length now, if it became shorter than the mapping: its
    /// missing pages can no longer be read or written by anyone.
    pub fn shrunk(&self) -> Option<u64> {
        let file = self.file();
        let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: fstat writes a `struct stat` into the buffer it is given,
        // which is large enough; the fd is open (owned by the region).
        // (Not `File::metadata`, which uses statx: one system call less for
        // the seccomp filter to allow.)
        if unsafe { libc::fstat(file.as_raw_fd(), stat.as_mut_ptr()) } != 0 {
            return None;
        }
        // SAFETY: fstat succeeded, so it filled the buffer.
        let len = unsafe { stat.assume_init() }.st_size as u64;
        (len < self.size()).then_some(len)
    }
}

/// A backing file that became shorter than its device while the VM ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shrunk {
    pub path: PathBuf,
    /// What the device maps.
    pub size: u64,
    /// The file's length when it was found short.
    pub now: u64,
}

/// Watches the backing files from a thread of its own. A host process can
/// truncate a file under the running guest; the guest's next access to a
/// missing page then fails inside KVM, which on some hosts retries it
/// forever instead of returning an error. When a file is found short, the
/// watch records it and stops the vCPUs (see [`Kickers::request_stop`]); if
/// the VM is not done within [`ShrinkWatch::GIVE_UP`], it ends the process
/// with the same message.
pub struct ShrinkWatch {
    files: Vec<Arc<BackingFile>>,
    found: Arc<Mutex<Option<Shrunk>>>,
    done: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ShrinkWatch {
    pub const POLL: Duration = Duration::from_millis(100);
    pub const GIVE_UP: Duration = Duration::from_secs(3);

    pub fn start(files: Vec<Arc<BackingFile>>, kickers: Kickers) -> io::Result<Self> {
        let found = Arc::new(Mutex::new(None));
        let done = Arc::new(AtomicBool::new(false));
        let (watched, found_by_thread, done_for_thread) = (files.clone(), found.clone(), done.clone());
        let thread = crate::spawn_started("backing-watch", move || {
            while !done_for_thread.load(Ordering::SeqCst) {
                if let Some(shrunk) = scan(&watched) {
                    *lock(&found_by_thread) = Some(shrunk.clone());
                    stop_vcpus(&kickers, &shrunk, &done_for_thread);
                    return;
                }
                std::thread::park_timeout(Self::POLL);
            }
        })?;
        Ok(Self { files, found, done, thread: Some(thread) })
    }

    /// What the watch found, or what a scan finds now.
    pub fn found(&self) -> Option<Shrunk> {
        lock(&self.found).clone().or_else(|| scan(&self.files))
    }
}

fn scan(files: &[Arc<BackingFile>]) -> Option<Shrunk> {
    files.iter().find_map(|f| {
        let now = f.shrunk()?;
        Some(Shrunk { path: f.path().to_path_buf(), size: f.size(), now })
    })
}

fn stop_vcpus(kickers: &Kickers, shrunk: &Shrunk, done: &AtomicBool) {
    kickers.request_stop();
    let start = Instant::now();
    while !done.load(Ordering::SeqCst) {
        if start.elapsed() > ShrinkWatch::GIVE_UP {
            eprintln!(
                "vmm: the backing file {} shrank to {} bytes while the guest ran (its device maps {}), and the vCPUs did not stop; exiting",
                shrunk.path.display(),
                shrunk.now,
                shrunk.size
            );
            std::process::exit(crate::VMM_FAILURE.into());
        }
        std::thread::park_timeout(ShrinkWatch::POLL);
    }
}

impl Drop for ShrinkWatch {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// Parses a size in bytes with an optional K, M or G suffix (binary units),
/// as `--shm size=` and the host tool take it.
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let (digits, shift) = match s.as_bytes().last() {
        Some(b'k' | b'K') => (&s[..s.len() - 1], 10),
        Some(b'm' | b'M') => (&s[..s.len() - 1], 20),
        Some(b'g' | b'G') => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let n: u64 = digits.parse().map_err(|_| SizeError::Syntax(s.into()))?;
    n.checked_mul(1 << shift).ok_or_else(|| SizeError::TooLarge(s.into()))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SizeError {
    #[error("bad size {0:?}: expected a number of bytes with an optional K, M or G suffix")]
    Syntax(String),
    #[error("size {0:?} is too large")]
    TooLarge(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kvmshm-backing-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn creates_missing_file_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let p = temp("new");
        let _ = std::fs::remove_file(&p);
        let f = BackingFile::open(&p, 1 << 16).unwrap();
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
        let e = BackingFile::open(&p, 4096).err().unwrap();
        assert!(matches!(e, Error::TooShort { len: 8, size: 4096, .. }), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), b"precious");
    }

    #[test]
    fn size_must_be_a_power_of_two() {
        let p = temp("odd");
        let _ = std::fs::remove_file(&p);
        assert!(matches!(BackingFile::open(&p, 3 << 12), Err(Error::Size { .. })));
        assert!(!p.exists());
    }

    #[test]
    fn a_file_that_shrinks_is_noticed() {
        let p = temp("shrinks");
        let _ = std::fs::remove_file(&p);
        let f = BackingFile::open(&p, 1 << 16).unwrap();
        assert_eq!(f.shrunk(), None);
        std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(4096).unwrap();
        assert_eq!(f.shrunk(), Some(4096));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("16M"), Ok(16 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("x"), Err(SizeError::Syntax("x".into())));
        assert_eq!(parse_size("99999999999G"), Err(SizeError::TooLarge("99999999999G".into())));
    }
}
