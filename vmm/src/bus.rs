//! Dispatch of port I/O and MMIO exits to the devices that own the address.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// What a device asks of the VM after a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The guest asked for a reset (our guests use it to power off).
    Reset,
    /// The configuration space of the PCI device in `slot` was written: its
    /// BARs may have been enabled, disabled or moved.
    PciConfigWritten { slot: u8 },
}

pub trait BusDevice: Send {
    /// `offset` is relative to the start of the range the device was inserted with.
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]);
    fn write(&mut self, base: u64, offset: u64, data: &[u8]) -> Option<Action>;
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("range {base:#x}+{len:#x} overlaps a device already on the bus")]
    Overlap { base: u64, len: u64 },
    #[error("range {base:#x}+{len:#x} is empty or wraps around")]
    BadRange { base: u64, len: u64 },
}

struct Entry {
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// Address ranges that do not overlap, each owned by one device.
#[derive(Default)]
pub struct Bus {
    ranges: BTreeMap<u64, Entry>,
}

impl Bus {
    pub fn insert(&mut self, device: Arc<Mutex<dyn BusDevice>>, base: u64, len: u64) -> Result<(), Error> {
        let end = base.checked_add(len).filter(|_| len > 0).ok_or(Error::BadRange { base, len })?;
        let clash_below = self.find(base).is_some();
        let clash_above = self.ranges.range(base..end).next().is_some();
        if clash_below || clash_above {
            return Err(Error::Overlap { base, len });
        }
        self.ranges.insert(base, Entry { len, device });
        Ok(())
    }

    pub fn remove(&mut self, base: u64) -> bool {
        self.ranges.remove(&base).is_some()
    }

    fn find(&self, addr: u64) -> Option<(u64, &Entry)> {
        let (&base, entry) = self.ranges.range(..=addr).next_back()?;
        (addr - base < entry.len).then_some((base, entry))
    }

    /// Reads from no device return all ones, as an unclaimed bus does.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((base, entry)) => {
                entry.device.lock().unwrap().read(base, addr - base, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    pub fn write(&self, addr: u64, data: &[u8]) -> (bool, Option<Action>) {
        match self.find(addr) {
            Some((base, entry)) => (true, entry.device.lock().unwrap().write(base, addr - base, data)),
            None => (false, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(u8);
    impl BusDevice for Echo {
        fn read(&mut self, _: u64, offset: u64, data: &mut [u8]) {
            data.fill(self.0 + offset as u8);
        }
        fn write(&mut self, _: u64, _: u64, data: &[u8]) -> Option<Action> {
            self.0 = data[0];
            None
        }
    }

    #[test]
    fn dispatches_by_range_and_rejects_overlaps() {
        let mut bus = Bus::default();
        bus.insert(Arc::new(Mutex::new(Echo(10))), 0x100, 0x10).unwrap();
        bus.insert(Arc::new(Mutex::new(Echo(20))), 0x110, 0x10).unwrap();
        assert_eq!(bus.insert(Arc::new(Mutex::new(Echo(0))), 0x10f, 2), Err(Error::Overlap { base: 0x10f, len: 2 }));
        assert_eq!(bus.insert(Arc::new(Mutex::new(Echo(0))), 0xf8, 0x9), Err(Error::Overlap { base: 0xf8, len: 9 }));
        assert!(bus.insert(Arc::new(Mutex::new(Echo(0))), u64::MAX, 2).is_err());
        let mut b = [0u8; 1];
        assert!(bus.read(0x103, &mut b));
        assert_eq!(b[0], 13);
        assert!(bus.read(0x110, &mut b));
        assert_eq!(b[0], 20);
        assert!(!bus.read(0x120, &mut b));
        assert_eq!(b[0], 0xff);
        bus.write(0x115, &[7]);
        bus.read(0x111, &mut b);
        assert_eq!(b[0], 8);
        assert!(bus.remove(0x110));
        assert!(!bus.read(0x111, &mut b));
    }
}
