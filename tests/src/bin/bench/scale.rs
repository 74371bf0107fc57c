//! Scale: records per second with 1, 2 and 4 writers in guests with 1, 2
//! and 4 vCPUs (the demo's `scale`), beside the same writer code run as
//! host threads in the same run, on as many cores as the guest has vCPUs
//! (as far as the host has them), a host round and a guest round in turn;
//! and boots with 1 and with 4 vCPUs.

use std::collections::HashMap;
use std::fmt::Write;
use std::path::Path;
use std::process::Stdio;
use std::sync::Barrier;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kvmshm_tests::{Running, Scratch, vmm};
use shm_layout::host::MappedFile;
use shm_layout::records::{RECORD_LEN, Records, SCALE_ROUND, counted_rounds, overall_rate, round_goes_on};
use shm_layout::spin::Interruptions;

use crate::{Boots, host_demo, on_cpus, pin_to_cpus};

pub const WRITERS: [u64; 3] = [1, 2, 4];
pub const VCPUS: [u8; 3] = [1, 2, 4];
/// Records per writer and round at most (256 MiB each); a writer also stops
/// after [`SCALE_ROUND`] from the second round on ([`round_goes_on`]). A
/// round costs a few milliseconds beyond the writing where guest kernel
/// code is emulated (the start line, a switch per writer sharing a vCPU):
/// with 64 MiB blocks (25 ms a writer) that was a tenth of a round, and two
/// and four writers on one vCPU made 37.1 and 35.9 M records/s against 41.1
/// and 40.9 with these (medians of three alternating runs).
const RECORDS: u64 = 1 << 22;
/// Rounds per point, the first not counted. Each is about 0.1 s per writer
/// on a core, and this host's speed moves by a fifth within a second: with 8
/// counted rounds a point moved by up to 0.1 between runs; 16 average twice
/// as long.
const ROUNDS: u64 = 17;
/// How long the guests and a host thread spin to measure what they lose to
/// interruptions (shm_layout::spin).
const SPIN_SECONDS: u64 = 5;
const THROUGHPUT_GOAL: f64 = 0.9;
/// How long the benchmark waits for a paced guest to be ready for a round
/// or to end one (a boot comes before the first).
const PACED_WAIT: Duration = Duration::from_secs(120);

/// Records per second at one point: `overall` as [`overall_rate`] counts
/// it, and each round it counts ([`counted_rounds`]), in order.
pub struct Rate {
    pub overall: f64,
    pub rounds: Vec<f64>,
}

impl Rate {
    /// From each round's records and seconds, in order.
    fn of(rounds: &[(u64, f64)]) -> Self {
        Self {
            overall: overall_rate(rounds),
            rounds: counted_rounds(rounds).iter().map(|&(n, t)| n as f64 / t).collect(),
        }
    }

    /// The slowest and the fastest counted round, as "12.3 to 35.7" M/s.
    fn range(&self) -> String {
        let slowest = self.rounds.iter().copied().fold(f64::INFINITY, f64::min);
        let fastest = self.rounds.iter().copied().fold(0.0, f64::max);
        format!("{:.1} to {:.1}", slowest / 1e6, fastest / 1e6)
    }
}

/// Each counted guest round's rate over the host round taken just before
/// it (the rounds alternate): the lowest, the median and the highest.
/// Where the whole point's ratio misses and the median does not, a few
/// rounds on one side met a slower stretch of this host than the other's.
fn round_ratios(guest: &Rate, host: &Rate) -> [f64; 3] {
    let mut ratios: Vec<f64> = guest.rounds.iter().zip(&host.rounds).map(|(g, h)| g / h).collect();
    ratios.sort_by(f64::total_cmp);
    match ratios.len() {
        0 => [f64::NAN; 3],
        n => [ratios[0], ratios[n / 2], ratios[n - 1]],
    }
}

