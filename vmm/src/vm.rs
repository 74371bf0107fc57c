//! The VM: KVM, guest RAM and boot data, the devices, and running it to a
//! status. The device model lives in [`DeviceManager`], the exit handling
//! in [`Vcpu`]; this module builds them and applies what they decide to KVM
//! (the memory slots of BARs, see [`KvmSlots`]).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kvm_bindings::{KVM_PIT_SPEAKER_DUMMY, kvm_pit_config, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VmFd};
use log::info;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::backing::{self, BackingFile, ShrinkWatch};
use crate::console::{ConsoleOutput, GuestReport};
use crate::device_manager::{self, BarId, DeviceManager, GuestSpace, MapError, MemoryMapper};
use crate::devices::{SerialPort, legacy};
use crate::host::HostKvm;
use crate::pci::HostMemory;
use crate::profile::Profiler;
use crate::vcpu::{self, Stop, Vcpu};
use crate::{boot, cpu, host, layout, lock, memory, mptable, pirq};

/// What the guest always gets on its command line. `reboot=k` makes its
/// power-off (a reboot, see guest-userspace's init) reach our i8042 reset port;
/// `panic=-1` turns a panic into an immediate reset.
const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 quiet";

#[derive(Debug, Clone)]
pub struct ShmConfig {
    pub path: PathBuf,
    pub size: u64,
    pub id: u32,
}

pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub memory_mib: u64,
    pub cmdline: String,
    pub shm: Vec<ShmConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open /dev/kvm (is KVM available, and may this user open /dev/kvm?)")]
    KvmOpen(#[source] kvm_ioctls::Error),
    #[error("KVM {what}")]
    Kvm { what: &'static str, source: kvm_ioctls::Error },
    #[error("--memory {mib} MiB: the guest needs {min} to {max} MiB")]
    MemorySize { mib: u64, min: u64, max: u64 },
    #[error(transparent)]
    Ram(#[from] memory::Error),
    #[error("writing the MP table")]
    MpTable(#[source] vm_memory::GuestMemoryError),
    #[error("writing the PCI IRQ routing table")]
    PirqTable(#[source] vm_memory::GuestMemoryError),
    #[error(transparent)]
    Boot(#[from] boot::Error),
    #[error(transparent)]
    Cpu(#[from] cpu::Error),
    #[error(transparent)]
    Probe(#[from] host::Error),
    #[error(transparent)]
    Backing(#[from] backing::Error),
    #[error(transparent)]
    Devices(#[from] device_manager::Error),
    #[error(transparent)]
    Vcpu(#[from] vcpu::Error),
    #[error("setting up the VMM's threads and signals")]
    Threads(#[source] std::io::Error),
    #[error("the guest kernel panicked: {0}")]
    GuestPanic(String),
    #[error("the guest triple-faulted (the CPU shut down) at RIP {rip:#x}")]
    TripleFault { rip: u64 },
    #[error("the guest stopped without reporting an exit status (was init not the image's?)")]
    NoExitStatus,
    #[error(
        "the backing file {path} shrank to {now} bytes while the guest ran (its device maps {size}): the guest can no longer reach its memory, so the VM was stopped"
    )]
    BackingShrunk { path: PathBuf, size: u64, now: u64 },
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

/// KVM memory slots for the BARs that map host memory. Slot 0 is RAM; a
/// BAR takes the next free number when it is first mapped and keeps it.
#[derive(Default)]
struct SlotTable(BTreeMap<BarId, u32>);

/// The [`MemoryMapper`] that puts BAR memory into the guest through KVM.
struct KvmSlots<'a> {
    vm: &'a VmFd,
    table: &'a mut SlotTable,
}

impl KvmSlots<'_> {
    fn set(&mut self, bar: BarId, guest_addr: u64, host: Option<HostMemory>) -> Result<(), MapError> {
        let next = self.table.0.len() as u32 + 1;
        let slot = *self.table.0.entry(bar).or_insert(next);
        let region = kvm_userspace_memory_region {
            slot,
            guest_phys_addr: guest_addr,
            // Size 0 deletes the slot.
            memory_size: host.map_or(0, |h| h.len),
            userspace_addr: host.map_or(0, |h| h.addr as u64),
            flags: 0,
        };
        // SAFETY: the host range is a BackingFile's mapping. The device
        // manager, which holds the file, outlives the VmFd (see the field
        // order of Vm), so the memory stays mapped as long as the slot exists.
        unsafe { self.vm.set_user_memory_region(region) }
    }
}

impl MemoryMapper for KvmSlots<'_> {
    fn map(&mut self, bar: BarId, guest_addr: u64, host: HostMemory) -> Result<(), MapError> {
        self.set(bar, guest_addr, Some(host))
    }

    fn unmap(&mut self, bar: BarId) -> Result<(), MapError> {
        self.set(bar, 0, None)
    }
}

pub struct Vm {
    // Field order is drop order: the vCPU and the VM (and with it its memory
    // slots) go before the guest memory and the devices whose files the
    // slots point into.
    vcpu: Vcpu,
    vm: VmFd,
    slots: SlotTable,
    devices: DeviceManager,
    mem: GuestMemoryMmap,
    watch: ShrinkWatch,
    report: Arc<Mutex<GuestReport>>,
    serial: Arc<Mutex<SerialPort<ConsoleOutput<std::io::Stdout>>>>,
}

impl Vm {
    /// Builds the VM. Call from the thread that will call [`Vm::run`].
    pub fn new(config: &VmConfig) -> Result<Self, Error> {
        let ram_size = config.memory_mib << 20;
        if !(layout::MIN_RAM..=layout::MAX_RAM).contains(&ram_size) {
            return Err(Error::MemorySize {
                mib: config.memory_mib,
                min: layout::MIN_RAM >> 20,
                max: layout::MAX_RAM >> 20,
            });
        }
        let kvm_fd = Kvm::new().map_err(Error::KvmOpen)?;
        let host = host::probe(&kvm_fd)?;
        log_host(&host);

        // Files are opened before anything else so that a bad --shm fails
        // before the guest starts, and never after it has written anything.
        let files = config
            .shm
            .iter()
            .map(|s| BackingFile::open(&s.path, s.size).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;

        let vm = kvm_fd.create_vm().map_err(kvm("create VM"))?;
        vm.set_tss_address(layout::KVM_TSS as usize).map_err(kvm("set TSS address"))?;
        vm.create_irq_chip().map_err(kvm("create in-kernel irqchip"))?;
        vm.create_pit2(kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() })
            .map_err(kvm("create PIT"))?;

        // A field of the Vm dropped after `vm`.
        let mem = memory::create_ram(&vm, ram_size)?;

        let kernel = boot::load_kernel(&mem, &config.kernel)?;
        let initrd = config.initrd.as_deref().map(|p| boot::load_initrd(&mem, p, ram_size, &kernel)).transpose()?;
        let cmdline = boot::build_cmdline(&[BASE_CMDLINE, host.guest_cmdline(), &config.cmdline])?;
        info!("guest command line: {}", cmdline.as_cstring().map_err(boot::Error::Cmdline)?.to_string_lossy());
        boot::write_boot_params(&mem, &cmdline, initrd.as_ref(), ram_size)?;
        mptable::write(&mem, 1).map_err(Error::MpTable)?;
        pirq::write(&mem).map_err(Error::PirqTable)?;

        let vcpu_fd = vm.create_vcpu(0).map_err(kvm("create vCPU"))?;
        cpu::setup(&kvm_fd, &vcpu_fd, 0)?;
        cpu::setup_long_mode(&mem, &vcpu_fd, kernel.entry, layout::ZERO_PAGE)?;
        let vcpu = Vcpu::new(vcpu_fd).map_err(Error::Threads)?;

        let space = GuestSpace {
            ram: vec![Range { start: 0, end: ram_size }],
            reserved: vec![(layout::IOAPIC..layout::PCI_MMIO64_START, "the APICs and KVM's TSS")],
            phys_bits: cpu::phys_address_bits(&kvm_fd)?,
        };
        let mut devices = DeviceManager::new(space)?;
        let report = Arc::new(Mutex::new(GuestReport::default()));
        let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::Threads)?;
        vm.register_irqfd(&serial_irq, legacy::COM1_GSI).map_err(kvm("register serial irqfd"))?;
        let serial =
            Arc::new(Mutex::new(SerialPort::new(serial_irq, ConsoleOutput::new(std::io::stdout(), report.clone()))));
        devices.add_port_device(serial.clone(), legacy::COM1, legacy::COM1_LEN)?;
        for (file, cfg) in files.iter().zip(&config.shm) {
            let slot = devices.add_ivshmem(file.clone(), cfg.id)?;
            info!("ivshmem {}: {} ({} bytes) at 00:{slot:02x}.0", cfg.id, cfg.path.display(), file.size());
        }
        let watch = ShrinkWatch::start(files, vcpu.kicker()).map_err(Error::Threads)?;

        Ok(Self { vcpu, vm, slots: SlotTable::default(), devices, mem, watch, report, serial })
    }

    /// Copies our stdin to the guest's console.
    pub fn forward_stdin(&self) -> std::io::Result<()> {
        let serial = self.serial.clone();
        crate::spawn_started("console-input", move || {
            let mut buf = [0u8; 64];
            let mut stdin = std::io::stdin();
            while let Ok(n @ 1..) = stdin.read(&mut buf) {
                let mut rest = &buf[..n];
                while !rest.is_empty() {
                    let sent = lock(&serial).uart.enqueue_raw_bytes(rest).unwrap_or(0);
                    rest = &rest[sent..];
                    if sent == 0 {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                }
            }
        })?;
        Ok(())
    }

    /// Samples the guest's instruction pointer every `interval` and names
    /// kernel functions from `system_map`; see [`Vm::profile_report`].
    pub fn start_profiler(&mut self, interval: std::time::Duration, system_map: &Path) -> std::io::Result<()> {
        self.vcpu.set_profiler(Profiler::start(self.vcpu.kicker(), interval, system_map)?);
        Ok(())
    }

    pub fn profile_report(&self) -> Option<String> {
        self.vcpu.profiler().map(|p| p.report(40))
    }

    /// Runs the guest until it stops; returns the exit status of the program
    /// the image's init ran.
    pub fn run(&mut self) -> Result<i32, Error> {
        let result = self.run_vcpu();
        let _ = lock(&self.serial).uart.writer_mut().flush();
        self.devices.flush_logs();
        result
    }

    fn run_vcpu(&mut self) -> Result<i32, Error> {
        let mut slots = KvmSlots { vm: &self.vm, table: &mut self.slots };
        let stop = self.vcpu.run(&mut self.devices, &mut slots, &self.mem);
        let report = lock(&self.report).clone();
        // A file that shrank explains a stop the guest did not ask for.
        let unasked = !matches!(stop, Ok(Stop::Reset)) && report.exit_status.is_none();
        if let Some(shrunk) = self.watch.found().filter(|_| unasked) {
            return Err(Error::BackingShrunk { path: shrunk.path, size: shrunk.size, now: shrunk.now });
        }
        if let Some(panic) = report.panic {
            return Err(Error::GuestPanic(panic));
        }
        match stop? {
            Stop::Reset => report.exit_status.ok_or(Error::NoExitStatus),
            // With reboot=k Linux resets through the i8042; a shutdown
            // exit after a reported status is a reset too.
            Stop::Shutdown { rip } => report.exit_status.ok_or(Error::TripleFault { rip }),
            // Only the watch asks the vCPU to stop, when it has found a
            // shrunk file (handled above).
            Stop::Kicked => Err(Error::NoExitStatus),
        }
    }
}

fn log_host(host: &HostKvm) {
    if host.kernel_code_emulated() {
        info!(
            "host: guest kernel code runs in KVM's instruction emulator ({:.0} ns per instruction, popcnt {}); adding guest flags: {}",
            host.kernel_ns_per_instruction,
            if host.kernel_popcnt_fails { "not emulated" } else { "emulated" },
            host.guest_cmdline()
        );
    } else {
        info!(
            "host: guest kernel code runs natively ({:.1} ns per instruction); no guest flags added",
            host.kernel_ns_per_instruction
        );
    }
}
