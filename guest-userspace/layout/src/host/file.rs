//! A backing file mapped shared into this process.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::sigbus::Guard;
use super::{Error, Summary, clock};
use crate::records::{Records, RecordsReport};
use crate::{HEADER_LEN, Header, Region, fill};

/// A file mapped whole, shared and read-write: what this process reads and
/// writes is what the guest (or any other process mapping it) sees.
///
/// If another process shortens the file meanwhile, this process is not
/// killed by the `SIGBUS` of the next access: the mapping then reads as
/// zeros (see [`super::sigbus`]), and every operation returns
/// [`Error::Shrunk`] instead of what it computed from them.
pub struct MappedFile {
    path: PathBuf,
    base: *mut u8,
    size: usize,
    file: File,
    /// Unregistered (dropped) before the mapping is unmapped in Drop.
    guard: Option<Guard>,
}

impl MappedFile {
    /// Maps an existing file. The file keeps its size: growing it here could
    /// hand a running VM pages it does not expect, so the VM's `--shm`
    /// option is what creates and sizes files.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let path = path.to_path_buf();
        let open_error = |source| Error::Open { path: path.clone(), source };
        let file = OpenOptions::new().read(true).write(true).open(&path).map_err(open_error)?;
        let len = file.metadata().map_err(open_error)?.len();
        let size = usize::try_from(len).map_err(|_| open_error(io::ErrorKind::FileTooLarge.into()))?;
        if size < HEADER_LEN {
            return Err(Error::TooShort { path, len });
        }
        // SAFETY: a fresh shared mapping (addr NULL) of a file opened
        // read-write, checked before use and unmapped only in Drop.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(Error::Map { path, size: len, source: io::Error::last_os_error() });
        }
        let guard = Some(Guard::new(base.cast(), size));
        Ok(Self { path, base: base.cast(), size, file, guard })
    }

    /// Fails with [`Error::Shrunk`] if the file shrank under the mapping
    /// and an access hit the missing part.
    pub fn check(&self) -> Result<(), Error> {
        if !self.guard.as_ref().is_some_and(Guard::faulted) {
            return Ok(());
        }
        let now = self.file.metadata().map(|m| m.len()).ok();
        Err(Error::Shrunk { path: self.path.clone(), size: self.size as u64, now })
    }

    /// `result`, unless the file shrank meanwhile: then that is the error.
    fn checked<T>(&self, result: Result<T, Error>) -> Result<T, Error> {
        self.check()?;
        result
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn region(&self) -> Region<'_> {
        // SAFETY: the mapping lives until Drop, which the borrow of self
        // outlasts; this type never makes references into it. A page-aligned
        // mapping of at least HEADER_LEN bytes (checked in open) passes new().
        unsafe { Region::new(self.base, self.size) }.expect("checked in open()")
    }

    /// Fills the first `size` bytes (all of the file if `None`) with the
    /// stream of `seed`. A file larger than the guest's device must be given
    /// the device's size, or the guest sees a header it cannot trust.
    pub fn fill(&self, seed: u64, size: Option<u64>) -> Result<Header, Error> {
        let len = self.size as u64;
        let size = size.unwrap_or(len);
        let region =
            usize::try_from(size).ok().and_then(|s| self.region().prefix(s)).ok_or(Error::FillSize { size, len })?;
        self.checked(fill::fill(region, seed).map_err(Error::from))
    }

    /// Checks the records of a run of `writers` processes writing `records` each.
    pub fn verify_records(&self, writers: u64, records: u64) -> Result<RecordsReport, Error> {
        self.checked(Records::open(self.region()).and_then(|r| r.check(writers, records)).map_err(Error::from))
    }

    /// Publishes the host's real-time clock ([`crate::clock`]) until a
    /// reader is done, or for `wait` at most; returns how many times.
    pub fn publish_clock(&self, wait: Duration) -> Result<u64, Error> {
        self.checked(clock::publish(self.region(), wait))
    }

    pub fn inspect(&self) -> Result<Summary, Error> {
        self.checked(Summary::read(self.region()))
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        self.guard = None;
        // SAFETY: unmaps exactly the mapping made in open(); every Region of
        // it borrowed self, so none is left.
        unsafe { libc::munmap(self.base.cast(), self.size) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fill::Mismatch;
    use crate::host::{Detail, temp_file};
    use crate::records::Records;

    #[test]
    fn fill_is_visible_through_another_mapping_and_a_flip_is_caught() {
        let path = temp_file("fill", 1 << 16);
        let host = MappedFile::open(&path).unwrap();
        host.fill(99, None).unwrap();
        // The guest's view: a second, independent mapping of the same file.
        let guest = MappedFile::open(&path).unwrap();
        assert_eq!(fill::check(guest.region(), 99).unwrap().first_mismatch, None);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[0x2345] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let mismatch = fill::check(guest.region(), 99).unwrap().first_mismatch.unwrap();
        assert_eq!(mismatch, Mismatch { offset: 0x2345, expected: bytes[0x2345] ^ 1, found: bytes[0x2345] });
        assert_eq!(host.inspect().unwrap().detail, Detail::Fill { seed: 99 });
    }

    #[test]
    fn fill_can_stop_at_the_device_size() {
        let path = temp_file("fill-prefix", 1 << 16);
        let file = MappedFile::open(&path).unwrap();
        assert_eq!(file.fill(1, Some(1 << 13)).unwrap().size, 1 << 13);
        assert!(matches!(file.fill(1, Some(1 << 17)), Err(Error::FillSize { .. })));
    }

    #[test]
    fn verify_records_written_through_another_mapping() {
        let path = temp_file("records", Records::required_size(2, 50));
        let writer = MappedFile::open(&path).unwrap();
        let records = Records::format(writer.region(), 2, 50, 5).unwrap();
        let mut w = records.writer(1);
        while w.append() {}
        let host = MappedFile::open(&path).unwrap();
        let report = host.verify_records(2, 50).unwrap();
        assert_eq!((report.intact, report.shortfall(), report.faults()), (50, 50, 0));
        assert_eq!(host.inspect().unwrap().detail, Detail::Records { seed: 5, records: 50, published: vec![0, 50] });
        assert!(host.verify_records(3, 50).is_err());
    }

    #[test]
    fn a_file_that_shrinks_under_the_mapping_is_an_error_not_a_crash() {
        let path = temp_file("shrinks", 1 << 16);
        let file = MappedFile::open(&path).unwrap();
        file.fill(3, None).unwrap();
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(4096).unwrap();
        // The check reads every byte, past the new end too: SIGBUS, survived.
        let e = file.inspect().and_then(|_| file.fill(3, None)).unwrap_err();
        assert!(matches!(e, Error::Shrunk { size: 65536, now: Some(4096), .. }), "{e}");
        assert!(e.to_string().contains("shrank to 4096 bytes"), "{e}");
        // Another mapping, untouched by the fault, still works.
        let other = temp_file("shrinks-other", 1 << 16);
        MappedFile::open(&other).unwrap().fill(4, None).unwrap();
    }

    #[test]
    fn open_errors_name_the_file() {
        let e = MappedFile::open(Path::new("/nonexistent/shm")).err().unwrap();
        assert!(e.to_string().starts_with("/nonexistent/shm: cannot open"), "{e}");
        let short = temp_file("short", 100);
        assert!(matches!(MappedFile::open(&short), Err(Error::TooShort { len: 100, .. })));
    }
}
