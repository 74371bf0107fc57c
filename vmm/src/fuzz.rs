//! The device-model fuzzer: sequences of guest actions against a
//! [`DeviceManager`] and a model of KVM's memory slots, with invariants
//! checked after every action. The actions are what a guest can do to the
//! device model: configuration-space reads and writes of every size and
//! offset, BAR moves aimed at RAM, the APICs, each other and the address
//! limit, memory decoding on and off, port I/O (string I/O included) and MMIO
//! of every length at BAR0, its edges and anywhere.
//!
//! After each action:
//! - nothing panicked;
//! - every mapped BAR is mapped where it decodes, and decodes (memory
//!   decoding on);
//! - no two mapped BARs overlap, and none overlaps RAM or the platform's
//!   ranges or lies past the address limit;
//! - a BAR that decodes but is not mapped conflicts with what is (nothing
//!   is left unmapped without a reason);
//! - the memory slots of the model are exactly the mapped memory BARs, each
//!   with its device's memory, and the MMIO bus holds exactly the mapped
//!   register BARs, each answering with its device's IVPosition;
//! - for the ivshmem-doorbell device (its peers joining and leaving, its
//!   vectors rung, its MSI-X table and control written): an ioeventfd for
//!   every vector of every peer (itself included) at BAR0's Doorbell
//!   register while BAR0 is mapped, and none otherwise; an irqfd routed to
//!   the table's message for exactly the vectors MSI-X sends, none pending;
//!   a ring on a held vector sets its pending bit.
//!
//! `vmm/fuzz` runs [`run`] under libFuzzer (cargo-fuzz); the unit tests run
//! it on the committed corpus and on a bounded number of random inputs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arbitrary::{Arbitrary, Unstructured};
use shm_layout::host::ivshmem::{Peer, send_message};
use vmm_sys_util::eventfd::EventFd;

use crate::backing::BackingFile;
use crate::device_manager::{BarId, BarState, DeviceManager, GuestSpace};
use crate::devices::{SerialPort, legacy};
use crate::hypervisor::{self, Hypervisor};
use crate::pci::HostMemory;
use crate::pci::msix::{Delivery, MsiMessage};
use crate::{layout, lock};

const RAM: u64 = 64 << 20;
const PHYS_BITS: u8 = 40;
/// Device sizes: BAR2 of one page, of 1 MiB and of 64 KiB.
const DEVICES: [u64; 3] = [4096, 1 << 20, 64 << 10];
/// Slots that actions aim at: the host bridge, the devices, and empty ones.
const SLOTS: u8 = DEVICES.len() as u8 + 3;

/// Actions and invariant checks run by [`run`] in this process, for the
/// long run's report.
pub static ACTIONS: AtomicU64 = AtomicU64::new(0);
pub static CHECKS: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Size {
    Byte,
    Word,
    Dword,
}

impl Size {
    fn bytes(self) -> usize {
        match self {
            Size::Byte => 1,
            Size::Word => 2,
            Size::Dword => 4,
        }
    }
}

/// Where a BAR move aims.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Target {
    Ram(u32),
    /// Where another BAR (device, BAR index) decodes now.
    OtherBar(u8, u8),
    Apic,
    /// Straddling the start of the platform's reserved range.
    ReservedEdge,
    PastLimit,
    /// All ones: a sizing probe.
    AllOnes,
    Window32(u16),
    Window64(u16),
    Any(u64),
}

#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Port {
    Config(u8),
    Serial(u8),
    I8042(u8),
    /// Just outside the ranges of devices.
    Edge(u8),
    Any(u16),
}

#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Addr {
    /// Offset in the page of a device's BAR0 (where it decodes now).
    Bar0(u8, u16),
    /// Offset in a device's BAR2 (which an MMIO exit reaches only while unmapped).
    Bar2(u8, u32),
    /// Offset in a device's BAR1 (the doorbell device's MSI-X table and PBA).
    Bar1(u8, u16),
    Any(u64),
}