pub struct ScaleResults {
    pub host_cores: usize,
    /// For each of [`VCPUS`]: the cores the host threads had (as many as
    /// vCPUs, or all the host has), and their records per second for each
    /// of [`WRITERS`], in rounds taken in turn with that guest's.
    pub host: Vec<(usize, Vec<Rate>)>,
    /// Records per second in a guest with each of [`VCPUS`], for each of
    /// [`WRITERS`].
    pub guest: Vec<Vec<Rate>>,
    /// For each of [`VCPUS`]: the share of their runnable time the guest's
    /// vCPU threads waited for a host core, over the whole run.
    pub vcpu_waits: Vec<Option<f64>>,
    /// For each of [`VCPUS`]: what the demo's `interruptions` found in
    /// that guest.
    pub guest_spins: Vec<GuestSpin>,
    /// The same spin on a host thread.
    pub host_spin: Interruptions,
    /// One writer of the guest's own demo binary (the image's, built for
    /// musl with the guest profile) run on the host on one core.
    pub host_demo: Rate,
}

/// The demo's `interruptions` line, and the share lost it gives; then its
/// line for two processes spinning on that CPU at once.
pub struct GuestSpin {
    pub text: String,
    pub lost: f64,
    pub shared: String,
}

impl GuestSpin {
    const PREFIX: &str = "interruptions: spinning in user space ";
    const SHARED_PREFIX: &str = "interruptions: 2 processes ";

    /// From the guest's console: "interruptions: spinning in user space lost 11.7% of 5.0 s: ..."
    /// (the first such line: one process alone), then "interruptions: 2 processes sharing CPU 1 ran ...".
    fn find(console: &str) -> Option<Self> {
        let text = console.lines().find_map(|l| l.strip_prefix(Self::PREFIX))?;
        let lost: f64 = text.strip_prefix("lost ")?.split_once('%')?.0.parse().ok()?;
        let shared = console.lines().find_map(|l| l.strip_prefix(Self::SHARED_PREFIX))?;
        Some(Self { text: text.to_string(), lost: lost / 100.0, shared: shared.to_string() })
    }
}

fn region_size(writers: u64) -> u64 {
    Records::required_size(writers, RECORDS).next_power_of_two()
}

