//! The VM's devices and the buses that reach them, without KVM: unit tests
//! and the fuzzer drive it the way the vCPU loop does.
//!
//! | bus | addresses | device |
//! |---|---|---|
//! | port I/O | 0x60..0x65 | i8042 reset line ([`ResetPort`]) |
//! | port I/O | 0x3f8..0x400 | 16550 UART, the console (added by the VM) |
//! | port I/O | 0xcf8..0xd00 | PCI configuration mechanism #1 ([`PciBus`]) |
//! | MMIO | BAR0 of each ivshmem device, wherever the guest puts it | ivshmem registers |
//! | MMIO | BAR1 of each ivshmem-doorbell device | its MSI-X table and PBA |
//! | memory slot | BAR2 of each ivshmem device, wherever the guest puts it | the backing file |
//!
//! A write to a device's configuration space can enable, disable or move
//! its BARs. The manager then brings the mappings in line with what the
//! guest programmed: MMIO ranges on its own bus, memory slots through the
//! [`Hypervisor`] (KVM in the VM, a model in tests and the fuzzer). A
//! BAR is mapped exactly where it decodes, unless that is over RAM, the
//! platform's reserved ranges, past the physical address limit or over a
//! BAR already mapped: then it stays unmapped, with a warning, until the
//! guest moves one of them.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use log::Level;

use crate::backing::BackingFile;
use crate::bus::{self, Action, Bus, SharedBusDevice};
use shm_layout::host::ivshmem::Peer;

use crate::devices::doorbell::{self, DoorbellThread, HasDoorbell};
use crate::devices::{IvshmemDevice, ResetPort, legacy};
use crate::hypervisor::{self, Hypervisor};
use crate::pci::{self, BarRange, HostMemory, PciBus, PciDevice, SharedPciDevice};
use crate::ratelimit::LogLimit;
use crate::{layout, limited, lock};

/// A BAR of a device on PCI bus 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BarId {
    pub slot: u8,
    pub bar: u8,
}

impl std::fmt::Display for BarId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BAR{} of 00:{:02x}.0", self.bar, self.slot)
    }
}

/// What the guest's physical address space holds besides the BARs.
#[derive(Debug, Clone)]
pub struct GuestSpace {
    /// RAM (one KVM memory slot each).
    pub ram: Vec<Range<u64>>,
    /// Ranges the platform uses, with what is there.
    pub reserved: Vec<(Range<u64>, &'static str)>,
    /// The guest's physical address width in bits.
    pub phys_bits: u8,
}

impl GuestSpace {
    /// The first address past the guest's physical address width.
    pub fn limit(&self) -> u64 {
        1u64.checked_shl(self.phys_bits.into()).unwrap_or(u64::MAX)
    }

    /// The first address past RAM.
    pub fn ram_end(&self) -> u64 {
        self.ram.iter().map(|r| r.end).max().unwrap_or(0)
    }

    /// Where memory BARs go at boot: the 64-bit PCI window, from the first
    /// GiB boundary past both RAM and 4 GiB (see [`layout`]).
    fn mmio64_start(&self) -> u64 {
        self.ram_end().max(layout::RAM_ABOVE_4G).next_multiple_of(1 << 30)
    }
}

/// Why a BAR cannot be mapped where the guest put it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Conflict {
    #[error("wraps around the end of the address space")]
    Wraps,
    #[error("overlaps RAM")]
    Ram,
    #[error("overlaps {0}")]
    Reserved(&'static str),
    #[error("lies past the {0}-bit physical address limit")]
    PastLimit(u8),
    #[error("overlaps {0}, mapped at {1:#x}")]
    Bar(BarId, u64),
}

/// What a guest access asks of the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// The guest reset itself: the VM ends.
    Reset,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("device set-up")]
    Bus(#[from] bus::Error),
    #[error("--shm")]
    PciBus(#[from] pci::BusError),
    #[error("--shm {path}: {size} bytes do not fit below the guest's {phys_bits}-bit physical address limit")]
    NoRoom { path: std::path::PathBuf, size: u64, phys_bits: u8 },
    #[error("--shm {path}")]
    Device { path: std::path::PathBuf, source: crate::devices::ivshmem::Error },
    #[error("--shm {path}: starting the ivshmem-doorbell thread")]
    Thread { path: std::path::PathBuf, source: std::io::Error },
    #[error("cannot remove the memory of {bar} from the guest")]
    Unmap {
        bar: BarId,
        #[source]
        source: hypervisor::Error,
    },
}

/// One ivshmem device and what of it is mapped into the guest now.
struct Ivshmem {
    slot: u8,
    device: Arc<Mutex<IvshmemDevice>>,
    /// Guest address at which each BAR is mapped (on the MMIO bus or as memory).
    mapped: [Option<u64>; pci::NUM_BARS],
    /// The address at which each BAR was last refused, so that it is
    /// warned about once, not at every configuration write.
    refused: [Option<u64>; pci::NUM_BARS],
    log: LogLimit,
}

/// A BAR as the guest programmed it and as it is mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarState {
    pub id: BarId,
    pub size: u64,
    /// Where the BAR decodes: `None` while memory decoding is off.
    pub decoded: Option<u64>,
    pub mapped: Option<u64>,
    /// The host memory a memory BAR maps; `None` for trapped registers.
    pub memory: Option<HostMemory>,
}

