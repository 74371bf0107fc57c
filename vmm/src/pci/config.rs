//! A type-0 PCI configuration space: identity registers, the command
//! register, memory BARs and a list of capabilities, with per-bit write
//! masks so that read-only fields ignore writes and a BAR sizing probe (all
//! ones) reads back the size mask.

pub const VENDOR_ID: usize = 0x00;
pub const COMMAND: usize = 0x04;
const STATUS: usize = 0x06;
pub const REVISION_CLASS: usize = 0x08;
pub const BAR0: usize = 0x10;
pub const SUBSYSTEM: usize = 0x2c;
const CAPABILITIES_POINTER: usize = 0x34;
/// Capabilities go after the standard header.
const FIRST_CAPABILITY: usize = 0x40;
const STATUS_CAPABILITIES: u16 = 1 << 4;
pub const INTERRUPT_LINE: usize = 0x3c;

pub const COMMAND_MEMORY: u16 = 1 << 1;
/// I/O space, memory space, bus master and INTx disable: the bits a guest may set.
const COMMAND_WRITABLE: u32 = 0x0407;

pub const NUM_BARS: usize = 6;
const BAR_MEM_64: u32 = 0b100;
const BAR_PREFETCH: u32 = 0b1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    Mmio32,
    Mmio64Prefetchable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bar {
    size: u64,
    kind: BarKind,
}

pub struct Identity {
    pub vendor: u16,
    pub device: u16,
    pub revision: u8,
    /// Class code, subclass and programming interface: 0xCCSSPP.
    pub class: u32,
    pub subsystem_vendor: u16,
    pub subsystem: u16,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("BAR{0} does not exist or is already taken")]
    BarSlot(usize),
    #[error("BAR size {0:#x} is not a power of two of at least 16 bytes")]
    BarSize(u64),
    #[error("BAR address {addr:#x} is not aligned to its size {size:#x}")]
    BarAlignment { addr: u64, size: u64 },
    #[error("no room for a {len}-byte capability in the configuration space")]
    CapabilityRoom { len: usize },
}

pub struct PciConfig {
    regs: [u32; 64],
    writable: [u32; 64],
    bars: [Option<Bar>; NUM_BARS],
    /// Where the next capability goes, and the last one's offset.
    next_capability: usize,
    last_capability: Option<usize>,
}

impl PciConfig {
    pub fn new(id: &Identity) -> Self {
        let mut regs = [0u32; 64];
        let mut writable = [0u32; 64];
        regs[VENDOR_ID / 4] = u32::from(id.vendor) | u32::from(id.device) << 16;
        regs[REVISION_CLASS / 4] = id.class << 8 | u32::from(id.revision);
        regs[SUBSYSTEM / 4] = u32::from(id.subsystem_vendor) | u32::from(id.subsystem) << 16;
        writable[COMMAND / 4] = COMMAND_WRITABLE;
        // Interrupt line is scratch space for the OS; interrupt pin 0 (none) is read-only.
        writable[INTERRUPT_LINE / 4] = 0xff;
        Self { regs, writable, bars: [None; NUM_BARS], next_capability: FIRST_CAPABILITY, last_capability: None }
    }

    /// Appends a capability with ID `id`: `body` follows the ID and next
    /// pointer, and `writable` (as long as `body`) says which of its bits
    /// the guest may change. Returns the capability's offset.
    pub fn add_capability(&mut self, id: u8, body: &[u8], writable: &[u8]) -> Result<usize, Error> {
        let len = 2 + body.len();
        let offset = self.next_capability;
        if offset + len > self.regs.len() * 4 || body.len() != writable.len() {
            return Err(Error::CapabilityRoom { len });
        }
        self.set_byte(offset, id, 0);
        self.set_byte(offset + 1, 0, 0);
        for (i, (&b, &w)) in body.iter().zip(writable).enumerate() {
            self.set_byte(offset + 2 + i, b, w);
        }
        match self.last_capability {
            Some(last) => self.set_byte(last + 1, offset as u8, 0),
            None => {
                self.set_byte(CAPABILITIES_POINTER, offset as u8, 0);
                let status = self.regs[STATUS / 4] >> 16 | u32::from(STATUS_CAPABILITIES);
                self.regs[STATUS / 4] = (self.regs[STATUS / 4] & 0xffff) | status << 16;
            }
        }
        self.last_capability = Some(offset);
        self.next_capability = (offset + len).next_multiple_of(4);
        Ok(offset)
    }

