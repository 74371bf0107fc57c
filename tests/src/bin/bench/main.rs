//! bench: the shared-memory path measured against this machine's limits, in
//! one run. Boots the VMM once with the real image and measures guest→host
//! and host→guest streaming, small-message round trips, the guest mapping's
//! memory types; measures host-only memcpy and host-only ping-pong in the
//! same run for the ratios; boots the image again with our VMM and with QEMU
//! microvm, in turn, for the boot times; then doorbells (doorbell.rs) and
//! scale with vCPUs and writers (scale.rs), and 2 MiB against 4 KiB pages
//! (pages.rs). Writes results.json, chart.svg
//! and REPORT.md into the output directory.
//!
//! usage: bench [--out DIR] [--total-mib N] [--round-trips N] [--boots N] [--no-qemu]

mod doorbell;
mod pages;
mod report;
mod scale;

use std::ops::Range;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kvmshm_tests::{Qemu, Running, Scratch, probe_figure, vmm_image};
use shm_layout::host::MappedFile;
use shm_layout::stream::{Direction, Stream};

const CHUNK: u64 = 1 << 20;
const SLOTS: u64 = 16;
/// What the image's init prints first: boot time is measured to it.
const START_MARKER: &str = "kvmshm-init: started";
/// What the image's init prints last, before it resets the guest.
const EXIT_MARKER: &str = "kvmshm-init: exit status ";
/// What the boots run: the demo without a command prints its usage and ends.
const BOOT_RUN: &str = "run=/bin/kvmshm-demo";
/// Guest RAM for the boots, ours and QEMU's: the VMM's default.
const BOOT_MEMORY_MIB: &str = "128";

pub struct Latency {
    /// Sorted round-trip times, in nanoseconds.
    pub sorted_ns: Vec<u64>,
}

impl Latency {
    pub fn new(mut ns: Vec<u64>) -> Self {
        ns.sort_unstable();
        Self { sorted_ns: ns }
    }

    pub fn quantile(&self, q: f64) -> u64 {
        let i = ((self.sorted_ns.len() - 1) as f64 * q).round() as usize;
        self.sorted_ns[i]
    }

    pub fn max(&self) -> u64 {
        *self.sorted_ns.last().expect("at least one round trip")
    }
}

pub struct MemorySpeed {
    pub caching: String,
    pub copy_in_mbps: f64,
    pub copy_out_mbps: f64,
}

pub struct Results {
    pub machine: Vec<(String, String)>,
    pub total_bytes: u64,
    pub host_memcpy_gbps: f64,
    pub host_stream_gbps: f64,
    pub guest_to_host_gbps: f64,
    pub host_to_guest_gbps: f64,
    pub vm_latency: Latency,
    pub host_latency: Latency,
    pub memory: Vec<MemorySpeed>,
    pub boot_ours: Boots,
    /// QEMU's boots, or why there are none.
    pub boot_qemu: Result<QemuBoots, String>,
}

pub struct QemuBoots {
    /// The `-cpu` model `kvmshm qemu-cpu` found for this host.
    pub cpu: String,
    /// One a round, each right after ours of that round.
    pub boots: Boots,
}

impl QemuBoots {
    /// Ours / QEMU's by `f`: the median of each round's ratio. Boots of one
    /// round run a few seconds apart, while the emulator's speed drifts
    /// over a run by more than the two differ: a ratio of medians could
    /// take them from different rounds.
    pub fn ours_over_qemu(&self, ours: &Boots, f: impl Fn(&Boot) -> f64) -> f64 {
        median(ours.0.iter().zip(&self.boots.0).map(|(o, q)| f(o) / f(q)).collect())
    }
}

