//! kvmshm: the host's side of the shared-memory protocols, run on a VM's
//! `--shm` backing file while the VM runs or after it stopped; an ivshmem
//! server and its host peers, for VMs and processes that ring each other;
//! and what QEMU needs on this host to boot the image (`qemu-cpu`,
//! `qemu-flags`).
//!
//! Exit status: 0 success, 1 a check failed, 2 an error (bad file, no
//! server, timeout...).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use shm_layout::host::ivshmem::{Peer, Server};
use shm_layout::host::{EchoClient, MappedFile};
use vmm::backing::BackingFile;

#[derive(Parser)]
#[command(version, about = "Fill, check and talk to the shared memory of kvmshm guests")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show what the region in FILE holds.
    Inspect { file: PathBuf },
    /// Fill the data area with the stream of SEED, for `kvmshm-demo verify` in the guest.
    Fill {
        file: PathBuf,
        #[arg(long)]
        seed: u64,
        /// Format only the first SIZE bytes (K, M or G suffix allowed): the
        /// device's size, when the file is larger than the VM's --shm size.
        #[arg(long, value_parser = vmm::backing::parse_size)]
        size: Option<u64>,
    },
    /// Check the records of `kvmshm-demo write`: succeeds only if every
    /// record is present exactly once and intact.
    Verify {
        file: PathBuf,
        #[arg(long)]
        writers: u64,
        #[arg(long)]
        records: u64,
    },
    /// Send COUNT requests to `kvmshm-demo echo` in the guest, check every
    /// answer, then tell it to stop (unless --keep-serving).
    Send {
        file: PathBuf,
        /// Join the ivshmem server at SOCKET and ring the guest for each
        /// request, waiting for its ring, if it serves with --interrupts.
        #[arg(long)]
        socket: Option<PathBuf>,
        #[arg(long)]
        count: u64,
        /// Seconds to wait for the server to come up (the guest may be booting).
        #[arg(long, default_value_t = 120)]
        wait: u64,
        /// Seconds to wait for each answer.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
        /// Leave the server running, for more requests later.
        #[arg(long)]
        keep_serving: bool,
    },
    /// Publish the host's real-time clock in FILE, every millisecond, for
    /// `kvmshm-demo host-clock` in the guest to compare its own with; ends
    /// when that reader is done.
    Clock {
        file: PathBuf,
        /// Seconds to wait for the reader to finish (the guest may be booting).
        #[arg(long, default_value_t = 120)]
        wait: u64,
    },
    /// Run an ivshmem server (QEMU's protocol, version 0) at SOCKET: every
    /// client (`vmm --shm server=SOCKET`, QEMU's ivshmem-doorbell, `kvmshm
    /// peer`) gets an id, the memory in FILE and VECTORS eventfds, and hears
    /// of the others joining and leaving. Runs until SIGINT or SIGTERM.
    Server {
        #[arg(long)]
        socket: PathBuf,
        /// The shared memory: created (mode 0600) with SIZE bytes if missing;
        /// an existing file must hold at least SIZE bytes and is used as it is.
        #[arg(long)]
        shm: PathBuf,
        /// A power of two of at least 4096 bytes (K, M or G suffix allowed).
        #[arg(long, value_parser = vmm::backing::parse_size)]
        size: u64,
        /// Interrupt vectors per client, 1 to 64.
        #[arg(long, default_value_t = 1)]
        vectors: usize,
    },
    /// Join an ivshmem server as a host peer.
    Peer {
        #[arg(long)]
        socket: PathBuf,
        #[command(subcommand)]
        action: PeerAction,
    },
    /// Print the `-cpu` model QEMU can use on this host: `host`, or
    /// `host,-arch-capabilities` where QEMU cannot set the ARCH_CAPABILITIES
    /// MSR (QEMU 7.2 then aborts with "failed to set MSR 0x10a" before the
    /// guest starts).
    QemuCpu {
        #[arg(long, default_value = "qemu-system-x86_64")]
        qemu: PathBuf,
    },
    /// Print the flags the image's kernel command line needs under QEMU on
    /// this host: none on an ordinary KVM host; where guest kernel code is
    /// emulated, those the VMM adds itself and the image's switches for
    /// INT3 and FWAIT, which QEMU cannot finish.
    QemuFlags,
    /// Measure this host's KVM as the VMM does before each boot and print
    /// what it found: whether guest kernel code runs natively or in KVM's
    /// instruction emulator, and its time per instruction there, by which
    /// boot times on hosts of that kind compare.
    Probe,
}

