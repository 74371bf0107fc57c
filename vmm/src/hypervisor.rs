//! What the device model asks of the hypervisor, and how KVM does it.
//!
//! | the device model asks for | KVM |
//! |---|---|
//! | host memory at a guest address (a memory BAR) | a memory slot (`KVM_SET_USER_MEMORY_REGION`) |
//! | a 4-byte write of a value at an address signals an eventfd | an ioeventfd with datamatch (`KVM_IOEVENTFD`): no exit |
//! | an eventfd raises an MSI | an irqfd (`KVM_IRQFD`) on a GSI routed to the message (`KVM_SET_GSI_ROUTING`) |
//!
//! The device model holds an `Arc<dyn Hypervisor>`: [`KvmHypervisor`] in
//! the VM, a model in the unit tests and the fuzzer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KvmIrqRouting, kvm_irq_routing_entry, kvm_irq_routing_entry__bindgen_ty_1, kvm_irq_routing_irqchip,
    kvm_irq_routing_msi, kvm_userspace_memory_region,
};
use kvm_ioctls::{IoEventAddress, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::device_manager::BarId;
use crate::lock;
use crate::pci::HostMemory;
use crate::pci::msix::MsiMessage;

pub type Error = vmm_sys_util::errno::Error;

pub trait Hypervisor: Send + Sync {
    /// Maps `host` at `guest_addr` for `bar`, which is not mapped.
    fn map_memory(&self, bar: BarId, guest_addr: u64, host: HostMemory) -> Result<(), Error>;
    /// Removes the mapping of `bar`, which is mapped.
    fn unmap_memory(&self, bar: BarId) -> Result<(), Error>;
    /// Has a 4-byte guest write of `value` at `addr` signal `event`.
    fn add_ioevent(&self, event: &EventFd, addr: u64, value: u32) -> Result<(), Error>;
    /// Undoes [`Hypervisor::add_ioevent`] (with an eventfd on the same counter).
    fn remove_ioevent(&self, event: &EventFd, addr: u64, value: u32) -> Result<(), Error>;
    /// A GSI of its own, for one MSI vector.
    fn allocate_gsi(&self) -> u32;
    /// Has `event` raise `msi` through `gsi`: routes the GSI to the message
    /// (again, if the message changed) and attaches the eventfd. An eventfd
    /// that was signalled before it was attached raises the MSI at once.
    fn attach_irqfd(&self, event: &EventFd, gsi: u32, msi: MsiMessage) -> Result<(), Error>;
    /// Detaches `event` from `gsi` and removes the route: `event` then only counts.
    fn detach_irqfd(&self, event: &EventFd, gsi: u32) -> Result<(), Error>;
}

/// GSIs below this are the IOAPIC's pins (and the PICs' for the first 16).
const IRQCHIP_GSIS: u32 = 24;

/// KVM, for the device model of a VM.
pub struct KvmHypervisor {
    vm: Arc<VmFd>,
    /// Memory slots of BARs. RAM has the slots below `first_bar_slot`; a
    /// BAR takes the next free number when it is first mapped and keeps it.
    slots: Mutex<BTreeMap<BarId, u32>>,
    first_bar_slot: u32,
    /// The MSI routes; KVM_SET_GSI_ROUTING replaces the whole table, so it
    /// is set from here with the irqchip's routes in front.
    routes: Mutex<Routes>,
    next_gsi: AtomicU32,
}

#[derive(Default)]
struct Routes {
    msi: BTreeMap<u32, MsiMessage>,
    attached: BTreeSet<u32>,
}

impl KvmHypervisor {
    /// KVM for `vm`, whose RAM takes memory slots 0 to `ram_slots` - 1.
    pub fn new(vm: Arc<VmFd>, ram_slots: u32) -> Self {
        Self {
            vm,
            slots: Mutex::default(),
            first_bar_slot: ram_slots,
            routes: Mutex::default(),
            next_gsi: AtomicU32::new(IRQCHIP_GSIS),
        }
    }

    /// KVM's default routing (each GSI below 24 to its IOAPIC pin, and the
    /// first 16 to the PICs' pins too) followed by the MSI routes.
    fn set_routing(&self, msi: &BTreeMap<u32, MsiMessage>) -> Result<(), Error> {
        let irqchip = |gsi, chip, pin| kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_IRQCHIP,
            u: kvm_irq_routing_entry__bindgen_ty_1 { irqchip: kvm_irq_routing_irqchip { irqchip: chip, pin } },
            ..Default::default()
        };
        let mut entries = Vec::new();
        for gsi in 0..IRQCHIP_GSIS {
            entries.push(irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
            match gsi {
                0..8 => entries.push(irqchip(gsi, KVM_IRQCHIP_PIC_MASTER, gsi)),
                8..16 => entries.push(irqchip(gsi, KVM_IRQCHIP_PIC_SLAVE, gsi - 8)),
                _ => {}
            }
        }
        for (&gsi, m) in msi {
            let msi = kvm_irq_routing_msi {
                address_lo: m.addr as u32,
                address_hi: (m.addr >> 32) as u32,
                data: m.data,
                ..Default::default()
            };
            entries.push(kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                u: kvm_irq_routing_entry__bindgen_ty_1 { msi },
                ..Default::default()
            });
        }
        let routing = KvmIrqRouting::from_entries(&entries).map_err(|_| Error::new(libc::E2BIG))?;
        self.vm.set_gsi_routing(&routing)
    }

    fn set_slot(&self, bar: BarId, guest_addr: u64, host: Option<HostMemory>) -> Result<(), Error> {
        let mut slots = lock(&self.slots);
        let next = slots.len() as u32 + self.first_bar_slot;
        let slot = *slots.entry(bar).or_insert(next);
        let region = kvm_userspace_memory_region {
            slot,
            guest_phys_addr: guest_addr,
            // Size 0 deletes the slot.
            memory_size: host.map_or(0, |h| h.len),
            userspace_addr: host.map_or(0, |h| h.addr as u64),
            flags: 0,
        };
        // SAFETY: the host range is a BackingFile's mapping, which its device
        // keeps. The Vm drops its vCPU before its devices (field order), so
        // no guest runs once the mapping can be gone.
        unsafe { self.vm.set_user_memory_region(region) }
    }
}

