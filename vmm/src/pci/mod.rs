//! PCI: configuration spaces, and bus 0 behind the legacy configuration
//! mechanism #1 (ports 0xCF8 address, 0xCFC data) that Linux probes without ACPI.

pub mod config;
pub mod msix;

pub use config::{BarKind, Error, Identity, NUM_BARS, PciConfig};

use std::sync::{Arc, Mutex};

use crate::bus::{Action, BusDevice};

pub const CONFIG_ADDRESS_PORT: u64 = 0xcf8;
pub const CONFIG_PORTS_LEN: u64 = 8;
/// Slots on bus 0; slot 0 holds the host bridge.
pub const NUM_SLOTS: usize = 32;
/// How many devices the bus takes besides the host bridge.
pub const MAX_DEVICES: usize = NUM_SLOTS - 1;

/// Host memory that a BAR maps into the guest (as a KVM memory slot) rather
/// than trapping accesses to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostMemory {
    pub addr: *mut u8,
    pub len: u64,
}

// SAFETY: a HostMemory is an address and a length that are handed to the
// hypervisor; nothing dereferences the pointer, from any thread.
unsafe impl Send for HostMemory {}
// SAFETY: as above.
unsafe impl Sync for HostMemory {}

pub trait PciDevice: Send {
    fn config(&self) -> &PciConfig;
    fn config_mut(&mut self) -> &mut PciConfig;
    /// The host memory behind a BAR that is a KVM memory slot rather than
    /// trapped MMIO.
    fn bar_memory(&self, bar: u8) -> Option<HostMemory>;
    /// The configuration space was written (after the BARs were brought in
    /// line with it).
    fn config_written(&mut self) {}
    /// A trapped BAR is now mapped at `addr`, or not at all.
    fn bar_mapped(&mut self, _bar: u8, _addr: Option<u64>) {}
    /// An access that lies wholly inside trapped BAR `bar`.
    fn bar_read(&mut self, _bar: u8, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn bar_write(&mut self, _bar: u8, _offset: u64, _data: &[u8]) -> Option<Action> {
        None
    }
}

/// A trapped BAR of a PCI device, as the MMIO bus sees it.
pub struct BarRange {
    pub device: SharedPciDevice,
    pub bar: u8,
}

impl BusDevice for BarRange {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        crate::lock(&self.device).bar_read(self.bar, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<Action> {
        crate::lock(&self.device).bar_write(self.bar, offset, data)
    }
}

/// The host bridge at 00:00.0: Linux accepts configuration mechanism #1
/// only if bus 0 holds a host bridge (or a VGA device).
pub struct HostBridge(PciConfig);

impl HostBridge {
    pub fn new() -> Self {
        Self(PciConfig::new(&Identity {
            vendor: 0x8086,
            device: 0x0d57,
            revision: 0,
            class: 0x060000,
            subsystem_vendor: 0,
            subsystem: 0,
        }))
    }
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for HostBridge {
    fn config(&self) -> &PciConfig {
        &self.0
    }
    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.0
    }
    fn bar_memory(&self, _: u8) -> Option<HostMemory> {
        None
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("PCI bus 0 has no free slot: it takes at most {MAX_DEVICES} devices")]
    Full,
}

/// A device on the bus, shared with whoever else drives it (the VM loop).
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// Bus 0, function 0 of each slot, behind ports 0xCF8..0xCFF.
pub struct PciBus {
    slots: Vec<Option<SharedPciDevice>>,
    address: u32,
}

impl PciBus {
    pub fn new() -> Self {
        let mut bus = Self { slots: vec![None; NUM_SLOTS], address: 0 };
        bus.slots[0] = Some(Arc::new(Mutex::new(HostBridge::new())));
        bus
    }

    /// Plugs `device` into the first free slot and returns the slot number.
    pub fn add(&mut self, device: SharedPciDevice) -> Result<u8, BusError> {
        let slot = self.slots.iter().position(Option::is_none).ok_or(BusError::Full)?;
        self.slots[slot] = Some(device);
        Ok(slot as u8)
    }

    pub fn device(&self, slot: u8) -> Option<&SharedPciDevice> {
        self.slots.get(usize::from(slot))?.as_ref()
    }