#[derive(Subcommand)]
enum PeerAction {
    /// Print this peer's id and vectors, the memory's size and the other peers.
    Info,
    /// Ring VECTOR of peer TO, COUNT times.
    Ring {
        #[arg(long)]
        to: u16,
        #[arg(long, default_value_t = 0)]
        vector: usize,
        #[arg(long, default_value_t = 1)]
        count: u64,
    },
    /// Wait until this peer's vectors have been rung COUNT times; print each ring.
    Wait {
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// Seconds to wait in all.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
}

/// `-cpu` models for QEMU, the best first.
const QEMU_CPUS: [&str; 2] = ["host", "host,-arch-capabilities"];

/// The first of [`QEMU_CPUS`] with which QEMU starts. With `-S` QEMU sets
/// the vCPU up (where the MSR fails) without running it, then quits as the
/// monitor tells it.
fn qemu_cpu(qemu: &Path) -> anyhow::Result<&'static str> {
    let mut refused = String::new();
    for cpu in QEMU_CPUS {
        let mut child = Process::new(qemu)
            .args(["-M", "microvm", "-accel", "kvm", "-cpu", cpu, "-m", "16", "-nodefaults", "-no-user-config"])
            .args(["-display", "none", "-S", "-monitor", "stdio"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} (Debian package qemu-system-x86)", qemu.display()))?;
        // QEMU may have died already: its status says so.
        let _ = child.stdin.take().expect("piped").write_all(b"quit\n");
        let out = child.wait_with_output().context("waiting for QEMU")?;
        if out.status.success() {
            return Ok(cpu);
        }
        refused += &format!("\n-cpu {cpu}: {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    bail!("QEMU starts with none of the -cpu models tried:{refused}")
}

fn open(path: &Path) -> anyhow::Result<MappedFile> {
    Ok(MappedFile::open(path)?)
}

/// Runs the command; `Ok(false)` when a check found the data wrong.
fn run(command: Command) -> anyhow::Result<bool> {
    match command {
        Command::Inspect { file } => {
            let summary = open(&file)?.inspect().with_context(|| file.display().to_string())?;
            print!("{summary}");
        }
        Command::Fill { file, seed, size } => {
            let header = open(&file)?.fill(seed, size).with_context(|| file.display().to_string())?;
            println!("filled {} bytes at {:#x} with seed {seed}", header.area_len, header.area_offset);
        }
        Command::Verify { file, writers, records } => {
            let report = open(&file)?.verify_records(writers, records).with_context(|| file.display().to_string())?;
            println!("{report}");
            return Ok(report.is_complete());
        }
        Command::Send { file, socket, count, wait, timeout, keep_serving } => {
            let mapped = open(&file)?;
            let mut peer = socket.as_deref().map(Peer::connect).transpose()?;
            let (wait, timeout) = (Duration::from_secs(wait), Duration::from_secs(timeout));
            let mut talk = || -> Result<String, shm_layout::host::Error> {
                let mut client = EchoClient::connect_with(mapped.region(), wait, timeout, peer.as_mut())?;
                if socket.is_some() && !client.uses_interrupts() {
                    eprintln!("kvmshm: the echo server polls; so does this client");
                }
                let stats = client.send(count)?;
                if keep_serving {
                    return Ok(format!("{stats}; server still serving"));
                }
                client.stop()?;
                Ok(format!("{stats}; server stopped"))
            };
            let result = talk();
            // A file that shrank explains whatever went wrong.
            let in_file = || file.display().to_string();
            mapped.check().with_context(in_file)?;
            println!("{}", result.with_context(in_file)?);
        }
        Command::Clock { file, wait } => {
            let published =
                open(&file)?.publish_clock(Duration::from_secs(wait)).with_context(|| file.display().to_string())?;
            println!("published the host's clock {published} times; the reader is done");
        }
        Command::Server { socket, shm, size, vectors } => serve(&socket, &shm, size, vectors)?,
        Command::Peer { socket, action } => {
            let peer = Peer::connect(&socket)?;
            return peer_action(peer, action);
        }
        Command::QemuCpu { qemu } => println!("{}", qemu_cpu(&qemu)?),
        Command::QemuFlags => println!("{}", probe()?.qemu_guest_cmdline()),
        Command::Probe => println!("{}", probe()?),
    }
    Ok(true)
}

fn probe() -> anyhow::Result<vmm::host::HostKvm> {
    let kvm = kvm_ioctls::Kvm::new().context("opening /dev/kvm")?;
    Ok(vmm::host::probe(&kvm)?)
}

/// Set by SIGINT and SIGTERM: the server stops and removes its socket.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    STOP.store(true, Ordering::SeqCst);
}

fn serve(socket: &Path, shm: &Path, size: u64, vectors: usize) -> anyhow::Result<()> {
    let memory = BackingFile::open(shm, size)?;
    let file = memory.file().try_clone().with_context(|| shm.display().to_string())?;
    let mut server = Server::bind(socket, file, vectors)?;
    for signal in [libc::SIGINT, libc::SIGTERM] {
        vmm_sys_util::signal::register_signal_handler(signal, request_stop).context("signal handler")?;
    }
    log::info!(
        "ivshmem server at {}: {} ({} bytes), {vectors} vectors per peer",
        socket.display(),
        shm.display(),
        memory.size()
    );
    // A signal interrupts the wait, so the flag is seen at once.
    while !STOP.load(Ordering::SeqCst) {
        server.step(-1)?;
    }
    log::info!("ivshmem server at {}: stopped", socket.display());
    Ok(())
}

fn peer_action(mut peer: Peer, action: PeerAction) -> anyhow::Result<bool> {
    match action {
        PeerAction::Info => {
            let size = peer.memory().metadata()?.len();
            println!(
                "peer {}: {} vectors, {size} bytes of shared memory; other peers: {:?}",
                peer.id(),
                peer.own_eventfds().len(),
                peer.peers()
            );
        }
        PeerAction::Ring { to, vector, count } => {
            for _ in 0..count {
                peer.ring(to, vector)?;
            }
            println!("peer {}: rang vector {vector} of peer {to} {count} times", peer.id());
        }
        PeerAction::Wait { count, timeout } => {
            let deadline = Instant::now() + Duration::from_secs(timeout);
            let mut rung = 0;
            while rung < count {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    bail!("peer {}: {rung} of {count} rings within {timeout} s", peer.id());
                }
                for ring in peer.wait(left)? {
                    println!("peer {}: vector {} rung {} times", peer.id(), ring.vector, ring.count);
                    rung += ring.count;
                }
            }
        }
    }
    Ok(true)
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(Args::parse().command) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("kvmshm: {e:#}");
            ExitCode::from(2)
        }
    }
}
