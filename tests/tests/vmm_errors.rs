//! Bad input to the VMM gets a clear error before any guest runs.

use std::process::Command;

use kvmshm_tests::{Scratch, host_binary, image_file};

fn vmm(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(host_binary("vmm")).args(args).output().expect("start the VMM");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn missing_kernel() {
    let (code, err) = vmm(&["--kernel", "/nonexistent/vmlinux"]);
    assert_eq!(code, Some(125));
    assert!(err.contains("kernel /nonexistent/vmlinux: No such file or directory"), "{err}");
}

#[test]
fn kernel_that_is_not_elf() {
    let initrd = image_file("initramfs.cpio");
    let (code, err) = vmm(&["--kernel", initrd.to_str().unwrap()]);
    assert_eq!(code, Some(125));
    assert!(err.contains("not an ELF vmlinux"), "{err}");
}

#[test]
fn memory_out_of_range() {
    let kernel = image_file("vmlinux");
    for mib in ["8", "2000000"] {
        let (code, err) = vmm(&["--kernel", kernel.to_str().unwrap(), "--memory", mib]);
        assert_eq!(code, Some(125));
        assert!(err.contains(&format!("--memory {mib} MiB: the guest needs")), "{err}");
    }
}

#[test]
fn cpus_out_of_range() {
    let kernel = image_file("vmlinux");
    for cpus in ["0", "33"] {
        let (code, err) = vmm(&["--kernel", kernel.to_str().unwrap(), "--cpus", cpus]);
        assert_eq!(code, Some(125), "{err}");
        assert!(err.contains(&format!("--cpus {cpus}: this VMM runs 1 to 32 vCPUs")), "{err}");
    }
}

#[test]
fn initramfs_that_does_not_fit() {
    let scratch = Scratch::new("big-initrd");
    let big = scratch.path("big.cpio");
    std::fs::File::create(&big).unwrap().set_len(40 << 20).unwrap();
    let kernel = image_file("vmlinux");
    let (code, err) = vmm(&["--kernel", kernel.to_str().unwrap(), "--initrd", big.to_str().unwrap(), "--memory", "32"]);
    assert_eq!(code, Some(125));
    assert!(err.contains("does not fit in guest memory"), "{err}");
}

/// Runs the VMM with one `--shm` option; it must fail before the guest starts.
fn vmm_with_shm(shm: &str) -> (Option<i32>, String) {
    let kernel = image_file("vmlinux");
    let initrd = image_file("initramfs.cpio");
    vmm(&["--kernel", kernel.to_str().unwrap(), "--initrd", initrd.to_str().unwrap(), "--shm", shm])
}

#[test]
fn shm_size_that_is_not_a_power_of_two() {
    let scratch = Scratch::new("shm-size");
    let file = scratch.path("shm");
    let (code, err) = vmm_with_shm(&format!("path={},size=3M", file.display()));
    assert_ne!(code, Some(0));
    assert!(err.contains("not a power of two"), "{err}");
    assert!(!file.exists(), "nothing is created for a bad option");
}

#[test]
fn shm_file_shorter_than_the_size_is_left_untouched() {
    let scratch = Scratch::new("shm-short");
    let file = scratch.path("shm");
    let content: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
    std::fs::write(&file, &content).unwrap();
    let (code, err) = vmm_with_shm(&format!("path={},size=1M", file.display()));
    assert_eq!(code, Some(125));
    assert!(
        err.contains("the file is 5000 bytes, shorter than the requested size 1048576; it was left untouched"),
        "{err}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), content);
}

#[test]
fn shm_path_that_cannot_be_opened() {
    let (code, err) = vmm_with_shm("path=/nonexistent-dir/shm,size=1M");
    assert_eq!(code, Some(125));
    assert!(err.contains("/nonexistent-dir/shm: cannot open: No such file or directory"), "{err}");
}

#[test]
fn shm_file_is_created_with_mode_0600_and_sized() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = Scratch::new("shm-create");
    let file = scratch.path("shm");
    // A kernel that is not ELF stops the VMM after the shared files are set up.
    let initrd = image_file("initramfs.cpio");
    let _ = vmm(&["--kernel", initrd.to_str().unwrap(), "--shm", &format!("path={},size=64K", file.display())]);
    let meta = std::fs::metadata(&file).expect("the missing file was created");
    assert_eq!(meta.len(), 64 << 10);
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
}

#[test]
fn more_devices_than_the_bus_takes() {
    let kernel = image_file("vmlinux");
    let mut args = vec!["--kernel".to_string(), kernel.to_str().unwrap().to_string()];
    for i in 0..32 {
        args.extend(["--shm".into(), format!("path=/nonexistent/shm{i},size=4K")]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, err) = vmm(&args);
    assert_eq!(code, Some(125));
    assert!(err.contains("32 --shm devices: the PCI bus takes at most 31"), "{err}");
}

/// The host tool survives a backing file that shrinks while it waits on it
/// (its next access raises SIGBUS) and says so.
#[test]
fn the_host_tool_reports_a_file_that_shrinks_under_it() {
    let scratch = Scratch::new("tool-shrink");
    let file = scratch.path("shm");
    std::fs::File::create(&file).unwrap().set_len(1 << 20).unwrap();
    // No echo server in the file: kvmshm polls it, waiting for one.
    let tool = Command::new(host_binary("kvmshm"))
        .args(["send", file.to_str().unwrap(), "--count", "1", "--wait", "60"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(0).unwrap();
    let out = tool.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("{}: the file shrank to 0 bytes while this process used it", file.display())),
        "{err}"
    );
}
