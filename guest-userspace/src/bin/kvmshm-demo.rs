//! kvmshm-demo: the guest's side of the shared-memory protocols.
//!
//! Every system call is slow in a guest whose kernel code is emulated, so
//! the device is mapped once and the work is plain loads and stores: no
//! system calls in loops, one line of output per command.
//!
//! Several commands can run in one invocation, separated by `::`, so that
//! one boot of the guest runs several checks; they run in order and the
//! first that fails ends the run with its status.
//!
//! `--device all` runs a command on every `/dev/kvmshmN` in turn, lowest N
//! first; on device N, `--seed S` stands for S + N, so that each device
//! carries its own data.
//!
//! Exit status: 0 success, 1 a check or a writer failed, 2 a bad argument,
//! a missing device or a region too small for the request.
//!
//! Started as `/init`, it is the guest's init instead ([`guest_userspace::init`]).

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::process::exit;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::time::{Duration, Instant};

use guest_userspace::device::{Caching, Device, DeviceWake, HUGE_PAGE, map_device, map_shared};
use shm_layout::Region;
use shm_layout::clock::Clock;
use shm_layout::echo::Mailbox;
use shm_layout::ends;
use shm_layout::fill;
use shm_layout::pingpong;
use shm_layout::records::{RECORD_LEN, Records, overall_rate, round_goes_on};
use shm_layout::spin::Interruptions;
use shm_layout::stream::{Direction, Stream};
use shm_layout::tlb::random_page_writes;

const USAGE: &str = "usage: kvmshm-demo COMMAND [:: COMMAND]...; COMMAND is \
    [--device PATH|all] [--caching wb|wc|uc] followed by one of: \
    write --procs N --records M [--seed S] [--spin K] [--pin 1] | check-records --procs N --records M | \
    verify --seed S | echo [--interrupts 1] | pingpong --peer P --rounds N --side 0|1 | check-doorbell --slot S | check-api | check-removal | memspeed --mib M | \
    bench [--chunk-kib K] [--slots S] --total-mib T | move-bar --to ADDR | ends --seed S | meminfo | \
    scale --procs N --records M --rounds K [--paced 1] | interruptions --seconds N [--procs P] | spread --seconds N | \
    clocks --seconds N | host-clock --seconds N | pages --seconds N; \
    --name=VALUE works as well as --name VALUE";

#[derive(Clone, Copy)]
enum Command {
    Write { procs: u64, records: u64, seed: u64, spin: u64, pin: bool },
    CheckRecords { procs: u64, records: u64 },
    Verify { seed: u64 },
    Echo { interrupts: bool },
    PingPong { peer: u16, rounds: u64, side: u64 },
    CheckDoorbell { slot: u64 },
    CheckApi,
    CheckRemoval,
    Memspeed { mib: u64 },
    Pages { seconds: u64 },
    Bench { chunk_kib: u64, slots: u64, total_mib: u64 },
    MoveBar { to: u64 },
    Ends { seed: u64 },
    Meminfo,
    Scale { procs: u64, records: u64, rounds: u64, paced: bool },
    Interruptions { seconds: u64, procs: u64 },
    Spread { seconds: u64 },
    Clocks { seconds: u64 },
    HostClock { seconds: u64 },
}

struct Invocation {
    device: String,
    caching: Option<Caching>,
    command: Command,
}

fn fail(status: i32, message: &str) -> ! {
    eprintln!("kvmshm-demo: {message}");
    exit(status)
}

/// Options are `--name VALUE` or `--name=VALUE`: the second form halves the
/// words, and Linux hands init at most 32 words on its command line.
fn parse(args: &[String]) -> Result<Invocation, String> {
    let mut args = args.iter().flat_map(|arg| match arg.split_once('=') {
        Some((name, value)) if name.starts_with("--") => vec![name.to_string(), value.to_string()],
        _ => vec![arg.clone()],
    });
    let mut device = String::from("/dev/kvmshm0");
    let mut caching = None;
    let command = loop {
        let arg = args.next().ok_or("no command")?;
        match arg.as_str() {
            "--device" => device = args.next().ok_or("--device needs a path")?,
            "--caching" => {
                let mode = args.next().unwrap_or_default();
                caching = Some(Caching::parse(&mode).ok_or("--caching takes wb, wc or uc")?);
            }
            _ => break arg,
        }
    };
    let required = |value: Option<u64>, name: &str| value.ok_or(format!("{command} needs {name}"));
    let command = match command.as_str() {
        "write" => {
            let [procs, records, seed, spin, pin] =
                numbers(args, ["--procs", "--records", "--seed", "--spin", "--pin"])?;
            let procs = required(procs, "--procs")?;
            if procs == 0 {
                return Err("--procs must be at least 1".into());
            }
            let records = required(records, "--records")?;
            let (seed, spin, pin) = (seed.unwrap_or(0), spin.unwrap_or(0), pin.unwrap_or(0) != 0);
            Command::Write { procs, records, seed, spin, pin }
        }
        "meminfo" => Command::Meminfo,
        "scale" => {
            let [procs, records, rounds, paced] = numbers(args, ["--procs", "--records", "--rounds", "--paced"])?;
            let procs = required(procs, "--procs")?;
            let rounds = required(rounds, "--rounds")?;
            if procs == 0 || rounds == 0 {
                return Err("--procs and --rounds must be at least 1".into());
            }
            let paced = paced.unwrap_or(0) != 0;
            Command::Scale { procs, records: required(records, "--records")?, rounds, paced }
        }
        "interruptions" => {
            let [seconds, procs] = numbers(args, ["--seconds", "--procs"])?;
            let procs = procs.unwrap_or(1);
            if procs == 0 {
                return Err("--procs must be at least 1".into());
            }
            Command::Interruptions { seconds: required(seconds, "--seconds")?, procs }
        }
        "spread" => {
            let [seconds] = numbers(args, ["--seconds"])?;
            Command::Spread { seconds: required(seconds, "--seconds")? }
        }
        "clocks" => {
            let [seconds] = numbers(args, ["--seconds"])?;
            Command::Clocks { seconds: required(seconds, "--seconds")? }
        }
        "host-clock" => {
            let [seconds] = numbers(args, ["--seconds"])?;
            let seconds = required(seconds, "--seconds")?;
            if seconds == 0 {
                return Err("host-clock needs at least one second to see the host's clock change".into());
            }
            Command::HostClock { seconds }
        }
        "ends" => {
            let [seed] = numbers(args, ["--seed"])?;
            Command::Ends { seed: required(seed, "--seed")? }
        }
        "check-records" => {
            let [procs, records] = numbers(args, ["--procs", "--records"])?;
            Command::CheckRecords { procs: required(procs, "--procs")?, records: required(records, "--records")? }
        }
        "verify" => {
            let [seed] = numbers(args, ["--seed"])?;
            Command::Verify { seed: required(seed, "--seed")? }
        }
        "echo" => {
            let [interrupts] = numbers(args, ["--interrupts"])?;
            Command::Echo { interrupts: interrupts.unwrap_or(0) != 0 }
        }
        "pingpong" => {
            let [peer, rounds, side] = numbers(args, ["--peer", "--rounds", "--side"])?;
            let peer = u16::try_from(required(peer, "--peer")?).map_err(|_| "--peer is 0 to 65535")?;
            Command::PingPong { peer, rounds: required(rounds, "--rounds")?, side: required(side, "--side")? }
        }
        "check-doorbell" => {
            let [slot] = numbers(args, ["--slot"])?;
            Command::CheckDoorbell { slot: required(slot, "--slot")? }
        }
        "check-api" => {
            numbers(args, [])?;
            Command::CheckApi
        }
        "check-removal" => {
            numbers(args, [])?;
            Command::CheckRemoval
        }
        "memspeed" => {
            let [mib] = numbers(args, ["--mib"])?;
            Command::Memspeed { mib: required(mib, "--mib")? }
        }
        "pages" => {
            let [seconds] = numbers(args, ["--seconds"])?;
            Command::Pages { seconds: required(seconds, "--seconds")? }
        }
        "move-bar" => {
            let [to] = numbers(args, ["--to"])?;
            Command::MoveBar { to: required(to, "--to")? }
        }
        "bench" => {
            let [chunk_kib, slots, total_mib] = numbers(args, ["--chunk-kib", "--slots", "--total-mib"])?;
            Command::Bench {
                chunk_kib: chunk_kib.unwrap_or(1024),
                slots: slots.unwrap_or(16),
                total_mib: required(total_mib, "--total-mib")?,
            }
        }
        other => return Err(format!("unknown command {other:?}")),
    };
    Ok(Invocation { device, caching, command })
}