#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Action {
    ConfigRead {
        slot: u8,
        reg: u8,
        size: Size,
    },
    ConfigWrite {
        slot: u8,
        reg: u8,
        size: Size,
        value: u32,
    },
    /// Writes a BAR's address dwords (high first if `high_first`).
    MoveBar {
        slot: u8,
        bar: u8,
        target: Target,
        high_first: bool,
    },
    Decode {
        slot: u8,
        on: bool,
    },
    /// Writes the configuration address port with any value and size.
    Address {
        value: u32,
        offset: u8,
        size: Size,
    },
    PortRead {
        port: Port,
        size: Size,
        count: u8,
    },
    PortWrite {
        port: Port,
        size: Size,
        count: u8,
        value: u64,
    },
    MmioRead {
        addr: Addr,
        len: u8,
    },
    MmioWrite {
        addr: Addr,
        len: u8,
        value: u64,
    },
    /// The doorbell device's MSI-X message control (enable, function mask).
    MsixControl {
        value: u16,
    },
    /// Writes an MSI-X table entry's field of the doorbell device.
    MsixEntry {
        vector: u8,
        field: u8,
        value: u32,
    },
    /// Another peer joins the server (if it is not there) or leaves (if it is).
    JoinOrLeave {
        peer: u8,
    },
    /// A peer rings one of the doorbell device's vectors.
    Ring {
        vector: u8,
    },
}

/// KVM as a model: its memory slots as a map. A call that KVM would not
/// expect is a violation.
#[derive(Default)]
struct Model {
    slots: HashMap<BarId, (u64, HostMemory)>,
    ioevents: BTreeSet<(u64, u32)>,
    irqfds: BTreeMap<u32, MsiMessage>,
    next_gsi: u32,
    violation: Option<String>,
}

#[derive(Default)]
struct ModelHypervisor(Mutex<Model>);

impl Hypervisor for ModelHypervisor {
    fn map_memory(&self, bar: BarId, addr: u64, host: HostMemory) -> Result<(), hypervisor::Error> {
        let mut m = lock(&self.0);
        if m.slots.insert(bar, (addr, host)).is_some() {
            m.violation.get_or_insert(format!("{bar} mapped while mapped"));
        }
        Ok(())
    }

    fn unmap_memory(&self, bar: BarId) -> Result<(), hypervisor::Error> {
        let mut m = lock(&self.0);
        if m.slots.remove(&bar).is_none() {
            m.violation.get_or_insert(format!("{bar} unmapped while not mapped"));
        }
        Ok(())
    }

    fn add_ioevent(&self, _: &EventFd, addr: u64, value: u32) -> Result<(), hypervisor::Error> {
        let mut m = lock(&self.0);
        if !m.ioevents.insert((addr, value)) {
            m.violation.get_or_insert(format!("ioeventfd {addr:#x}={value:#x} added twice (KVM: EEXIST)"));
        }
        Ok(())
    }

    fn remove_ioevent(&self, _: &EventFd, addr: u64, value: u32) -> Result<(), hypervisor::Error> {
        let mut m = lock(&self.0);
        if !m.ioevents.remove(&(addr, value)) {
            m.violation.get_or_insert(format!("ioeventfd {addr:#x}={value:#x} removed but not there"));
        }
        Ok(())
    }

    fn allocate_gsi(&self) -> u32 {
        let mut m = lock(&self.0);
        m.next_gsi += 1;
        1000 + m.next_gsi
    }

    fn attach_irqfd(&self, _: &EventFd, gsi: u32, msi: MsiMessage) -> Result<(), hypervisor::Error> {
        lock(&self.0).irqfds.insert(gsi, msi);
        Ok(())
    }

    fn detach_irqfd(&self, _: &EventFd, gsi: u32) -> Result<(), hypervisor::Error> {
        let mut m = lock(&self.0);
        if m.irqfds.remove(&gsi).is_none() {
            m.violation.get_or_insert(format!("irqfd on GSI {gsi} detached but not attached"));
        }
        Ok(())
    }
}

/// A device manager as the VM builds it, with the model of KVM beside it.
pub struct Harness {
    devices: DeviceManager,
    kvm: Arc<ModelHypervisor>,
    server: ServerEnd,
}

/// The doorbell device: its server id, vectors and slot.
const DOORBELL_ID: u16 = 5;
const DOORBELL_VECTORS: usize = 2;
const DOORBELL_SLOT: u8 = DEVICES.len() as u8 + 1;
/// Where its MSI-X capability is (the first capability).
const MSIX_CAPABILITY: u8 = 0x40;
/// The other peers that come and go.
const PEERS: [u16; 3] = [3, 7, 9];

