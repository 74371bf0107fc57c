//! Doorbell figures, in one run: interrupt-driven round trips between a
//! host process and a guest, between two guests and between two host
//! processes (eventfds only), beside polling round trips through the same
//! echo mailbox; and the CPU that a guest process waiting for requests uses
//! with interrupts and with polling; the host-guest figures again with
//! QEMU's ivshmem-doorbell, on the same image, side by side.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kvmshm_tests::{IvshmemServer, Qemu, Running, Scratch, vmm};
use shm_layout::echo::Mailbox;
use shm_layout::host::ivshmem::{Peer, Server};
use shm_layout::host::{EchoClient, MappedFile};

use crate::{Latency, on_cpus};

/// Round trips per series.
const ROUND_TRIPS: u64 = 1000;
/// How long the host client leaves the guest's echo server waiting.
const IDLE: Duration = Duration::from_secs(10);

pub struct DoorbellResults {
    pub ours: HostGuest,
    /// The same with QEMU's ivshmem-doorbell, or why there is no figure.
    pub qemu: Result<HostGuest, String>,
    pub host_host_irq: Latency,
    /// Median and p99 as the lead guest measured them (microseconds).
    pub guest_guest_irq_us: (u64, u64),
}

/// A host process and a guest through the echo mailbox.
pub struct HostGuest {
    pub irq: Latency,
    pub poll: Latency,
    /// CPU time of the guest's echo server while the host client leaves it
    /// waiting for [`IDLE`]: (CPU ms, wall ms).
    pub cpu_irq: (u64, u64),
    pub cpu_poll: (u64, u64),
}

/// Times `n` requests one at a time; each sample is one round trip.
fn time_requests(client: &mut EchoClient<'_>, n: u64) -> anyhow::Result<Latency> {
    let mut ns = Vec::new();
    for _ in 0..n {
        let start = Instant::now();
        client.send(1)?;
        ns.push(start.elapsed().as_nanos() as u64);
    }
    Ok(Latency::new(ns))
}

/// Two echo sessions with the guest: one request and then [`IDLE`], for the
/// CPU the guest's server uses waiting; then the timed requests.
fn sessions(file: &MappedFile, mut peer: Option<&mut Peer>) -> anyhow::Result<Latency> {
    fn connect<'a>(file: &'a MappedFile, peer: Option<&'a mut Peer>) -> anyhow::Result<EchoClient<'a>> {
        Ok(EchoClient::connect_with(file.region(), Duration::from_secs(900), Duration::from_secs(30), peer)?)
    }
    {
        let mut idle = connect(file, peer.as_deref_mut())?;
        idle.send(1)?;
        std::thread::sleep(IDLE);
        idle.stop()?;
    }
    let mut timed = connect(file, peer)?;
    let latency = time_requests(&mut timed, ROUND_TRIPS)?;
    timed.stop()?;
    Ok(latency)
}

/// "echo: served N requests (interrupts); C ms of CPU in W ms" → (C, W).
fn echo_cpu(line: &str) -> anyhow::Result<(u64, u64)> {
    let bad = || format!("cannot parse {line:?}");
    let (_, rest) = line.split_once("; ").with_context(bad)?;
    let mut words = rest.split_whitespace();
    let cpu = words.next().with_context(bad)?.parse().with_context(bad)?;
    let wall = words.nth(4).with_context(bad)?.parse().with_context(bad)?;
    Ok((cpu, wall))
}

/// What a guest's echo server runs: four sessions, twice waiting for rings,
/// twice spinning (see `sessions`).
const ECHO_RUN: &str = "/bin/kvmshm-demo -- echo --interrupts=1 :: echo --interrupts=1 :: echo :: echo";

