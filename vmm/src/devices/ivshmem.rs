//! An ivshmem PCI device, as QEMU's `docs/specs/ivshmem-spec.rst` describes
//! it: BAR0 holds four 32-bit registers, BAR2 is the shared memory, and
//! ivshmem-doorbell adds BAR1, the MSI-X table and PBA of its vectors.
//!
//! | | ivshmem-plain (`--shm path=`) | ivshmem-doorbell (`--shm server=`) |
//! |---|---|---|
//! | IVPosition | the `id` given | the id the server gave |
//! | Doorbell | ignored | rings a peer's vector ([`Doorbell`]) |
//! | BAR1 | none | MSI-X table and PBA |
//! | BAR2 | the file | the server's file |

use std::sync::Arc;

use log::Level;

use shm_layout::host::ivshmem::Peer;

use super::doorbell::{self, Doorbell, HasDoorbell};
use crate::backing::BackingFile;
use crate::bus::{Action, read_in_units, write_in_units};
use crate::hypervisor::Hypervisor;
use crate::limited;
use crate::pci::msix::Msix;
use crate::pci::{BarKind, HostMemory, Identity, PciConfig, PciDevice};
use crate::ratelimit::LogLimit;

pub const REGISTERS_BAR: u8 = 0;
pub const REGISTERS_SIZE: u64 = 256;
pub const MSIX_BAR: u8 = 1;
pub const MEMORY_BAR: u8 = 2;

