//! The interrupt half of an ivshmem-doorbell device: its connection to an
//! ivshmem server, the doorbell that rings the other peers and the MSI-X
//! vectors on which they ring this VM.
//!
//! Both directions bypass the VMM on the fast path:
//! - a guest write of `peer << 16 | vector` to the Doorbell register is a
//!   KVM ioeventfd with that value as datamatch, which signals the peer's
//!   eventfd for the vector; the ioeventfds follow BAR0 and the peers as
//!   they come and go. Other writes (another width, an unknown peer) come
//!   to [`Doorbell::ring`], which does the same by hand or ignores them;
//! - a ring on one of this VM's eventfds is a KVM irqfd on the vector's
//!   GSI, routed to the MSI message of the vector's table entry.
//!
//! While a vector is masked (or the function is, or MSI-X is off) its
//! eventfd is detached from KVM, and the device's thread ([`serve`]) takes
//! its rings: a masked vector's rings set its pending bit, delivered when it
//! is unmasked; with MSI-X off they are dropped, as QEMU drops them. The
//! same thread takes the server's messages (peers joining and leaving).

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use log::{Level, info};
use shm_layout::host::ivshmem::{Change, Peer};
use vmm_sys_util::eventfd::EventFd;

use crate::hypervisor::{self, Hypervisor};
use crate::limited;
use crate::pci::PciConfig;
use crate::pci::msix::{Delivery, Msix};
use crate::ratelimit::LogLimit;

pub struct Doorbell {
    peer: Peer,
    msix: Msix,
    gsis: Vec<u32>,
    /// How each vector is delivered now (as applied to the hypervisor).
    delivery: Vec<Delivery>,
    /// Where the Doorbell register is (BAR0 + 12) while BAR0 is mapped.
    doorbell_addr: Option<u64>,
    /// The ioeventfds registered at `doorbell_addr`, by (peer, vector),
    /// each with its own handle on the peer's eventfd (removing one needs
    /// it, and the peer's may already be closed when it leaves).
    ioevents: BTreeMap<(u16, usize), EventFd>,
    hypervisor: Arc<dyn Hypervisor>,
    /// Tells the device's thread that the set of vectors it watches changed.
    wake: EventFd,
    log: LogLimit,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("vector {vector}")]
    Vector {
        vector: usize,
        #[source]
        source: hypervisor::Error,
    },
    #[error("the doorbell of peer {peer}, vector {vector}")]
    Ioevent {
        peer: u16,
        vector: usize,
        #[source]
        source: hypervisor::Error,
    },
    #[error("eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("the MSI-X capability")]
    Msix(#[from] crate::pci::Error),
}

impl Doorbell {
    /// The doorbell of `peer`, with its MSI-X capability added to `config`
    /// (the table in BAR `msix_bar`).
    pub fn new(
        peer: Peer,
        config: &mut PciConfig,
        msix_bar: u8,
        hypervisor: Arc<dyn Hypervisor>,
    ) -> Result<Self, Error> {
        let vectors = peer.own_eventfds().len();
        let msix = Msix::new(config, msix_bar, vectors as u16)?;
        let gsis = (0..vectors).map(|_| hypervisor.allocate_gsi()).collect();
        let wake = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?;
        let log = LogLimit::new(format!("ivshmem-doorbell peer {}", peer.id()));
        Ok(Self {
            peer,
            msix,
            gsis,
            delivery: vec![Delivery::Off; vectors],
            doorbell_addr: None,
            ioevents: BTreeMap::new(),
            hypervisor,
            wake,
            log,
        })
    }

    pub fn id(&self) -> u16 {
        self.peer.id()
    }

    pub fn msix(&self) -> &Msix {
        &self.msix
    }

    pub fn msix_mut(&mut self) -> &mut Msix {
        &mut self.msix
    }

