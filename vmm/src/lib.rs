//! A minimal VMM on rust-vmm crates: it boots a Linux vmlinux directly in
//! 64-bit mode and gives the guest ivshmem-plain PCI devices whose shared
//! memory (BAR2) is a host file mapped `MAP_SHARED`.

pub mod boot;
pub mod bus;
pub mod console;
pub mod cpu;
pub mod devices;
pub mod host;
pub mod layout;
pub mod mptable;
pub mod pci;
pub mod profile;
pub mod shm;
pub mod vm;

pub use vm::{ShmConfig, Vm, VmConfig};