pub struct DeviceManager {
    space: GuestSpace,
    hypervisor: Arc<dyn Hypervisor>,
    pio: Bus,
    mmio: Bus,
    pci: Arc<Mutex<PciBus>>,
    ivshmem: Vec<Ivshmem>,
    /// Where the next device's BAR2 goes at boot.
    next_memory_bar: u64,
    /// One per ivshmem-doorbell device; stopped (joined) when dropped.
    doorbell_threads: Vec<DoorbellThread>,
}

impl DeviceManager {
    /// The manager with the platform's devices: host bridge, PCI
    /// configuration ports and reset line.
    pub fn new(space: GuestSpace, hypervisor: Arc<dyn Hypervisor>) -> Result<Self, Error> {
        let pci = Arc::new(Mutex::new(PciBus::new()));
        let mut pio = Bus::new("port I/O");
        pio.insert(Arc::new(Mutex::new(ResetPort)), legacy::I8042.into(), legacy::I8042_LEN.into())?;
        pio.insert(pci.clone(), pci::CONFIG_ADDRESS_PORT, pci::CONFIG_PORTS_LEN)?;
        Ok(Self {
            next_memory_bar: space.mmio64_start(),
            space,
            hypervisor,
            pio,
            mmio: Bus::new("MMIO"),
            pci,
            ivshmem: Vec::new(),
            doorbell_threads: Vec::new(),
        })
    }

    pub fn add_port_device(&mut self, device: SharedBusDevice, base: u16, len: u16) -> Result<(), Error> {
        Ok(self.pio.insert(device, base.into(), len.into())?)
    }

    /// Plugs an ivshmem-plain device into the next free PCI slot, with its
    /// BARs where firmware would put them (see [`layout`]). They decode once
    /// the guest enables memory decoding. Returns the slot.
    pub fn add_ivshmem(&mut self, memory: Arc<BackingFile>, id: u32) -> Result<u8, Error> {
        self.add(memory, |memory, [bar0, _, bar2]| IvshmemDevice::new(memory, id, bar0, bar2))
    }

    /// Plugs an ivshmem-doorbell device whose memory and vectors come from
    /// the server that `peer` joined. Its server messages and held vectors
    /// are taken by [`DeviceManager::start_doorbell_threads`] (in a VM) or
    /// [`DeviceManager::service_doorbells`] (in the fuzzer).
    pub fn add_ivshmem_doorbell(&mut self, memory: Arc<BackingFile>, peer: Peer) -> Result<u8, Error> {
        let hypervisor = self.hypervisor.clone();
        self.add(memory, |memory, addrs| IvshmemDevice::with_doorbell(memory, peer, hypervisor, addrs))
    }