impl Hypervisor for KvmHypervisor {
    fn map_memory(&self, bar: BarId, guest_addr: u64, host: HostMemory) -> Result<(), Error> {
        self.set_slot(bar, guest_addr, Some(host))
    }

    fn unmap_memory(&self, bar: BarId) -> Result<(), Error> {
        self.set_slot(bar, 0, None)
    }

    fn add_ioevent(&self, event: &EventFd, addr: u64, value: u32) -> Result<(), Error> {
        self.vm.register_ioevent(event, &IoEventAddress::Mmio(addr), value)
    }

    fn remove_ioevent(&self, event: &EventFd, addr: u64, value: u32) -> Result<(), Error> {
        self.vm.unregister_ioevent(event, &IoEventAddress::Mmio(addr), value)
    }

    fn allocate_gsi(&self) -> u32 {
        self.next_gsi.fetch_add(1, Ordering::Relaxed)
    }

    fn attach_irqfd(&self, event: &EventFd, gsi: u32, msi: MsiMessage) -> Result<(), Error> {
        let mut routes = lock(&self.routes);
        if routes.msi.get(&gsi) != Some(&msi) {
            let mut table = routes.msi.clone();
            table.insert(gsi, msi);
            self.set_routing(&table)?;
            routes.msi = table;
        }
        if !routes.attached.contains(&gsi) {
            self.vm.register_irqfd(event, gsi)?;
            routes.attached.insert(gsi);
        }
        Ok(())
    }

    fn detach_irqfd(&self, event: &EventFd, gsi: u32) -> Result<(), Error> {
        let mut routes = lock(&self.routes);
        if routes.attached.remove(&gsi) {
            self.vm.unregister_irqfd(event, gsi)?;
        }
        if routes.msi.contains_key(&gsi) {
            let mut table = routes.msi.clone();
            table.remove(&gsi);
            self.set_routing(&table)?;
            routes.msi = table;
        }
        Ok(())
    }
}