/// Parses `--name NUMBER` pairs (decimal, or hexadecimal after 0x), each
/// name one of `names`.
fn numbers<const N: usize>(
    mut args: impl Iterator<Item = String>,
    names: [&str; N],
) -> Result<[Option<u64>; N], String> {
    let mut values = [None; N];
    while let Some(arg) = args.next() {
        let i = names.iter().position(|n| *n == arg).ok_or(format!("unknown option {arg:?}"))?;
        let value = args.next().ok_or(format!("{arg} needs a value"))?;
        let number = match value.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => value.parse().ok(),
        };
        values[i] = Some(number.ok_or(format!("{arg} {value:?} is not a number"))?);
    }
    Ok(values)
}

fn main() {
    let mut argv = std::env::args_os().map(|a| a.into_string().unwrap_or_default());
    if guest_userspace::init::started_as_init(&argv.next().unwrap_or_default()) {
        guest_userspace::init::main();
    }
    let args: Vec<String> = argv.collect();
    // Every command is parsed before the first runs: a typo in the last one
    // must not cost a whole run.
    let invocations: Vec<Invocation> = args
        .split(|a| a == "::")
        .map(|words| parse(words).unwrap_or_else(|e| fail(2, &format!("{e}; {USAGE}"))))
        .collect();
    for inv in invocations {
        let targets = if inv.device == "all" { numbered_devices() } else { vec![(0, inv.device.clone())] };
        for (n, path) in targets {
            let status = run(&path, inv.caching, inv.command.on_device(n));
            if status != 0 {
                exit(status);
            }
        }
    }
}

impl Command {
    /// The command as `--device all` runs it on device `n`.
    fn on_device(self, n: u64) -> Self {
        match self {
            Self::Write { procs, records, seed, spin, pin } => {
                Self::Write { procs, records, seed: seed + n, spin, pin }
            }
            Self::Verify { seed } => Self::Verify { seed: seed + n },
            Self::Ends { seed } => Self::Ends { seed: seed + n },
            other => other,
        }
    }
}

/// Every /dev/kvmshmN, as (N, path), lowest N first.
fn numbered_devices() -> Vec<(u64, String)> {
    let mut devices: Vec<(u64, String)> = std::fs::read_dir("/dev")
        .unwrap_or_else(|e| fail(1, &format!("/dev: {e}")))
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            let n = name.strip_prefix("kvmshm")?.parse().ok()?;
            Some((n, format!("/dev/{name}")))
        })
        .collect();
    if devices.is_empty() {
        fail(2, "--device all: no /dev/kvmshmN device");
    }
    devices.sort_unstable();
    devices
}

fn run(path: &str, caching: Option<Caching>, command: Command) -> i32 {
    // The commands that do not map the device do not open it either.
    let unmapped = |run: &dyn Fn() -> i32| {
        if caching.is_some() {
            fail(2, "--caching applies to the commands that map the device");
        }
        run()
    };
    let device = || Device::open(path, caching).unwrap_or_else(|e| fail(2, &format!("{path}: {e}")));
    match command {
        Command::Meminfo => unmapped(&meminfo),
        Command::Interruptions { seconds, procs } => unmapped(&|| interruptions(seconds, procs)),
        Command::Spread { seconds } => unmapped(&|| spread(seconds)),
        Command::Clocks { seconds } => unmapped(&|| clocks(seconds)),
        Command::Write { procs, records, seed, spin, pin } => write(&device(), path, procs, records, seed, spin, pin),
        Command::CheckRecords { procs, records } => check_records(&device(), path, procs, records),
        Command::Verify { seed } => verify(&device(), path, seed),
        Command::Echo { interrupts } => echo(&device(), path, interrupts),
        Command::PingPong { peer, rounds, side } => pingpong(&device(), path, peer, rounds, side),
        Command::CheckDoorbell { slot } => check_doorbell(&device(), path, slot),
        Command::CheckApi => check_api(&device(), path),
        Command::CheckRemoval => check_removal(&device(), path),
        Command::Memspeed { mib } => memspeed(&device(), mib),
        Command::Pages { seconds } => pages(&device(), path, seconds),
        Command::HostClock { seconds } => host_clock(&device(), path, seconds),
        Command::Bench { chunk_kib, slots, total_mib } => bench(&device(), path, chunk_kib, slots, total_mib),
        Command::Scale { procs, records, rounds, paced } => scale(&device(), path, procs, records, rounds, paced),
        Command::Ends { seed } => ends(&device(), path, seed),
        Command::MoveBar { to } => {
            drop(device());
            move_bar(path, to)
        }
    }
}

/// Prints the RAM the guest kernel manages (the VMM's --memory, less what
/// the kernel keeps for itself).
fn meminfo() -> i32 {
    // SAFETY: sysinfo is plain data, valid all zero.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: sysinfo writes one struct sysinfo, which `info` is.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        fail(1, &format!("sysinfo: {}", io::Error::last_os_error()));
    }
    let mib = |pages: libc::c_ulong| (pages * libc::c_ulong::from(info.mem_unit)) >> 20;
    println!("meminfo: {} MiB of RAM, {} MiB free", mib(info.totalram), mib(info.freeram));
    0
}

/// Spins in user space for `seconds` on the CPU a first writer gets and
/// prints what it lost to interruptions ([`Interruptions`]): where guest
/// kernel code is emulated, mostly the guest's timer ticks. With `procs`
/// above 1, as many processes spin on that CPU at once, taking turns, and
/// each one's share of the time is printed too: what is missing from their
/// sum went to the kernel, switches between them included.
fn interruptions(seconds: u64, procs: u64) -> i32 {
    let cpus = online_cpus();
    let cpu = writer_cpu(&cpus, 0);
    pin_to(cpu).unwrap_or_else(|e| fail(1, &e));
    let duration_ns = seconds.saturating_mul(1_000_000_000);
    // Each other spinner sends its share of the time, in millionths.
    let shares = pipe();
    let mut children = Vec::new();
    for p in 1..procs {
        // SAFETY: this process has one thread; the child spins, writes to
        // the pipe it inherited and leaves with _exit, running no destructor
        // of the parent's state.
        match unsafe { libc::fork() } {
            -1 => fail(1, &format!("fork of spinner {p}: {}", io::Error::last_os_error())),
            0 => {
                let share = share_millionths(&Interruptions::measure(duration_ns, now_ns));
                // SAFETY: writes the 8 bytes of `share`, fewer than PIPE_BUF,
                // so in one piece.
                let code = if unsafe { libc::write(shares.1, (&raw const share).cast(), 8) } == 8 { 0 } else { 1 };
                // SAFETY: ends the child at once, as above.
                unsafe { libc::_exit(code) }
            }
            pid => children.push(pid),
        }
    }
    // SAFETY: the parent's copy of the write end: end of file once every
    // spinner has written or died.
    unsafe { libc::close(shares.1) };
    let seen = Interruptions::measure(duration_ns, now_ns);
    let timer = tick_timer(cpu);
    println!("interruptions: spinning in user space {seen} (on CPU {cpu}, a first writer's, whose tick is {timer}'s)");
    if procs > 1 {
        let mut all = vec![share_millionths(&seen)];
        let mut share = 0u64;
        // SAFETY: reads at most 8 bytes into `share`.
        while unsafe { libc::read(shares.0, (&raw mut share).cast(), 8) } == 8 {
            all.push(share);
        }
        reap(&children);
        if all.len() as u64 != procs {
            fail(1, &format!("{} of {procs} spinners reported their share", all.len()));
        }
        let percent = |m: u64| m as f64 / 1e4;
        let each: Vec<_> = all.iter().map(|&m| format!("{:.1}%", percent(m))).collect();
        println!(
            "interruptions: {procs} processes sharing CPU {cpu} ran {:.1}% of the time together ({})",
            percent(all.iter().sum()),
            each.join(", ")
        );
    }
    // SAFETY: the read end, no longer used.
    unsafe { libc::close(shares.0) };
    // The commands after this one run on every CPU again.
    set_affinity(0, &cpus).unwrap_or_else(|e| fail(1, &format!("unpinning: {e}")));
    0
}

/// Reads the clocks for `seconds` and prints how far the coarse ones (what
/// `time()` and file times come from) lagged the exact ones at most: the
/// coarse clocks move when the tick advances the timekeeper, which where
/// kernel code is emulated is every fourth tick (images/patches/0029).
/// Fails if any clock went back.
fn clocks(seconds: u64) -> i32 {
    let pairs =
        [(libc::CLOCK_MONOTONIC, libc::CLOCK_MONOTONIC_COARSE), (libc::CLOCK_REALTIME, libc::CLOCK_REALTIME_COARSE)];
    let end = now_ns().saturating_add(seconds.saturating_mul(1_000_000_000));
    // Each pair's last coarse and exact readings.
    let mut last = [(0u64, 0u64); 2];
    let (mut lag, mut reads) = (0u64, 0u64);
    while now_ns() < end {
        for (&(exact, coarse), last) in pairs.iter().zip(&mut last) {
            // The coarse clock first: read after it, the exact one is ahead.
            let (c, e) = (clock_ns(coarse), clock_ns(exact));
            if c < last.0 || e < last.1 {
                fail(1, &format!("clocks: clock {exact} or {coarse} went back after {reads} reads"));
            }
            *last = (c, e);
            lag = lag.max(e.saturating_sub(c));
        }
        reads += 1;
    }
    println!(
        "clocks: the coarse clocks lagged the exact ones by at most {:.1} ms over {seconds} s ({reads} reads); none went back",
        lag as f64 / 1e6
    );
    0
}

