use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Parser;
use vmm::{ShmConfig, VMM_FAILURE, Vm, VmConfig, seccomp};

/// Boot a Linux guest and share host files with it through ivshmem PCI devices.
///
/// The exit status is the status of the program the guest's init ran
/// (run=PATH on the command line), or 125 if the VMM or the guest failed.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Virtual CPUs (the guest kernel needs CONFIG_SMP for more than one).
    #[arg(long, default_value_t = 1)]
    cpus: u8,
    /// The uncompressed ELF vmlinux to boot.
    #[arg(long)]
    kernel: PathBuf,
    /// An initramfs (uncompressed cpio) for the guest.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 128)]
    memory: u64,
    /// Appended to the kernel command line, e.g. 'run=/bin/kvmshm-demo -- write'.
    #[arg(long, default_value = "")]
    cmdline: String,
    /// A shared-memory device. path=FILE,size=SIZE[,id=N]: ivshmem-plain;
    /// SIZE is a power of two with an optional K, M or G suffix; a missing
    /// FILE is created, an existing one must be at least SIZE bytes.
    /// server=SOCKET: ivshmem-doorbell, with the memory, id and interrupt
    /// vectors of the ivshmem server at SOCKET (`kvmshm server`, or QEMU's).
    /// Repeat for more devices (at most 31).
    #[arg(long, value_parser = parse_shm)]
    shm: Vec<ShmConfig>,
    /// Sample the guest's instruction pointer every millisecond on every vCPU
    /// and print the hottest kernel functions, named from this System.map,
    /// at the end.
    #[arg(long, value_name = "SYSTEM_MAP")]
    profile_guest: Option<PathBuf>,
    /// How many of the hottest functions the --profile-guest report lists.
    #[arg(long, value_name = "N", default_value_t = 40, requires = "profile_guest")]
    profile_top: usize,
    /// Forward standard input to the guest console (for an interactive shell).
    #[arg(long)]
    console_input: bool,
    /// The system-call filter the VMM runs under once the guest starts:
    /// `off` and `log` are for debugging.
    #[arg(long, value_enum, default_value_t = seccomp::Mode::On)]
    seccomp: seccomp::Mode,
    /// For the tests: once the filter is on, make a system call it refuses.
    #[arg(long, hide = true)]
    seccomp_selftest: bool,
}

fn parse_shm(s: &str) -> anyhow::Result<ShmConfig> {
    if let Some(socket) = s.strip_prefix("server=") {
        if socket.is_empty() || socket.contains(',') {
            bail!("server= takes one socket path and nothing else");
        }
        return Ok(ShmConfig::Server { socket: PathBuf::from(socket) });
    }
    let (mut path, mut size, mut id) = (None, None, 0);
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("path", v)) if !v.is_empty() => path = Some(PathBuf::from(v)),
            Some(("size", v)) => size = Some(vmm::backing::parse_size(v)?),
            Some(("id", v)) => id = v.parse().with_context(|| format!("bad id {v:?}"))?,
            _ => bail!("unknown or empty option {part:?}; expected path=FILE,size=SIZE[,id=N] or server=SOCKET"),
        }
    }
    let (Some(path), Some(size)) = (path, size) else {
        bail!("path= and size= are both required");
    };
    if !size.is_power_of_two() || size < 4096 {
        bail!("size {size} is not a power of two of at least 4096 bytes");
    }
    Ok(ShmConfig::Plain { path, size, id })
}

fn run(args: Args) -> anyhow::Result<i32> {
    if args.shm.len() > vmm::pci::MAX_DEVICES {
        bail!("{} --shm devices: the PCI bus takes at most {}", args.shm.len(), vmm::pci::MAX_DEVICES);
    }
    let config = VmConfig {
        cpus: args.cpus,
        kernel: args.kernel,
        initrd: args.initrd,
        memory_mib: args.memory,
        cmdline: args.cmdline,
        shm: args.shm,
        profile_guest: args.profile_guest,
    };
    let mut vm = Vm::new(&config)?;
    if args.console_input {
        vm.forward_stdin().context("--console-input")?;
    }
    // Every thread has started: from here on, the allowlist.
    seccomp::apply(args.seccomp)?;
    if args.seccomp_selftest {
        // SAFETY: getppid has no preconditions; the filter refuses it.
        unsafe { libc::getppid() };
    }
    let result = vm.run();
    if let Some(report) = vm.profile_report(args.profile_top) {
        eprint!("{report}");
    }
    Ok(result?)
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(Args::parse()) {
        Ok(status) => ExitCode::from(status.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("vmm: {e:#}");
            ExitCode::from(VMM_FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shm_option() {
        let s = parse_shm("path=/tmp/x,size=16M,id=3").unwrap();
        assert_eq!(s, ShmConfig::Plain { path: "/tmp/x".into(), size: 16 << 20, id: 3 });
        assert_eq!(parse_shm("server=/run/iv.sock").unwrap(), ShmConfig::Server { socket: "/run/iv.sock".into() });
        assert!(parse_shm("server=/run/iv.sock,size=4K").is_err());
        assert!(parse_shm("path=/tmp/x,size=3M").is_err());
        assert!(parse_shm("path=/tmp/x").is_err());
        assert!(parse_shm("size=4K").is_err());
        assert!(parse_shm("path=/tmp/x,size=4K,color=red").is_err());
    }
}