/// One boot of the image: to the first line of its init, and to the end of
/// the VMM's process (the guest powers off once its program has run).
#[derive(Clone, Copy)]
pub struct Boot {
    pub to_init_s: f64,
    pub process_s: f64,
    /// The host's time per emulated instruction over the boot (see
    /// vmm/src/host.rs): the mean of a probe just before it and one just
    /// after (this host's speed moves within a minute, and a probe takes
    /// 25 ms of a boot of seconds). Boot time divided by it is the boot's
    /// cost in emulated instructions, comparable between machines.
    pub ns_per_instruction: f64,
    /// The probe after the boot over the one before: how far this host's
    /// speed moved during the boot.
    pub probe_after_over_before: f64,
    /// Whether that probe found guest kernel code emulated.
    pub emulated: bool,
}

impl Boot {
    /// A boot timed `to_init` and `process`, between probes that read
    /// `before` and `after` ns per instruction.
    fn new(to_init: Duration, process: Duration, before: f64, after: f64, emulated: bool) -> Self {
        Self {
            to_init_s: to_init.as_secs_f64(),
            process_s: process.as_secs_f64(),
            ns_per_instruction: (before + after) / 2.0,
            probe_after_over_before: after / before,
            emulated,
        }
    }

    /// Boot time to init in millions of emulated-instruction times.
    pub fn million_instructions(&self) -> f64 {
        self.to_init_s / self.ns_per_instruction * 1e3
    }
}

/// Several boots of one VMM, with their medians.
pub struct Boots(pub Vec<Boot>);

/// The median of `values` (of the middle two, for an even count).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 }
}

impl Boots {
    fn median(&self, f: impl Fn(&Boot) -> f64) -> f64 {
        median(self.0.iter().map(f).collect())
    }

    pub fn to_init_s(&self) -> f64 {
        self.median(|b| b.to_init_s)
    }

    pub fn process_s(&self) -> f64 {
        self.median(|b| b.process_s)
    }

    pub fn million_instructions(&self) -> f64 {
        self.median(Boot::million_instructions)
    }

    pub fn ns_per_instruction(&self) -> f64 {
        self.median(|b| b.ns_per_instruction)
    }

    /// The least and the most of [`Boot::probe_after_over_before`].
    pub fn probe_drift(&self) -> (f64, f64) {
        let drifts = self.0.iter().map(|b| b.probe_after_over_before);
        (drifts.clone().fold(f64::INFINITY, f64::min), drifts.fold(0.0, f64::max))
    }
}

struct Args {
    out: PathBuf,
    total_mib: u64,
    round_trips: u64,
    /// Rounds of boots (ours, QEMU's, ours with 4 vCPUs): 5 by default, as
    /// ours / QEMU moved between 0.98 and 1.05 over medians of 3.
    boots: usize,
    qemu: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args =
        Args { out: PathBuf::from("target/bench"), total_mib: 256, round_trips: 100_000, boots: 5, qemu: true };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--out" => args.out = PathBuf::from(value()?),
            "--total-mib" => args.total_mib = value()?.parse().context("--total-mib")?,
            "--round-trips" => args.round_trips = value()?.parse().context("--round-trips")?,
            "--boots" => args.boots = value()?.parse().context("--boots")?,
            "--no-qemu" => args.qemu = false,
            _ => bail!(
                "unknown argument {arg:?}; usage: bench [--out DIR] [--total-mib N] [--round-trips N] [--boots N] [--no-qemu]"
            ),
        }
    }
    if args.boots == 0 {
        bail!("--boots must be at least 1");
    }
    Ok(args)
}

fn gbps(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64() / 1e9
}

/// The host's own limit for the streams: one thread copying `total` bytes
/// the way each side of a stream does, chunk by chunk from a private buffer
/// into a ring of the same geometry (both touched beforehand).
fn host_memcpy(total: u64) -> f64 {
    let chunk = CHUNK as usize;
    let src = vec![0xa5u8; chunk];
    // Not zeros: a zeroed allocation is mapped lazily, and the copy would
    // pay for the page faults.
    let mut ring = vec![0x5au8; chunk * SLOTS as usize];
    let start = Instant::now();
    for n in 0..(total / CHUNK) as usize {
        let slot = n % SLOTS as usize;
        ring[slot * chunk..(slot + 1) * chunk].copy_from_slice(&src);
        std::hint::black_box(&ring);
    }
    gbps(total, start.elapsed())
}