    /// Each vector's GSI, the delivery the MSI-X state in `config` asks for,
    /// and its pending bit: for the fuzzer's invariants.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn view(&self, config: &PciConfig) -> Vec<(u32, Delivery, bool)> {
        (0..self.delivery.len()).map(|v| (self.gsis[v], self.msix.delivery(config, v), self.msix.pending(v))).collect()
    }

    /// A write to the Doorbell register that KVM did not take itself.
    pub fn ring(&self, value: u32) {
        let (peer, vector) = ((value >> 16) as u16, (value & 0xffff) as usize);
        if let Err(e) = self.peer.ring(peer, vector) {
            limited!(self.log, Level::Debug, "doorbell {value:#x} ignored: {e}");
        }
    }

    /// Brings each vector's delivery in line with the MSI-X state in
    /// `config` and the table.
    pub fn sync_delivery(&mut self, config: &PciConfig) -> Result<(), Error> {
        let mut watched_changed = false;
        for v in 0..self.delivery.len() {
            let want = self.msix.delivery(config, v);
            let have = self.delivery[v];
            if want == have {
                continue;
            }
            let event = &self.peer.own_eventfds()[v];
            let gsi = self.gsis[v];
            let vector_error = |source| Error::Vector { vector: v, source };
            match want {
                Delivery::Send(msi) => {
                    // A vector that was held delivers its pending interrupt
                    // as soon as the eventfd is attached.
                    if !matches!(have, Delivery::Send(_)) && self.msix.pending(v) {
                        self.msix.set_pending(v, false);
                        event.write(1).map_err(Error::EventFd)?;
                    }
                    self.hypervisor.attach_irqfd(event, gsi, msi).map_err(vector_error)?;
                }
                Delivery::Held | Delivery::Off if matches!(have, Delivery::Send(_)) => {
                    self.hypervisor.detach_irqfd(event, gsi).map_err(vector_error)?;
                }
                Delivery::Held | Delivery::Off => {}
            }
            watched_changed |= matches!(want, Delivery::Send(_)) != matches!(have, Delivery::Send(_));
            self.delivery[v] = want;
        }
        if watched_changed {
            self.wake.write(1).map_err(Error::EventFd)?;
        }
        Ok(())
    }

    /// BAR0 is now mapped at `bar0` (or not at all): the ioeventfds move with it.
    pub fn set_registers(&mut self, bar0: Option<u64>) -> Result<(), Error> {
        let addr = bar0.map(|a| a + super::ivshmem::DOORBELL);
        if addr == self.doorbell_addr {
            return Ok(());
        }
        self.remove_ioevents(|_| true)?;
        self.doorbell_addr = addr;
        // Itself too: a guest may ring its own vectors, as under QEMU.
        for peer in self.peer.peers().into_iter().chain([self.id()]) {
            self.add_ioevents(peer)?;
        }
        Ok(())
    }

    fn add_ioevents(&mut self, peer: u16) -> Result<(), Error> {
        let (Some(addr), Some(fds)) = (self.doorbell_addr, self.peer.peer_eventfds(peer)) else { return Ok(()) };
        for (vector, fd) in fds.iter().enumerate() {
            if self.ioevents.contains_key(&(peer, vector)) {
                continue;
            }
            let ioevent_error = |source| Error::Ioevent { peer, vector, source };
            let value = u32::from(peer) << 16 | vector as u32;
            let handle = fd.try_clone().map_err(Error::EventFd)?;
            self.hypervisor.add_ioevent(&handle, addr, value).map_err(ioevent_error)?;
            self.ioevents.insert((peer, vector), handle);
        }
        Ok(())
    }

    fn remove_ioevents(&mut self, which: impl Fn(u16) -> bool) -> Result<(), Error> {
        let Some(addr) = self.doorbell_addr else { return Ok(()) };
        let gone: Vec<(u16, usize)> = self.ioevents.keys().filter(|(p, _)| which(*p)).copied().collect();
        for (peer, vector) in gone {
            let handle = self.ioevents.remove(&(peer, vector)).expect("listed above");
            let value = u32::from(peer) << 16 | vector as u32;
            let ioevent_error = |source| Error::Ioevent { peer, vector, source };
            self.hypervisor.remove_ioevent(&handle, addr, value).map_err(ioevent_error)?;
        }
        Ok(())
    }

    /// Takes the server's messages: ioeventfds for peers that joined, none
    /// for those that left. A change KVM refuses (it takes a bounded number
    /// of ioeventfds) is logged, and the others still apply. The server
    /// decides how often these happen, so their lines are rate-limited too.
    fn update_peers(&mut self) {
        for change in self.peer.update() {
            let id = self.id();
            let applied = match change {
                Change::Joined(peer) => {
                    limited!(self.log, Level::Info, "ivshmem-doorbell peer {id}: peer {peer} joined");
                    self.add_ioevents(peer)
                }
                Change::Left(peer) => {
                    limited!(self.log, Level::Info, "ivshmem-doorbell peer {id}: peer {peer} left");
                    self.remove_ioevents(|p| p == peer)
                }
                Change::Refused { what, value } => {
                    limited!(self.log, Level::Warn, "ivshmem server sent {what} ({value}): ignored");
                    Ok(())
                }
                Change::ServerGone => {
                    info!("ivshmem-doorbell peer {id}: the server is gone; peers can still ring each other");
                    Ok(())
                }
            };
            if let Err(e) = applied {
                limited!(self.log, Level::Warn, "ivshmem-doorbell peer {id}: {e}");
            }
        }
    }

    /// Takes the rings on vector `v`'s eventfd while the device's thread
    /// watches it (the vector is not sent to KVM directly).
    fn take_rings(&mut self, v: usize) -> Result<(), Error> {
        let event = &self.peer.own_eventfds()[v];
        match event.read() {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(Error::EventFd(e)),
        }
        match self.delivery[v] {
            Delivery::Held => self.msix.set_pending(v, true),
            Delivery::Off => limited!(self.log, Level::Debug, "vector {v} rung while MSI-X is off: dropped"),
            // Unmasked since the thread looked: hand the ring to KVM.
            Delivery::Send(_) => event.write(1).map_err(Error::EventFd)?,
        }
        Ok(())
    }

    /// What the device's thread waits on: the server connection (-1, which
    /// poll skips, once the server is gone), the wake eventfd and the
    /// eventfds of the vectors that are not sent to KVM.
    fn watched(&self) -> (Vec<RawFd>, Vec<usize>) {
        let socket = if self.peer.server_gone() { -1 } else { self.peer.socket_fd() };
        let mut fds = vec![socket, self.wake.as_raw_fd()];
        let vectors: Vec<usize> =
            (0..self.delivery.len()).filter(|&v| !matches!(self.delivery[v], Delivery::Send(_))).collect();
        fds.extend(vectors.iter().map(|&v| self.peer.own_eventfds()[v].as_raw_fd()));
        (fds, vectors)
    }
}