    fn set_byte(&mut self, offset: usize, value: u8, writable: u8) {
        let (reg, shift) = (offset / 4, (offset % 4) * 8);
        self.regs[reg] = (self.regs[reg] & !(0xff << shift)) | u32::from(value) << shift;
        self.writable[reg] = (self.writable[reg] & !(0xff << shift)) | u32::from(writable) << shift;
    }

    /// The 16-bit register at `offset`.
    pub fn read_u16(&self, offset: usize) -> u16 {
        let mut b = [0u8; 2];
        self.read(offset, &mut b);
        u16::from_le_bytes(b)
    }

    /// Declares BAR `index` (a 64-bit BAR also takes `index + 1`) at `addr`,
    /// the address firmware would have assigned.
    pub fn add_bar(&mut self, index: usize, kind: BarKind, size: u64, addr: u64) -> Result<(), Error> {
        let dwords = if kind == BarKind::Mmio64Prefetchable { 2 } else { 1 };
        if index + dwords > NUM_BARS || self.bar_slot_taken(index) || (dwords == 2 && self.bar_slot_taken(index + 1)) {
            return Err(Error::BarSlot(index));
        }
        let max = if dwords == 2 { u64::MAX / 2 + 1 } else { 1 << 31 };
        if !size.is_power_of_two() || size < 16 || size > max {
            return Err(Error::BarSize(size));
        }
        if !addr.is_multiple_of(size) {
            return Err(Error::BarAlignment { addr, size });
        }
        let mask = !(size - 1);
        let reg = BAR0 / 4 + index;
        match kind {
            BarKind::Mmio32 => {
                self.writable[reg] = mask as u32 & !0xf;
                self.regs[reg] = addr as u32;
            }
            BarKind::Mmio64Prefetchable => {
                self.writable[reg] = mask as u32 & !0xf;
                self.writable[reg + 1] = (mask >> 32) as u32;
                self.regs[reg] = addr as u32 | BAR_MEM_64 | BAR_PREFETCH;
                self.regs[reg + 1] = (addr >> 32) as u32;
            }
        }
        self.bars[index] = Some(Bar { size, kind });
        Ok(())
    }

    fn bar_slot_taken(&self, index: usize) -> bool {
        self.bars[index].is_some()
            || (index > 0 && matches!(self.bars[index - 1], Some(b) if b.kind == BarKind::Mmio64Prefetchable))
    }

    pub fn bar_size(&self, index: usize) -> Option<u64> {
        self.bars.get(index).copied().flatten().map(|b| b.size)
    }

    fn bar_addr(&self, index: usize, bar: Bar) -> u64 {
        let reg = BAR0 / 4 + index;
        let low = u64::from(self.regs[reg] & !0xf);
        match bar.kind {
            BarKind::Mmio32 => low,
            BarKind::Mmio64Prefetchable => low | u64::from(self.regs[reg + 1]) << 32,
        }
    }

    /// Where BAR `index` decodes now: `None` while memory decoding is off.
    pub fn bar_mapping(&self, index: usize) -> Option<u64> {
        let bar = self.bars.get(index).copied().flatten()?;
        let command = self.regs[COMMAND / 4] as u16;
        (command & COMMAND_MEMORY != 0).then(|| self.bar_addr(index, bar))
    }

    pub fn read(&self, offset: usize, data: &mut [u8]) {
        let reg = offset / 4;
        let shift = (offset % 4) * 8;
        if reg >= self.regs.len() || offset % 4 + data.len() > 4 {
            data.fill(0xff);
            return;
        }
        let value = self.regs[reg] >> shift;
        for (i, b) in data.iter_mut().enumerate() {
            *b = (value >> (i * 8)) as u8;
        }
    }

    /// Writes `data` at `offset`, honouring the write masks.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        let reg = offset / 4;
        if reg >= self.regs.len() || offset % 4 + data.len() > 4 {
            return;
        }
        let shift = (offset % 4) * 8;
        let mut value = 0u32;
        let mut bytes = 0u32;
        for (i, b) in data.iter().enumerate() {
            value |= u32::from(*b) << (i * 8);
            bytes |= 0xff << (i * 8);
        }
        let mask = self.writable[reg] & (bytes << shift);
        self.regs[reg] = (self.regs[reg] & !mask) | ((value << shift) & mask);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A made-up device: these tests are about the configuration space, not ivshmem.
    fn config() -> PciConfig {
        let mut c = PciConfig::new(&Identity {
            vendor: 0x1234,
            device: 0x5678,
            revision: 2,
            class: 0x0b4000,
            subsystem_vendor: 0x1234,
            subsystem: 0x0001,
        });
        c.add_bar(0, BarKind::Mmio32, 256, 0xc000_0000).unwrap();
        c.add_bar(2, BarKind::Mmio64Prefetchable, 1 << 24, 1 << 32).unwrap();
        c
    }