/// How long `host-clock` waits for `kvmshm clock` to publish: the host may
/// start it after the guest.
const HOST_CLOCK_WAIT: Duration = Duration::from_secs(60);

/// Compares the guest's real-time clock with the host's, which `kvmshm
/// clock` publishes in the region every millisecond ([`shm_layout::clock`]),
/// for `seconds`: each time the host's value changes, the guest's clock
/// minus it. Each difference is the clocks' own plus the time the store
/// took to be seen; so the least is the closest, and the median says what
/// a reader sees most of the time. Tells the host it is done.
fn host_clock(device: &Device, path: &str, seconds: u64) -> i32 {
    let waited = Instant::now();
    let clock = loop {
        match Clock::open(device.region()) {
            Ok(clock) if clock.host_ns() != 0 => break clock,
            found if waited.elapsed() > HOST_CLOCK_WAIT => {
                let why = found.err().map_or("nothing published".to_string(), |e| e.to_string());
                fail(
                    2,
                    &format!(
                        "{path}: no host clock within {HOST_CLOCK_WAIT:?} ({why}); run `kvmshm clock` on the host"
                    ),
                )
            }
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    let end = now_ns().saturating_add(seconds.saturating_mul(1_000_000_000));
    let mut last = clock.host_ns();
    let mut differences = Vec::new();
    while now_ns() < end {
        let host = clock.host_ns();
        if host != last {
            differences.push(clock_ns(libc::CLOCK_REALTIME) as i64 - host as i64);
            last = host;
        }
    }
    clock.finish();
    differences.sort_unstable();
    let ms = |ns: i64| ns as f64 / 1e6;
    let (Some(&least), Some(&most)) = (differences.first(), differences.last()) else {
        fail(1, &format!("host-clock: the host's clock did not change in {seconds} s (its publisher stopped?)"))
    };
    println!(
        "host-clock: the guest's real-time clock minus the host's, over {} readings: median {:+.3} ms, least {:+.3}, most {:+.3}",
        differences.len(),
        ms(differences[differences.len() / 2]),
        ms(least),
        ms(most)
    );
    0
}

/// Whether a busy CPU takes a process that waits on another busy CPU: the
/// first CPU gets three spinning processes and every other CPU one, each
/// pinned there; after two seconds all are free to move, and the three
/// should not stay together. Where the VMM passes `nohz_full=`, the other
/// CPUs run one process each without a tick, the tick is what drives busy
/// load balancing, and the first CPU asks them once a second instead
/// (images/patches/0028). Prints after how long each of the three first ran
/// elsewhere; fails if none did within `seconds`.
fn spread(seconds: u64) -> i32 {
    let cpus = online_cpus();
    if cpus.len() < 2 {
        fail(2, "spread needs two online CPUs or more");
    }
    // The first CPU's three last: started the other way round (this process
    // leaving another CPU last), a kernel without patch 0028's kick had that
    // CPU's tick restart a second or two later in 14 runs of 15, and the
    // three spread anyway; this way, in 1 run of 4.
    let homes: Vec<usize> = cpus[1..].iter().copied().chain([cpus[0]; 3]).collect();
    // The time the spinners were freed, then when each first ran away from
    // its home (0: not yet), then whether to stop.
    let board = shared_words(homes.len() + 2);
    let (freed, moved, stop) = (&board[0], &board[1..=homes.len()], &board[homes.len() + 1]);
    let mut children = Vec::new();
    for (i, &home) in homes.iter().enumerate() {
        // The child inherits the affinity.
        set_affinity(0, &[home]).unwrap_or_else(|e| fail(1, &format!("pinning to CPU {home}: {e}")));
        // SAFETY: this process has one thread; the child spins on shared
        // memory and leaves with _exit, running no destructor of the
        // parent's state.
        match unsafe { libc::fork() } {
            -1 => fail(1, &format!("fork of spinner {i}: {}", io::Error::last_os_error())),
            0 => {
                while stop.load(Relaxed) == 0 {
                    let t0 = freed.load(Acquire);
                    if t0 == 0 || moved[i].load(Relaxed) != 0 {
                        continue;
                    }
                    // SAFETY: no arguments; answered by the vDSO.
                    let cpu = unsafe { libc::sched_getcpu() };
                    if cpu < 0 {
                        eprintln!("kvmshm-demo: spinner {i}: sched_getcpu: {}", io::Error::last_os_error());
                        // SAFETY: ends the child at once, as below.
                        unsafe { libc::_exit(1) }
                    }
                    if cpu as usize != home {
                        moved[i].store(now_ns().saturating_sub(t0).max(1), Relaxed);
                    }
                }
                // SAFETY: ends the child at once, as above.
                unsafe { libc::_exit(0) }
            }
            pid => children.push(pid),
        }
    }
    // Every spinner runs before they are freed; this process waits anywhere.
    set_affinity(0, &cpus).unwrap_or_else(|e| fail(1, &format!("unpinning: {e}")));
    std::thread::sleep(Duration::from_secs(2));
    for &pid in &children {
        set_affinity(pid, &cpus).unwrap_or_else(|e| fail(1, &format!("unpinning spinner {pid}: {e}")));
    }
    freed.store(now_ns(), Release);
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(1, Relaxed);
    if !reap(&children).is_empty() {
        fail(1, "a spinner died");
    }
    let crowded: Vec<u64> = (0..homes.len()).filter(|&i| homes[i] == cpus[0]).map(|i| moved[i].load(Relaxed)).collect();
    let each: Vec<String> =
        crowded.iter().map(|&ns| if ns == 0 { "-".into() } else { format!("{} ms", ns / 1_000_000) }).collect();
    let (first, others) = (cpus[0], cpus.len() - 1);
    println!(
        "spread: 3 processes on CPU {first} and one on each of the other {others}, free to move for {seconds} s: \
         those of CPU {first} first ran elsewhere after ({})",
        each.join(", ")
    );
    if crowded.iter().all(|&ns| ns == 0) {
        fail(1, &format!("spread: the three processes of CPU {first} stayed there for {seconds} s"));
    }
    0
}

/// `n` zeroed words in memory shared with the children forked after this,
/// for as long as the process lives.
fn shared_words(n: usize) -> &'static [AtomicU64] {
    let len = n * std::mem::size_of::<AtomicU64>();
    let (rw, flags) = (libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED | libc::MAP_ANONYMOUS);
    // SAFETY: a fresh anonymous mapping (addr NULL), which nothing else uses.
    let map = unsafe { libc::mmap(std::ptr::null_mut(), len, rw, flags, -1, 0) };
    if map == libc::MAP_FAILED {
        fail(1, &format!("mmap of {len} shared bytes: {}", io::Error::last_os_error()));
    }
    // SAFETY: `len` bytes, page-aligned, readable and writable, zero-filled
    // (a valid AtomicU64 each), never unmapped, so valid for 'static; only
    // atomics touch them.
    unsafe { std::slice::from_raw_parts(map.cast::<AtomicU64>(), n) }
}

/// The clock event device that makes `cpu`'s tick, as sysfs names it
/// ("lapic-deadline", "lapic", "pit").
fn tick_timer(cpu: usize) -> String {
    let path = format!("/sys/devices/system/clockevents/clockevent{cpu}/current_device");
    std::fs::read_to_string(&path).map_or_else(|e| format!("unknown ({path}: {e})"), |name| name.trim().to_string())
}

/// Waits for each of `children` in turn and returns the index and wait
/// status of each one that did not exit with status 0.
fn reap(children: &[libc::pid_t]) -> Vec<(usize, libc::c_int)> {
    let mut failed = Vec::new();
    for (i, &pid) in children.iter().enumerate() {
        let mut wstatus = 0;
        // SAFETY: waits for our own child; wstatus is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut wstatus, 0) };
        if r != pid || !libc::WIFEXITED(wstatus) || libc::WEXITSTATUS(wstatus) != 0 {
            failed.push((i, wstatus));
        }
    }
    failed
}

/// The share of the time a spinner ran, in millionths.
fn share_millionths(seen: &Interruptions) -> u64 {
    ((1.0 - seen.lost()) * 1e6).round() as u64
}

/// Checks the host's data (`seed`) on the first and the last page of the
/// region, then writes ours (`seed` + 1) there, through the device's
/// mapping of the whole region (2 MiB pages, each mapped on first touch, so
/// a sparse 64 GiB region costs two faults); then a mapping of each page
/// alone, at its offset, must read back ours.
fn ends(device: &Device, path: &str, seed: u64) -> i32 {
    let region = device.region();
    let size = region.size() as u64;
    let pages: Vec<u64> = ends::pages(size).collect();
    for &index in &pages {
        let offset = index as usize * ends::PAGE;
        let mut page = [0u8; ends::PAGE];
        region.read(offset, &mut page);
        if !ends::check(&page, seed, index) {
            fail(1, &format!("{path}: page {index} does not hold the host's data for seed {seed}"));
        }
        ends::write(&mut page, seed + 1, index);
        region.write(offset, &page);
    }
    for &index in &pages {
        let offset = index * ends::PAGE as u64;
        let map = map_device(device.file().as_raw_fd(), ends::PAGE, offset)
            .unwrap_or_else(|e| fail(1, &format!("{path}: mapping page {index} alone: {e}")));
        let mut page = [0u8; ends::PAGE];
        // SAFETY: `map` is a live mapping of PAGE bytes; `page` is ours.
        unsafe { std::ptr::copy_nonoverlapping(map, page.as_mut_ptr(), ends::PAGE) };
        // SAFETY: unmaps exactly the mapping made above, no longer used.
        unsafe { libc::munmap(map.cast(), ends::PAGE) };
        if !ends::check(&page, seed + 1, index) {
            fail(1, &format!("{path}: a mapping of page {index} alone does not show what the whole mapping wrote"));
        }
    }
    let pages = pages.iter().map(u64::to_string).collect::<Vec<_>>().join(" and ");
    println!("ends: pages {pages} of {size} bytes: the host's data read, ours written");
    0
}

/// Formats the region and forks one writer process per block.
/// `spin` busy-waits that many loop turns after each record (no system
/// call), to make a run last long enough to be interrupted. With `pin`,
/// each writer runs on a CPU of its own ([`writer_cpu`]), and fails if there is none.
fn write(device: &Device, path: &str, procs: u64, records: u64, seed: u64, spin: u64, pin: bool) -> i32 {
    let cpus = online_cpus();
    if pin && (cpus.len() as u64) < procs {
        fail(2, &format!("--pin 1: {procs} writers, but only {} online CPUs", cpus.len()));
    }
    let area = Records::format(device.region(), procs, records, seed)
        .unwrap_or_else(|e| fail(2, &format!("{path}: {procs} x {records} records: {e}")));
    let start = Instant::now();
    let mut children = Vec::new();
    let mut status = 0;
    for w in 0..procs {
        // SAFETY: this process has one thread. The child only appends to the
        // shared mapping it inherited and leaves with _exit, so it runs no
        // destructor or atexit handler of the parent's state.
        match unsafe { libc::fork() } {
            -1 => {
                eprintln!("kvmshm-demo: fork of writer {w}: {}", std::io::Error::last_os_error());
                status = 1;
                break;
            }
            0 => {
                if pin && let Err(e) = pin_to(writer_cpu(&cpus, w as usize)) {
                    eprintln!("kvmshm-demo: writer {w}: {e}");
                    // SAFETY: ends the child at once, as below.
                    unsafe { libc::_exit(1) }
                }
                let mut writer = area.writer(w);
                while writer.append() {
                    (0..spin).for_each(|i| {
                        std::hint::black_box(i);
                    });
                }
                // SAFETY: ends the child at once, as above.
                unsafe { libc::_exit(0) }
            }
            pid => children.push(pid),
        }
    }
    for (w, wstatus) in reap(&children) {
        eprintln!("kvmshm-demo: writer {w} failed (wait status {wstatus:#x})");
        status = 1;
    }
    let micros = start.elapsed().as_micros();
    let published: u64 = (0..procs).map(|w| area.published(w)).sum();
    let bytes = published * RECORD_LEN as u64;
    let pinned = if pin { ", one pinned to each" } else { "" };
    println!(
        "write: {procs} processes, {published} records, {bytes} bytes, {micros} us; {} online CPUs{pinned}",
        cpus.len()
    );
    status
}

/// Records per second with `procs` writer processes, each pinned to a CPU
/// ([`writer_cpu`]; several share one if there are more writers than
/// CPUs), in `rounds` rounds. The writers are
/// forked once and sleep on a pipe of their own between rounds; in each
/// round the region is formatted afresh, the writers wake and meet at a
/// start line, then every writer appends until its block is full or (after
/// the first round) it has written long enough ([`round_goes_on`]); the rate
/// is all their records over the time from the first writer's start to the
/// last one's end (each reads the clock in user space), so forks, exits and
/// wake-ups stay outside it.
/// Prints the overall rate ([`overall_rate`]), each round's rate and
/// records, and how far apart the writers started.
///
/// `paced`: each round says "scale: P writers, round R ready", waits for a
/// line on standard input (the console: a line sent before the guest's
/// console is open is lost, hence the first), and ends with "scale: P
/// writers, round R done", so that a host can run rounds of its own in
/// between, in turn with ours (the benchmark's host threads), while this
/// guest sleeps.
fn scale(device: &Device, path: &str, procs: u64, records: u64, rounds: u64, paced: bool) -> i32 {
    let cpus = online_cpus();
    let region = device.region();
    Records::format(region, procs, records, 0)
        .unwrap_or_else(|e| fail(2, &format!("{path}: {procs} x {records} records: {e}")));
    let times = SharedTimes::new(procs as usize);
    // Per writer, the parent writes a byte on `go` for each round; nothing
    // is written on `alive`, whose end the writer holds until it exits, so
    // the parent sees it hang up if the writer dies. The writer that ends a
    // round last writes a byte on `over`: the parent then wakes once a round,
    // after the last end, not on the CPU of a writer still in its round.
    let go: Vec<_> = (0..procs).map(|_| pipe()).collect();
    let alive: Vec<_> = (0..procs).map(|_| pipe()).collect();
    let over = pipe();
    let mut children = Vec::new();
    for w in 0..procs as usize {
        // SAFETY: this process has one thread; the child only writes the
        // shared mappings it inherited and uses its pipes, and leaves with
        // _exit, running no destructor of the parent's state.
        match unsafe { libc::fork() } {
            -1 => fail(1, &format!("fork of writer {w}: {}", io::Error::last_os_error())),
            0 => {
                let keep = [go[w].0, alive[w].1, over.1];
                for fd in
                    go.iter().chain(&alive).chain([&over]).flat_map(|&(r, wr)| [r, wr]).filter(|fd| !keep.contains(fd))
                {
                    // SAFETY: another writer's pipe ends or the parent's:
                    // closed so that each pipe's end of file means what it says.
                    unsafe { libc::close(fd) };
                }
                if let Err(e) = pin_to(writer_cpu(&cpus, w)) {
                    eprintln!("kvmshm-demo: writer {w}: {e}");
                    // SAFETY: ends the child at once, as above.
                    unsafe { libc::_exit(1) }
                }
                // End of file on `go` ends the writer.
                let mut round = 0;
                while read_byte(go[w].0) {
                    round += 1;
                    times.meet((procs + 1) * round);
                    let start = now_ns();
                    let go_on = || round_goes_on(round - 1, Duration::from_nanos(now_ns() - start));
                    let written =
                        Records::open(region).map(|area| area.writer(w as u64).fill_block_while(go_on)).unwrap_or(0);
                    times.set(w, start, now_ns(), written);
                    if times.finish(procs * round) {
                        write_byte(over.1, 1);
                    }
                }
                // SAFETY: as above.
                unsafe { libc::_exit(0) }
            }
            pid => children.push(pid),
        }
    }
    for fd in go.iter().map(|p| p.0).chain(alive.iter().map(|p| p.1)).chain([over.1]) {
        // SAFETY: the writers' ends of the pipes, which the parent does not use.
        unsafe { libc::close(fd) };
    }
    // On the last writer's CPU, which it wakes last: the writers waiting at
    // the start line on the other CPUs have theirs to themselves.
    if let Err(e) = pin_to(writer_cpu(&cpus, procs as usize - 1)) {
        fail(1, &e);
    }
    let mut done_rounds = Vec::new();
    let mut spreads = Vec::new();
    for round in 0..rounds {
        if round > 0 {
            Records::format(region, procs, records, round).expect("formatted once already");
        }
        if paced {
            println!("scale: {procs} writers, round {round} ready");
            if !matches!(io::stdin().read_line(&mut String::new()), Ok(1..)) {
                fail(1, &format!("round {round}: standard input ended (--paced waits for a line each round)"));
            }
        }
        go.iter().for_each(|p| write_byte(p.1, 1));
        times.arrive();
        if let Err(e) = wait_for_round(over.0, &alive.iter().map(|p| p.0).collect::<Vec<_>>()) {
            fail(1, &format!("round {round}: {e}"));
        }
        if let Some(w) = (0..procs as usize).find(|&w| times.written(w) == 0) {
            fail(1, &format!("round {round}: writer {w} wrote nothing"));
        }
        let (start, last_start, end, written) = times.span(procs as usize);
        done_rounds.push((written, (end - start) as f64 / 1e9));
        spreads.push((last_start - start) / 1000);
        if paced {
            println!("scale: {procs} writers, round {round} done");
        }
    }
    for fd in go.iter().map(|p| p.1).chain(alive.iter().map(|p| p.0)).chain([over.0]) {
        // SAFETY: the parent's ends; closing `go` ends the writers.
        unsafe { libc::close(fd) };
    }
    reap(&children);
    // The commands after this one run on every CPU again.
    if let Err(e) = set_affinity(0, &cpus) {
        fail(1, &format!("unpinning: {e}"));
    }
    let list = |f: &dyn Fn(&(u64, f64)) -> String| done_rounds.iter().map(f).collect::<Vec<_>>().join(" ");
    let rates = list(&|&(n, t)| format!("{:.0}", n as f64 / t));
    let written = list(&|&(n, _)| n.to_string());
    let counted = if rounds > 1 { format!("rounds 2 to {rounds}") } else { "its one round".to_string() };
    let spreads = spreads.iter().map(|us| us.to_string()).collect::<Vec<_>>().join(" ");
    println!(
        "scale: {procs} writers on {} CPUs: {:.0} records/s over {counted}; rounds ({rates}) records/s \
         of ({written}) records; the last writer started after the first by ({spreads}) us",
        cpus.len(),
        overall_rate(&done_rounds)
    );
    0
}

/// Each writer's start, end and records of a round, and the writers' start
/// and finish lines, in a shared anonymous mapping that forked writers
/// inherit.
struct SharedTimes {
    slots: *const AtomicU64,
    writers: usize,
}

impl SharedTimes {
    fn new(writers: usize) -> Self {
        let len = (3 * writers + 2) * size_of::<u64>();
        // SAFETY: a fresh anonymous shared mapping, zeroed, never unmapped
        // (it lives as long as the process).
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            fail(1, &format!("mapping the writers' clocks: {}", io::Error::last_os_error()));
        }
        Self { slots: map.cast(), writers }
    }

    fn slot(&self, i: usize) -> &AtomicU64 {
        assert!(i <= 3 * self.writers + 1);
        // SAFETY: the mapping holds 3 * writers + 2 u64s, page-aligned, and
        // is never unmapped; i is in it (checked above).
        unsafe { &*self.slots.add(i) }
    }

    /// The start line, which the parent reaches too, last thing before it
    /// blocks until the round ends: the parent is still runnable after it
    /// has woken the writers, and a writer that shared its CPU and started
    /// at once had the parent's switch in and out (emulated kernel code
    /// here, milliseconds) inside its round.
    fn arrive(&self) {
        self.slot(3 * self.writers).fetch_add(1, AcqRel);
    }

    /// A writer arrives and waits until `arrivals` have (the parent's
    /// included), counted over all rounds. Woken writers would otherwise start
    /// milliseconds apart where the guest kernel's wake-ups are emulated.
    /// The wait spins, for a start within microseconds, and yields every
    /// few tens of milliseconds so that a writer sharing its CPU still gets
    /// there (more often would cost: a system call is emulated here).
    fn meet(&self, arrivals: u64) {
        self.arrive();
        let line = self.slot(3 * self.writers);
        let mut spins = 0u32;
        while line.load(Acquire) < arrivals {
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1 << 20) {
                // SAFETY: no arguments, no memory effects.
                unsafe { libc::sched_yield() };
            }
        }
    }

    /// A writer has ended its round (after [`Self::set`]): true for the
    /// last of `arrivals`, counted over all rounds.
    fn finish(&self, arrivals: u64) -> bool {
        self.slot(3 * self.writers + 1).fetch_add(1, AcqRel) + 1 == arrivals
    }

    fn set(&self, writer: usize, start: u64, end: u64, written: u64) {
        self.slot(3 * writer).store(start, Relaxed);
        self.slot(3 * writer + 1).store(end, Relaxed);
        self.slot(3 * writer + 2).store(written, Relaxed);
    }

    /// The records writer `writer` wrote in the round; like [`Self::span`],
    /// for a caller that has read the round's byte on `over`.
    fn written(&self, writer: usize) -> u64 {
        self.slot(3 * writer + 2).load(Relaxed)
    }

    /// The first start, the last start, the last end and the records of
    /// `writers` writers. Each stored them before it finished, and the last
    /// to finish wrote the round's byte on `over` after that, which the
    /// caller has read.
    fn span(&self, writers: usize) -> (u64, u64, u64, u64) {
        let starts = || (0..writers).map(|w| self.slot(3 * w).load(Relaxed));
        let end = (0..writers).map(|w| self.slot(3 * w + 1).load(Relaxed)).max().unwrap_or(0);
        let written = (0..writers).map(|w| self.written(w)).sum();
        (starts().min().unwrap_or(0), starts().max().unwrap_or(0), end, written)
    }
}