const INTR_MASK: u64 = 0;
const INTR_STATUS: u64 = 4;
const IV_POSITION: u64 = 8;
pub const DOORBELL: u64 = 12;
/// The registers are 32 bits wide, and so is every access the device model
/// sees: see [`IvshmemDevice`]'s BAR0 accesses.
const REGISTER_WIDTH: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("PCI configuration")]
    Pci(#[from] crate::pci::Error),
    #[error("ivshmem-doorbell")]
    Doorbell(#[from] doorbell::Error),
}

const IDENTITY: Identity = Identity {
    vendor: 0x1af4,
    device: 0x1110,
    revision: 1,
    class: 0x050000,
    subsystem_vendor: 0x1af4,
    subsystem: 0x1100,
};

pub struct IvshmemDevice {
    config: PciConfig,
    memory: Arc<BackingFile>,
    id: u32,
    intr_mask: u32,
    intr_status: u32,
    doorbell: Option<Doorbell>,
    log: LogLimit,
}

impl IvshmemDevice {
    /// An ivshmem-plain device. `registers` and `memory_addr` are where
    /// firmware would have put BAR0 and BAR2; the guest may move them.
    pub fn new(memory: Arc<BackingFile>, id: u32, registers: u64, memory_addr: u64) -> Result<Self, Error> {
        let mut config = PciConfig::new(&IDENTITY);
        config.add_bar(REGISTERS_BAR.into(), BarKind::Mmio32, REGISTERS_SIZE, registers)?;
        config.add_bar(MEMORY_BAR.into(), BarKind::Mmio64Prefetchable, memory.size(), memory_addr)?;
        let log = LogLimit::new(format!("ivshmem {id}"));
        Ok(Self { config, memory, id, intr_mask: 0, intr_status: 0, doorbell: None, log })
    }

    /// An ivshmem-doorbell device: the memory and the vectors come from the
    /// ivshmem server that `peer` joined. `addrs` are where firmware would
    /// have put BAR0, BAR1 and BAR2.
    pub fn with_doorbell(
        memory: Arc<BackingFile>,
        peer: Peer,
        hypervisor: Arc<dyn Hypervisor>,
        addrs: [u64; 3],
    ) -> Result<Self, Error> {
        let [registers, msix_addr, memory_addr] = addrs;
        let mut config = PciConfig::new(&IDENTITY);
        config.add_bar(REGISTERS_BAR.into(), BarKind::Mmio32, REGISTERS_SIZE, registers)?;
        let doorbell = Doorbell::new(peer, &mut config, MSIX_BAR, hypervisor)?;
        config.add_bar(
            MSIX_BAR.into(),
            BarKind::Mmio32,
            Msix::bar_size(doorbell.msix().vectors() as u16),
            msix_addr,
        )?;
        config.add_bar(MEMORY_BAR.into(), BarKind::Mmio64Prefetchable, memory.size(), memory_addr)?;
        let id = doorbell.id().into();
        let log = LogLimit::new(format!("ivshmem-doorbell {id}"));
        Ok(Self { config, memory, id, intr_mask: 0, intr_status: 0, doorbell: Some(doorbell), log })
    }

    pub fn memory(&self) -> &Arc<BackingFile> {
        &self.memory
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    /// See [`Doorbell::view`].
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn doorbell_view(&self) -> Option<Vec<(u32, crate::pci::msix::Delivery, bool)>> {
        self.doorbell.as_ref().map(|d| d.view(&self.config))
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
            DOORBELL => match &self.doorbell {
                Some(doorbell) => doorbell.ring(value),
                None => limited!(self.log, Level::Debug, "ivshmem {}: doorbell {value:#x} ignored (no peers)", self.id),
            },
            _ => limited!(self.log, Level::Debug, "ivshmem {}: write to {offset:#x} ignored", self.id),
        }
    }

    /// Applies the MSI-X state to the vectors' delivery.
    fn sync_delivery(&mut self) {
        if let Some(doorbell) = &mut self.doorbell
            && let Err(e) = doorbell.sync_delivery(&self.config)
        {
            limited!(self.log, Level::Warn, "ivshmem-doorbell {}: {e}", self.id);
        }
    }
}

impl HasDoorbell for IvshmemDevice {
    fn doorbell_mut(&mut self) -> Option<&mut Doorbell> {
        self.doorbell.as_mut()
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

    fn config_written(&mut self) {
        self.sync_delivery();
    }

    fn bar_mapped(&mut self, bar: u8, addr: Option<u64>) {
        if bar == REGISTERS_BAR
            && let Some(doorbell) = &mut self.doorbell
            && let Err(e) = doorbell.set_registers(addr)
        {
            limited!(self.log, Level::Warn, "ivshmem-doorbell {}: {e}", self.id);
        }
    }

    /// BAR0, with QEMU's semantics for every access size and offset. QEMU's
    /// ivshmem implements only 4-byte accesses, so its memory core adapts
    /// the rest:
    /// - 4 bytes at a register's offset (0, 4, 8, 12) read or write it;
    /// - 1 or 2 bytes are widened to 4 at the same offset: a read returns the
    ///   low bytes of the register there, a write stores the value
    ///   zero-extended (a 1-byte write to IntrMask clears its upper 24 bits);
    /// - 8 bytes are two 4-byte accesses, at the offset and 4 bytes above it
    ///   (an 8-byte read at 0 returns IntrMask and IntrStatus, and clears the
    ///   status);
    /// - any offset that is not a register's (unaligned, or 16 to 255) reads
    ///   as zero and ignores writes.
    ///
    /// BAR1 is the MSI-X table and PBA ([`Msix`]).
    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        match (bar, &self.doorbell) {
            (REGISTERS_BAR, _) => read_in_units(REGISTER_WIDTH, offset, data, |o| self.read_register(o).into()),
            (MSIX_BAR, Some(doorbell)) => doorbell.msix().read(offset, data),
            _ => data.fill(0),
        }
    }

    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) -> Option<Action> {
        match bar {
            REGISTERS_BAR => {
                write_in_units(REGISTER_WIDTH, offset, data, |o, v| {
                    self.write_register(o, v as u32);
                    None
                });
            }
            MSIX_BAR => {
                if let Some(doorbell) = &mut self.doorbell {
                    doorbell.msix_mut().write(offset, data);
                    self.sync_delivery();
                }
            }
            _ => {}
        }
        None
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
        dev.bar_read(REGISTERS_BAR, offset, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    fn write(dev: &mut IvshmemDevice, offset: u64, data: &[u8]) {
        dev.bar_write(REGISTERS_BAR, offset, data);
    }

    #[test]
    fn registers_at_every_width() {
        let mut dev = device();
        assert_eq!(read(&mut dev, IV_POSITION, 4), 0x0102_0304);
        assert_eq!(read(&mut dev, IV_POSITION, 1), 0x04, "a byte read returns the low byte");
        assert_eq!(read(&mut dev, IV_POSITION, 2), 0x0304);
        assert_eq!(read(&mut dev, IV_POSITION + 1, 1), 0, "no register starts at 9");
        assert_eq!(read(&mut dev, IV_POSITION + 2, 2), 0);

        write(&mut dev, INTR_MASK, &0xdead_beef_u32.to_le_bytes());
        assert_eq!(read(&mut dev, INTR_MASK, 4), 0xdead_beef);
        write(&mut dev, INTR_MASK, &[0x12]);
        assert_eq!(read(&mut dev, INTR_MASK, 4), 0x12, "a byte write is zero-extended");
        write(&mut dev, INTR_MASK + 1, &[0xff]);
        assert_eq!(read(&mut dev, INTR_MASK, 4), 0x12, "an unaligned write is ignored");

        // 8 bytes: two registers; reading IntrStatus clears it.
        write(&mut dev, INTR_MASK, &0x0000_0005_0000_0007_u64.to_le_bytes());
        assert_eq!(read(&mut dev, INTR_MASK, 8), 0x0000_0005_0000_0007);
        assert_eq!(read(&mut dev, INTR_MASK, 8), 0x0000_0000_0000_0007);
        assert_eq!(read(&mut dev, IV_POSITION, 8), 0x0102_0304, "IVPosition and the doorbell (reads 0)");
        assert_eq!(read(&mut dev, 252, 4), 0);
    }

    #[test]
    fn iv_position_and_identity_are_read_only() {
        let mut dev = device();
        write(&mut dev, IV_POSITION, &[0; 8]);
        assert_eq!(read(&mut dev, IV_POSITION, 4), 0x0102_0304);
        let mut id = [0u8; 4];
        dev.config().read(0, &mut id);
        assert_eq!(id, [0xf4, 0x1a, 0x10, 0x11]);
    }

    #[test]
    fn a_plain_device_has_no_msix_bar() {
        let mut dev = device();
        assert_eq!(dev.config().bar_size(MSIX_BAR.into()), None);
        let mut b = [0xffu8; 4];
        dev.bar_read(MSIX_BAR, 0, &mut b);
        assert_eq!(b, [0; 4]);
    }
}
