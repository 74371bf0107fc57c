//! kvmshm: the host's side of the shared-memory protocols, run on a VM's
//! `--shm` backing file while the VM runs or after it stopped; and what
//! QEMU needs on this host to boot the image (`qemu-cpu`, `qemu-flags`).
//!
//! Exit status: 0 success, 1 a check failed, 2 an error (bad file, no
//! server, timeout...).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use shm_layout::host::{EchoClient, MappedFile};

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
        Command::Send { file, count, wait, timeout, keep_serving } => {
            let mapped = open(&file)?;
            let (wait, timeout) = (Duration::from_secs(wait), Duration::from_secs(timeout));
            let talk = || -> Result<String, shm_layout::host::Error> {
                let mut client = EchoClient::connect(mapped.region(), wait, timeout)?;
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
        Command::QemuCpu { qemu } => println!("{}", qemu_cpu(&qemu)?),
        Command::QemuFlags => {
            let kvm = kvm_ioctls::Kvm::new().context("opening /dev/kvm")?;
            println!("{}", vmm::host::probe(&kvm)?.qemu_guest_cmdline());
        }
    }
    Ok(true)
}

fn main() -> ExitCode {
    match run(Args::parse().command) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("kvmshm: {e:#}");
            ExitCode::from(2)
        }
    }
}