fn now_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    // SAFETY: timespec is plain data; clock_gettime writes one.
    let mut t: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: as above (the vDSO answers it in user space).
    unsafe { libc::clock_gettime(clock, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Waits for the round's byte on `over`; an error if a writer's `alive`
/// pipe hangs up first (it died). The `alive` ends are polled for no event:
/// only a hang-up, which poll always reports, wakes the caller.
fn wait_for_round(over: libc::c_int, alive: &[libc::c_int]) -> Result<(), String> {
    let poll_fd = |fd, events| libc::pollfd { fd, events, revents: 0 };
    let mut fds: Vec<_> =
        std::iter::once(poll_fd(over, libc::POLLIN)).chain(alive.iter().map(|&fd| poll_fd(fd, 0))).collect();
    loop {
        // SAFETY: `fds` is a valid array of fds.len() pollfds.
        if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) } < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("poll: {e}"));
        }
        if let Some(w) = fds[1..].iter().position(|p| p.revents != 0) {
            return Err(format!("writer {w} died"));
        }
        if fds[0].revents != 0 {
            return if read_byte(over) { Ok(()) } else { Err("every writer died".into()) };
        }
    }
}

fn pipe() -> (libc::c_int, libc::c_int) {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two descriptors into `fds`.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        fail(1, &format!("pipe: {}", io::Error::last_os_error()));
    }
    (fds[0], fds[1])
}

