//! An ivshmem-plain PCI device, as QEMU's `docs/specs/ivshmem-spec.rst`
//! describes it: BAR0 holds four 32-bit registers, BAR2 is the shared memory.

use log::Level;

use std::sync::Arc;

use crate::backing::BackingFile;
use crate::bus::{Action, BusDevice, read_in_units, write_in_units};
use crate::limited;
use crate::pci::{BarKind, HostMemory, Identity, PciConfig, PciDevice};
use crate::ratelimit::LogLimit;

pub const REGISTERS_BAR: u8 = 0;
pub const REGISTERS_SIZE: u64 = 256;
pub const MEMORY_BAR: u8 = 2;

const INTR_MASK: u64 = 0;
const INTR_STATUS: u64 = 4;
const IV_POSITION: u64 = 8;
const DOORBELL: u64 = 12;
/// The registers are 32 bits wide, and so is every access the device model
/// sees: see [`IvshmemDevice`]'s `BusDevice` implementation.
const REGISTER_WIDTH: usize = 4;

pub struct IvshmemDevice {
    config: PciConfig,
    memory: Arc<BackingFile>,
    id: u32,
    intr_mask: u32,
    intr_status: u32,
    log: LogLimit,
}

impl IvshmemDevice {
    /// `registers` and `memory_addr` are where firmware would have put BAR0
    /// and BAR2; the guest may move them.
    pub fn new(memory: Arc<BackingFile>, id: u32, registers: u64, memory_addr: u64) -> Result<Self, crate::pci::Error> {
        let mut config = PciConfig::new(&Identity {
            vendor: 0x1af4,
            device: 0x1110,
            revision: 1,
            class: 0x050000,
            subsystem_vendor: 0x1af4,
            subsystem: 0x1100,
        });
        config.add_bar(REGISTERS_BAR.into(), BarKind::Mmio32, REGISTERS_SIZE, registers)?;
        config.add_bar(MEMORY_BAR.into(), BarKind::Mmio64Prefetchable, memory.size(), memory_addr)?;
        let log = LogLimit::new(format!("ivshmem {id}"));
        Ok(Self { config, memory, id, intr_mask: 0, intr_status: 0, log })
    }

    pub fn memory(&self) -> &Arc<BackingFile> {
        &self.memory
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn flush_log(&self) {
        self.log.flush();
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            INTR_MASK => self.intr_mask,
            // Reading the status clears it.
            INTR_STATUS => std::mem::take(&mut self.intr_status),
            IV_POSITION => self.id,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            INTR_MASK => self.intr_mask = value,
            INTR_STATUS => self.intr_status = value,
            // ivshmem-plain has no peers to ring.
            DOORBELL => limited!(self.log, Level::Debug, "ivshmem {}: doorbell {value:#x} ignored (no peers)", self.id),
            _ => limited!(self.log, Level::Debug, "ivshmem {}: write to {offset:#x} ignored", self.id),
        }
    }
}

impl PciDevice for IvshmemDevice {
    fn config(&self) -> &PciConfig {
        &self.config
    }
    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }
    fn bar_memory(&self, bar: u8) -> Option<HostMemory> {
        (bar == MEMORY_BAR).then(|| HostMemory { addr: self.memory.as_ptr(), len: self.memory.size() })
    }
}

/// BAR0, with QEMU's semantics for every access size and offset. QEMU's
/// ivshmem implements only 4-byte accesses, so its memory core adapts the rest:
/// - 4 bytes at a register's offset (0, 4, 8, 12) read or write it;
/// - 1 or 2 bytes are widened to 4 at the same offset: a read returns the low
///   bytes of the register there, a write stores the value zero-extended
///   (a 1-byte write to IntrMask clears its upper 24 bits);
/// - 8 bytes are two 4-byte accesses, at the offset and 4 bytes above it (an
///   8-byte read at 0 returns IntrMask and IntrStatus, and clears the status);
/// - any offset that is not a register's (unaligned, or 16 to 255) reads as
///   zero and ignores writes.
impl BusDevice for IvshmemDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        read_in_units(REGISTER_WIDTH, offset, data, |o| self.read_register(o).into());
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<Action> {
        write_in_units(REGISTER_WIDTH, offset, data, |o, v| {
            self.write_register(o, v as u32);
            None
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> IvshmemDevice {
        let backing = Arc::new(BackingFile::memfd(4096));
        IvshmemDevice::new(backing, 0x0102_0304, 0xc000_0000, 1 << 32).unwrap()
    }

    fn read(dev: &mut IvshmemDevice, offset: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        dev.read(offset, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    #[test]
    fn registers_at_every_width() {
        let mut dev = device();
        assert_eq!(read(&mut dev, IV_POSITION, 4), 0x0102_0304);
        assert_eq!(read(&mut dev, IV_POSITION, 1), 0x04, "a byte read returns the low byte");
        assert_eq!(read(&mut dev, IV_POSITION, 2), 0x0304);
        assert_eq!(read(&mut dev, IV_POSITION + 1, 1), 0, "no register starts at 9");
        assert_eq!(read(&mut dev, IV_POSITION + 2, 2), 0);

        dev.write(INTR_MASK, &0xdead_beef_u32.to_le_bytes());
        assert_eq!(read(&mut dev, INTR_MASK, 4), 0xdead_beef);
        dev.write(INTR_MASK, &[0x12]);
        assert_eq!(read(&mut dev, INTR_MASK, 4), 0x12, "a byte write is zero-extended");
        dev.write(INTR_MASK + 1, &[0xff]);
        assert_eq!(read(&mut dev, INTR_MASK, 4), 0x12, "an unaligned write is ignored");

        // 8 bytes: two registers; reading IntrStatus clears it.
        dev.write(INTR_MASK, &0x0000_0005_0000_0007_u64.to_le_bytes());
        assert_eq!(read(&mut dev, INTR_MASK, 8), 0x0000_0005_0000_0007);
        assert_eq!(read(&mut dev, INTR_MASK, 8), 0x0000_0000_0000_0007);
        assert_eq!(read(&mut dev, IV_POSITION, 8), 0x0102_0304, "IVPosition and the doorbell (reads 0)");
        assert_eq!(read(&mut dev, 252, 4), 0);
    }

    #[test]
    fn iv_position_and_identity_are_read_only() {
        let mut dev = device();
        dev.write(IV_POSITION, &[0; 8]);
        assert_eq!(read(&mut dev, IV_POSITION, 4), 0x0102_0304);
        let mut id = [0u8; 4];
        dev.config().read(0, &mut id);
        assert_eq!(id, [0xf4, 0x1a, 0x10, 0x11]);
    }
}
