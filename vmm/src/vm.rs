//! The VM: memory, one vCPU, the buses and devices, and the run loop that
//! turns the guest's exits into device accesses and its end into a status.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use kvm_bindings::{KVM_PIT_SPEAKER_DUMMY, kvm_pit_config, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use log::{debug, info, warn};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::{Action, Bus};
use crate::console::{ConsoleOutput, GuestReport};
use crate::devices::{IvshmemDevice, ResetPort, SerialPort, ivshmem, legacy};
use crate::host::HostKvm;
use crate::pci::{PciBus, PciDevice};
use crate::profile::Profiler;
use crate::shm::SharedFile;
use crate::{boot, cpu, host, layout, mptable};

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
    #[error("cannot open /dev/kvm: {0} (is KVM available, and may this user open /dev/kvm?)")]
    KvmOpen(kvm_ioctls::Error),
    #[error("KVM {what}: {source}")]
    Kvm { what: &'static str, source: kvm_ioctls::Error },
    #[error("--memory {mib} MiB: the guest needs {min} to {max} MiB")]
    MemorySize { mib: u64, min: u64, max: u64 },
    #[error("guest memory: {0}")]
    Memory(String),
    #[error(transparent)]
    Boot(#[from] boot::Error),
    #[error(transparent)]
    Cpu(#[from] cpu::Error),
    #[error("host probe: {0}")]
    Probe(#[from] host::Error),
    #[error(transparent)]
    Shm(#[from] crate::shm::Error),
    #[error("--shm {path}: {reason}")]
    ShmPlacement { path: PathBuf, reason: String },
    #[error("device set-up: {0}")]
    Device(String),
    #[error("the guest kernel panicked: {0}")]
    GuestPanic(String),
    #[error("the guest triple-faulted (the CPU shut down) at RIP {rip:#x}")]
    TripleFault { rip: u64 },
    #[error("KVM could not emulate the guest instruction at RIP {rip:#x} (bytes {bytes}); suberror {suberror}")]
    EmulationFailure { rip: u64, bytes: String, suberror: u32 },
    #[error("the guest stopped without reporting an exit status (was init not the image's?)")]
    NoExitStatus,
    #[error("the guest stopped: {0}")]
    Stopped(String),
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

/// An ivshmem device and what of it is mapped into the guest now.
struct Shm {
    pci_slot: u8,
    kvm_slot: u32,
    device: Arc<Mutex<IvshmemDevice>>,
    /// Guest address at which each BAR is mapped (MMIO bus or memory slot).
    mapped: [Option<u64>; 6],
}

pub struct Vm {
    // Field order is drop order: the VM (and with it its memory slots) goes
    // before the guest memory and the shared files it points into.
    vcpu: VcpuFd,
    vm: VmFd,
    mem: GuestMemoryMmap,
    ram_size: u64,
    phys_bits: u8,
    pio: Bus,
    mmio: Bus,
    pci: Arc<Mutex<PciBus>>,
    shm: Vec<Shm>,
    report: Arc<Mutex<GuestReport>>,
    serial: Arc<Mutex<SerialPort<ConsoleOutput<std::io::Stdout>>>>,
    profiler: Option<Profiler>,
}

impl Vm {
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
        let files = config.shm.iter().map(|s| SharedFile::open(&s.path, s.size)).collect::<Result<Vec<_>, _>>()?;

        let vm = kvm_fd.create_vm().map_err(kvm("create VM"))?;
        vm.set_tss_address(0xfffb_d000).map_err(kvm("set TSS address"))?;
        vm.create_irq_chip().map_err(kvm("create in-kernel irqchip"))?;
        vm.create_pit2(kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() })
            .map_err(kvm("create PIT"))?;

        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), ram_size as usize)])
            .map_err(|e| Error::Memory(e.to_string()))?;
        let region = mem.iter().next().expect("one RAM region");
        let host_addr = region.get_host_address(MemoryRegionAddress(0)).map_err(|e| Error::Memory(e.to_string()))?;
        let ram = kvm_userspace_memory_region {
            slot: 0,
            guest_phys_addr: 0,
            memory_size: ram_size,
            userspace_addr: host_addr as u64,
            flags: 0,
        };
        // SAFETY: `mem` lives as long as the VM (it is a field dropped after `vm`).
        unsafe { vm.set_user_memory_region(ram) }.map_err(kvm("add RAM slot"))?;

        let kernel = boot::load_kernel(&mem, &config.kernel)?;
        let initrd = config.initrd.as_deref().map(|p| boot::load_initrd(&mem, p, ram_size, &kernel)).transpose()?;
        let cmdline = boot::build_cmdline(&[BASE_CMDLINE, host.guest_cmdline(), &config.cmdline])?;
        info!("guest command line: {}", cmdline.as_cstring().map_err(boot::Error::Cmdline)?.to_string_lossy());
        boot::write_boot_params(&mem, &cmdline, initrd.as_ref(), ram_size)?;
        mptable::write(&mem, 1).map_err(|e| Error::Memory(e.to_string()))?;

        let vcpu = vm.create_vcpu(0).map_err(kvm("create vCPU"))?;
        cpu::setup(&kvm_fd, &vcpu, 0)?;
        cpu::setup_long_mode(&mem, &vcpu, kernel.entry, layout::ZERO_PAGE)?;
        let phys_bits = cpu::phys_address_bits(&kvm_fd)?;

        let report = Arc::new(Mutex::new(GuestReport::default()));
        let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| Error::Device(format!("eventfd: {e}")))?;
        vm.register_irqfd(&serial_irq, legacy::COM1_GSI).map_err(kvm("register serial irqfd"))?;
        let serial =
            Arc::new(Mutex::new(SerialPort::new(serial_irq, ConsoleOutput::new(std::io::stdout(), report.clone()))));
        let pci = Arc::new(Mutex::new(PciBus::new()));
        let mut pio = Bus::default();
        let dev_err = |e: crate::bus::Error| Error::Device(e.to_string());
        pio.insert(serial.clone(), legacy::COM1, legacy::COM1_LEN).map_err(dev_err)?;
        pio.insert(Arc::new(Mutex::new(ResetPort)), legacy::I8042, legacy::I8042_LEN).map_err(dev_err)?;
        pio.insert(pci.clone(), crate::pci::CONFIG_ADDRESS_PORT, crate::pci::CONFIG_PORTS_LEN).map_err(dev_err)?;

        let mut vm = Self {
            vcpu,
            vm,
            mem,
            ram_size,
            phys_bits,
            pio,
            mmio: Bus::default(),
            pci,
            shm: Vec::new(),
            report,
            serial,
            profiler: None,
        };
        vm.add_shm_devices(config, files)?;
        Ok(vm)
    }

    /// Plugs one ivshmem device per file, with BARs placed as firmware would:
    /// BAR0 in the 32-bit window, BAR2 naturally aligned in the 64-bit one.
    fn add_shm_devices(&mut self, config: &VmConfig, files: Vec<SharedFile>) -> Result<(), Error> {
        let mut next64 = layout::PCI_MMIO64_START;
        for (i, (file, cfg)) in files.into_iter().zip(&config.shm).enumerate() {
            let size = file.size();
            let bar2 = next64.next_multiple_of(size);
            if bar2 + size > 1u64 << self.phys_bits {
                return Err(Error::ShmPlacement {
                    path: cfg.path.clone(),
                    reason: format!(
                        "{size} bytes do not fit below the guest's {}-bit physical address limit",
                        self.phys_bits
                    ),
                });
            }
            next64 = bar2 + size;
            let bar0 = layout::PCI_MMIO32_START + i as u64 * 0x1000;
            let device = IvshmemDevice::new(file, cfg.id, bar0, bar2).map_err(|e| Error::Device(e.to_string()))?;
            let device = Arc::new(Mutex::new(device));
            let pci_slot = self.pci.lock().unwrap().add(device.clone()).map_err(|e| Error::Device(e.to_string()))?;
            info!("ivshmem {}: {} ({size} bytes) at 00:{pci_slot:02x}.0, BAR2 {bar2:#x}", cfg.id, cfg.path.display());
            self.shm.push(Shm { pci_slot, kvm_slot: 1 + i as u32, device, mapped: [None; 6] });
        }
        Ok(())
    }

    /// Brings the mappings of a device's BARs in line with its configuration
    /// space: enabling memory decoding maps them, disabling unmaps them, and a
    /// new address moves the MMIO range or the KVM memory slot. A BAR the
    /// guest placed over RAM, another device or past the address limit stays
    /// unmapped, with a warning: its memory is not lost, only not visible.
    fn sync_bars(&mut self, pci_slot: u8) -> Result<(), Error> {
        let Some(index) = self.shm.iter().position(|s| s.pci_slot == pci_slot) else { return Ok(()) };
        for bar in [ivshmem::REGISTERS_BAR, ivshmem::MEMORY_BAR] {
            let (want, size, memory) = {
                let dev = self.shm[index].device.lock().unwrap();
                let config = dev.config();
                (config.bar_mapping(bar.into()), config.bar_size(bar.into()).unwrap_or(0), dev.bar_memory(bar))
            };
            let have = self.shm[index].mapped[usize::from(bar)];
            if want == have {
                continue;
            }
            if let Some(old) = have {
                match memory {
                    Some(_) => self.set_memory_slot(index, old, None)?,
                    None => {
                        self.mmio.remove(old);
                    }
                }
                self.shm[index].mapped[usize::from(bar)] = None;
            }
            let Some(new) = want else { continue };
            if let Err(reason) = self.check_bar_placement(new, size) {
                warn!("ivshmem at 00:{pci_slot:02x}.0: guest put BAR{bar} at {new:#x}, which {reason}; left unmapped");
                continue;
            }
            let placed = match memory {
                Some((host, _)) => self.set_memory_slot(index, new, Some(host)).map(|_| true)?,
                None => {
                    let device = self.shm[index].device.clone();
                    self.mmio.insert(device, new, size).is_ok()
                }
            };
            if placed {
                info!("ivshmem at 00:{pci_slot:02x}.0: BAR{bar} mapped at {new:#x}");
                self.shm[index].mapped[usize::from(bar)] = Some(new);
            } else {
                warn!("ivshmem at 00:{pci_slot:02x}.0: BAR{bar} at {new:#x} overlaps another device; left unmapped");
            }
        }
        Ok(())
    }

    fn check_bar_placement(&self, addr: u64, size: u64) -> Result<(), String> {
        let end = addr.checked_add(size).ok_or("wraps around")?;
        if addr < self.ram_size {
            return Err("overlaps RAM".into());
        }
        if end > 1 << self.phys_bits {
            return Err(format!("lies past the {}-bit physical address limit", self.phys_bits));
        }
        if addr < 1 << 32 && end > layout::IOAPIC {
            return Err("overlaps the IOAPIC and local APIC".into());
        }
        let overlaps = self.shm.iter().flat_map(|s| {
            let dev = s.device.lock().unwrap();
            s.mapped
                .iter()
                .enumerate()
                .filter_map(|(bar, m)| m.map(|m| (m, dev.config().bar_size(bar).unwrap_or(0))))
                .collect::<Vec<_>>()
        });
        for (other, other_size) in overlaps {
            if addr < other + other_size && other < end {
                return Err(format!("overlaps a BAR at {other:#x}"));
            }
        }
        Ok(())
    }

    fn set_memory_slot(&self, index: usize, guest_addr: u64, host: Option<*mut u8>) -> Result<(), Error> {
        let shm = &self.shm[index];
        let size = shm.device.lock().unwrap().memory().size();
        let region = kvm_userspace_memory_region {
            slot: shm.kvm_slot,
            guest_phys_addr: guest_addr,
            // Size 0 deletes the slot.
            memory_size: if host.is_some() { size } else { 0 },
            userspace_addr: host.map_or(0, |h| h as u64),
            flags: 0,
        };
        // SAFETY: the host range is the device's SharedFile mapping, which
        // lives until the Vm is dropped, after the VmFd that holds the slot.
        unsafe { self.vm.set_user_memory_region(region) }.map_err(kvm("set shared-memory slot"))
    }

    /// Copies our stdin to the guest's console.
    pub fn forward_stdin(&self) {
        let serial = self.serial.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let mut stdin = std::io::stdin();
            while let Ok(n @ 1..) = stdin.read(&mut buf) {
                let mut rest = &buf[..n];
                while !rest.is_empty() {
                    let sent = serial.lock().unwrap().0.enqueue_raw_bytes(rest).unwrap_or(0);
                    rest = &rest[sent..];
                    if sent == 0 {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                }
            }
        });
    }

    /// Runs the guest until it stops; returns the exit status of the program
    /// the image's init ran.
    pub fn run(&mut self) -> Result<i32, Error> {
        loop {
            let action = match self.vcpu.run() {
                Ok(VcpuExit::IoIn(port, data)) => {
                    if !self.pio.read(port.into(), data) {
                        debug!("unclaimed port read {port:#x}");
                    }
                    None
                }
                Ok(VcpuExit::IoOut(port, data)) => self.pio.write(port.into(), data).1,
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    if !self.mmio.read(addr, data) {
                        debug!("unclaimed MMIO read {addr:#x}");
                    }
                    None
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => self.mmio.write(addr, data).1,
                Ok(VcpuExit::Shutdown) => {
                    // With reboot=k Linux resets through the i8042; a
                    // shutdown exit after a reported status is a reset too.
                    if self.report.lock().unwrap().exit_status.is_some() {
                        Some(Action::Reset)
                    } else {
                        let rip = self.vcpu.get_regs().map_err(kvm("get regs"))?.rip;
                        return Err(self.guest_panic().unwrap_or(Error::TripleFault { rip }));
                    }
                }
                Ok(VcpuExit::SystemEvent(kind, _)) => {
                    debug!("system event {kind}");
                    Some(Action::Reset)
                }
                Ok(VcpuExit::InternalError) => {
                    self.handle_internal_error()?;
                    None
                }
                Ok(VcpuExit::Hlt) => return Err(Error::Stopped("the vCPU halted".into())),
                Ok(VcpuExit::FailEntry(reason, _)) => {
                    return Err(Error::Stopped(format!("KVM could not enter the guest (hardware reason {reason:#x})")));
                }
                Ok(other) => return Err(Error::Stopped(format!("unexpected exit {other:?}"))),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    if let Some(profiler) = &mut self.profiler {
                        profiler.record(self.vcpu.get_regs().map_err(kvm("get regs"))?.rip);
                    }
                    None
                }
                Err(e) => return Err(Error::Kvm { what: "run vCPU", source: e }),
            };
            match action {
                None => {}
                Some(Action::PciConfigWritten { slot }) => self.sync_bars(slot)?,
                Some(Action::Reset) => {
                    let _ = self.serial.lock().unwrap().0.writer_mut().flush();
                    if let Some(panic) = self.guest_panic() {
                        return Err(panic);
                    }
                    return self.report.lock().unwrap().exit_status.ok_or(Error::NoExitStatus);
                }
            }
        }
    }

    /// Samples the guest's RIP every `interval` from now on; call from the
    /// thread that will call [`Vm::run`].
    pub fn start_profiler(&mut self, interval: std::time::Duration) -> std::io::Result<()> {
        self.profiler = Some(Profiler::start(interval)?);
        Ok(())
    }

    pub fn profile_report(&self, system_map: &std::path::Path) -> Option<std::io::Result<String>> {
        self.profiler.as_ref().map(|p| p.report(system_map, 40))
    }

    fn guest_panic(&self) -> Option<Error> {
        self.report.lock().unwrap().panic.clone().map(Error::GuestPanic)
    }

    /// Finishes the instructions that KVM's emulator cannot execute where
    /// guest kernel code runs in it; anything else is fatal.
    /// - INT3 (Linux's boot self-test uses it on purpose): inject the #BP it
    ///   would have raised.
    /// - FWAIT (Linux runs it when a task that owns the FPU exits, to flush
    ///   delayed x87 exceptions): raise #MF if an unmasked x87 exception is
    ///   pending, as the CPU would, else step over it.
    fn handle_internal_error(&mut self) -> Result<(), Error> {
        const EMULATION: u32 = kvm_bindings::KVM_INTERNAL_ERROR_EMULATION;
        const BP: u32 = 3;
        const MF: u32 = 16;
        // SAFETY: after an InternalError exit, the `internal` member of the
        // kvm_run union is the one KVM filled in.
        let suberror = unsafe { self.vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
        let mut regs = self.vcpu.get_regs().map_err(kvm("get regs"))?;
        let bytes = self.instruction_bytes(regs.rip);
        let fault = match (suberror, bytes.first()) {
            (EMULATION, Some(0xcc)) => {
                regs.rip += 1;
                Some(BP)
            }
            (EMULATION, Some(0x9b)) => {
                let fpu = self.vcpu.get_fpu().map_err(kvm("get FPU"))?;
                const X87_EXCEPTIONS: u16 = 0x3f;
                if fpu.fsw & !fpu.fcw & X87_EXCEPTIONS != 0 {
                    Some(MF)
                } else {
                    regs.rip += 1;
                    None
                }
            }
            _ => {
                let bytes = bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ");
                let bytes = if bytes.is_empty() { "unreadable".into() } else { bytes };
                return Err(Error::EmulationFailure { rip: regs.rip, bytes, suberror });
            }
        };
        if fault == Some(BP) {
            info!("guest kernel ran INT3 at {:#x}, which KVM's emulator lacks: injected #BP", regs.rip - 1);
        } else {
            let done = if fault.is_some() { "raised #MF" } else { "stepped over it" };
            debug!("guest kernel ran FWAIT at {:#x}, which KVM's emulator lacks: {done}", regs.rip);
        }
        self.vcpu.set_regs(&regs).map_err(kvm("set regs"))?;
        if let Some(nr) = fault {
            let mut events = self.vcpu.get_vcpu_events().map_err(kvm("get vCPU events"))?;
            events.exception.injected = 1;
            events.exception.nr = nr as u8;
            events.exception.has_error_code = 0;
            self.vcpu.set_vcpu_events(&events).map_err(kvm("inject an exception"))?;
        }
        Ok(())
    }

    fn instruction_bytes(&self, rip: u64) -> Vec<u8> {
        let Ok(t) = self.vcpu.translate_gva(rip) else { return Vec::new() };
        if t.valid == 0 {
            return Vec::new();
        }
        let mut bytes = vec![0u8; 15];
        match self.mem.read_slice(&mut bytes, GuestAddress(t.physical_address)) {
            Ok(()) => bytes,
            Err(_) => Vec::new(),
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
