//! kvmshm-demo: the guest's side of the shared-memory protocols.
//!
//! Every system call is slow in a guest whose kernel code is emulated, so
//! the device is mapped once and the work is plain loads and stores: no
//! system calls in loops, one line of output per run.
//!
//! Exit status: 0 success, 1 a check or a writer failed, 2 a bad argument,
//! a missing device or a region too small for the request.

use std::process::exit;
use std::time::Instant;

use guest_userspace::device::{Caching, Device};
use shm_layout::echo::Mailbox;
use shm_layout::fill;
use shm_layout::records::{RECORD_LEN, Records};

const USAGE: &str = "usage: kvmshm-demo [--device PATH] [--caching wb|wc|uc] \
    write --procs N --records M [--seed S] | check-records --procs N --records M | verify --seed S | echo";

enum Command {
    Write { procs: u64, records: u64, seed: u64 },
    CheckRecords { procs: u64, records: u64 },
    Verify { seed: u64 },
    Echo,
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

fn parse(mut args: impl Iterator<Item = String>) -> Result<Invocation, String> {
    let mut device = String::from("/dev/kvmshm0");
    let mut caching = None;
    let command = loop {
        let arg = args.next().ok_or("no subcommand")?;
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
            let [procs, records, seed] = numbers(args, ["--procs", "--records", "--seed"])?;
            let procs = required(procs, "--procs")?;
            if procs == 0 {
                return Err("--procs must be at least 1".into());
            }
            Command::Write { procs, records: required(records, "--records")?, seed: seed.unwrap_or(0) }
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
            numbers(args, [])?;
            Command::Echo
        }
        other => return Err(format!("unknown subcommand {other:?}")),
    };
    Ok(Invocation { device, caching, command })
}

/// Parses `--name NUMBER` pairs, each name one of `names`.
fn numbers<const N: usize>(
    mut args: impl Iterator<Item = String>,
    names: [&str; N],
) -> Result<[Option<u64>; N], String> {
    let mut values = [None; N];
    while let Some(arg) = args.next() {
        let i = names.iter().position(|n| *n == arg).ok_or(format!("unknown option {arg:?}"))?;
        let value = args.next().ok_or(format!("{arg} needs a value"))?;
        values[i] = Some(value.parse().map_err(|_| format!("{arg} {value:?} is not a number"))?);
    }
    Ok(values)
}

fn main() {
    let args = std::env::args_os().skip(1).map(|a| a.into_string().unwrap_or_default());
    let inv = parse(args).unwrap_or_else(|e| fail(2, &format!("{e}; {USAGE}")));
    let path = &inv.device;
    let device = Device::open(path, inv.caching).unwrap_or_else(|e| fail(2, &format!("{path}: {e}")));
    let status = match inv.command {
        Command::Write { procs, records, seed } => write(&device, path, procs, records, seed),
        Command::CheckRecords { procs, records } => check_records(&device, path, procs, records),
        Command::Verify { seed } => verify(&device, path, seed),
        Command::Echo => echo(&device, path),
    };
    exit(status)
}

/// Formats the region and forks one writer process per block.
fn write(device: &Device, path: &str, procs: u64, records: u64, seed: u64) -> i32 {
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
                let mut writer = area.writer(w);
                while writer.append() {}
                // SAFETY: ends the child at once, as above.
                unsafe { libc::_exit(0) }
            }
            pid => children.push(pid),
        }
    }
    for (w, &pid) in children.iter().enumerate() {
        let mut wstatus = 0;
        // SAFETY: waits for our own child; wstatus is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut wstatus, 0) };
        if r != pid || !libc::WIFEXITED(wstatus) || libc::WEXITSTATUS(wstatus) != 0 {
            eprintln!("kvmshm-demo: writer {w} failed (wait status {wstatus:#x})");
            status = 1;
        }
    }
    let micros = start.elapsed().as_micros();
    let published: u64 = (0..procs).map(|w| area.published(w)).sum();
    let bytes = published * RECORD_LEN as u64;
    println!("write: {procs} processes, {published} records, {bytes} bytes, {micros} us");
    status
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

fn echo(device: &Device, path: &str) -> i32 {
    let mailbox = Mailbox::format(device.region()).unwrap_or_else(|e| fail(2, &format!("{path}: {e}")));
    match mailbox.serve() {
        Ok(served) => {
            println!("echo: served {served} requests");
            0
        }
        Err(e) => fail(1, &format!("echo: {e}")),
    }
}