    /// Starts a thread for each ivshmem-doorbell device.
    pub fn start_doorbell_threads(&mut self) -> Result<(), Error> {
        for d in &self.ivshmem {
            if lock(&d.device).doorbell_mut().is_some() {
                let path = lock(&d.device).memory().path().to_path_buf();
                let thread = doorbell::serve(d.device.clone()).map_err(|source| Error::Thread { path, source })?;
                self.doorbell_threads.push(thread);
            }
        }
        Ok(())
    }

    /// Each vector of the doorbell device in `slot`: its GSI, how the MSI-X
    /// state says it is delivered, and its pending bit.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn doorbell_view(&self, slot: u8) -> Option<Vec<(u32, crate::pci::msix::Delivery, bool)>> {
        let d = self.ivshmem.iter().find(|d| d.slot == slot)?;
        lock(&d.device).doorbell_view()
    }

    /// What the doorbell threads do, once, without waiting.
    pub fn service_doorbells(&self) -> std::io::Result<()> {
        for d in &self.ivshmem {
            doorbell::service(&d.device, 0)?;
        }
        Ok(())
    }

    fn add(
        &mut self,
        memory: Arc<BackingFile>,
        device: impl FnOnce(Arc<BackingFile>, [u64; 3]) -> Result<IvshmemDevice, crate::devices::ivshmem::Error>,
    ) -> Result<u8, Error> {
        let size = memory.size();
        let path = memory.path().to_path_buf();
        let bar2 = self.next_memory_bar.next_multiple_of(size);
        if bar2.checked_add(size).is_none_or(|end| end > self.space.limit()) {
            return Err(Error::NoRoom { path, size, phys_bits: self.space.phys_bits });
        }
        let bar0 = layout::PCI_MMIO32_START + self.ivshmem.len() as u64 * layout::PCI_MMIO32_PER_DEVICE;
        let bar1 = bar0 + layout::PCI_MMIO32_PER_DEVICE / 2;
        let device = device(memory, [bar0, bar1, bar2]).map_err(|source| Error::Device { path, source })?;
        let device = Arc::new(Mutex::new(device));
        let slot = lock(&self.pci).add(device.clone())?;
        self.next_memory_bar = bar2 + size;
        let log = LogLimit::new(format!("ivshmem at 00:{slot:02x}.0"));
        self.ivshmem.push(Ivshmem { slot, device, mapped: [None; 6], refused: [None; 6], log });
        Ok(slot)
    }

    /// The backing files of all ivshmem devices, in the order added.
    pub fn backing_files(&self) -> Vec<Arc<BackingFile>> {
        self.ivshmem.iter().map(|d| lock(&d.device).memory().clone()).collect()
    }

    /// A port read of `size` bytes (1, 2 or 4), or a string read (`rep
    /// ins`): `data` then holds count × `size` bytes, read one unit after
    /// the other from the same port.
    pub fn pio_read(&self, port: u16, size: usize, data: &mut [u8]) {
        for unit in data.chunks_mut(size.max(1)) {
            self.pio.read(port.into(), unit);
        }
    }

    /// A port write of `size` bytes, or a string write (`rep outs`) of
    /// count × `size` bytes to the same port.
    pub fn pio_write(&mut self, port: u16, size: usize, data: &[u8]) -> Result<Option<Request>, Error> {
        let mut request = None;
        for unit in data.chunks(size.max(1)) {
            let (_, action) = self.pio.write(port.into(), unit);
            request = self.apply(action)?.or(request);
        }
        Ok(request)
    }

    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        self.mmio.read(addr, data);
    }

    pub fn mmio_write(&mut self, addr: u64, data: &[u8]) -> Result<Option<Request>, Error> {
        let (_, action) = self.mmio.write(addr, data);
        self.apply(action)
    }

    fn apply(&mut self, action: Option<Action>) -> Result<Option<Request>, Error> {
        match action {
            None => Ok(None),
            Some(Action::Reset) => Ok(Some(Request::Reset)),
            Some(Action::PciConfigWritten { slot }) => {
                self.sync_bars()?;
                if let Some(d) = self.ivshmem.iter().find(|d| d.slot == slot) {
                    lock(&d.device).config_written();
                }
                Ok(None)
            }
        }
    }

    /// The ranges on the MMIO bus (mapped BAR0s), as (base, length).
    pub fn mmio_ranges(&self) -> Vec<(u64, u64)> {
        self.mmio.ranges().collect()
    }

    /// Every BAR of every device, as programmed and as mapped.
    pub fn bars(&self) -> Vec<BarState> {
        let mut bars = Vec::new();
        for d in &self.ivshmem {
            let dev = lock(&d.device);
            for bar in 0..pci::NUM_BARS as u8 {
                let Some(size) = dev.config().bar_size(bar.into()) else { continue };
                bars.push(BarState {
                    id: BarId { slot: d.slot, bar },
                    size,
                    decoded: dev.config().bar_mapping(bar.into()),
                    mapped: d.mapped[usize::from(bar)],
                    memory: dev.bar_memory(bar),
                });
            }
        }
        bars
    }

    /// Why `size` bytes at `addr` cannot be mapped, given what is mapped now.
    pub fn conflict(&self, addr: u64, size: u64) -> Option<Conflict> {
        let Some(end) = addr.checked_add(size) else { return Some(Conflict::Wraps) };
        let overlaps = |r: &Range<u64>| addr < r.end && r.start < end;
        if self.space.ram.iter().any(overlaps) {
            return Some(Conflict::Ram);
        }
        if let Some((_, what)) = self.space.reserved.iter().find(|(r, _)| overlaps(r)) {
            return Some(Conflict::Reserved(what));
        }
        if end > self.space.limit() {
            return Some(Conflict::PastLimit(self.space.phys_bits));
        }
        self.bars().into_iter().find_map(|b| {
            let m = b.mapped?;
            overlaps(&(m..m + b.size)).then_some(Conflict::Bar(b.id, m))
        })
    }

    /// Brings every BAR's mapping in line with the configuration spaces:
    /// first removes the mappings that no longer match (decoding turned off,
    /// or the BAR moved), then maps each BAR that decodes and is not mapped,
    /// unless it conflicts with what is.
    fn sync_bars(&mut self) -> Result<(), Error> {
        let bars = self.bars();
        for b in bars.iter().filter(|b| b.mapped.is_some() && b.mapped != b.decoded) {
            self.unmap(b)?;
        }
        for b in bars.iter().filter(|b| b.decoded.is_some() && b.mapped != b.decoded) {
            self.map(b);
        }
        Ok(())
    }

    fn entry(&mut self, id: BarId) -> &mut Ivshmem {
        self.ivshmem.iter_mut().find(|d| d.slot == id.slot).expect("BarState of a device of ours")
    }

    fn unmap(&mut self, b: &BarState) -> Result<(), Error> {
        let old = b.mapped.expect("called for mapped BARs");
        match b.memory {
            Some(_) => self.hypervisor.unmap_memory(b.id).map_err(|source| Error::Unmap { bar: b.id, source })?,
            None => {
                self.mmio.remove(old);
                lock(&self.entry(b.id).device).bar_mapped(b.id.bar, None);
            }
        }
        let entry = self.entry(b.id);
        entry.mapped[usize::from(b.id.bar)] = None;
        limited!(entry.log, Level::Debug, "{} unmapped from {old:#x}", b.id);
        Ok(())
    }

    /// Maps `b` where it decodes, or leaves it unmapped with a warning.
    fn map(&mut self, b: &BarState) {
        let addr = b.decoded.expect("called for decoding BARs");
        let outcome = match self.conflict(addr, b.size) {
            Some(conflict) => Err(conflict.to_string()),
            None => match b.memory {
                Some(host) => {
                    self.hypervisor.map_memory(b.id, addr, host).map_err(|e| format!("cannot be mapped there: {e}"))
                }
                None => {
                    let device: SharedPciDevice = self.entry(b.id).device.clone();
                    let range = BarRange { device: device.clone(), bar: b.id.bar };
                    let inserted = self.mmio.insert(Arc::new(Mutex::new(range)), addr, b.size);
                    if inserted.is_ok() {
                        lock(&device).bar_mapped(b.id.bar, Some(addr));
                    }
                    inserted.map_err(|e| e.to_string())
                }
            },
        };
        let entry = self.entry(b.id);
        let bar = usize::from(b.id.bar);
        match outcome {
            Ok(()) => {
                entry.mapped[bar] = Some(addr);
                entry.refused[bar] = None;
                limited!(entry.log, Level::Info, "{} mapped at {addr:#x}", b.id);
            }
            Err(why) if entry.refused[bar] != Some(addr) => {
                entry.refused[bar] = Some(addr);
                limited!(entry.log, Level::Warn, "the guest put {} at {addr:#x}, which {why}; left unmapped", b.id);
            }
            Err(_) => {}
        }
    }

    /// Logs what the rate limits held back.
    pub fn flush_logs(&self) {
        self.pio.flush_log();
        self.mmio.flush_log();
        for d in &self.ivshmem {
            d.log.flush();
            lock(&d.device).flush_log();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::pci::config::{BAR0, COMMAND, COMMAND_MEMORY};
    use crate::pci::msix::MsiMessage;

    const RAM: u64 = 128 << 20;

    /// KVM's memory slots as a map.
    #[derive(Default)]
    struct Slots(Mutex<HashMap<BarId, (u64, HostMemory)>>);

    impl Hypervisor for Slots {
        fn map_memory(&self, bar: BarId, addr: u64, host: HostMemory) -> Result<(), hypervisor::Error> {
            assert!(lock(&self.0).insert(bar, (addr, host)).is_none(), "{bar} mapped twice");
            Ok(())
        }
        fn unmap_memory(&self, bar: BarId) -> Result<(), hypervisor::Error> {
            assert!(lock(&self.0).remove(&bar).is_some(), "{bar} unmapped but not mapped");
            Ok(())
        }
        fn add_ioevent(&self, _: &EventFd, _: u64, _: u32) -> Result<(), hypervisor::Error> {
            unreachable!("no doorbell devices here")
        }
        fn remove_ioevent(&self, _: &EventFd, _: u64, _: u32) -> Result<(), hypervisor::Error> {
            unreachable!("no doorbell devices here")
        }
        fn allocate_gsi(&self) -> u32 {
            unreachable!("no doorbell devices here")
        }
        fn attach_irqfd(&self, _: &EventFd, _: u32, _: MsiMessage) -> Result<(), hypervisor::Error> {
            unreachable!("no doorbell devices here")
        }
        fn detach_irqfd(&self, _: &EventFd, _: u32) -> Result<(), hypervisor::Error> {
            unreachable!("no doorbell devices here")
        }
    }

    impl Slots {
        fn addr(&self, bar: BarId) -> Option<u64> {
            lock(&self.0).get(&bar).map(|s| s.0)
        }
        fn is_empty(&self) -> bool {
            lock(&self.0).is_empty()
        }
    }

    fn manager(devices: u64) -> (DeviceManager, Arc<Slots>) {
        let space = GuestSpace {
            ram: vec![Range { start: 0, end: RAM }],
            reserved: vec![(layout::IOAPIC..1 << 32, "the APICs")],
            phys_bits: 40,
        };
        let slots = Arc::new(Slots::default());
        let mut m = DeviceManager::new(space, slots.clone()).unwrap();
        for i in 0..devices {
            m.add_ivshmem(Arc::new(BackingFile::memfd(1 << 20)), i as u32).unwrap();
        }
        (m, slots)
    }

    fn config_write(m: &mut DeviceManager, slot: u8, reg: u8, value: &[u8]) {
        let address = 0x8000_0000u32 | u32::from(slot) << 11 | u32::from(reg & 0xfc);
        m.pio_write(0xcf8, 4, &address.to_le_bytes()).unwrap();
        m.pio_write(0xcfc + u16::from(reg & 3), value.len(), value).unwrap();
    }

    fn decode(m: &mut DeviceManager, slot: u8, on: bool) {
        let command = if on { COMMAND_MEMORY } else { 0 };
        config_write(m, slot, COMMAND as u8, &command.to_le_bytes());
    }

    fn mapped(m: &DeviceManager) -> Vec<(BarId, Option<u64>)> {
        m.bars().iter().map(|b| (b.id, b.mapped)).collect()
    }

    fn iv_position(m: &DeviceManager, bar0: u64) -> u32 {
        let mut b = [0u8; 4];
        m.mmio_read(bar0 + 8, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn decoding_maps_and_unmaps_both_bars() {
        let (mut m, slots) = manager(2);
        assert!(mapped(&m).iter().all(|(_, a)| a.is_none()));
        decode(&mut m, 2, true);
        let bar2 = BarId { slot: 2, bar: 2 };
        assert_eq!(slots.addr(bar2), Some(1 << 32 | 1 << 20));
        assert_eq!(iv_position(&m, 0xc000_2000), 1, "BAR0 of the second device is on the MMIO bus");
        assert_eq!(iv_position(&m, 0xc000_0000), u32::MAX, "the first device does not decode");
        decode(&mut m, 2, false);
        assert!(slots.is_empty());
        assert_eq!(iv_position(&m, 0xc000_2000), u32::MAX);
    }

    #[test]
    fn a_moved_bar_follows_and_a_conflicting_one_waits() {
        let (mut m, slots) = manager(2);
        decode(&mut m, 1, true);
        decode(&mut m, 2, true);
        // Device 2's BAR0 moves onto device 1's: refused, until device 1's moves away.
        config_write(&mut m, 2, BAR0 as u8, &0xc000_0000u32.to_le_bytes());
        assert_eq!(m.bars()[2].mapped, None);
        assert_eq!(iv_position(&m, 0xc000_0000), 0);
        config_write(&mut m, 1, BAR0 as u8, &0xc000_8000u32.to_le_bytes());
        assert_eq!(iv_position(&m, 0xc000_8000), 0);
        assert_eq!(iv_position(&m, 0xc000_0000), 1, "the waiting BAR is mapped once the way is clear");
        // BAR2 over RAM, then over the APICs, then above 4 GiB again.
        let bar2 = BarId { slot: 1, bar: 2 };
        for (low, high, expect) in [(0x10_0000u32, 0u32, None), (0xfee0_0000, 0, None), (0, 3, Some(3 << 32))] {
            config_write(&mut m, 1, BAR0 as u8 + 8, &low.to_le_bytes());
            config_write(&mut m, 1, BAR0 as u8 + 12, &high.to_le_bytes());
            assert_eq!(slots.addr(bar2), expect, "{low:#x} {high:#x}");
        }
    }

    #[test]
    fn a_bar_past_the_address_limit_is_not_mapped() {
        let (mut m, slots) = manager(1);
        decode(&mut m, 1, true);
        config_write(&mut m, 1, BAR0 as u8 + 12, &0xffff_ffffu32.to_le_bytes());
        assert!(slots.is_empty());
        assert_eq!(m.conflict(0xffff_ffff_0000_0000, 1 << 20), Some(Conflict::PastLimit(40)));
        assert_eq!(m.conflict(u64::MAX - 10, 1 << 20), Some(Conflict::Wraps));
    }

    #[test]
    fn too_many_devices_or_too_little_address_space_are_errors() {
        let (mut m, _) = manager(pci::MAX_DEVICES as u64);
        let e = m.add_ivshmem(Arc::new(BackingFile::memfd(4096)), 99).unwrap_err();
        assert!(matches!(e, Error::PciBus(pci::BusError::Full)), "{e}");
        let cause = std::error::Error::source(&e).map(ToString::to_string).unwrap_or_default();
        assert!(cause.contains("at most 31 devices"), "{cause}");
        let (mut m, _) = manager(0);
        m.space.phys_bits = 32;
        assert!(matches!(m.add_ivshmem(Arc::new(BackingFile::memfd(4096)), 0), Err(Error::NoRoom { .. })));
    }

    #[test]
    fn the_reset_line_asks_for_a_reset() {
        let (mut m, _) = manager(0);
        assert_eq!(m.pio_write(0x64, 1, &[0xfe]).unwrap(), Some(Request::Reset));
        assert_eq!(m.pio_write(0x64, 1, &[0xfd]).unwrap(), None);
        // A string write (rep outsb) of three bytes, the last one the reset command.
        assert_eq!(m.pio_write(0x64, 1, &[0, 1, 0xfe]).unwrap(), Some(Request::Reset));
    }
}
