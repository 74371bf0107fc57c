//! MSI-X (PCI Local Bus Specification 3.0, section 6.8.2): the capability in
//! the configuration space, and the vector table and pending-bit array
//! (PBA) in a BAR of their own, laid out as QEMU lays out an exclusive
//! MSI-X BAR: the table at offset 0, the PBA at half the BAR.
//!
//! | BAR offset | what | guest access |
//! |---|---|---|
//! | 16 × v + 0, 4, 8 | vector v: message address low, high, data | read/write |
//! | 16 × v + 12 | vector v: control (bit 0: masked) | read/write |
//! | PBA + 8 × i | pending bits of vectors 64i to 64i + 63 | read-only |
//!
//! The table takes 4-byte accesses; 8-byte ones are split in two, narrower
//! ones widened, as for ivshmem's registers. Past the table and the PBA,
//! reads are 0 and writes are ignored. Every vector starts masked.

use super::config::{Error, PciConfig};
use crate::bus::{read_in_units, write_in_units};

pub const CAPABILITY_ID: u8 = 0x11;
const ENTRY_SIZE: u64 = 16;
/// Message control: MSI-X enable and function mask, the bits a guest sets.
const ENABLE: u16 = 1 << 15;
const FUNCTION_MASK: u16 = 1 << 14;
const VECTOR_MASKED: u32 = 1;

/// An MSI: where to write, and what.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsiMessage {
    pub addr: u64,
    pub data: u32,
}

/// How a vector's interrupts reach the guest now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// MSI-X is off: interrupts are dropped (as QEMU's ivshmem does).
    Off,
    /// The vector or the function is masked: interrupts set the pending bit.
    Held,
    /// Interrupts are sent as this message.
    Send(MsiMessage),
}

pub struct Msix {
    table: Vec<[u32; 4]>,
    pending: Vec<u64>,
    pba_offset: u64,
    /// Offset of the capability in the configuration space.
    capability: usize,
}

impl Msix {
    /// `vectors` vectors in BAR `bar`, with the capability added to `config`.
    pub fn new(config: &mut PciConfig, bar: u8, vectors: u16) -> Result<Self, Error> {
        let bar_size = Self::bar_size(vectors);
        let pba_offset = bar_size / 2;
        let control = vectors - 1;
        let mut body = Vec::new();
        body.extend_from_slice(&control.to_le_bytes());
        body.extend_from_slice(&u32::from(bar).to_le_bytes());
        body.extend_from_slice(&(pba_offset as u32 | u32::from(bar)).to_le_bytes());
        let mut writable = vec![0u8; body.len()];
        writable[1] = ((ENABLE | FUNCTION_MASK) >> 8) as u8;
        let capability = config.add_capability(CAPABILITY_ID, &body, &writable)?;
        let table = vec![[0, 0, 0, VECTOR_MASKED]; usize::from(vectors)];
        Ok(Self { table, pending: vec![0; usize::from(vectors).div_ceil(64)], pba_offset, capability })
    }

    /// The size of the BAR for `vectors`: a page, or the power of two that
    /// holds the table and the PBA each in one half.
    pub fn bar_size(vectors: u16) -> u64 {
        (2 * u64::from(vectors) * ENTRY_SIZE).next_power_of_two().max(4096)
    }

    pub fn vectors(&self) -> usize {
        self.table.len()
    }

    /// How vector `v` is delivered, given the configuration space's message control.
    pub fn delivery(&self, config: &PciConfig, v: usize) -> Delivery {
        let control = config.read_u16(self.capability + 2);
        let entry = self.table[v];
        if control & ENABLE == 0 {
            Delivery::Off
        } else if control & FUNCTION_MASK != 0 || entry[3] & VECTOR_MASKED != 0 {
            Delivery::Held
        } else {
            Delivery::Send(MsiMessage { addr: u64::from(entry[0]) | u64::from(entry[1]) << 32, data: entry[2] })
        }
    }

    pub fn pending(&self, v: usize) -> bool {
        self.pending[v / 64] & 1 << (v % 64) != 0
    }

    pub fn set_pending(&mut self, v: usize, pending: bool) {
        if pending {
            self.pending[v / 64] |= 1 << (v % 64);
        } else {
            self.pending[v / 64] &= !(1 << (v % 64));
        }
    }

    pub fn read(&self, offset: u64, data: &mut [u8]) {
        read_in_units(4, offset, data, |o| self.read_u32(o).into());
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) {
        write_in_units(4, offset, data, |o, v| {
            self.write_u32(o, v as u32);
            None
        });
    }

