//! Dispatch of port I/O and MMIO accesses to the devices that own the address.
//!
//! Every access gets a defined outcome, whatever its address and length (KVM
//! hands over 1 to 8 bytes for MMIO, 1, 2 or 4 for each port access):
//! - an access that lies wholly inside one device's range goes to that
//!   device, with the offset from the start of the range;
//! - any other access (no device, or one that crosses the end of a range) is
//!   unclaimed: a read returns all ones, as a bus without a responder does,
//!   and a write is dropped. Unclaimed accesses are logged at debug level,
//!   a few per second at most.
//!
//! Devices that implement registers of one width use [`read_in_units`] and
//! [`write_in_units`] to take accesses of other lengths the way QEMU's
//! memory core hands them to such devices.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use log::Level;

use crate::limited;
use crate::ratelimit::LogLimit;

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
    /// Fills `data` from `offset`, relative to the start of the device's
    /// range; the access lies wholly inside the range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset`; the access lies wholly inside the range.
    fn write(&mut self, offset: u64, data: &[u8]) -> Option<Action>;
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("range {base:#x}+{len:#x} overlaps a device already on the bus")]
    Overlap { base: u64, len: u64 },
    #[error("range {base:#x}+{len:#x} is empty or wraps around")]
    BadRange { base: u64, len: u64 },
}

pub type SharedBusDevice = Arc<Mutex<dyn BusDevice>>;

struct Entry {
    len: u64,
    device: SharedBusDevice,
}

/// Address ranges that do not overlap, each owned by one device.
pub struct Bus {
    name: &'static str,
    ranges: BTreeMap<u64, Entry>,
    unclaimed: LogLimit,
}

impl Bus {
    /// `name` ("port I/O", "MMIO") appears in log messages.
    pub fn new(name: &'static str) -> Self {
        Self { name, ranges: BTreeMap::new(), unclaimed: LogLimit::new(format!("{name} bus")) }
    }

    pub fn insert(&mut self, device: SharedBusDevice, base: u64, len: u64) -> Result<(), Error> {
        let end = base.checked_add(len).filter(|_| len > 0).ok_or(Error::BadRange { base, len })?;
        if self.overlaps(base, end) {
            return Err(Error::Overlap { base, len });
        }
        self.ranges.insert(base, Entry { len, device });
        Ok(())
    }

    pub fn remove(&mut self, base: u64) -> bool {
        self.ranges.remove(&base).is_some()
    }

    /// Whether any range on the bus intersects `start..end`.
    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        let below = self.ranges.range(..start).next_back().is_some_and(|(&b, e)| b + e.len > start);
        below || self.ranges.range(start..end).next().is_some()
    }

    /// The ranges on the bus as (base, length), in address order.
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(&base, e)| (base, e.len))
    }

    /// The device whose range holds all of `addr..addr + len`, and the offset.
    fn find(&self, addr: u64, len: usize) -> Option<(u64, &SharedBusDevice)> {
        let (&base, entry) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset.checked_add(len as u64)? <= entry.len).then_some((offset, &entry.device))
    }

    /// Returns whether a device took the access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, device)) => {
                crate::lock(device).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                limited!(
                    self.unclaimed,
                    Level::Debug,
                    "unclaimed {} read of {} bytes at {addr:#x}",
                    self.name,
                    data.len()
                );
                false
            }
        }
    }

    /// Returns whether a device took the access, and what it asks of the VM.
    pub fn write(&self, addr: u64, data: &[u8]) -> (bool, Option<Action>) {
        match self.find(addr, data.len()) {
            Some((offset, device)) => (true, crate::lock(device).write(offset, data)),
            None => {
                limited!(
                    self.unclaimed,
                    Level::Debug,
                    "unclaimed {} write of {} bytes at {addr:#x}",
                    self.name,
                    data.len()
                );
                (false, None)
            }
        }
    }

    /// Logs what the rate limit held back.
    pub fn flush_log(&self) {
        self.unclaimed.flush();
    }
}