/// The harness's side of the doorbell device's server connection: it plays
/// the ivshmem server.
struct ServerEnd {
    socket: UnixStream,
    /// Handles on the device's own eventfds, to ring it as a peer would.
    own: Vec<EventFd>,
    /// The peers the device was told of, with their eventfds.
    peers: BTreeMap<u16, Vec<EventFd>>,
}

impl ServerEnd {
    fn send(&self, value: i64, fd: Option<&impl AsRawFd>) {
        send_message(&self.socket, value, fd.map(AsRawFd::as_raw_fd)).expect("the device's end is open");
    }

    fn join(&mut self, peer: u16) {
        let fds: Vec<EventFd> =
            (0..DOORBELL_VECTORS).map(|_| EventFd::new(libc::EFD_NONBLOCK).expect("eventfd")).collect();
        fds.iter().for_each(|fd| self.send(peer.into(), Some(fd)));
        self.peers.insert(peer, fds);
    }
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    pub fn new() -> Self {
        let space = GuestSpace {
            ram: vec![Range { start: 0, end: RAM }],
            reserved: vec![(layout::IOAPIC..layout::RAM_ABOVE_4G, "the APICs")],
            phys_bits: PHYS_BITS,
        };
        let kvm = Arc::new(ModelHypervisor::default());
        let mut devices = DeviceManager::new(space, kvm.clone()).expect("platform devices");
        let irq = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let serial = Arc::new(std::sync::Mutex::new(SerialPort::new(irq, std::io::sink())));
        devices.add_port_device(serial, legacy::COM1, legacy::COM1_LEN).expect("serial");
        for (i, size) in DEVICES.into_iter().enumerate() {
            devices.add_ivshmem(Arc::new(BackingFile::memfd(size)), 100 + i as u32).expect("device");
        }
        let (socket, device_end) = UnixStream::pair().expect("socketpair");
        let own: Vec<EventFd> =
            (0..DOORBELL_VECTORS).map(|_| EventFd::new(libc::EFD_NONBLOCK).expect("eventfd")).collect();
        let mut server = ServerEnd { socket, own, peers: BTreeMap::new() };
        let memory = Arc::new(BackingFile::memfd(1 << 16));
        server.send(0, None::<&EventFd>);
        server.send(DOORBELL_ID.into(), None::<&EventFd>);
        server.send(-1, Some(memory.file()));
        server.join(PEERS[0]);
        server.own.iter().for_each(|fd| server.send(DOORBELL_ID.into(), Some(fd)));
        let peer = Peer::handshake(device_end, Some(DOORBELL_VECTORS)).expect("set-up messages");
        devices.add_ivshmem_doorbell(memory, peer).expect("doorbell device");
        Self { devices, kvm, server }
    }

    fn gsi_and_delivery(&self, vector: usize) -> Option<(u32, Delivery, bool)> {
        self.devices.doorbell_view(DOORBELL_SLOT)?.get(vector).copied()
    }

    fn bar(&self, slot: u8, bar: u8) -> Option<BarState> {
        self.devices.bars().into_iter().find(|b| b.id == BarId { slot, bar })
    }

    fn config_address(slot: u8, reg: u8) -> u32 {
        0x8000_0000 | u32::from(slot % SLOTS) << 11 | u32::from(reg & 0xfc)
    }

    fn pio_write(&mut self, port: u16, size: usize, data: &[u8]) -> Result<(), String> {
        // A reset ends a VM; here the guest goes on, which tests more.
        self.devices.pio_write(port, size, data).map(drop).map_err(|e| format!("pio write: {e}"))
    }

    fn config_write(&mut self, slot: u8, reg: u8, data: &[u8]) -> Result<(), String> {
        self.pio_write(0xcf8, 4, &Self::config_address(slot, reg).to_le_bytes())?;
        self.pio_write(0xcfc + u16::from(reg & 3), data.len(), data)
    }

