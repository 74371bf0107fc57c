//! PCI: configuration spaces, and bus 0 behind the legacy configuration
//! mechanism #1 (ports 0xCF8 address, 0xCFC data) that Linux probes without ACPI.

mod config;

pub use config::{BarKind, Error, Identity, PciConfig};

use std::sync::{Arc, Mutex};

use crate::bus::{Action, BusDevice};

pub const CONFIG_ADDRESS_PORT: u64 = 0xcf8;
pub const CONFIG_PORTS_LEN: u64 = 8;
const NUM_SLOTS: usize = 32;

pub trait PciDevice: Send {
    fn config(&self) -> &PciConfig;
    fn config_mut(&mut self) -> &mut PciConfig;
    /// The host memory behind a BAR that is a KVM memory slot rather than
    /// trapped MMIO: (host address, length).
    fn bar_memory(&self, bar: u8) -> Option<(*mut u8, u64)>;
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
    fn bar_memory(&self, _: u8) -> Option<(*mut u8, u64)> {
        None
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("PCI bus 0 has no free slot")]
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

impl BusDevice for PciBus {
    fn read(&mut self, _: u64, offset: u64, data: &mut [u8]) {
        match offset {
            0 if data.len() == 4 => data.copy_from_slice(&self.address.to_le_bytes()),
            4..=7 => match self.selected() {
                Some((_, device, reg)) => device.lock().unwrap().config().read(reg + (offset as usize - 4), data),
                None => data.fill(0xff),
            },
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, _: u64, offset: u64, data: &[u8]) -> Option<Action> {
        match offset {
            0 if data.len() == 4 => self.address = u32::from_le_bytes(data.try_into().unwrap()),
            4..=7 => {
                let (slot, device, reg) = self.selected()?;
                device.lock().unwrap().config_mut().write(reg + (offset as usize - 4), data);
                // The VM compares each BAR's decoded address with what it has
                // mapped: that covers moves, sizing and the command register.
                return Some(Action::PciConfigWritten { slot });
            }
            _ => {}
        }
        None
    }
}
