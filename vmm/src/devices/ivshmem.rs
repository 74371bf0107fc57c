//! An ivshmem-plain PCI device, as QEMU's `docs/specs/ivshmem-spec.rst`
//! describes it: BAR0 holds four 32-bit registers, BAR2 is the shared memory.

use log::debug;

use crate::bus::{Action, BusDevice};
use crate::pci::{BarKind, Identity, PciConfig, PciDevice};
use crate::shm::SharedFile;

pub const REGISTERS_BAR: u8 = 0;
pub const REGISTERS_SIZE: u64 = 256;
pub const MEMORY_BAR: u8 = 2;

const INTR_MASK: u64 = 0;
const INTR_STATUS: u64 = 4;
const IV_POSITION: u64 = 8;
const DOORBELL: u64 = 12;

pub struct IvshmemDevice {
    config: PciConfig,
    memory: SharedFile,
    id: u32,
    intr_mask: u32,
    intr_status: u32,
}

impl IvshmemDevice {
    /// `registers` and `memory_addr` are where firmware would have put BAR0
    /// and BAR2; the guest may move them.
    pub fn new(memory: SharedFile, id: u32, registers: u64, memory_addr: u64) -> Result<Self, crate::pci::Error> {
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
        Ok(Self { config, memory, id, intr_mask: 0, intr_status: 0 })
    }

    pub fn memory(&self) -> &SharedFile {
        &self.memory
    }
}

impl PciDevice for IvshmemDevice {
    fn config(&self) -> &PciConfig {
        &self.config
    }
    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }
    fn bar_memory(&self, bar: u8) -> Option<(*mut u8, u64)> {
        (bar == MEMORY_BAR).then(|| (self.memory.as_ptr(), self.memory.size()))
    }
}

/// BAR0. Only aligned 4-byte accesses mean anything; others read as zero
/// and are dropped, as QEMU does.
impl BusDevice for IvshmemDevice {
    fn read(&mut self, _: u64, offset: u64, data: &mut [u8]) {
        let value = match (offset, data.len()) {
            (INTR_MASK, 4) => self.intr_mask,
            // Reading the status clears it.
            (INTR_STATUS, 4) => std::mem::take(&mut self.intr_status),
            (IV_POSITION, 4) => self.id,
            _ => 0,
        };
        data.copy_from_slice(&value.to_le_bytes()[..data.len().min(4)]);
    }

    fn write(&mut self, _: u64, offset: u64, data: &[u8]) -> Option<Action> {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            debug!("ivshmem {}: ignored {}-byte write at {offset:#x}", self.id, data.len());
            return None;
        };
        let value = u32::from_le_bytes(bytes);
        match offset {
            INTR_MASK => self.intr_mask = value,
            INTR_STATUS => self.intr_status = value,
            // ivshmem-plain has no peers to ring.
            DOORBELL => debug!("ivshmem {}: doorbell {value:#x} ignored (no peers)", self.id),
            _ => debug!("ivshmem {}: ignored write to {offset:#x}", self.id),
        }
        None
    }
}