pub fn run(scratch: &Scratch, qemu: Result<&Qemu, &str>) -> anyhow::Result<DoorbellResults> {
    let server = IvshmemServer::start(scratch, 1);
    let ours = host_guest(Running::vmm(on_cpus(vmm(ECHO_RUN, &["--shm", &server.shm_option()]), 0..1)), &server)?;
    drop(server);
    let qemu = qemu.map_err(str::to_string).and_then(|q| {
        eprintln!("bench: doorbells: the same with QEMU's ivshmem-doorbell...");
        let scratch = Scratch::new("bench-qemu-doorbell");
        let server = IvshmemServer::start(&scratch, 1);
        let vm = Running::spawn(on_cpus(q.doorbell_vm(&server, ECHO_RUN), 0..1)).map_err(|e| format!("QEMU: {e}"))?;
        host_guest(vm, &server).map_err(|e| format!("{e:#}"))
    });
    Ok(DoorbellResults {
        ours,
        qemu,
        host_host_irq: host_host(scratch)?,
        guest_guest_irq_us: guest_guest(&Scratch::new("bench-guests"))?,
    })
}

/// The host's side of [`ECHO_RUN`] in `vm`, a guest on `server`.
fn host_guest(vm: Running, server: &IvshmemServer) -> anyhow::Result<HostGuest> {
    let file = MappedFile::open(&server.shm)?;
    let mut peer = Peer::connect(&server.socket)?;
    let irq = sessions(&file, Some(&mut peer))?;
    let poll = sessions(&file, None)?;
    let out = vm.finish_unchecked();
    if out.code != Some(0) {
        bail!("the echo VM failed:\n{}", out.transcript());
    }
    let cpu: Vec<(u64, u64)> =
        out.console.lines().filter(|l| l.starts_with("echo: served")).map(echo_cpu).collect::<Result<_, _>>()?;
    let [cpu_irq, _, cpu_poll, _] = cpu[..] else { bail!("four echo sessions expected:\n{}", out.console) };
    Ok(HostGuest { irq, poll, cpu_irq, cpu_poll })
}

/// Two host threads, each a peer of an in-process server, through the echo
/// mailbox with rings: the eventfd path alone.
fn host_host(scratch: &Scratch) -> anyhow::Result<Latency> {
    let (socket, shm) = (scratch.path("host-host.sock"), scratch.path("host-host.shm"));
    std::fs::File::create(&shm)?.set_len(1 << 16)?;
    let mut server = Server::bind(&socket, std::fs::File::open(&shm)?, 1)?;
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let _ = server.step(20);
            }
        });
        let result = (|| {
            let (mut serving, mut client) = (Peer::connect(&socket)?, Peer::connect(&socket)?);
            let (a, b) = (MappedFile::open(&shm)?, MappedFile::open(&shm)?);
            let mailbox = Mailbox::format(a.region())?;
            std::thread::scope(|inner| {
                let echo = inner.spawn(move || mailbox.serve_with(&mut serving));
                let mut echo_client = EchoClient::connect_with(
                    b.region(),
                    Duration::from_secs(10),
                    Duration::from_secs(10),
                    Some(&mut client),
                )?;
                let latency = time_requests(&mut echo_client, ROUND_TRIPS)?;
                echo_client.stop()?;
                echo.join().expect("echo thread").map_err(|e| anyhow::anyhow!("echo: {e}"))?;
                Ok(latency)
            })
        })();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        result
    })
}

/// Two VMs play ping-pong through one server (its files in a `scratch` of
/// their own); the lead times each round.
fn guest_guest(scratch: &Scratch) -> anyhow::Result<(u64, u64)> {
    let server = IvshmemServer::start(scratch, 1);
    let shm = server.shm_option();
    // One VM a core: this process only waits meanwhile.
    let run = |peer: u16, side: u8| {
        format!("/bin/kvmshm-demo -- pingpong --peer={peer} --rounds={ROUND_TRIPS} --side={side}")
    };
    let lead = vmm(&run(1, 0), &["--shm", &shm]);
    let lead = Running::vmm(on_cpus(lead, 0..1));
    server.await_log("peer 0 joined", 1, Duration::from_secs(60));
    let follower = vmm(&run(0, 1), &["--shm", &shm]);
    let follower = Running::vmm(on_cpus(follower, 1..2));
    let (lead, follower) = (lead.finish(), follower.finish());
    if lead.code != Some(0) || follower.code != Some(0) {
        bail!("ping-pong failed:\n{}\n{}", lead.transcript(), follower.transcript());
    }
    let line =
        lead.console.lines().find_map(|l| l.strip_prefix("pingpong: round trip median ")).context("no timing")?;
    let numbers: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    let [median, p99] = numbers[..] else { bail!("cannot parse {line:?}") };
    Ok((median, p99))
}