/// The same stream between two host threads through ordinary shared memory
/// (a file mapped twice), same code: what the path costs without a VM.
fn host_stream(scratch: &Scratch, total: u64) -> anyhow::Result<f64> {
    let path = scratch.path("host-stream");
    std::fs::File::create(&path)?.set_len(Stream::required_size(CHUNK, SLOTS).next_power_of_two())?;
    let (a, b) = (MappedFile::open(&path)?, MappedFile::open(&path)?);
    let chunks = total / CHUNK;
    let producer = Stream::format(a.region(), CHUNK, SLOTS, chunks)?;
    let consumer = Stream::open(b.region())?;
    producer.touch_ring();
    std::thread::scope(|s| {
        s.spawn(move || {
            pin_to_cpus(0..1);
            let buf = vec![0xa5u8; CHUNK as usize];
            producer.answer_ping();
            (0..chunks).for_each(|n| producer.send(Direction::GuestToHost, n, &buf));
        });
        consume(&consumer, "host stream")
    })
}

/// The consuming side of a guest-to-host stream: gives the producer its go
/// (the first ping), then takes every chunk; returns GB/s from the go on.
fn consume(stream: &Stream, what: &str) -> anyhow::Result<f64> {
    let mut buf = vec![0u8; stream.chunk_len()];
    stream.ping(1);
    let start = Instant::now();
    for n in 0..stream.total() {
        if let Err(bad) = stream.receive(Direction::GuestToHost, n, &mut buf) {
            bail!("{what} chunk {n} is damaged: {bad:?}");
        }
    }
    Ok(gbps(stream.total() * stream.chunk_len() as u64, start.elapsed()))
}

/// `cmd`, to run on `cpus` (the VMs of the stream, doorbell and boot
/// measurements on CPU 0, this process on CPU 1). A child started without
/// this inherits this process's CPU 1.
pub fn on_cpus(mut cmd: Command, cpus: Range<usize>) -> Command {
    // SAFETY: the hook only calls sched_setaffinity, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            pin_to_cpus(cpus.clone());
            Ok(())
        })
    };
    cmd
}