    fn read32(c: &PciConfig, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        c.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn identity_is_read_only() {
        let mut c = config();
        assert_eq!(read32(&c, 0), 0x5678_1234);
        assert_eq!(read32(&c, 8), 0x0b40_0002);
        c.write(0, &0xdead_beef_u32.to_le_bytes());
        c.write(8, &[0xff]);
        assert_eq!(read32(&c, 0), 0x5678_1234);
        assert_eq!(read32(&c, 8), 0x0b40_0002);
    }

    #[test]
    fn sizing_probe_reads_the_size_mask() {
        let mut c = config();
        c.write(BAR0, &u32::MAX.to_le_bytes());
        assert_eq!(read32(&c, BAR0), 0xffff_ff00);
        c.write(BAR0 + 8, &u32::MAX.to_le_bytes());
        c.write(BAR0 + 12, &u32::MAX.to_le_bytes());
        assert_eq!(read32(&c, BAR0 + 8), 0xff00_000c);
        assert_eq!(read32(&c, BAR0 + 12), 0xffff_ffff);
        // Unused BARs read as zero and stay zero.
        c.write(BAR0 + 4, &u32::MAX.to_le_bytes());
        assert_eq!(read32(&c, BAR0 + 4), 0);
    }

    #[test]
    fn bar_mapping_follows_memory_decoding_and_moves() {
        let mut c = config();
        assert_eq!(c.bar_mapping(2), None);
        c.write(COMMAND, &COMMAND_MEMORY.to_le_bytes());
        assert_eq!(c.bar_mapping(0), Some(0xc000_0000));
        assert_eq!(c.bar_mapping(2), Some(1 << 32));
        assert_eq!(c.bar_mapping(1), None);
        c.write(BAR0 + 12, &2u32.to_le_bytes());
        assert_eq!(c.bar_mapping(2), Some(2 << 32));
        // A byte write to the command register disables decoding.
        c.write(COMMAND, &[0]);
        assert_eq!((c.bar_mapping(0), c.bar_mapping(2)), (None, None));
    }

    #[test]
    fn capabilities_form_a_list_with_writable_bits() {
        let mut c = config();
        assert_eq!(read32(&c, 4) >> 16 & 0x10, 0, "no capability list yet");
        let first = c.add_capability(0x11, &[0x07, 0x00], &[0x00, 0xc0]).unwrap();
        let second = c.add_capability(0x09, &[1, 2, 3], &[0; 3]).unwrap();
        assert_eq!((first, second), (0x40, 0x44));
        assert_eq!(read32(&c, 4) >> 16 & 0x10, 0x10, "status: capabilities list");
        assert_eq!(read32(&c, 0x34) & 0xff, 0x40);
        assert_eq!(read32(&c, 0x40), 0x0007_4411, "ID 0x11, next at 0x44, body");
        c.write(0x42, &0xffffu16.to_le_bytes());
        assert_eq!(c.read_u16(0x42), 0xc007, "only the writable bits changed");
        c.write(0x45, &[0]);
        assert_eq!(read32(&c, 0x44) >> 8 & 0xff, 0, "the list ends at the second");
        assert_eq!(c.add_capability(0x05, &[0; 250], &[0; 250]), Err(Error::CapabilityRoom { len: 252 }));
    }

    #[test]
    fn rejects_bad_bars() {
        let mut c = config();
        assert_eq!(c.add_bar(3, BarKind::Mmio32, 4096, 0), Err(Error::BarSlot(3)));
        assert_eq!(c.add_bar(5, BarKind::Mmio64Prefetchable, 4096, 0), Err(Error::BarSlot(5)));
        assert_eq!(c.add_bar(4, BarKind::Mmio32, 3000, 0), Err(Error::BarSize(3000)));
        assert_eq!(c.add_bar(4, BarKind::Mmio32, 4096, 0x800), Err(Error::BarAlignment { addr: 0x800, size: 4096 }));
    }
}
