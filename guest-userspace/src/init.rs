//! The guest's /init: mounts what programs need, loads the shared-memory
//! driver, runs the program named by `run=PATH` on the kernel command line
//! with the words after ` -- ` as its arguments, prints its exit status in
//! one machine-readable line and powers off.
//!
//! It is a part of `kvmshm-demo`, which runs it when started as `/init` (a
//! hard link in the initramfs): one copy of the Rust runtime in the
//! initramfs instead of two. Where guest kernel code is emulated, unpacking
//! the initramfs costs about 0.7 s per MB at 1 us an instruction.
//!
//! The arguments are read from /proc/cmdline rather than from init's argv:
//! Linux also hands init every bare word it does not know itself (such as
//! `noxsave`, which it parses without registering), so argv has extras.
//!
//! Without `run=` it starts /bin/sh on the console if the image has one.
//!
//! Every system call costs tens of milliseconds where guest kernel code is
//! emulated, so this does the few that are needed and nothing else.

use std::ffi::CString;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;

const DRIVER: &str = "/lib/kvmshm.ko";
/// Read by the VMM (vmm/src/console.rs); keep the two in step.
const EXIT_MARKER: &str = "kvmshm-init: exit status ";
/// The first line user space prints: boot benchmarks time the boot to it.
const START_MARKER: &str = "kvmshm-init: started";

fn mount(source: &str, target: &str, fstype: &str) {
    let c = |s: &str| CString::new(s).expect("no NUL in mount arguments");
    let (source, target_c, fstype) = (c(source), c(target), c(fstype));
    // SAFETY: all pointers are valid NUL-terminated strings; data may be NULL.
    let r = unsafe { libc::mount(source.as_ptr(), target_c.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if r != 0 {
        eprintln!("kvmshm-init: mount {target}: {}", std::io::Error::last_os_error());
    }
}

fn load_driver() {
    let file = match fs::File::open(DRIVER) {
        Ok(f) => f,
        Err(e) => return eprintln!("kvmshm-init: {DRIVER}: {e}"),
    };
    use std::os::unix::io::AsRawFd;
    // SAFETY: finit_module(fd, "", 0): the fd is open and the params string is NUL-terminated.
    let r = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), c"".as_ptr(), 0) };
    if r != 0 {
        eprintln!("kvmshm-init: loading {DRIVER}: {}", std::io::Error::last_os_error());
    }
}

/// The value of `run=` on the kernel command line, and the words after `--`.
fn run_target(cmdline: &str) -> (Option<&str>, Vec<&str>) {
    let mut words = cmdline.split_whitespace();
    let program = words.by_ref().take_while(|w| *w != "--").filter_map(|w| w.strip_prefix("run=")).last();
    (program, words.collect())
}

fn power_off() -> ! {
    // SAFETY: sync and reboot take no pointers. The kernel resets the
    // machine (the VMM boots it with reboot=k), which the VMM takes as the end.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    // reboot only returns on failure; PID 1 must not exit.
    loop {
        // SAFETY: pause has no arguments.
        unsafe { libc::pause() };
    }
}

/// Whether the program was started as init (`/init`, whatever its path).
pub fn started_as_init(argv0: &str) -> bool {
    argv0.rsplit('/').next() == Some("init")
}

pub fn main() -> ! {
    println!("{START_MARKER}");
    mount("devtmpfs", "/dev", "devtmpfs");
    mount("proc", "/proc", "proc");
    mount("sysfs", "/sys", "sysfs");
    load_driver();
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let (program, args) = run_target(&cmdline);
    let program = match program {
        Some(p) => p.to_string(),
        None if fs::metadata("/bin/sh").is_ok() => "/bin/sh".to_string(),
        None => {
            eprintln!("kvmshm-init: no run=PATH on the kernel command line and no /bin/sh in this image");
            power_off();
        }
    };
    let status = match Command::new(&program).args(&args).status() {
        // A signal ends a program with 128 + its number, as in the shell.
        Ok(s) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)),
        Err(e) => {
            eprintln!("kvmshm-init: cannot run {program}: {e}");
            127
        }
    };
    println!("{EXIT_MARKER}{status}");
    power_off();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_target_and_arguments() {
        assert_eq!(run_target("console=ttyS0 run=/bin/x noxsave -- a b\n"), (Some("/bin/x"), vec!["a", "b"]));
        assert_eq!(run_target("console=ttyS0 -- run=/bin/x"), (None, vec!["run=/bin/x"]));
        assert_eq!(run_target("run=/a run=/b"), (Some("/b"), vec![]));
    }

    #[test]
    fn started_as_init_by_name() {
        assert!(started_as_init("/init"));
        assert!(started_as_init("init"));
        assert!(!started_as_init("/bin/kvmshm-demo"));
        assert!(!started_as_init("/bin/initiator"));
    }
}