/// Something that holds a [`Doorbell`] behind a lock (the ivshmem device).
pub trait HasDoorbell: Send + 'static {
    fn doorbell_mut(&mut self) -> Option<&mut Doorbell>;
}

/// The device's thread: waits for the server's messages and for rings on
/// the vectors KVM does not take, until dropped.
pub struct DoorbellThread {
    done: Arc<AtomicBool>,
    wake: EventFd,
    thread: Option<JoinHandle<()>>,
}

/// One round of the device's thread: waits up to `timeout_ms` (-1: without
/// limit, 0: not at all) for the server's messages and for rings on the
/// vectors KVM does not take, and takes them. `Ok(false)` if the device
/// has no doorbell.
pub fn service<D: HasDoorbell>(device: &Mutex<D>, timeout_ms: i32) -> std::io::Result<bool> {
    let (fds, vectors) = match crate::lock(device).doorbell_mut() {
        Some(d) => d.watched(),
        None => return Ok(false),
    };
    let ready = match shm_layout::host::ivshmem::poll_readable(&fds, timeout_ms) {
        Ok(ready) => ready,
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Ok(true),
        Err(e) => return Err(e),
    };
    let mut d = crate::lock(device);
    let Some(doorbell) = d.doorbell_mut() else { return Ok(false) };
    let result = (|| {
        if ready[0] {
            doorbell.update_peers();
        }
        if ready[1] {
            let _ = doorbell.wake.read();
        }
        for (&v, _) in vectors.iter().zip(&ready[2..]).filter(|(_, r)| **r) {
            doorbell.take_rings(v)?;
        }
        Ok::<(), Error>(())
    })();
    if let Err(e) = result {
        limited!(doorbell.log, Level::Warn, "ivshmem-doorbell peer {}: {e}", doorbell.id());
    }
    Ok(true)
}

/// Starts the thread for the doorbell of `device`.
pub fn serve<D: HasDoorbell>(device: Arc<Mutex<D>>) -> std::io::Result<DoorbellThread> {
    let wake = {
        let mut d = crate::lock(&device);
        let doorbell = d.doorbell_mut().expect("a device with a doorbell");
        doorbell.wake.try_clone()?
    };
    let done = Arc::new(AtomicBool::new(false));
    let finished = done.clone();
    let thread = crate::spawn_started("ivshmem-doorbell", move || {
        while !finished.load(Ordering::SeqCst) {
            match service(&device, -1) {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    log::error!("ivshmem-doorbell: poll: {e}; its interrupts stop");
                    return;
                }
            }
        }
    })?;
    Ok(DoorbellThread { done, wake, thread: Some(thread) })
}

impl Drop for DoorbellThread {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        let _ = self.wake.write(1);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
