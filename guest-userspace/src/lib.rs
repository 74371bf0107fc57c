//! Code shared by the guest programs.

pub mod device;
pub mod init;