    fn target_address(&self, target: Target, size: u64) -> u64 {
        match target {
            Target::Ram(offset) => u64::from(offset) % RAM,
            Target::OtherBar(device, bar) => {
                self.bar(device % SLOTS, bar % 6).and_then(|b| b.decoded.or(b.mapped)).unwrap_or(0)
            }
            Target::Apic => 0xfee0_0000,
            Target::ReservedEdge => layout::IOAPIC - size / 2,
            Target::PastLimit => (1 << PHYS_BITS) - size / 2,
            Target::AllOnes => u64::MAX,
            Target::Window32(n) => layout::PCI_MMIO32_START + u64::from(n) * 0x100,
            Target::Window64(n) => layout::RAM_ABOVE_4G + u64::from(n) * 4096,
            Target::Any(a) => a,
        }
    }

    fn mmio_address(&self, addr: Addr) -> u64 {
        let base = |slot: u8, bar: u8| self.bar(slot % SLOTS, bar).and_then(|b| b.decoded.or(b.mapped)).unwrap_or(0);
        match addr {
            Addr::Bar0(slot, offset) => base(slot, 0) + u64::from(offset % 0x1000),
            Addr::Bar2(slot, offset) => base(slot, 2) + u64::from(offset),
            Addr::Bar1(slot, offset) => base(slot, 1) + u64::from(offset % 0x1000),
            Addr::Any(a) => a,
        }
    }

    /// Carries out one action as the vCPU loop would, then what the
    /// doorbell device's thread would do.
    pub fn step(&mut self, action: Action) -> Result<(), String> {
        self.act(action)?;
        self.devices.service_doorbells().map_err(|e| format!("service: {e}"))
    }

    fn act(&mut self, action: Action) -> Result<(), String> {
        match action {
            Action::ConfigRead { slot, reg, size } => {
                self.pio_write(0xcf8, 4, &Self::config_address(slot, reg).to_le_bytes())?;
                let mut data = [0u8; 4];
                self.devices.pio_read(0xcfc + u16::from(reg & 3), size.bytes(), &mut data[..size.bytes()]);
            }
            Action::ConfigWrite { slot, reg, size, value } => {
                self.config_write(slot, reg, &value.to_le_bytes()[..size.bytes()])?;
            }
            Action::MoveBar { slot, bar, target, high_first } => {
                let bar = bar % 6;
                let size = self.bar(slot % SLOTS, bar).map_or(4096, |b| b.size);
                let addr = self.target_address(target, size);
                let reg = 0x10 + 4 * bar;
                let (low, high) = ((addr as u32).to_le_bytes(), ((addr >> 32) as u32).to_le_bytes());
                if high_first {
                    self.config_write(slot, reg + 4, &high)?;
                    self.config_write(slot, reg, &low)?;
                } else {
                    self.config_write(slot, reg, &low)?;
                    self.config_write(slot, reg + 4, &high)?;
                }
            }
            Action::Decode { slot, on } => self.config_write(slot, 4, &[if on { 2 } else { 0 }, 0])?,
            Action::Address { value, offset, size } => {
                self.pio_write(0xcf8 + u16::from(offset % 8), size.bytes(), &value.to_le_bytes()[..size.bytes()])?;
            }
            Action::PortRead { port, size, count } => {
                let mut data = vec![0u8; size.bytes() * usize::from(count % 4 + 1)];
                self.devices.pio_read(port_number(port), size.bytes(), &mut data);
            }
            Action::PortWrite { port, size, count, value } => {
                let data: Vec<u8> = value
                    .to_le_bytes()
                    .iter()
                    .cycle()
                    .take(size.bytes() * usize::from(count % 4 + 1))
                    .copied()
                    .collect();
                self.pio_write(port_number(port), size.bytes(), &data)?;
            }
            Action::MmioRead { addr, len } => {
                let mut data = [0u8; 8];
                self.devices.mmio_read(self.mmio_address(addr), &mut data[..usize::from(len % 8 + 1)]);
            }
            Action::MsixControl { value } => {
                self.config_write(DOORBELL_SLOT, MSIX_CAPABILITY + 2, &value.to_le_bytes())?
            }
            Action::MsixEntry { vector, field, value } => {
                let offset = u64::from(vector % 3) * 16 + u64::from(field % 4) * 4;
                let addr = self.mmio_address(Addr::Bar1(DOORBELL_SLOT, offset as u16));
                self.devices.mmio_write(addr, &value.to_le_bytes()).map_err(|e| format!("mmio write: {e}"))?;
            }
            Action::JoinOrLeave { peer } => {
                let peer = PEERS[usize::from(peer) % PEERS.len()];
                if self.server.peers.remove(&peer).is_some() {
                    self.server.send(peer.into(), None::<&EventFd>);
                } else {
                    self.server.join(peer);
                }
            }
            Action::Ring { vector } => {
                let v = usize::from(vector) % DOORBELL_VECTORS;
                let (gsi, _, _) = self.gsi_and_delivery(v).ok_or("no doorbell device")?;
                // With an irqfd attached, KVM takes the ring; else the device does.
                if !lock(&self.kvm.0).irqfds.contains_key(&gsi) {
                    self.server.own[v].write(1).map_err(|e| format!("ring: {e}"))?;
                    self.devices.service_doorbells().map_err(|e| format!("service: {e}"))?;
                    let (_, delivery, pending) = self.gsi_and_delivery(v).ok_or("no doorbell device")?;
                    if delivery == Delivery::Held && !pending {
                        return Err(format!("vector {v} is held, rung, and not pending"));
                    }
                }
            }
            Action::MmioWrite { addr, len, value } => {
                let addr = self.mmio_address(addr);
                self.devices
                    .mmio_write(addr, &value.to_le_bytes()[..usize::from(len % 8 + 1)])
                    .map_err(|e| format!("mmio write: {e}"))?;
            }
        }
        Ok(())
    }

