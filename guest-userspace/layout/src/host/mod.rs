//! The host library: backing files mapped shared, and the host's side of
//! each protocol. It runs while the VM runs (the file is the VM's `--shm`
//! file, so both see the same pages) and after it stops.

mod clock;
mod echo;
mod error;
mod file;
mod inspect;
pub mod ivshmem;
mod sigbus;

pub use echo::{AnswerFault, EchoClient, EchoStats, Seen};
pub use error::Error;
pub use file::MappedFile;
pub use inspect::{Detail, Summary};

/// A zeroed file of `size` bytes, fresh for each test.
#[cfg(test)]
pub(crate) fn temp_file(name: &str, size: u64) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("shm-layout-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    std::fs::File::create(&path).unwrap().set_len(size).unwrap();
    path
}
