//! The VM: KVM, guest RAM and boot data, the devices, and running it to a
//! status. The device model lives in [`DeviceManager`] (which reaches KVM
//! through [`KvmHypervisor`]), the exit handling in [`Vcpu`](crate::vcpu::Vcpu),
//! the vCPU threads in [`VcpuThreads`]; this module builds them and judges
//! how the guest ended.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use kvm_bindings::{KVM_PIT_SPEAKER_DUMMY, kvm_pit_config};
use kvm_ioctls::{Cap, Kvm};
use log::{info, warn};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use shm_layout::host::ivshmem::Peer;

use crate::backing::{self, BackingFile, ShrinkWatch};
use crate::console::{ConsoleOutput, GuestReport};
use crate::device_manager::{self, DeviceManager, GuestSpace};
use crate::devices::{SerialPort, legacy};
use crate::host::HostKvm;
use crate::hypervisor::KvmHypervisor;
use crate::profile::Profiler;
use crate::vcpu::{self, Stop};
use crate::vcpus::VcpuThreads;
use crate::{boot, cpu, host, layout, lock, memory, mptable, pirq};

/// What the guest always gets on its command line. `reboot=k` makes its
/// power-off (a reboot, see guest-userspace's init) reach our i8042 reset port;
/// `panic=-1` turns a panic into an immediate reset.
const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 quiet";

/// For a guest without ivshmem devices: no PCI bus to enumerate (the host
/// bridge, 32 slots through port I/O, the PCI core's sysfs and /proc
/// files), as QEMU's microvm has none. Five alternating boots where guest
/// kernel code is emulated: 5.75 s to init with the empty bus, 5.54 without.
const NO_PCI_CMDLINE: &str = "pci=off";

/// One ivshmem device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShmConfig {
    /// ivshmem-plain: `size` bytes of the file at `path`; IVPosition `id`.
    Plain { path: PathBuf, size: u64, id: u32 },
    /// ivshmem-doorbell: memory, id and vectors from the ivshmem server at `socket`.
    Server { socket: PathBuf },
}