    /// Checks every invariant of the module documentation.
    pub fn check(&self) -> Result<(), String> {
        let model = lock(&self.kvm.0);
        if let Some(v) = &model.violation {
            return Err(v.clone());
        }
        let bars = self.devices.bars();
        let limit = 1u64 << PHYS_BITS;
        let mut mapped = Vec::new();
        for b in &bars {
            match (b.mapped, b.decoded) {
                (Some(m), d) if Some(m) != d => return Err(format!("{} mapped at {m:#x} but decodes at {d:x?}", b.id)),
                (Some(m), _) => {
                    let end = m.checked_add(b.size).ok_or(format!("{} wraps", b.id))?;
                    if m < RAM || end > limit || (m < layout::RAM_ABOVE_4G && end > layout::IOAPIC) {
                        return Err(format!("{} mapped at {m:#x} over RAM, the APICs or past the limit", b.id));
                    }
                    mapped.push((m, end, b));
                }
                (None, Some(d)) if self.devices.conflict(d, b.size).is_none() => {
                    return Err(format!("{} decodes at {d:#x}, where nothing conflicts, but is not mapped", b.id));
                }
                (None, _) => {}
            }
            let slot = model.slots.get(&b.id);
            match (b.memory, b.mapped) {
                (Some(host), Some(m)) if slot != Some(&(m, host)) => {
                    return Err(format!("{} mapped at {m:#x}, memory slot {slot:x?}", b.id));
                }
                (Some(_), None) if slot.is_some() => return Err(format!("{} unmapped but has a memory slot", b.id)),
                _ => {}
            }
        }
        mapped.sort_by_key(|&(start, ..)| start);
        for pair in mapped.windows(2) {
            if pair[1].0 < pair[0].1 {
                return Err(format!("{} and {} overlap", pair[0].2.id, pair[1].2.id));
            }
        }
        let mut registers: Vec<(u64, u64)> =
            mapped.iter().filter(|(.., b)| b.memory.is_none()).map(|&(start, end, _)| (start, end - start)).collect();
        registers.sort_unstable();
        if self.devices.mmio_ranges() != registers {
            return Err(format!("MMIO bus {:x?}, mapped register BARs {registers:x?}", self.devices.mmio_ranges()));
        }
        for &(start, _, b) in mapped.iter().filter(|(.., b)| b.id.bar == 0) {
            let mut id = [0u8; 4];
            self.devices.mmio_read(start + 8, &mut id);
            let expected = if b.id.slot == DOORBELL_SLOT { DOORBELL_ID.into() } else { 100 + u32::from(b.id.slot) - 1 };
            if u32::from_le_bytes(id) != expected {
                return Err(format!(
                    "{} at {start:#x}: IVPosition {:#x}, not {expected:#x}",
                    b.id,
                    u32::from_le_bytes(id)
                ));
            }
        }
        self.check_doorbell(&bars, &model)
    }