/// One round of the demo's `scale` as host threads: `writers` threads on
/// `file`, thread w on core w mod `cores`, meeting at a start line as the
/// guest's writers do, each appending until its block is full or
/// [`round_goes_on`] says stop; returns all their records and the time from
/// the first thread's start to the last one's end.
fn host_round(file: &MappedFile, writers: u64, cores: usize, round: u64) -> anyhow::Result<(u64, f64)> {
    let area = Records::format(file.region(), writers, RECORDS, round)?;
    let start_line = Barrier::new(writers as usize);
    let spans = std::thread::scope(|s| {
        let threads: Vec<_> = (0..writers)
            .map(|w| {
                let start_line = &start_line;
                s.spawn(move || {
                    let cpu = w as usize % cores;
                    pin_to_cpus(cpu..cpu + 1);
                    start_line.wait();
                    let start = Instant::now();
                    let written = area.writer(w).fill_block_while(|| round_goes_on(round, start.elapsed()));
                    (start, Instant::now(), written)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().expect("a writer thread")).collect::<Vec<_>>()
    });
    if spans.iter().any(|&(_, _, n)| n == 0) {
        bail!("a host writer wrote nothing");
    }
    let start = spans.iter().map(|s| s.0).min().expect("writers");
    let end = spans.iter().map(|s| s.1).max().expect("writers");
    Ok((spans.iter().map(|s| s.2).sum(), (end - start).as_secs_f64()))
}

/// Watches the vCPU threads of the process `pid` until it ends: the run
/// delay (runnable, waiting for a core) in `/proc/PID/task/*/schedstat` as
/// a share of their runnable time, from each thread's last sample.
fn watch_vcpu_waits(pid: u32) -> JoinHandle<Option<f64>> {
    std::thread::spawn(move || {
        let tasks = format!("/proc/{pid}/task");
        let mut last: HashMap<String, (u64, u64)> = HashMap::new();
        while let Ok(entries) = std::fs::read_dir(&tasks) {
            let mut vcpus = 0;
            for task in entries.flatten().map(|e| e.path()) {
                let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
                let stat = std::fs::read_to_string(task.join("schedstat")).unwrap_or_default();
                let mut fields = stat.split_whitespace().map(|f| f.parse::<u64>());
                if let (true, Some(Ok(on_cpu)), Some(Ok(waiting))) =
                    (comm.starts_with("vcpu"), fields.next(), fields.next())
                {
                    last.insert(task.display().to_string(), (on_cpu, waiting));
                    vcpus += 1;
                }
            }
            if vcpus == 0 && !last.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let (on_cpu, waiting) = last.values().fold((0, 0), |(a, b), &(c, d)| (a + c, b + d));
        (on_cpu + waiting > 0).then(|| waiting as f64 / (on_cpu + waiting) as f64)
    })
}

/// A host thread on the first core spinning as the demo's `interruptions`.
fn host_spin() -> Interruptions {
    std::thread::spawn(|| {
        pin_to_cpus(0..1);
        let start = Instant::now();
        Interruptions::measure(SPIN_SECONDS * 1_000_000_000, || start.elapsed().as_nanos() as u64)
    })
    .join()
    .expect("the spinning thread")
}

/// The demo's line for `writers` writers (on `cpus` CPUs, if given), with its rounds:
/// "scale: 2 writers on 2 CPUs: 125 records/s over rounds 2 to 3; rounds (120 123 130) records/s
/// of (240 246 260) records; ..."
fn demo_rate(console: &str, writers: u64, cpus: Option<u8>) -> Option<Rate> {
    let prefix = format!("scale: {writers} writers on ");
    console.lines().find_map(|l| {
        let (on, rest) = l.strip_prefix(&prefix)?.split_once(" CPUs: ")?;
        if cpus.is_some_and(|c| on != c.to_string()) {
            return None;
        }
        let list = |after: &str| -> Option<Vec<f64>> {
            let items = rest.split_once(after)?.1.split_once(')')?.0;
            items.split(' ').map(|x| x.parse().ok()).collect()
        };
        let (rates, written) = (list("rounds (")?, list("of (")?);
        let rounds: Vec<_> = written.iter().zip(&rates).map(|(&n, &r)| (n as u64, n / r)).collect();
        (!rounds.is_empty() && rates.len() == written.len()).then(|| Rate::of(&rounds))
    })
}

/// One writer of the image's own `kvmshm-demo` on the host, on a file, on
/// core 0: the guest's writer code as the guest runs it, built the same way,
/// without the VM. (The benchmark's host threads run the same source built
/// for this host, which is laid out differently.)
fn host_demo_rate(path: &Path) -> anyhow::Result<Rate> {
    std::fs::File::create(path)?.set_len(region_size(1))?;
    let text = host_demo(path, &["scale", "--procs=1", &format!("--records={RECORDS}"), &format!("--rounds={ROUNDS}")]);
    std::fs::remove_file(path)?;
    let text = text?;
    demo_rate(&text, 1, None).with_context(|| format!("no scale line from the host run: {text}"))
}

/// What one boot with some vCPUs measured: the guest's rate and the host
/// threads' for each of [`WRITERS`], how long its vCPU threads waited for
/// a core (see [`watch_vcpu_waits`]), and its `interruptions`.
struct GuestRun {
    guest: Vec<Rate>,
    host: Vec<Rate>,
    waits: Option<f64>,
    spin: GuestSpin,
}

/// One boot with `vcpus` vCPUs running the demo's `interruptions`, then its
/// `scale` for each of [`WRITERS`], paced: once the guest says it is ready
/// for a round, the host threads run one of theirs on `cores` cores while
/// the guest waits for the console line that starts its own (idle: its
/// vCPUs halt), so that the two sides' rounds alternate seconds apart and
/// a drift of this host's speed reaches both. The VMM may use every core of
/// the host (without saying so it would inherit this process's one).
fn guest_and_host_rates(scratch: &Scratch, vcpus: u8, cores: usize, host_cores: usize) -> anyhow::Result<GuestRun> {
    let max = *WRITERS.last().expect("writers");
    let shm = format!("path={},size={}", scratch.path("scale").display(), region_size(max));
    let run = [1, 2]
        .iter()
        .map(|procs| format!("interruptions --seconds={SPIN_SECONDS} --procs={procs}"))
        .chain(WRITERS.iter().map(|w| format!("scale --procs={w} --records={RECORDS} --rounds={ROUNDS} --paced=1")))
        .collect::<Vec<_>>()
        .join(" :: ");
    let cpus = vcpus.to_string();
    let mut cmd = on_cpus(
        vmm(&format!("/bin/kvmshm-demo -- {run}"), &["--cpus", &cpus, "--shm", &shm, "--console-input"]),
        0..host_cores,
    );
    cmd.stdin(Stdio::piped());
    let mut vm = Running::vmm(cmd);
    let waits = watch_vcpu_waits(vm.pid());
    let mut host = Vec::new();
    let host_path = scratch.path("scale-host");
    for &w in &WRITERS {
        std::fs::File::create(&host_path)?.set_len(region_size(w))?;
        let file = MappedFile::open(&host_path)?;
        let mut rounds = Vec::new();
        for round in 0..ROUNDS {
            let line = |what: &str| format!("scale: {w} writers, round {round} {what}");
            let failed = || format!("the guest on {vcpus} vCPUs, round {round} of {w} writers");
            vm.wait_for(&line("ready"), PACED_WAIT).map_err(anyhow::Error::msg).with_context(failed)?;
            rounds.push(host_round(&file, w, cores, round)?);
            vm.send_line("").with_context(failed)?;
            vm.wait_for(&line("done"), PACED_WAIT).map_err(anyhow::Error::msg).with_context(failed)?;
        }
        drop(file);
        std::fs::remove_file(&host_path)?;
        host.push(Rate::of(&rounds));
    }
    let out = vm.finish();
    let waits = waits.join().expect("the schedstat watcher");
    std::fs::remove_file(scratch.path("scale"))?;
    if out.code != Some(0) {
        bail!("the scale run on {vcpus} vCPUs failed:\n{}", out.transcript());
    }
    let guest = WRITERS
        .iter()
        .map(|&w| {
            demo_rate(&out.console, w, Some(vcpus))
                .with_context(|| format!("no scale line for {w} writers on {vcpus} CPUs:\n{}", out.transcript()))
        })
        .collect::<anyhow::Result<_>>()?;
    let spin = GuestSpin::find(&out.console).with_context(|| {
        format!("no {:?} line or no {:?} line:\n{}", GuestSpin::PREFIX, GuestSpin::SHARED_PREFIX, out.transcript())
    })?;
    Ok(GuestRun { guest, host, waits, spin })
}

pub fn run(scratch: &Scratch) -> anyhow::Result<ScaleResults> {
    // SAFETY: sysconf has no memory effects.
    let host_cores = usize::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).unwrap_or(1).max(1);
    eprintln!("bench: scale, the guest's demo binary as one writer on the host...");
    let host_demo = host_demo_rate(&scratch.path("scale-demo"))?;
    eprintln!("bench: scale, a host thread spinning for {SPIN_SECONDS} s...");
    let host_spin = host_spin();
    let (mut host, mut guest, mut vcpu_waits, mut guest_spins) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for v in VCPUS {
        let cores = usize::from(v).min(host_cores);
        eprintln!("bench: scale, a guest with {v} vCPUs and host threads on {cores} cores, round by round...");
        let run = guest_and_host_rates(scratch, v, cores, host_cores)?;
        host.push((cores, run.host));
        guest.push(run.guest);
        vcpu_waits.push(run.waits);
        guest_spins.push(run.spin);
    }
    Ok(ScaleResults { host_cores, host, guest, vcpu_waits, guest_spins, host_spin, host_demo })
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// The scale table, and the boots with one vCPU and with four (taken in turn).
pub fn markdown(r: &ScaleResults, boots_1: &Boots, boots_4: &Boots) -> String {
    let mut s = format!(
        "\n## Scale\n\nRecords per second (64-byte checksummed records, each writer appending to a {block_mib} MiB block of \
         its own until it is full or, after the first round, {round_s} s have passed, all starting together; \
         {ROUNDS} rounds, of which all the records of rounds 2 to {ROUNDS} over all their time count): \
         guest writer processes pinned one per vCPU in turn, beside the same writer \
         code as host threads pinned one per core in turn on as many cores as the guest has vCPUs (or all the \
         host has), a host round before each of the guest's while the guest waits (the demo's `--paced`), so \
         that both sides see the same stretch of this host's speed. \
         Each cell: guest / host threads = ratio (goal >= {THROUGHPUT_GOAL}).\n\n\
         | writers |",
        round_s = SCALE_ROUND.as_secs_f64(),
        block_mib = (RECORDS * RECORD_LEN as u64) >> 20,
    );
    for (v, (cores, _)) in VCPUS.iter().zip(&r.host) {
        write!(s, " {v} vCPU{}, host on {cores} core{} |", plural(*v as usize), plural(*cores)).unwrap();
    }
    s += "\n|---|";
    s += &"---|".repeat(VCPUS.len());
    s += "\n";
    let mut met = true;
    for (i, w) in WRITERS.iter().enumerate() {
        write!(s, "| {w} |").unwrap();
        for (guest, (_, host)) in r.guest.iter().zip(&r.host) {
            let ratio = guest[i].overall / host[i].overall;
            met &= ratio >= THROUGHPUT_GOAL;
            write!(s, " {:.1} / {:.1} M/s = {ratio:.2} |", guest[i].overall / 1e6, host[i].overall / 1e6).unwrap();
        }
        s += "\n";
    }
    let header = |s: &mut String| {
        for v in VCPUS {
            write!(s, " {v} vCPU{} |", plural(v as usize)).unwrap();
        }
        *s += "\n|---|";
        *s += &"---|".repeat(VCPUS.len());
        *s += "\n";
    };
    s += "\nThe slowest and the fastest counted round of each point, guest / host threads, M/s:\n\n| writers |";
    header(&mut s);
    for (i, w) in WRITERS.iter().enumerate() {
        write!(s, "| {w} |").unwrap();
        for (guest, (_, host)) in r.guest.iter().zip(&r.host) {
            write!(s, " {} / {} |", guest[i].range(), host[i].range()).unwrap();
        }
        s += "\n";
    }
    s += "\nEach counted guest round over the host round just before it: the lowest, the median and the highest \
          of these ratios (the host's speed moves within seconds; where the point misses and its median does not, \
          a few rounds met a slower stretch on one side):\n\n| writers |";
    header(&mut s);
    for (i, w) in WRITERS.iter().enumerate() {
        write!(s, "| {w} |").unwrap();
        for (guest, (_, host)) in r.guest.iter().zip(&r.host) {
            let [low, median, high] = round_ratios(&guest[i], &host[i]);
            write!(s, " {low:.2}, {median:.2}, {high:.2} |").unwrap();
        }
        s += "\n";
    }
    let one_writer = r.guest[0][0].overall;
    writeln!(
        s,
        "\nThe guest's own `kvmshm-demo` (the image's binary: musl, the guest build profile) run on the host as \
         one writer process on one core made {:.1} M/s in the same run (rounds {}), {:.2} of the host threads: \
         the same source built differently runs at another speed (code layout). Against it, the guest's 1 \
         writer on 1 vCPU made {:.2}: what the VM costs that binary.",
        r.host_demo.overall / 1e6,
        r.host_demo.range(),
        r.host_demo.overall / r.host[0].1[0].overall,
        one_writer / r.host_demo.overall
    )
    .unwrap();
    let waits: Vec<String> = VCPUS
        .iter()
        .zip(&r.vcpu_waits)
        .map(|(v, w)| match w {
            Some(w) => format!("{:.1}% with {v} vCPU{}", 100.0 * w, plural(*v as usize)),
            None => format!("not measured with {v} vCPU{}", plural(*v as usize)),
        })
        .collect();
    writeln!(
        s,
        "\nThe guests' vCPU threads waited for a host core (runnable but not running: the run delay in \
         /proc/PID/task/*/schedstat, over each whole run, boot included) for {} of their runnable time.",
        waits.join(", ")
    )
    .unwrap();
    let spins: Vec<String> =
        VCPUS.iter().zip(&r.guest_spins).map(|(v, g)| format!("{v} vCPU{}: {}", plural(*v as usize), g.text)).collect();
    let one = &r.guest_spins[0];
    writeln!(
        s,
        "\nA process that spins in user space for {SPIN_SECONDS} s, reading the clock (the demo's `interruptions`; \
         shm_layout::spin), stands still whenever something else runs. In the guests, with {}. On a host thread: \
         {}. A writer loses the same share of its time, which caps the guest / host ratio at (1 - {:.3}) / \
         (1 - {:.3}) = {:.2} with 1 vCPU. Where guest kernel code is emulated, the long interruptions are the \
         guest's timer ticks (CONFIG_HZ, images/patches/0005); there the VMM passes `nohz_full=` for every CPU \
         of a guest but the first if there are at most two vCPUs to a host CPU (vmm/src/host.rs), so that a \
         CPU running one process has no tick, and the demo gives writers and the spin CPUs from the last down: \
         the first CPU, which keeps the tick, gets a writer only when the others all have one. Two processes \
         spinning on that CPU at once, taking turns as writers sharing a vCPU do: {}.",
        spins.join("; "),
        r.host_spin,
        one.lost,
        r.host_spin.lost(),
        (1.0 - one.lost) / (1.0 - r.host_spin.lost()),
        VCPUS
            .iter()
            .zip(&r.guest_spins)
            .map(|(v, g)| format!("{v} vCPU{}: {}", plural(*v as usize), g.shared))
            .collect::<Vec<_>>()
            .join("; ")
    )
    .unwrap();
    writeln!(
        s,
        "\nGoal (every point >= {THROUGHPUT_GOAL} x the host threads): {}. This host has {} cores: with more \
         writers than cores, host threads take turns on them; a guest with more vCPUs than the host has cores \
         has vCPU threads that take turns on the host, and its host baseline stays at the host's cores. With \
         more writers than vCPUs, guest processes take turns on the vCPUs in slices of 200 ms where guest kernel \
         code is emulated (sched_base_slice_us, images/patches/0008, vmm/src/host.rs), each switch costing \
         about 4 ms of emulated kernel code, and a CPU that runs more than one process has the tick.\n",
        if met { "met" } else { "not met" },
        r.host_cores
    )
    .unwrap();
    let boot = |b: &Boots| {
        format!("{:.1} M emulated-instruction times ({:.1} s to init)", b.million_instructions(), b.to_init_s())
    };
    writeln!(
        s,
        "Boot to init, median of {}, alternating: 1 vCPU {} (the image without SMP); 4 vCPUs {} (the SMP \
         image, images/out/smp/); 4 / 1 = {:.2} in emulated-instruction times.",
        boots_1.0.len(),
        boot(boots_1),
        boot(boots_4),
        boots_4.million_instructions() / boots_1.million_instructions()
    )
    .unwrap();
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_ratios_pair_rounds_after_the_first_in_order() {
        // (records, seconds): the first round of each is left out.
        let m = 1_000_000;
        let guest = Rate::of(&[(1, 1.0), (30 * m, 1.0), (10 * m, 1.0), (20 * m, 1.0)]);
        let host = Rate::of(&[(5, 1.0), (10 * m, 1.0), (10 * m, 1.0), (10 * m, 1.0)]);
        assert_eq!(round_ratios(&guest, &host), [1.0, 2.0, 3.0]);
        assert_eq!(guest.range(), "10.0 to 30.0");
        assert!(round_ratios(&Rate::of(&[]), &host)[1].is_nan());
    }
}
