//! Issue 10: nothing a guest does crashes, floods or wedges the VMM, and a
//! backing file that shrinks under it ends it with a clear message.

use std::path::Path;
use std::time::{Duration, Instant};

use kvmshm_tests::{
    Hugetlbfs, Running, Scratch, image_file_for, initrd_with, kvmshm, static_c_program, vmm_image, vmm_with,
};
use shm_layout::host::MappedFile;

/// A guest root user attacks its device: every access size at every offset
/// of BAR0's page, then thousands of odd configuration writes (BARs over
/// RAM, the APIC and each other, decoding on and off). The VMM runs on, its
/// log stays short even at debug level, and the device still works after
/// the guest restores its configuration: the records it writes then reach
/// the host.
#[test]
fn a_hostile_guest_leaves_the_vmm_running_and_its_log_short() {
    hammer(
        "hostile",
        "1 5",
        &[],
        &[
            "hammer: BAR0: 40908 accesses of 1, 2, 4, 8 and 16 bytes at every offset of its page",
            "hammer: config: 2255 writes of 1, 2 and 4 bytes at every offset",
        ],
    );
}

/// The same attack from two vCPUs at once: while one moves the BARs and
/// switches decoding, a process pinned to each vCPU sweeps BAR0 over and
/// over, so that accesses meet BAR moves in the device model and KVM's
/// memory slots. The outcome is the same as from one vCPU.
#[test]
fn a_hostile_guest_on_two_vcpus_leaves_the_vmm_running_and_its_log_short() {
    hammer(
        "hostile-smp",
        "1 5 --concurrent",
        &["--cpus", "2"],
        &[
            "hammer: BAR0: 40908 accesses of 1, 2, 4, 8 and 16 bytes at every offset of its page",
            "writes of 1, 2 and 4 bytes at every offset",
            "by 2 processes, one per CPU, while the configuration changed",
        ],
    );
}

/// Runs `tests/programs/hammer.c` with `args` against the device in slot 1,
/// then 2 writers; checks the guest printed `lines`, the VMM ended well with
/// a short log, and the host finds every record.
fn hammer(test: &str, args: &str, extra: &[&str], lines: &[&str]) {
    let scratch = Scratch::new(test);
    let hammer = static_c_program(&scratch, "hammer");
    let initrd = initrd_with(&scratch, &image_file_for(extra, "initramfs.cpio"), &[("/bin/hammer", &hammer)]);
    let file = scratch.path("shm");
    let shm = format!("path={},size=1M", file.display());
    let run = format!("run=/bin/hammer -- {args} --then write --procs=2 --records=1000");
    let mut cmd = vmm_with(&initrd, &run, &[extra, &["--shm", &shm]].concat());
    cmd.env("RUST_LOG", "debug");
    let out = Running::vmm(cmd).finish();

    assert_eq!(out.code, Some(0), "{}", out.transcript());
    for line in lines.iter().chain(&["hammer: restored; IVPosition 0 as before", "write: 2 processes, 2000 records"]) {
        assert!(out.console.contains(line), "missing {line:?}\n{}", out.transcript());
    }
    let lines = out.log.lines().count();
    assert!(lines < 300, "the VMM logged {lines} lines\n{}", out.log);
    // What it left out, it counted.
    assert!(out.log.contains("like it not logged before this") || out.log.contains("were not logged"), "{}", out.log);
    assert!(out.log.contains("left unmapped"), "the hostile BAR placements were seen\n{}", out.log);
    let after = kvmshm(&["verify", file.to_str().unwrap(), "--writers", "2", "--records", "1000"]);
    assert_eq!(after.code, Some(0), "{}", after.transcript());
    assert!(after.console.contains("all 2000 records intact"), "{}", after.transcript());
}

/// A host process truncates the backing file while guest processes write
/// into it: the VMM ends within seconds, with status 125 and a message that
/// names the file and its new size, instead of spinning.
#[test]
fn a_backing_file_that_shrinks_under_a_writing_guest_ends_the_vmm() {
    let scratch = Scratch::new("shrink");
    shrink_under_a_writing_guest(&scratch.path("records"), 4096);
}

/// The same with a file in 2 MiB pages (hugetlbfs, which truncates only to
/// whole huge pages). Needs root: the test mounts hugetlbfs and grows the
/// host's pool of huge pages, and fails saying so without.
#[test]
fn a_hugetlbfs_backing_file_that_shrinks_under_a_writing_guest_ends_the_vmm() {
    let scratch = Scratch::new("shrink-huge");
    let fs = Hugetlbfs::new(scratch.path("mnt"), REGION).expect("hugetlbfs for the region (the test needs root)");
    shrink_under_a_writing_guest(&fs.path("records"), Hugetlbfs::PAGE);
}

/// The size of the region the shrink tests' guests write into.
const REGION: u64 = 64 << 20;

/// Boots a guest whose processes write records into `file` (which the VMM
/// creates, [`REGION`] bytes), truncates the file to `to` bytes once the
/// host sees records, and checks how the VMM ends.
fn shrink_under_a_writing_guest(file: &Path, to: u64) {
    let shm = format!("path={},size={REGION}", file.display());
    let mut vm = Running::vmm(vmm_image(
        "run=/bin/kvmshm-demo -- write --procs 4 --records 200000 --spin 100000",
        &["--shm", &shm],
    ));
    // Running's deadline bounds the wait (is_running fails the test there).
    loop {
        assert!(vm.is_running(), "the VM ended before the file was truncated");
        if MappedFile::open(file).and_then(|f| f.verify_records(4, 200_000)).is_ok_and(|r| r.published >= 1000) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::OpenOptions::new().write(true).open(file).unwrap().set_len(to).unwrap();
    let truncated = Instant::now();
    while vm.is_running() && truncated.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = truncated.elapsed();
    let out = vm.finish();
    println!("the VMM ended {took:?} after the truncation");
    assert_eq!(out.code, Some(125), "{}", out.transcript());
    let message = format!("the backing file {} shrank to {to} bytes while the guest ran", file.display());
    assert!(out.log.contains(&message), "missing {message:?}\n{}", out.transcript());
    assert!(took < Duration::from_secs(10), "the VMM took {took:?} to stop\n{}", out.transcript());
}

/// Once the filter is on, a system call outside the allowlist ends the VMM
/// with a message that names it. (`--seccomp-selftest` makes one: getppid.)
#[test]
fn a_system_call_outside_the_allowlist_ends_the_vmm_and_is_named() {
    let cmd = vmm_image("", &["--seccomp-selftest"]);
    let out = Running::spawn(cmd).expect("start the VMM").finish_unchecked();
    assert_eq!(out.code, Some(125), "{}", out.transcript());
    assert!(
        out.log.contains("seccomp: system call getppid (110) is not on the VMM's allowlist"),
        "{}",
        out.transcript()
    );
    assert!(!out.console.contains("kvmshm-init"), "the guest never ran");
}