    /// The device and register the address port selects: bus 0, function 0 only.
    fn selected(&self) -> Option<(u8, &SharedPciDevice, usize)> {
        let a = self.address;
        let enabled = a & 0x8000_0000 != 0;
        let (bus, slot, function) = ((a >> 16) & 0xff, ((a >> 11) & 0x1f) as u8, (a >> 8) & 0x7);
        if !enabled || bus != 0 || function != 0 {
            return None;
        }
        Some((slot, self.device(slot)?, (a & 0xfc) as usize))
    }
}

impl Default for PciBus {
    fn default() -> Self {
        Self::new()
    }
}

/// Ports 0xCF8..0xCFF. Only a 4-byte access to 0xCF8 reaches the address
/// register (as the PCI specification and Intel's chipsets have it); the data
/// ports 0xCFC..0xCFF take 1-, 2- and 4-byte accesses that stay inside them
/// and reach the selected register bytes. Everything else, and the data
/// ports while no function 0 on bus 0 is selected, reads as all ones and
/// ignores writes.
impl BusDevice for PciBus {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data.len()) {
            (0, 4) => data.copy_from_slice(&self.address.to_le_bytes()),
            (4..8, len) if offset + len as u64 <= 8 => match self.selected() {
                Some((_, device, reg)) => crate::lock(device).config().read(reg + (offset as usize - 4), data),
                None => data.fill(0xff),
            },
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<Action> {
        match (offset, data.len()) {
            (0, 4) => self.address = u32::from_le_bytes(data.try_into().ok()?),
            (4..8, len) if offset + len as u64 <= 8 => {
                let (slot, device, reg) = self.selected()?;
                crate::lock(device).config_mut().write(reg + (offset as usize - 4), data);
                // The VM compares each BAR's decoded address with what it has
                // mapped: that covers moves, sizing and the command register.
                return Some(Action::PciConfigWritten { slot });
            }
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bus() -> PciBus {
        PciBus::new()
    }

    fn select(bus: &mut PciBus, slot: u32, reg: u32) {
        bus.write(0, &(0x8000_0000 | slot << 11 | reg).to_le_bytes());
    }

    #[test]
    fn reads_the_host_bridge_through_the_data_ports_at_any_width() {
        let mut bus = bus();
        select(&mut bus, 0, 0);
        let mut id = [0u8; 4];
        bus.read(4, &mut id);
        assert_eq!(u32::from_le_bytes(id), 0x0d57_8086);
        let mut b = [0u8; 2];
        bus.read(6, &mut b);
        assert_eq!(u16::from_le_bytes(b), 0x0d57);
        let mut b = [0u8; 1];
        bus.read(7, &mut b);
        assert_eq!(b[0], 0x0d);
    }

    #[test]
    fn odd_accesses_to_the_address_port_are_unclaimed() {
        let mut bus = bus();
        select(&mut bus, 0, 0);
        bus.write(0, &[0]);
        bus.write(1, &[0, 0]);
        let mut a = [0u8; 4];
        bus.read(0, &mut a);
        assert_eq!(u32::from_le_bytes(a), 0x8000_0000, "narrow writes leave the address alone");
        let mut b = [0u8; 2];
        bus.read(2, &mut b);
        assert_eq!(b, [0xff; 2]);
    }

    #[test]
    fn absent_slots_functions_and_disabled_selection_read_all_ones() {
        let mut bus = bus();
        for address in [0x8000_0800u32, 0x8000_0100, 0x8001_0000, 0x0000_0000] {
            bus.write(0, &address.to_le_bytes());
            let mut d = [0u8; 4];
            bus.read(4, &mut d);
            assert_eq!(d, [0xff; 4], "{address:#x}");
            assert_eq!(bus.write(4, &[0; 4]), None);
        }
    }

    #[test]
    fn plugs_devices_until_the_bus_is_full() {
        let mut bus = bus();
        for slot in 1..NUM_SLOTS {
            assert_eq!(bus.add(Arc::new(Mutex::new(HostBridge::new()))).unwrap() as usize, slot);
        }
        assert!(matches!(bus.add(Arc::new(Mutex::new(HostBridge::new()))), Err(BusError::Full)));
    }
}
