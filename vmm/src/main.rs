use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Parser;
use vmm::{ShmConfig, Vm, VmConfig};

/// Exit status when the VMM itself fails (bad input, guest panic, triple
/// fault...), as opposed to the status of the program the guest ran.
const VMM_FAILURE: u8 = 125;

/// Boot a Linux guest and share host files with it through ivshmem PCI devices.
///
/// The exit status is the status of the program the guest's init ran
/// (run=PATH on the command line), or 125 if the VMM or the guest failed.
#[derive(Parser)]
#[command(version)]
struct Args {
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
    /// A shared-memory device: path=FILE,size=SIZE[,id=N]. SIZE is a power of
    /// two with an optional K, M or G suffix; a missing FILE is created, an
    /// existing one must be at least SIZE bytes. Repeat for more devices.
    #[arg(long, value_parser = parse_shm)]
    shm: Vec<ShmConfig>,
    /// Sample the guest's instruction pointer every millisecond and print the
    /// hottest kernel functions, named from this System.map, at the end.
    #[arg(long, value_name = "SYSTEM_MAP")]
    profile_guest: Option<PathBuf>,
    /// Forward standard input to the guest console (for an interactive shell).
    #[arg(long)]
    console_input: bool,
}

fn parse_shm(s: &str) -> anyhow::Result<ShmConfig> {
    let (mut path, mut size, mut id) = (None, None, 0);
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("path", v)) if !v.is_empty() => path = Some(PathBuf::from(v)),
            Some(("size", v)) => size = Some(vmm::shm::parse_size(v).map_err(anyhow::Error::msg)?),
            Some(("id", v)) => id = v.parse().with_context(|| format!("bad id {v:?}"))?,
            _ => bail!("unknown or empty option {part:?}; expected path=FILE,size=SIZE[,id=N]"),
        }
    }
    let (Some(path), Some(size)) = (path, size) else {
        bail!("path= and size= are both required");
    };
    if !size.is_power_of_two() || size < 4096 {
        bail!("size {size} is not a power of two of at least 4096 bytes");
    }
    Ok(ShmConfig { path, size, id })
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    let config = VmConfig {
        kernel: args.kernel,
        initrd: args.initrd,
        memory_mib: args.memory,
        cmdline: args.cmdline,
        shm: args.shm,
    };
    let result = Vm::new(&config).and_then(|mut vm| {
        if args.console_input {
            vm.forward_stdin();
        }
        if args.profile_guest.is_some()
            && let Err(e) = vm.start_profiler(std::time::Duration::from_millis(1))
        {
            log::warn!("cannot start the guest profiler: {e}");
        }
        let result = vm.run();
        if let Some(report) = args.profile_guest.as_deref().and_then(|map| vm.profile_report(map)) {
            match report {
                Ok(text) => eprint!("{text}"),
                Err(e) => log::warn!("guest profile: {e}"),
            }
        }
        result
    });
    match result {
        Ok(status) => ExitCode::from(status.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("vmm: {e}");
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
        assert_eq!((s.path, s.size, s.id), (PathBuf::from("/tmp/x"), 16 << 20, 3));
        assert!(parse_shm("path=/tmp/x,size=3M").is_err());
        assert!(parse_shm("path=/tmp/x").is_err());
        assert!(parse_shm("size=4K").is_err());
        assert!(parse_shm("path=/tmp/x,size=4K,color=red").is_err());
    }
}