/// Runs the image's own `kvmshm-demo` on the host, on core 0, with `file`
/// as its device and `command`: the guest's code built as the guest runs
/// it, without the VM. Returns what it printed.
pub fn host_demo(file: &Path, command: &[&str]) -> anyhow::Result<String> {
    let mut cmd = Command::new(kvmshm_tests::image_file("kvmshm-demo"));
    cmd.arg("--device").arg(file).args(command);
    let out = on_cpus(cmd, 0..1).output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("kvmshm-demo {} on the host failed: {text}{}", command.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(text)
}

/// Keeps the calling thread on `cpus`, so that the two sides of every
/// measurement run on different cores, the same ones each time.
fn pin_to_cpus(cpus: Range<usize>) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and
    // sched_setaffinity only read and write that set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Times `count` pings through `stream`, whose other side answers them.
fn ping_pong(stream: &Stream, first: u64, count: u64) -> Latency {
    let mut times = Vec::with_capacity(count as usize);
    for seq in first..first + count {
        let start = Instant::now();
        stream.ping(seq);
        times.push(start.elapsed().as_nanos() as u64);
    }
    Latency::new(times)
}

/// The same ping-pong between two host threads through ordinary shared
/// memory (a file in the scratch directory, mapped twice), same code.
fn host_ping_pong(scratch: &Scratch, count: u64) -> anyhow::Result<Latency> {
    let path = scratch.path("host-pingpong");
    std::fs::File::create(&path)?.set_len(Stream::required_size(4096, 1).next_power_of_two())?;
    let (a, b) = (MappedFile::open(&path)?, MappedFile::open(&path)?);
    let server = Stream::format(a.region(), 4096, 1, 0)?;
    let client = Stream::open(b.region())?;
    Ok(std::thread::scope(|s| {
        s.spawn(move || {
            pin_to_cpus(0..1);
            server.serve_pings()
        });
        let latency = ping_pong(&client, 1, count);
        client.stop();
        latency
    }))
}

/// Spins until `f` gives a value, failing if the VM ends first.
fn await_vm<T>(vm: &mut Running, what: &str, mut f: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if !vm.is_running() {
            bail!("the VM ended while the host waited for {what}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

struct VmRun {
    g2h_gbps: f64,
    h2g_gbps: f64,
    latency: Latency,
    memory: Vec<MemorySpeed>,
}

fn run_vm(scratch: &Scratch, total_mib: u64, round_trips: u64) -> anyhow::Result<VmRun> {
    let ring = scratch.path("ring");
    let speed = scratch.path("memspeed");
    let ring_size = Stream::required_size(CHUNK, SLOTS).next_power_of_two();
    let run = format!(
        "run=/bin/kvmshm-demo -- --device=/dev/kvmshm1 memspeed --mib=64 :: \
         --device=/dev/kvmshm1 --caching=wc memspeed --mib=64 :: \
         --device=/dev/kvmshm1 --caching=uc memspeed --mib=64 :: \
         bench --chunk-kib={} --slots={SLOTS} --total-mib={total_mib}",
        CHUNK >> 10
    );
    let shm = [format!("path={},size={ring_size}", ring.display()), format!("path={},size=64M,id=1", speed.display())];
    let cmd = vmm_image(&run, &["--shm", &shm[0], "--shm", &shm[1]]);
    let mut vm = Running::spawn(on_cpus(cmd, 0..1)).context("the VMM")?;
    vm.wait_for(START_MARKER, Duration::from_secs(600)).map_err(anyhow::Error::msg)?;

    let file = await_vm(&mut vm, "the ring file", || MappedFile::open(&ring).ok())?;
    let stream = await_vm(&mut vm, "the guest to format the ring", || Stream::open(file.region()).ok())?;
    let total = stream.total();
    let bytes = total * CHUNK;

    stream.touch_ring();
    let g2h = consume(&stream, "guest->host")?;

    let buf = vec![0x3cu8; CHUNK as usize];
    let start = Instant::now();
    for n in 0..total {
        stream.send(Direction::HostToGuest, n, &buf);
    }
    stream.wait_drained(Direction::HostToGuest);
    let h2g = gbps(bytes, start.elapsed());

    let latency = ping_pong(&stream, 2, round_trips);
    stream.stop();
    let out = vm.finish();
    if out.code != Some(0) {
        bail!("the VM ended badly:\n{}", out.transcript());
    }
    let memory = out
        .console
        .lines()
        .filter_map(|l| l.strip_prefix("memspeed: caching "))
        .map(parse_memspeed)
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(VmRun { g2h_gbps: g2h, h2g_gbps: h2g, latency, memory })
}

/// "wb: copy in 10258 MB/s, copy out 8824 MB/s (67108864 bytes)"
fn parse_memspeed(line: &str) -> anyhow::Result<MemorySpeed> {
    let bad = || format!("cannot parse memspeed line {line:?}");
    let (caching, rest) = line.split_once(": ").with_context(bad)?;
    let number = |after: &str| -> anyhow::Result<f64> {
        let tail = rest.split_once(after).with_context(bad)?.1;
        tail.split_whitespace().next().with_context(bad)?.parse().with_context(bad)
    };
    Ok(MemorySpeed {
        caching: caching.to_string(),
        copy_in_mbps: number("copy in ")?,
        copy_out_mbps: number("copy out ")?,
    })
}

/// Runs `cmd`, a VMM booting the image with [`BOOT_RUN`], on CPU 0 to its
/// end; checks that the guest ended itself.
fn boot(cmd: Command, what: &str) -> anyhow::Result<(Duration, Duration, String)> {
    let start = Instant::now();
    let mut vm = Running::spawn(on_cpus(cmd, 0..1)).with_context(|| what.to_string())?;
    let to_init = vm.wait_for(START_MARKER, Duration::from_secs(900)).map_err(anyhow::Error::msg)?;
    let out = vm.finish_unchecked();
    let process = start.elapsed();
    if !out.console.contains(EXIT_MARKER) {
        bail!("{what}: the guest did not end by itself:\n{}", out.transcript());
    }
    Ok((to_init, process, out.log))
}

/// `kvmshm probe` on CPU 0, where the boots run: the host's time per guest
/// kernel instruction now.
fn probe_now() -> anyhow::Result<f64> {
    let out = on_cpus(Command::new(kvmshm_tests::host_binary("kvmshm")), 0..1).arg("probe").output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("kvmshm probe failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(probe_figure(&text).with_context(|| format!("kvmshm probe printed no time per instruction: {text}"))?.0)
}

/// Our VMM with `cpus` vCPUs booting the image without devices, as QEMU's
/// microvm does, then a probe; the probe after the boot is returned too,
/// the one before the next.
fn boot_ours(cpus: u8) -> anyhow::Result<(Boot, f64)> {
    let cpus = cpus.to_string();
    let cmd = vmm_image(BOOT_RUN, &["--memory", BOOT_MEMORY_MIB, "--cpus", &cpus]);
    let (to_init, process, log) = boot(cmd, "the VMM")?;
    let (before, emulated) = probe_figure(&log).context("the VMM logs its probe's ns per instruction")?;
    let after = probe_now()?;
    Ok((Boot::new(to_init, process, before, after, emulated), after))
}

/// QEMU's microvm booting the same kernel and initramfs with the guest
/// command line our VMM gives, plus the image's switches for the two
/// instructions QEMU cannot finish where guest kernel code is emulated. The
/// guest ends with a reset through the keyboard controller (reboot=k), which
/// microvm has only when asked for: without it, Linux falls back to jumping
/// to the firmware, which starts the freed kernel again.
fn boot_qemu(setup: &Qemu, ours: &Boot, before: f64) -> anyhow::Result<Boot> {
    let mut cmd = setup.command("microvm", BOOT_MEMORY_MIB, BOOT_RUN);
    cmd.args(["-device", "i8042"]);
    let (to_init, process, _) = boot(cmd, "qemu-system-x86_64 (Debian package qemu-system-x86)")?;
    Ok(Boot::new(to_init, process, before, probe_now()?, ours.emulated))
}

/// `rounds` boots of our VMM, each followed by one of QEMU's if there is a
/// QEMU and by one of ours with 4 vCPUs: all see the same conditions. Each
/// boot is counted in emulated instructions with the probes just before and
/// after it (QEMU's: the one after our VMM's boot, and one of its own).
/// Returns QEMU's boots or why there are none.
fn boots(rounds: usize, qemu: Result<&Qemu, &str>) -> anyhow::Result<(Boots, Boots, Result<QemuBoots, String>)> {
    let mut setup = qemu.map_err(str::to_string);
    let (mut ours, mut ours_4, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        eprintln!("bench: boot {round} of {rounds}, our VMM...");
        let (b, after) = boot_ours(1)?;
        ours.push(b);
        if let Ok(q) = setup {
            eprintln!("bench: boot {round} of {rounds}, QEMU microvm...");
            match boot_qemu(q, &b, after) {
                Ok(boot) => theirs.push(boot),
                Err(e) => setup = Err(format!("QEMU did not boot: {e:#}")),
            }
        }
        eprintln!("bench: boot {round} of {rounds}, our VMM with 4 vCPUs...");
        ours_4.push(boot_ours(4)?.0);
    }
    Ok((Boots(ours), Boots(ours_4), setup.map(|q| QemuBoots { cpu: q.cpu.clone(), boots: Boots(theirs) })))
}

fn machine() -> Vec<(String, String)> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
        })
        .unwrap_or_else(|| "unknown".into());
    let uname =
        Command::new("uname").arg("-srm").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    // SAFETY: sysconf has no memory effects. (available_parallelism would
    // count only the CPU this process is pinned to.)
    let cores = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.to_string();
    let kvm = if Path::new("/sys/module/kvm_pvm").exists() {
        "PVM (no VMX/SVM: guest kernel code is emulated)"
    } else {
        "hardware-assisted"
    };
    vec![
        ("cpu".into(), cpu),
        ("cores".into(), cores),
        ("host kernel".into(), uname.unwrap_or_default()),
        ("kvm".into(), kvm.into()),
        ("guest kernel".into(), "Linux 7.3 (images/build.sh)".into()),
    ]
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        bail!("the benchmark needs two CPUs: each side of the shared memory spins on its own");
    }
    // This process on CPU 1; the VM's vCPU and the host threads' peers on CPU 0.
    pin_to_cpus(1..2);
    // Shared memory lives on tmpfs, as a VM's would: a file on disk would
    // add the host's writeback to the measurements.
    let scratch = Scratch::new_in(Path::new("/dev/shm"), "bench");
    let total = args.total_mib << 20;
    eprintln!("bench: host memcpy of {} MiB...", args.total_mib);
    let host_memcpy_gbps = host_memcpy(total);
    eprintln!("bench: host thread-to-thread stream of {} MiB...", args.total_mib);
    let host_stream_gbps = host_stream(&scratch, total)?;
    eprintln!("bench: host ping-pong, {} round trips...", args.round_trips);
    let host_latency = host_ping_pong(&scratch, args.round_trips)?;
    eprintln!("bench: booting the VMM for the guest measurements...");
    let vm = run_vm(&scratch, args.total_mib, args.round_trips)?;
    let qemu = if args.qemu {
        Qemu::detect().map_err(|e| format!("QEMU could not be set up: {e}"))
    } else {
        Err("not run (--no-qemu)".to_string())
    };
    let (boot_ours, boot_ours_4, boot_qemu) = boots(args.boots, qemu.as_ref().map_err(String::as_str))?;
    eprintln!("bench: doorbells: a guest and host peers on an ivshmem server, then two guests...");
    let doorbell = doorbell::run(&scratch, qemu.as_ref().map_err(String::as_str))?;
    let scale = scale::run(&scratch)?;
    let pages = pages::run(&scratch)?;
    let results = Results {
        machine: machine(),
        total_bytes: total,
        host_memcpy_gbps,
        host_stream_gbps,
        guest_to_host_gbps: vm.g2h_gbps,
        host_to_guest_gbps: vm.h2g_gbps,
        vm_latency: vm.latency,
        host_latency,
        memory: vm.memory,
        boot_ours,
        boot_qemu,
    };
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("results.json"), report::json(&results))?;
    std::fs::write(args.out.join("chart.svg"), report::svg(&results))?;
    // Only where the probe found guest kernel code emulated.
    let emulated = results.boot_ours.0.iter().all(|b| b.emulated);
    let doorbell = doorbell::markdown(&doorbell, emulated.then(|| results.boot_ours.ns_per_instruction()));
    let scale = scale::markdown(&scale, &results.boot_ours, &boot_ours_4);
    let pages = pages::markdown(&pages);
    std::fs::write(args.out.join("REPORT.md"), report::markdown(&results) + &doorbell + &scale + &pages)?;
    print!("{}{doorbell}{scale}{pages}", report::summary(&results));
    eprintln!("bench: wrote {}", args.out.join("REPORT.md").display());
    Ok(())
}