/// Reads one byte: true for a non-zero byte, false at end of file or for 0.
fn read_byte(fd: libc::c_int) -> bool {
    let mut b = 0u8;
    // SAFETY: reads at most one byte into `b`.
    unsafe { libc::read(fd, (&raw mut b).cast(), 1) == 1 && b != 0 }
}

fn write_byte(fd: libc::c_int, b: u8) {
    // SAFETY: writes one byte from `b`.
    unsafe { libc::write(fd, (&raw const b).cast(), 1) };
}

/// The CPUs this process may run on: all online CPUs, for init's children.
fn online_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data, valid all zero.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) } != 0 {
        fail(1, &format!("sched_getaffinity: {}", io::Error::last_os_error()));
    }
    // SAFETY: CPU_ISSET reads `set` within its size (the index is below CPU_SETSIZE).
    (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect()
}

/// Lets process `pid` (0: this one) run on `cpus` (from [`online_cpus`]) only.
fn set_affinity(pid: libc::pid_t, cpus: &[usize]) -> io::Result<()> {
    // SAFETY: as in online_cpus.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: CPU_SET writes `set` within its size (`cpu` came from CPU_ISSET).
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: as in online_cpus.
    if unsafe { libc::sched_setaffinity(pid, std::mem::size_of_val(&set), &set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The CPU for writer `w` of the `cpus` from [`online_cpus`]: from the
/// last down, so that the first gets a writer only once every other CPU has
/// one. The first keeps its tick and the kernel's housekeeping where the VMM
/// passes `nohz_full=` for the others (vmm/src/host.rs), and there a tick
/// stops a writer for milliseconds.
fn writer_cpu(cpus: &[usize], w: usize) -> usize {
    cpus[cpus.len() - 1 - w % cpus.len()]
}

/// Moves this process to `cpu` for good, and checks that it runs there.
fn pin_to(cpu: usize) -> Result<(), String> {
    set_affinity(0, &[cpu]).map_err(|e| format!("pinning to CPU {cpu}: {e}"))?;
    // The getcpu system call rather than the vDSO's: it asks the kernel.
    let mut now: libc::c_uint = 0;
    // SAFETY: getcpu writes one c_uint through its first pointer; the others may be null.
    let r = unsafe { libc::syscall(libc::SYS_getcpu, &mut now, std::ptr::null_mut::<libc::c_uint>(), 0usize) };
    if r != 0 || now as usize != cpu {
        return Err(format!("pinned to CPU {cpu} but runs on {now} (getcpu returned {r})"));
    }
    Ok(())
}

fn check_records(device: &Device, path: &str, procs: u64, records: u64) -> i32 {
    match Records::open(device.region()).and_then(|area| area.check(procs, records)) {
        Ok(report) => {
            println!("check-records: {report}");
            if report.is_complete() { 0 } else { 1 }
        }
        Err(e) => fail(1, &format!("{path}: {e}")),
    }
}

fn verify(device: &Device, path: &str, seed: u64) -> i32 {
    match fill::check(device.region(), seed) {
        Ok(report) => {
            println!("verify: {report}");
            if report.first_mismatch.is_none() { 0 } else { 1 }
        }
        Err(e) => fail(1, &format!("{path}: {e}")),
    }
}

/// Serves the echo mailbox, spinning or (`interrupts`) waiting for the
/// doorbell between requests.
fn echo(device: &Device, path: &str, interrupts: bool) -> i32 {
    if interrupts && device.vectors() == 0 {
        fail(2, &format!("{path}: --interrupts=1 needs an ivshmem-doorbell device"));
    }
    let mailbox = Mailbox::format(device.region()).unwrap_or_else(|e| fail(2, &format!("{path}: {e}")));
    let (start, cpu) = (Instant::now(), cpu_time());
    let result = if interrupts { mailbox.serve_with(&mut DeviceWake(device)) } else { mailbox.serve() };
    match result {
        Ok(served) => {
            let (elapsed, cpu) = (start.elapsed(), cpu_time() - cpu);
            let how = if interrupts { " (interrupts)" } else { "" };
            println!(
                "echo: served {served} requests{how}; {} ms of CPU in {} ms",
                cpu.as_millis(),
                elapsed.as_millis()
            );
            0
        }
        Err(e) => fail(1, &format!("echo: {e}")),
    }
}

/// The CPU time this process has used, user and system.
fn cpu_time() -> Duration {
    // SAFETY: getrusage writes one struct rusage into the zeroed buffer.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Plays ping-pong with `peer` (see shm_layout::pingpong): rings and data both ways.
fn pingpong(device: &Device, path: &str, peer: u16, rounds: u64, side: u64) -> i32 {
    if device.vectors() == 0 {
        fail(2, &format!("{path}: pingpong needs an ivshmem-doorbell device"));
    }
    let start = Instant::now();
    let side = usize::try_from(side).unwrap_or(usize::MAX);
    let mut trips = Vec::new();
    let clock = || start.elapsed();
    match pingpong::play(device.region(), side, peer, rounds, &mut DeviceWake(device), clock, &mut |t| trips.push(t)) {
        Ok(()) => {
            let elapsed = start.elapsed();
            println!(
                "pingpong: {rounds} rounds with peer {peer} as side {side}, data and rings both ways, {elapsed:.1?}"
            );
            if !trips.is_empty() {
                trips.sort_unstable();
                let at = |q: f64| trips[((trips.len() - 1) as f64 * q).round() as usize].as_micros();
                println!("pingpong: round trip median {} us, p99 {} us", at(0.5), at(0.99));
            }
            0
        }
        Err(e) => fail(1, &format!("pingpong: {e}")),
    }
}

/// The doorbell's MSI-X masking, through the guest's own rings: a ring is
/// delivered; while vector 0 is masked (in the MSI-X table, BAR1, written
/// through sysfs as root may) rings are held as its pending bit and no
/// interrupt arrives; unmasking delivers them.
fn check_doorbell(device: &Device, path: &str, slot: u64) -> i32 {
    const PBA: usize = 2048;
    const CONTROL: usize = 12;
    let id = device.iv_position() as u16;
    let resource = format!("/sys/bus/pci/devices/0000:00:{slot:02x}.0/resource1");
    let file = OpenOptions::new().read(true).write(true).open(&resource);
    let file = file.unwrap_or_else(|e| fail(2, &format!("{resource}: {e}")));
    // SAFETY: a fresh shared mapping of the MSI-X BAR (one page), unmapped at exit.
    let msix = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if msix == libc::MAP_FAILED {
        fail(2, &format!("{resource}: mmap: {}", io::Error::last_os_error()));
    }
    let register = |offset: usize| msix.cast::<u8>().wrapping_add(offset).cast::<u32>();
    // SAFETY: the offsets are 4-aligned and within the mapped page; MMIO is read volatile.
    let read = |offset: usize| unsafe { register(offset).read_volatile() };
    // SAFETY: as for `read`.
    let write = |offset: usize, value: u32| unsafe { register(offset).write_volatile(value) };
    let ring = |times: u32| (0..times).try_for_each(|_| device.ring(id, 0));
    let check = |what: &str, ok: bool| {
        if !ok {
            fail(1, &format!("check-doorbell: {path}: {what}"));
        }
    };

    check("a ring on vector 0 was not delivered", ring(1).is_ok() && device.wait(1, 5000).ok() == Some(1));
    write(CONTROL, read(CONTROL) | 1);
    check("rings failed", ring(3).is_ok());
    let deadline = Instant::now() + Duration::from_secs(5);
    while read(PBA) & 1 == 0 && Instant::now() < deadline {
        std::hint::spin_loop();
    }
    check("the masked vector's pending bit was not set", read(PBA) & 1 == 1);
    check("an interrupt came while the vector was masked", device.wait(1, 200).ok() == Some(0));
    write(CONTROL, read(CONTROL) & !1);
    check("unmasking did not deliver the pending rings", device.wait(1, 5000).ok() == Some(1));
    check("the pending bit stayed set after delivery", read(PBA) & 1 == 0);
    println!(
        "check-doorbell: peer {id}: a ring is delivered; masked, 3 rings set the pending bit and no interrupt; \
         unmasked, they are delivered: OK"
    );
    0
}

/// The driver's interface beyond the mapping: bad `mmap()` requests fail
/// with EINVAL and change nothing, and `pread`/`pwrite` reach the same bytes
/// as the mapping.
fn check_api(device: &Device, path: &str) -> i32 {
    let size = device.region().size();
    let page = 4096;
    let fd = device.file().as_raw_fd();
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let before = device.region().checksum();
    let bad: [(&str, usize, i32, i64); 6] = [
        ("MAP_PRIVATE", page, libc::MAP_PRIVATE, 0),
        ("length past the end", size + page, libc::MAP_SHARED, 0),
        ("offset at the end", page, libc::MAP_SHARED, size as i64),
        ("offset + length past the end", 2 * page, libc::MAP_SHARED, (size - page) as i64),
        ("offset not page aligned", page, libc::MAP_SHARED, 8),
        ("length 0", 0, libc::MAP_SHARED, 0),
    ];
    let mut failures = 0;
    for (what, len, flags, offset) in bad {
        // SAFETY: a fresh mapping at an address of the kernel's choosing; if
        // it is made against expectation it is unmapped at once.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, rw, flags, fd, offset) };
        let err = io::Error::last_os_error();
        if p != libc::MAP_FAILED {
            // SAFETY: the mapping just made, not used.
            unsafe { libc::munmap(p, len) };
            eprintln!("kvmshm-demo: {path}: mmap with {what} succeeded; it must fail with EINVAL");
            failures += 1;
        } else if err.raw_os_error() != Some(libc::EINVAL) {
            eprintln!("kvmshm-demo: {path}: mmap with {what} failed with {err}, not EINVAL");
            failures += 1;
        }
    }
    if device.region().checksum() != before {
        eprintln!("kvmshm-demo: {path}: the region changed during the refused mmap calls");
        failures += 1;
    }
    failures += check_file_io(device, path);
    failures += check_huge_pages(device, path);
    let claimed = claimed_bars();
    let devices = std::fs::read_dir("/dev").map_or(0, |d| {
        d.filter(|e| e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().starts_with("kvmshm"))).count()
    });
    if claimed != 2 * devices {
        eprintln!(
            "kvmshm-demo: /proc/iomem shows {claimed} regions claimed by kvmshm for {devices} devices, not 2 each"
        );
        failures += 1;
    }
    println!(
        "check-api: {} bad mmap requests refused with EINVAL, region unchanged, pread/pwrite agree with the mapping, \
         BAR0 and BAR2 of each device claimed: {}",
        bad.len(),
        if failures == 0 { "OK" } else { "FAILED" }
    );
    if failures == 0 { 0 } else { 1 }
}

/// The minor page faults this process has taken so far.
fn minor_faults() -> i64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is valid, so it cannot fail.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    usage.ru_minflt as i64
}

/// On a region of 2 MiB or more: a fresh whole mapping, where the kernel
/// places it, is 2 MiB-aligned (the driver asks for that), takes one page
/// fault per 2 MiB (the driver maps each 2 MiB with one PMD on first touch)
/// and still agrees with the device's mapping after a hole is punched in a
/// 2 MiB page, and a window from offset 4 KiB, placed 4 KiB past a 2 MiB
/// boundary (4 KiB pages up to the first 2 MiB boundary, 2 MiB pages after
/// it), reads and writes the same bytes as the device's mapping.
fn check_huge_pages(device: &Device, path: &str) -> usize {
    let region = device.region();
    let size = region.size();
    if size < HUGE_PAGE {
        return 0;
    }
    let fd = device.file().as_raw_fd();
    let page = 4096;
    let mut failures = 0;
    let mut fail = |what: String| {
        eprintln!("kvmshm-demo: {path}: {what}");
        failures += 1;
    };
    let huge_pages = (size / HUGE_PAGE) as i64;
    match map_device(fd, size, 0) {
        Ok(map) => {
            if !map.addr().is_multiple_of(HUGE_PAGE) {
                fail(format!("a whole mapping was placed at {map:p}, not on a 2 MiB boundary"));
            }
            let before = minor_faults();
            for offset in (0..size).step_by(page) {
                // SAFETY: `map` maps `size` bytes; a volatile read, so that every page is touched.
                unsafe { std::ptr::read_volatile(map.add(offset)) };
            }
            let faults = minor_faults() - before;
            // A stray fault or two of the process itself (stack, code) may add to the count.
            if !(huge_pages..huge_pages + 3).contains(&faults) {
                fail(format!(
                    "touching the {} pages of 4 KiB of a fresh mapping took {faults} faults, not one per 2 MiB ({huge_pages})",
                    size / page
                ));
            }
            // A hole in the last 2 MiB page splits the mapping there: the kernel unmaps that
            // PMD, and the pages around the hole come back through the 4 KiB fault handler.
            let hole = size - HUGE_PAGE + page;
            // SAFETY: one page inside the mapping made above, which nothing uses.
            unsafe { libc::munmap(map.add(hole).cast(), page) };
            for at in [size - HUGE_PAGE, hole + page, size - 1] {
                // SAFETY: `at` < `size` and outside the hole: mapped.
                if !write_seen(&region, unsafe { map.add(at) }, at) {
                    fail(format!(
                        "a byte written at {at:#x} beside a hole in a 2 MiB page is not in the whole mapping"
                    ));
                }
            }
            // SAFETY: unmaps the mapping made above (and its hole), no longer used.
            unsafe { libc::munmap(map.cast(), size) };
        }
        Err(e) => fail(format!("mapping it again: {e}")),
    }
    let len = size - page;
    match map_device(fd, len, page as u64) {
        Ok(window) => {
            if window.addr() % HUGE_PAGE != page {
                fail(format!("a mapping from offset 4 KiB was placed at {window:p}, not 4 KiB past a 2 MiB boundary"));
            }
            let (mut seen, mut expected) = ([0u8; 4096], [0u8; 4096]);
            let differs = (0..len).step_by(page).find(|&offset| {
                // SAFETY: `window` maps `len` bytes, and `offset + page` <= `len`.
                unsafe { std::ptr::copy_nonoverlapping(window.add(offset), seen.as_mut_ptr(), page) };
                region.read(page + offset, &mut expected);
                seen != expected
            });
            if let Some(offset) = differs {
                fail(format!("a mapping from offset 4 KiB differs from the whole mapping at {offset:#x}"));
            }
            // One byte in the first page (4 KiB-mapped) and one at the first 2 MiB boundary.
            // (A region of 2 MiB leaves the window no 2 MiB boundary.)
            for at in [0, HUGE_PAGE - page].into_iter().filter(|&at| at < len) {
                // SAFETY: `at` < `len`, inside the window.
                if !write_seen(&region, unsafe { window.add(at) }, page + at) {
                    fail(format!(
                        "a byte written at {at:#x} of a mapping from offset 4 KiB is not in the whole mapping"
                    ));
                }
            }
            // SAFETY: unmaps the window made above, no longer used.
            unsafe { libc::munmap(window.cast(), len) };
        }
        Err(e) => fail(format!("mapping from offset 4 KiB: {e}")),
    }
    println!(
        "check-api: a whole mapping of {} MiB took a page fault per 2 MiB ({huge_pages}), and agrees with the device's after a hole is punched in it; a mapping from 4 KiB agrees too: {}",
        size >> 20,
        if failures == 0 { "OK" } else { "FAILED" }
    );
    failures
}

/// Writes the complement of byte `offset` of `region` through `at`, another
/// mapping of that byte, and says whether `region` sees it; then restores it.
fn write_seen(region: &Region<'_>, at: *mut u8, offset: usize) -> bool {
    let mut original = [0u8];
    region.read(offset, &mut original);
    // SAFETY: the caller passes a mapped byte of this process, shared with `region`.
    unsafe { at.write_volatile(!original[0]) };
    let mut now = [0u8];
    region.read(offset, &mut now);
    region.write(offset, &original);
    now[0] == !original[0]
}

/// The regions /proc/iomem lists as the driver's ("... : kvmshm").
fn claimed_bars() -> usize {
    std::fs::read_to_string("/proc/iomem").map_or(0, |t| t.lines().filter(|l| l.ends_with(" : kvmshm")).count())
}

/// pwrite lands where the mapping sees it and pread returns what the mapping
/// holds, at an offset in the last page; the bytes are restored afterwards.
fn check_file_io(device: &Device, path: &str) -> usize {
    let before = device.region().checksum();
    let offset = device.region().size() - 100;
    let mut original = [0; 64];
    device.region().read(offset, &mut original);
    let probe = original.map(|b| !b);
    let mapped = || {
        let mut now = [0; 64];
        device.region().read(offset, &mut now);
        now
    };
    let mut failures = 0;
    let mut check = |what: &str, ok: io::Result<bool>| match ok {
        Ok(true) => {}
        Ok(false) => {
            eprintln!("kvmshm-demo: {path}: {what} disagrees with the mapping");
            failures += 1;
        }
        Err(e) => {
            eprintln!("kvmshm-demo: {path}: {what}: {e}");
            failures += 1;
        }
    };
    let file = device.file();
    check("pwrite", file.write_all_at(&probe, offset as u64).map(|()| mapped() == probe));
    let mut back = [0; 64];
    check("pread", file.read_exact_at(&mut back, offset as u64).map(|()| back == probe));
    check(
        "restoring pwrite",
        file.write_all_at(&original, offset as u64).map(|()| device.region().checksum() == before),
    );
    failures
}

const DRIVER_DIR: &str = "/sys/bus/pci/drivers/kvmshm";

/// The PCI addresses of the devices the driver is bound to.
fn bound_devices() -> Vec<String> {
    let bound: Vec<String> = std::fs::read_dir(DRIVER_DIR)
        .unwrap_or_else(|e| fail(1, &format!("{DRIVER_DIR}: {e}")))
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with("0000:"))
        .collect();
    if bound.is_empty() {
        fail(1, &format!("{DRIVER_DIR}: no device is bound"));
    }
    bound
}

fn sysfs_write(path: &str, bytes: &[u8], offset: u64) {
    let file = std::fs::OpenOptions::new().write(true).open(path);
    file.and_then(|f| f.write_all_at(bytes, offset)).unwrap_or_else(|e| fail(1, &format!("{path}: {e}")));
}

const REMOVAL_MARKER: &[u8] = b"written before the device was removed";

/// Removes the PCI device of every kvmshm device (through sysfs) while this
/// process maps one, then checks that the guest survives: the mapping is
/// gone (an access gets SIGBUS, in a child so that this process can report
/// it), and system calls on the open file fail with ENODEV. Writes
/// `REMOVAL_MARKER` at offset 0 first, for the host to find.
fn check_removal(device: &Device, path: &str) -> i32 {
    device.file().write_all_at(REMOVAL_MARKER, 0).unwrap_or_else(|e| fail(1, &format!("{path}: pwrite: {e}")));
    let bound = bound_devices();
    let remove = || {
        for pci in &bound {
            sysfs_write(&format!("/sys/bus/pci/devices/{pci}/remove"), b"1", 0);
        }
    };
    if device.vectors() == 0 {
        remove();
    } else {
        // A doorbell device: a process blocked waiting for its interrupts
        // (without a timeout) when the device goes is woken with ENODEV.
        // SAFETY: this process has one thread; the child only waits on the
        // device and leaves with _exit.
        let waiter = match unsafe { libc::fork() } {
            -1 => fail(1, &format!("fork: {}", io::Error::last_os_error())),
            0 => {
                let enodev = device.wait(0, u32::MAX).map_err(|e| e.raw_os_error()) == Err(Some(libc::ENODEV));
                // SAFETY: ends the child at once.
                unsafe { libc::_exit(if enodev { 0 } else { 1 }) }
            }
            pid => pid,
        };
        // Removed only once the child sleeps (in the wait: it does nothing else).
        let sleeping = || {
            let stat = std::fs::read_to_string(format!("/proc/{waiter}/stat")).unwrap_or_default();
            stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('S'))
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !sleeping() {
            if Instant::now() > deadline {
                fail(1, "check-removal: the waiter did not block within 30 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        remove();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut wstatus = 0;
        // SAFETY: polls our own child; wstatus is a valid out-pointer.
        while unsafe { libc::waitpid(waiter, &mut wstatus, libc::WNOHANG) } == 0 {
            if Instant::now() > deadline {
                fail(1, "check-removal: a wait blocked at removal did not end within 30 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let enodev = libc::WIFEXITED(wstatus) && libc::WEXITSTATUS(wstatus) == 0;
        println!("check-removal: a wait blocked at removal: {}", if enodev { "ENODEV" } else { "not ENODEV" });
        if !enodev {
            return 1;
        }
    }
    // SAFETY: this process has one thread; the child only touches the
    // mapping and leaves with _exit.
    let child = match unsafe { libc::fork() } {
        -1 => fail(1, &format!("fork: {}", io::Error::last_os_error())),
        0 => {
            let mut byte = [0];
            device.region().read(0, &mut byte);
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(0) }
        }
        pid => pid,
    };
    let mut wstatus = 0;
    // SAFETY: waits for our own child; wstatus is a valid out-pointer.
    unsafe { libc::waitpid(child, &mut wstatus, 0) };
    let sigbus = libc::WIFSIGNALED(wstatus) && libc::WTERMSIG(wstatus) == libc::SIGBUS;
    let enodev = device.file().read_at(&mut [0; 8], 0).map_err(|e| e.raw_os_error()) == Err(Some(libc::ENODEV));
    println!(
        "check-removal: removed {}; access to the old mapping: {}; read after removal: {}",
        bound.join(" "),
        if sigbus { "SIGBUS" } else { "no SIGBUS" },
        if enodev { "ENODEV" } else { "not ENODEV" }
    );
    if sigbus && enodev { 0 } else { 1 }
}

/// Copy bandwidth through the mapping with its memory type: private buffer
/// into the region ("copy in", as a producer does) and back out ("copy
/// out", as a consumer does), over `mib` MiB or the whole region if smaller.
fn memspeed(device: &Device, mib: u64) -> i32 {
    let len = (mib as usize) << 20;
    let len = len.min(device.region().size()) & !0xffff;
    let mut buf = vec![0x5au8; 64 << 10];
    let pass = |copy_in: bool, buf: &mut [u8]| {
        let start = Instant::now();
        for offset in (0..len).step_by(buf.len()) {
            if copy_in { device.region().write(offset, buf) } else { device.region().read(offset, buf) }
        }
        start.elapsed().as_secs_f64()
    };
    // A warm-up pass of each, then the measured ones.
    pass(true, &mut buf);
    pass(false, &mut buf);
    let copy_in = len as f64 / pass(true, &mut buf) / 1e6;
    let copy_out = len as f64 / pass(false, &mut buf) / 1e6;
    println!(
        "memspeed: caching {}: copy in {copy_in:.0} MB/s, copy out {copy_out:.0} MB/s ({len} bytes)",
        device.caching().name()
    );
    0
}

/// Writes to the first cache line of random pages over the whole region
/// (shm_layout::tlb) for `seconds`, through a mapping with 2 MiB pages (the
/// device's own, 2 MiB-aligned) and then through one with 4 KiB pages only
/// (the same region at an address 4 KiB off a 2 MiB boundary). On the host,
/// run on a file of a tmpfs mounted huge=always, it measures the same for
/// the host's pages; in a guest, the guest's 2 MiB pages are 2 MiB pages of
/// the hardware only where the host backs the region with such.
fn pages(device: &Device, path: &str, seconds: u64) -> i32 {
    let size = device.region().size();
    let small = map_shared(device.file().as_raw_fd(), size, 0, 4096)
        .unwrap_or_else(|e| fail(1, &format!("{path}: mapping it with 4 KiB pages: {e}")));
    // SAFETY: `small` maps `size` bytes until the munmap below, and this
    // process makes no Rust references into it.
    let small_region = unsafe { Region::new(small, size) }.expect("a region checked by Device::open");
    let rate = |region: &Region<'_>| {
        // Every page once first, so that page faults are not measured.
        for offset in (0..region.size()).step_by(4096) {
            region.write(offset, &[0]);
        }
        let start = Instant::now();
        let writes = random_page_writes(region, || start.elapsed().as_secs() < seconds);
        writes as f64 / start.elapsed().as_secs_f64()
    };
    let (huge, four_kib) = (rate(&device.region()), rate(&small_region));
    // SAFETY: unmaps the mapping made above; `small_region` is not used any more.
    unsafe { libc::munmap(small.cast(), size) };
    println!(
        "pages: writes to random pages over {} MiB: 2 MiB pages {:.1} M/s, 4 KiB pages {:.1} M/s",
        size >> 20,
        huge / 1e6,
        four_kib / 1e6
    );
    0
}

/// The guest's side of the host's benchmark (see shm_layout::stream): sends
/// `total_mib` MiB, receives as much, then answers pings until told to stop.
fn bench(device: &Device, path: &str, chunk_kib: u64, slots: u64, total_mib: u64) -> i32 {
    let chunk = chunk_kib << 10;
    let total = (total_mib << 20).div_ceil(chunk);
    let stream = Stream::format(device.region(), chunk, slots, total)
        .unwrap_or_else(|e| fail(2, &format!("{path}: {slots} x {chunk_kib} KiB stream: {e}")));
    let mut buf = vec![0xa5u8; chunk as usize];
    stream.touch_ring();
    // The host's go: it times the transfer from here.
    stream.answer_ping();
    for n in 0..total {
        stream.send(Direction::GuestToHost, n, &buf);
    }
    let mut bad = 0;
    for n in 0..total {
        bad += u64::from(stream.receive(Direction::HostToGuest, n, &mut buf).is_err());
    }
    let pings = stream.serve_pings();
    println!("bench: sent {total} chunks of {chunk} bytes, received {total} ({bad} bad), answered {pings} pings");
    if bad == 0 { 0 } else { 1 }
}

/// Moves BAR2 of the (first) kvmshm device to `to` the way firmware would,
/// through its configuration space (memory decoding off, both halves of the
/// 64-bit BAR, decoding on), then has Linux forget and rediscover the device,
/// so that the driver binds again. On rediscovery Linux assigns the BARs
/// afresh (moving them again); the commands that follow use the device
/// wherever it ended up, so the VMM must have moved its memory slot each time.
fn move_bar(path: &str, to: u64) -> i32 {
    const COMMAND: u64 = 0x04;
    const MEMORY_ENABLE: u16 = 1 << 1;
    const BAR2: u64 = 0x18;
    let pci = bound_devices().swap_remove(0);
    let config_path = format!("/sys/bus/pci/devices/{pci}/config");
    let config = std::fs::File::open(&config_path).unwrap_or_else(|e| fail(1, &format!("{config_path}: {e}")));
    let mut bytes = [0u8; 8];
    config.read_exact_at(&mut bytes[..2], COMMAND).unwrap_or_else(|e| fail(1, &format!("{config_path}: {e}")));
    let command = u16::from_le_bytes([bytes[0], bytes[1]]);
    config.read_exact_at(&mut bytes, BAR2).unwrap_or_else(|e| fail(1, &format!("{config_path}: {e}")));
    let old = u64::from_le_bytes(bytes);
    let new = to | (old & 0xf);
    sysfs_write(&config_path, &(command & !MEMORY_ENABLE).to_le_bytes(), COMMAND);
    sysfs_write(&config_path, &(new as u32).to_le_bytes(), BAR2);
    sysfs_write(&config_path, &((new >> 32) as u32).to_le_bytes(), BAR2 + 4);
    sysfs_write(&config_path, &command.to_le_bytes(), COMMAND);
    sysfs_write(&format!("/sys/bus/pci/devices/{pci}/remove"), b"1", 0);
    sysfs_write("/sys/bus/pci/rescan", b"1", 0);
    // devtmpfs creates the node when the driver registers it again.
    let start = Instant::now();
    while std::fs::metadata(path).is_err() {
        if start.elapsed().as_secs() > 30 {
            fail(1, &format!("{path} did not come back after the rescan"));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let resource_path = format!("/sys/bus/pci/devices/{pci}/resource");
    let resources =
        std::fs::read_to_string(&resource_path).unwrap_or_else(|e| fail(1, &format!("{resource_path}: {e}")));
    let start = resources.lines().nth(2).and_then(|l| l.split_whitespace().next());
    let start = start.and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok()).unwrap_or(0);
    println!(
        "move-bar: {pci} BAR2 moved from {:#x} to {to:#x}; after the rescan Linux put it at {start:#x}",
        old & !0xf
    );
    0
}