    fn read_u32(&self, offset: u64) -> u32 {
        if offset < self.pba_offset {
            let (v, field) = ((offset / ENTRY_SIZE) as usize, (offset % ENTRY_SIZE / 4) as usize);
            return match self.table.get(v) {
                Some(entry) if offset.is_multiple_of(4) => entry[field],
                _ => 0,
            };
        }
        let o = offset - self.pba_offset;
        match self.pending.get((o / 8) as usize) {
            Some(&bits) if o.is_multiple_of(4) => (bits >> (o % 8 * 8)) as u32,
            _ => 0,
        }
    }

    fn write_u32(&mut self, offset: u64, value: u32) {
        if offset >= self.pba_offset || !offset.is_multiple_of(4) {
            return;
        }
        let (v, field) = ((offset / ENTRY_SIZE) as usize, (offset % ENTRY_SIZE / 4) as usize);
        if let Some(entry) = self.table.get_mut(v) {
            // Only the mask bit of the control word is writable.
            entry[field] = if field == 3 { value & VECTOR_MASKED } else { value };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::Identity;

    fn msix(vectors: u16) -> (PciConfig, Msix) {
        let id = Identity { vendor: 0x1234, device: 0x1, revision: 0, class: 0, subsystem_vendor: 0, subsystem: 0 };
        let mut config = PciConfig::new(&id);
        let msix = Msix::new(&mut config, 1, vectors).unwrap();
        (config, msix)
    }

    fn read32(m: &Msix, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        m.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn the_capability_describes_the_bar() {
        let (config, _) = msix(4);
        let mut cap = [0u8; 12];
        for (i, dword) in cap.chunks_mut(4).enumerate() {
            config.read(0x40 + 4 * i, dword);
        }
        assert_eq!(cap[0], CAPABILITY_ID);
        assert_eq!(u16::from_le_bytes([cap[2], cap[3]]), 3, "table size - 1, disabled, not masked");
        assert_eq!(u32::from_le_bytes(cap[4..8].try_into().unwrap()), 1, "table at offset 0 of BAR1");
        assert_eq!(u32::from_le_bytes(cap[8..12].try_into().unwrap()), 2048 | 1, "PBA at 2048 of BAR1");
        assert_eq!(Msix::bar_size(4), 4096);
        assert_eq!(Msix::bar_size(2048), 65536);
    }

    #[test]
    fn delivery_follows_enable_masks_and_the_table() {
        let (mut config, mut m) = msix(2);
        assert_eq!(m.delivery(&config, 0), Delivery::Off);
        config.write(0x42, &(ENABLE | 1).to_le_bytes());
        assert_eq!(config.read_u16(0x42), ENABLE | 1, "enable is writable, the table size is not");
        assert_eq!(m.delivery(&config, 0), Delivery::Held, "vectors start masked");
        m.write(0, &0xfee0_0000u32.to_le_bytes());
        m.write(8, &0x41u32.to_le_bytes());
        m.write(12, &0xffff_fffeu32.to_le_bytes());
        assert_eq!(read32(&m, 12), 0, "only the mask bit is kept");
        assert_eq!(m.delivery(&config, 0), Delivery::Send(MsiMessage { addr: 0xfee0_0000, data: 0x41 }));
        config.write(0x43, &[((ENABLE | FUNCTION_MASK) >> 8) as u8]);
        assert_eq!(m.delivery(&config, 0), Delivery::Held, "the function mask holds every vector");
        assert_eq!(m.delivery(&config, 1), Delivery::Held);
    }

    #[test]
    fn the_pba_is_read_only_and_shows_pending_vectors() {
        let (_, mut m) = msix(70);
        m.set_pending(1, true);
        m.set_pending(65, true);
        assert_eq!(read32(&m, 2048), 2);
        assert_eq!(read32(&m, 2056), 2);
        m.write(2048, &0u32.to_le_bytes());
        assert_eq!(read32(&m, 2048), 2, "writes to the PBA are ignored");
        let mut b = [0u8; 8];
        m.read(2048, &mut b);
        assert_eq!(u64::from_le_bytes(b), 2, "an 8-byte read is two dwords");
        m.set_pending(1, false);
        assert!(!m.pending(1) && m.pending(65));
        assert_eq!(read32(&m, 70 * 16), 0, "past the table");
        assert_eq!(read32(&m, 4000), 0, "past the PBA");
    }
}