    fn check_doorbell(&self, bars: &[BarState], model: &Model) -> Result<(), String> {
        let bar0 = bars.iter().find(|b| b.id == BarId { slot: DOORBELL_SLOT, bar: 0 }).and_then(|b| b.mapped);
        let mut expected = BTreeSet::new();
        if let Some(bar0) = bar0 {
            for peer in self.server.peers.keys().copied().chain([DOORBELL_ID]) {
                for v in 0..DOORBELL_VECTORS as u32 {
                    expected.insert((bar0 + 12, u32::from(peer) << 16 | v));
                }
            }
        }
        if model.ioevents != expected {
            return Err(format!("ioeventfds {:x?}, expected {expected:x?}", model.ioevents));
        }
        let view = self.devices.doorbell_view(DOORBELL_SLOT).ok_or("no doorbell device")?;
        for (v, &(gsi, delivery, pending)) in view.iter().enumerate() {
            match (delivery, model.irqfds.get(&gsi)) {
                (Delivery::Send(msi), Some(have)) if *have == msi && !pending => {}
                (Delivery::Send(msi), have) => {
                    return Err(format!("vector {v} sends {msi:x?}: irqfd {have:x?}, pending {pending}"));
                }
                (_, Some(have)) => return Err(format!("vector {v} is {delivery:?} but has an irqfd to {have:x?}")),
                (_, None) => {}
            }
        }
        Ok(())
    }
}

fn port_number(port: Port) -> u16 {
    match port {
        Port::Config(o) => 0xcf8 + u16::from(o % 8),
        Port::Serial(o) => legacy::COM1 + u16::from(o % 8),
        Port::I8042(o) => legacy::I8042 + u16::from(o % 5),
        Port::Edge(o) => [0xcf7, 0xd00, 0xcfe, 0x3f7, 0x3ff, 0x400, 0x5f, 0x65][usize::from(o % 8)],
        Port::Any(p) => p,
    }
}

/// Runs the actions that `data` encodes against a fresh harness, checking
/// after each one. Returns the number of actions run.
pub fn run(data: &[u8]) -> Result<u64, String> {
    let mut u = Unstructured::new(data);
    let mut harness = Harness::new();
    let mut actions = 0;
    while let Ok(action) = Action::arbitrary(&mut u) {
        harness.step(action).and_then(|()| harness.check()).map_err(|e| format!("after {action:?}: {e}"))?;
        actions += 1;
        ACTIONS.fetch_add(1, Ordering::Relaxed);
        CHECKS.fetch_add(1, Ordering::Relaxed);
        if u.is_empty() {
            break;
        }
    }
    Ok(actions)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed corpus (vmm/fuzz/corpus/device_model): inputs that
    /// libFuzzer found to reach new code.
    #[test]
    fn the_corpus_keeps_the_invariants() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/device_model");
        let mut inputs = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            run(&data).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            inputs += 1;
        }
        assert!(inputs >= 10, "the corpus has {inputs} inputs");
    }

    /// A bounded pass over random inputs; `fuzz.sh` runs the long one.
    #[test]
    fn random_action_sequences_keep_the_invariants() {
        let mut prng = 0x9e37_79b9_7f4a_7c15u64;
        let mut total = 0;
        for case in 0..2000 {
            let data: Vec<u8> = (0..2048)
                .map(|_| {
                    prng ^= prng << 13;
                    prng ^= prng >> 7;
                    prng ^= prng << 17;
                    prng as u8
                })
                .collect();
            total += run(&data).unwrap_or_else(|e| panic!("random input {case}: {e}"));
        }
        assert!(total > 50_000, "only {total} actions ran");
    }

    #[test]
    fn a_wrong_mapping_is_caught() {
        let mut h = Harness::new();
        h.step(Action::Decode { slot: 1, on: true }).unwrap();
        h.check().unwrap();
        // Pretend KVM lost the slot: the check must notice.
        lock(&h.kvm.0).slots.clear();
        assert!(h.check().unwrap_err().contains("memory slot"));
    }
}