fn us(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1e3)
}

/// The doorbell section of the report; `ns_per_instruction` is the boots'
/// probes' median in this run, which turns round trips into
/// emulated-instruction times where guest kernel code is emulated.
pub fn markdown(d: &DoorbellResults, ns_per_instruction: Option<f64>) -> String {
    let row = |what: &str, l: &Latency| {
        format!("| {what} | {} | {} | {} |\n", us(l.quantile(0.5)), us(l.quantile(0.99)), l.sorted_ns.len())
    };
    let mut md = String::from("\n## Doorbells\n\n");
    md += &format!(
        "{ROUND_TRIPS} round trips through the echo mailbox per row, one request at a time (microseconds):\n\n"
    );
    md += "| round trip | median | p99 | samples |\n|---|---|---|---|\n";
    md += &row("host process ↔ guest, interrupts both ways", &d.ours.irq);
    if let Ok(q) = &d.qemu {
        md += &row("host process ↔ guest in QEMU (ivshmem-doorbell), interrupts both ways", &q.irq);
    }
    md += &row("host process ↔ guest, polling both ways", &d.ours.poll);
    if let Ok(q) = &d.qemu {
        md += &row("host process ↔ guest in QEMU, polling both ways", &q.poll);
    }
    md += &row("host process ↔ host process, eventfds (no VM)", &d.host_host_irq);
    md += &format!(
        "| guest ↔ guest (two VMs, ping-pong with data), interrupts | {}.0 | {}.0 | {ROUND_TRIPS} |\n",
        d.guest_guest_irq_us.0, d.guest_guest_irq_us.1
    );
    if let Some(ns) = ns_per_instruction {
        let times = |us: f64| us * 1e3 / ns;
        md += &format!(
            "\nGuest kernel code is emulated on this host ({ns:.0} ns an instruction, the median of the boots' \
             probes in this run): a host ↔ guest interrupt round trip costs {:.0} emulated-instruction times, a guest ↔ guest one \
             {:.0}. Each ring is a system call and a Doorbell write in the guest kernel, and each interrupt its \
             entry, the driver's handler, the waiter's wake-up and, for a guest that was idle, leaving idle and \
             two context switches with the scheduler's accounting: all in KVM's instruction emulator. Polling runs \
             natively in guest user space. Between two guests both sides wait idle every round.\n",
            times(d.ours.irq.quantile(0.5) as f64 / 1e3),
            times(d.guest_guest_irq_us.0 as f64),
        );
    }
    let share = |(cpu, wall): (u64, u64)| 100.0 * cpu as f64 / wall.max(1) as f64;
    let idle = |h: &HostGuest| {
        format!(
            "{} ms of CPU in {} ms ({:.1}% of a core) waiting for interrupts, {} ms in {} ms ({:.1}%) polling",
            h.cpu_irq.0,
            h.cpu_irq.1,
            share(h.cpu_irq),
            h.cpu_poll.0,
            h.cpu_poll.1,
            share(h.cpu_poll)
        )
    };
    md += &format!(
        "\nThe CPU the guest's echo server uses while the host client leaves it waiting for {} s: {}.\n",
        IDLE.as_secs(),
        idle(&d.ours)
    );
    match &d.qemu {
        Ok(q) => md += &format!("In QEMU: {}.\n", idle(q)),
        Err(why) => md += &format!("\nNo QEMU figures: {why}\n"),
    }
    md
}
