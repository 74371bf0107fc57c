//! The VM's devices: the console UART, the reset line and the ivshmem PCI device.

pub mod doorbell;
pub mod ivshmem;
pub mod legacy;

pub use ivshmem::IvshmemDevice;
pub use legacy::{ResetPort, SerialPort};
