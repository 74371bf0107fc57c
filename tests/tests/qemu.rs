//! Issue 13: the README's QEMU command runs as written on this host (QEMU's
//! `-cpu` and the guest's flags are found, not assumed), boots the image with
//! QEMU's ivshmem-plain device, exits when the guest is done, and the host
//! finds what the guest wrote.

use std::path::Path;
use std::process::Command;

use kvmshm_tests::{Running, Scratch, repo};

/// The first `sh` block of the README's "With QEMU" section.
fn readme_qemu_block() -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("read README.md");
    let section = readme.split("\n## With QEMU\n").nth(1).expect("README has a \"With QEMU\" section");
    let block = section.split("```sh\n").nth(1).expect("the section has a sh block");
    block.split("\n```").next().expect("the block ends").to_string()
}

#[test]
fn the_readme_qemu_command_boots_the_image_with_ivshmem_plain() {
    let block = readme_qemu_block();
    // The block's file, in this test's own directory.
    let scratch = Scratch::new_in(Path::new("/dev/shm"), "readme-qemu");
    let file = scratch.path("q");
    let script = block.replace("/dev/shm/q", file.to_str().expect("UTF-8 path"));
    assert!(script.contains("qemu-system-x86_64") && script != block, "unexpected README block:\n{block}");

    let mut cmd = Command::new("bash");
    cmd.args(["-euo", "pipefail", "-c", &script]).current_dir(repo());
    let out = Running::spawn(cmd).expect("start bash").finish_unchecked();
    assert_eq!(out.code, Some(0), "{}", out.transcript());
    // The guest checked the host's fill and wrote its records; the host found them all.
    assert!(out.console.contains("verify: OK: all"), "{}", out.transcript());
    assert!(out.console.contains("kvmshm-init: exit status 0"), "{}", out.transcript());
    assert!(out.console.contains("all 2000 records intact, each exactly once"), "{}", out.transcript());
}
