//! Bad input to the VMM gets a clear error before any guest runs.

use std::process::Command;

use kvmshm_tests::{host_binary, image_file, Scratch};

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
    for mib in ["8", "4096"] {
        let (code, err) = vmm(&["--kernel", kernel.to_str().unwrap(), "--memory", mib]);
        assert_eq!(code, Some(125));
        assert!(err.contains(&format!("--memory {mib} MiB: the guest needs")), "{err}");
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