pub struct VmConfig {
    pub cpus: u8,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub memory_mib: u64,
    pub cmdline: String,
    pub shm: Vec<ShmConfig>,
    /// Sample the guest's RIP every millisecond on every vCPU and name
    /// kernel functions from this System.map (see [`Vm::profile_report`]).
    pub profile_guest: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open /dev/kvm (is KVM available, and may this user open /dev/kvm?)")]
    KvmOpen(#[source] kvm_ioctls::Error),
    #[error("KVM {what}")]
    Kvm { what: &'static str, source: kvm_ioctls::Error },
    #[error("--cpus {cpus}: this VMM runs 1 to {max} vCPUs")]
    Cpus { cpus: u8, max: u8 },
    #[error("--memory {mib} MiB: the guest needs {min} to {max} MiB")]
    MemorySize { mib: u64, min: u64, max: u64 },
    #[error("--memory {mib} MiB: the guest's RAM would end past its {phys_bits}-bit physical address limit")]
    RamPastLimit { mib: u64, phys_bits: u8 },
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
    #[error("--shm server={}", socket.display())]
    Server { socket: PathBuf, source: shm_layout::host::ivshmem::Error },
    #[error(transparent)]
    Devices(#[from] device_manager::Error),
    #[error("vCPU {index}")]
    Vcpu { index: usize, source: vcpu::Error },
    #[error("setting up the VMM's threads and signals")]
    Threads(#[source] std::io::Error),
    #[error("--profile-guest {}", path.display())]
    Profiler { path: PathBuf, source: std::io::Error },
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

pub struct Vm {
    // Field order is drop order. The profiler and the watch kick vCPUs, so
    // they go before the vCPU threads. The vCPUs go before the guest memory
    // and the devices' files that the VM's memory slots point into, so that
    // no guest runs once those are gone; the devices hold the VM fd (in
    // their KvmHypervisor), which goes before the RAM it maps.
    profiler: Option<Profiler>,
    watch: ShrinkWatch,
    vcpus: VcpuThreads,
    devices: Arc<Mutex<DeviceManager>>,
    /// Held, not read: the RAM outlives the VM fd whose slot maps it.
    _ram: GuestMemoryMmap,
    report: Arc<Mutex<GuestReport>>,
    serial: Arc<Mutex<SerialPort<ConsoleOutput<std::io::Stdout>>>>,
}

impl Vm {
    /// Builds the VM, with its vCPU threads waiting for [`Vm::run`].
    pub fn new(config: &VmConfig) -> Result<Self, Error> {
        if !(1..=layout::MAX_CPUS).contains(&config.cpus) {
            return Err(Error::Cpus { cpus: config.cpus, max: layout::MAX_CPUS });
        }
        let ram_size = config.memory_mib.saturating_mul(1 << 20);
        if !(layout::MIN_RAM..=layout::MAX_RAM).contains(&ram_size) {
            return Err(Error::MemorySize {
                mib: config.memory_mib,
                min: layout::MIN_RAM >> 20,
                max: layout::MAX_RAM >> 20,
            });
        }
        let kvm_fd = Kvm::new().map_err(Error::KvmOpen)?;
        let supported_cpuid = cpu::supported_cpuid(&kvm_fd)?;
        let space = GuestSpace {
            ram: layout::ram_ranges(ram_size),
            reserved: vec![(layout::IOAPIC..layout::RAM_ABOVE_4G, "the APICs and KVM's TSS")],
            phys_bits: cpu::phys_address_bits(&supported_cpuid),
        };
        if space.ram_end() > space.limit() {
            return Err(Error::RamPastLimit { mib: config.memory_mib, phys_bits: space.phys_bits });
        }
        let host = host::probe(&kvm_fd)?;
        log_host(&host, config.cpus);

        // Files are opened and servers joined before anything else so that a
        // bad --shm fails before the guest starts, and never after it has
        // written anything.
        let shared = config.shm.iter().map(Shared::open).collect::<Result<Vec<_>, _>>()?;

        let vm = Arc::new(kvm_fd.create_vm().map_err(kvm("create VM"))?);
        vm.set_tss_address(layout::KVM_TSS as usize).map_err(kvm("set TSS address"))?;
        vm.create_irq_chip().map_err(kvm("create in-kernel irqchip"))?;
        vm.create_pit2(kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() })
            .map_err(kvm("create PIT"))?;

        // A field of the Vm, dropped after the devices that hold `vm`.
        let mem = memory::create_ram(&vm, &space.ram)?;

        let kernel = boot::load_kernel(&mem, &config.kernel)?;
        let initrd = config.initrd.as_deref().map(|p| boot::load_initrd(&mem, p, &space.ram, &kernel)).transpose()?;
        let pci = if config.shm.is_empty() { NO_PCI_CMDLINE } else { "" };
        let cmdline = boot::build_cmdline(&[BASE_CMDLINE, &host.guest_cmdline(config.cpus), pci, &config.cmdline])?;
        info!("guest command line: {}", cmdline.as_cstring().map_err(boot::Error::Cmdline)?.to_string_lossy());
        boot::write_boot_params(&mem, &cmdline, initrd.as_ref(), &space.ram)?;
        mptable::write(&mem, config.cpus).map_err(Error::MpTable)?;
        pirq::write(&mem).map_err(Error::PirqTable)?;

        let tsc_deadline = vm.check_extension(Cap::TscDeadlineTimer);
        if !tsc_deadline {
            warn!("KVM has no TSC-deadline timer: the guest calibrates its local APIC timer");
        }
        let cpu_config = cpu::Config { cpus: config.cpus, hypercalls: !host.hypercalls_fail, tsc_deadline };
        let mut vcpu_fds = Vec::new();
        for id in 0..config.cpus {
            let fd = vm.create_vcpu(id.into()).map_err(kvm("create vCPU"))?;
            cpu::setup(&supported_cpuid, &fd, id, &cpu_config)?;
            vcpu_fds.push(fd);
        }
        // The bootstrap processor enters the kernel; the others wait for
        // the guest to start them.
        cpu::setup_long_mode(&mem, &vcpu_fds[0], kernel.entry, layout::ZERO_PAGE)?;

        let hypervisor = KvmHypervisor::new(vm.clone(), mem.num_regions() as u32);
        let mut devices = DeviceManager::new(space, Arc::new(hypervisor))?;
        let report = Arc::new(Mutex::new(GuestReport::default()));
        let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::Threads)?;
        vm.register_irqfd(&serial_irq, legacy::COM1_GSI).map_err(kvm("register serial irqfd"))?;
        let serial =
            Arc::new(Mutex::new(SerialPort::new(serial_irq, ConsoleOutput::new(std::io::stdout(), report.clone()))));
        devices.add_port_device(serial.clone(), legacy::COM1, legacy::COM1_LEN)?;
        for shared in shared {
            let (path, size) = (shared.memory().path().display().to_string(), shared.memory().size());
            let (what, slot) = match shared {
                Shared::Plain { memory, id } => (format!("ivshmem-plain {id}"), devices.add_ivshmem(memory, id)?),
                Shared::Server { memory, peer } => {
                    let what = format!("ivshmem-doorbell peer {} ({} vectors)", peer.id(), peer.own_eventfds().len());
                    (what, devices.add_ivshmem_doorbell(memory, peer)?)
                }
            };
            info!("{what}: {path} ({size} bytes) at 00:{slot:02x}.0");
        }
        devices.start_doorbell_threads()?;
        let backing_files = devices.backing_files();
        let devices = Arc::new(Mutex::new(devices));

        let mut profiler = config
            .profile_guest
            .as_deref()
            .map(|path| Profiler::new(path).map_err(|source| Error::Profiler { path: path.into(), source }))
            .transpose()?;
        let samples = profiler.as_ref().map(Profiler::samples);
        let vcpus = VcpuThreads::spawn(vcpu_fds, &devices, &mem, samples.as_ref()).map_err(Error::Threads)?;
        let watch = ShrinkWatch::start(backing_files, vcpus.kickers()).map_err(Error::Threads)?;
        // Last: should anything after it fail, the locals would drop, the
        // vCPU threads (declared after `profiler`) before the profiler.
        if let Some(profiler) = &mut profiler {
            profiler.start(vcpus.kickers(), std::time::Duration::from_millis(1)).map_err(Error::Threads)?;
        }

        Ok(Self { profiler, watch, vcpus, devices, _ram: mem, report, serial })
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

    /// The `top` hottest kernel functions, with `--profile-guest`.
    pub fn profile_report(&self, top: usize) -> Option<String> {
        self.profiler.as_ref().map(|p| p.report(top))
    }

    /// Runs the guest until it stops; returns the exit status of the program
    /// the image's init ran.
    pub fn run(&mut self) -> Result<i32, Error> {
        let result = self.run_vcpus();
        let _ = lock(&self.serial).uart.writer_mut().flush();
        lock(&self.devices).flush_logs();
        result
    }

    fn run_vcpus(&mut self) -> Result<i32, Error> {
        let (index, stop) = self.vcpus.run();
        let report = lock(&self.report).clone();
        // A file that shrank explains a stop the guest did not ask for.
        let unasked = !matches!(stop, Ok(Stop::Reset)) && report.exit_status.is_none();
        if let Some(shrunk) = self.watch.found().filter(|_| unasked) {
            return Err(Error::BackingShrunk { path: shrunk.path, size: shrunk.size, now: shrunk.now });
        }
        if let Some(panic) = report.panic {
            return Err(Error::GuestPanic(panic));
        }
        match stop.map_err(|source| Error::Vcpu { index, source })? {
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

/// The shared memory of one --shm, opened before the VM is built.
enum Shared {
    Plain { memory: Arc<BackingFile>, id: u32 },
    Server { memory: Arc<BackingFile>, peer: Peer },
}

impl Shared {
    fn open(config: &ShmConfig) -> Result<Self, Error> {
        match config {
            ShmConfig::Plain { path, size, id } => {
                Ok(Self::Plain { memory: Arc::new(BackingFile::open(path, *size)?), id: *id })
            }
            ShmConfig::Server { socket } => {
                let server_error = |source| Error::Server { socket: socket.clone(), source };
                let peer = Peer::connect(socket).map_err(server_error)?;
                let file = peer.memory().try_clone().map_err(|e| server_error(e.into()))?;
                let size = file.metadata().map_err(|e| server_error(e.into()))?.len();
                let name = PathBuf::from(format!("the memory of ivshmem server {}", socket.display()));
                let memory = BackingFile::from_file(name, file, size, false)?;
                Ok(Self::Server { memory: Arc::new(memory), peer })
            }
        }
    }

    fn memory(&self) -> &Arc<BackingFile> {
        match self {
            Self::Plain { memory, .. } | Self::Server { memory, .. } => memory,
        }
    }
}

fn log_host(host: &HostKvm, cpus: u8) {
    if host.kernel_code_emulated() {
        info!(
            "host: {host}; adding guest flags: {} (clearcpuid: {})",
            host.guest_cmdline(cpus),
            host::cleared_cpu_feature_names().collect::<Vec<_>>().join(",")
        );
    } else {
        info!("host: {host}; no guest flags added");
    }
    if host.hypercalls_fail {
        info!(
            "host: the paravirtual features that make hypercalls (PV IPIs, PV unhalt, PV yield) are hidden from the guest"
        );
    }
}