/// Carries out a read of any length as reads of `unit` bytes (1, 2, 4 or 8)
/// at `offset`, `offset + unit`, ...: a shorter access is widened to one
/// unit at the same offset and the low bytes returned; a longer one is split.
/// This is what QEMU's memory core does for a device whose implementation
/// takes only one access size. `read(offset)` returns a unit's value.
pub fn read_in_units(unit: usize, offset: u64, data: &mut [u8], mut read: impl FnMut(u64) -> u64) {
    debug_assert!(unit.is_power_of_two() && unit <= 8);
    for (i, chunk) in data.chunks_mut(unit).enumerate() {
        let value = read(offset + (i * unit) as u64);
        chunk.copy_from_slice(&value.to_le_bytes()[..chunk.len()]);
    }
}

/// The write counterpart of [`read_in_units`]: a shorter write is widened
/// with zeroes in the bytes not written. Returns the last action asked for.
pub fn write_in_units(
    unit: usize,
    offset: u64,
    data: &[u8],
    mut write: impl FnMut(u64, u64) -> Option<Action>,
) -> Option<Action> {
    debug_assert!(unit.is_power_of_two() && unit <= 8);
    let mut action = None;
    for (i, chunk) in data.chunks(unit).enumerate() {
        let mut bytes = [0u8; 8];
        bytes[..chunk.len()].copy_from_slice(chunk);
        action = write(offset + (i * unit) as u64, u64::from_le_bytes(bytes)).or(action);
    }
    action
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(u8);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0 + offset as u8);
        }
        fn write(&mut self, _: u64, data: &[u8]) -> Option<Action> {
            self.0 = data[0];
            None
        }
    }

    fn echo(v: u8) -> SharedBusDevice {
        Arc::new(Mutex::new(Echo(v)))
    }

    #[test]
    fn dispatches_by_range_and_rejects_overlaps() {
        let mut bus = Bus::new("test");
        bus.insert(echo(10), 0x100, 0x10).unwrap();
        bus.insert(echo(20), 0x110, 0x10).unwrap();
        assert_eq!(bus.insert(echo(0), 0x10f, 2), Err(Error::Overlap { base: 0x10f, len: 2 }));
        assert_eq!(bus.insert(echo(0), 0xf8, 0x9), Err(Error::Overlap { base: 0xf8, len: 9 }));
        assert!(bus.insert(echo(0), u64::MAX, 2).is_err());
        assert!(bus.insert(echo(0), 0x200, 0).is_err());
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
        assert_eq!(bus.ranges().collect::<Vec<_>>(), vec![(0x100, 0x10)]);
    }

    #[test]
    fn an_access_that_crosses_the_end_of_a_range_is_unclaimed() {
        let mut bus = Bus::new("test");
        bus.insert(echo(1), 0x100, 0x10).unwrap();
        bus.insert(echo(2), 0x110, 0x10).unwrap();
        let mut b = [0u8; 8];
        // Inside: the last 8 bytes of the first range.
        assert!(bus.read(0x108, &mut b));
        assert_eq!(b, [9; 8]);
        // Across the boundary between two devices, and past the last one.
        for addr in [0x10c, 0x11c, u64::MAX - 3] {
            assert!(!bus.read(addr, &mut b), "{addr:#x}");
            assert_eq!(b, [0xff; 8]);
            assert_eq!(bus.write(addr, &b), (false, None));
        }
        bus.read(0x110, &mut b[..1]);
        assert_eq!(b[0], 2, "the refused write did not reach the second device");
    }

    #[test]
    fn accesses_are_widened_and_split_into_units() {
        // A device of 4-byte registers whose value is 0x0403_0201 + offset.
        let reg = |offset: u64| 0x0403_0201 + offset;
        let mut b = [0u8; 8];
        read_in_units(4, 0, &mut b, reg);
        assert_eq!(b, [1, 2, 3, 4, 5, 2, 3, 4]);
        let mut b = [0u8; 1];
        read_in_units(4, 9, &mut b, reg);
        assert_eq!(b, [10], "a narrow read at any offset is one unit at that offset");
        let mut b = [0u8; 3];
        read_in_units(1, 2, &mut b, reg);
        assert_eq!(b, [3, 4, 5]);

        let mut seen = Vec::new();
        write_in_units(4, 4, &[0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff], |o, v| {
            seen.push((o, v));
            None
        });
        assert_eq!(seen, vec![(4, 0xddcc_bbaa), (8, 0xffee)]);
        let action = write_in_units(1, 0, &[1, 2], |o, _| (o == 0).then_some(Action::Reset));
        assert_eq!(action, Some(Action::Reset));
    }
}
