//! Issues 4 and 5: host files shared with guest processes through the
//! ivshmem device and the guest driver, checked byte for byte on the host,
//! live and after the VM has ended. One boot runs several checks
//! (`kvmshm-demo` runs commands separated by `::`).

use std::path::Path;
use std::time::{Duration, Instant};

use kvmshm_tests::{Scratch, VmResult, kvmshm, kvmshm_beside_vm, run_vm, spawn_vm};
use shm_layout::host::MappedFile;

const MIB: u64 = 1 << 20;

fn shm(path: &Path, size: &str, id: u32) -> String {
    format!("path={},size={size},id={id}", path.display())
}

fn new_file(path: &Path, size: u64) {
    std::fs::File::create(path).unwrap().set_len(size).unwrap();
}

fn ok(out: VmResult) -> VmResult {
    assert_eq!(out.code, Some(0), "{}", out.transcript());
    out
}

#[test]
fn both_directions_on_two_devices_live_and_after_exit() {
    let scratch = Scratch::new("exchange");
    let (big, small, mailbox) = (scratch.path("big"), scratch.path("small"), scratch.path("echo"));
    new_file(&big, 16 * MIB);
    new_file(&small, 2 * MIB);
    new_file(&mailbox, 64 << 10);
    ok(kvmshm(&["fill", big.to_str().unwrap(), "--seed", "11"]));
    ok(kvmshm(&["fill", small.to_str().unwrap(), "--seed", "22"]));

    // Host→guest on both devices, the driver's API checks, then guest→host
    // on both (4 x 10,000 and 2 x 1,000 records), then the echo server.
    // (`--name=value` keeps the words within Linux's 32 for init.)
    let run = "/bin/kvmshm-demo -- \
        verify --seed=11 :: --device=/dev/kvmshm1 verify --seed=22 :: \
        check-api :: \
        write --procs=4 --records=10000 --seed=5 :: \
        --device=/dev/kvmshm1 write --procs=2 --records=1000 --seed=6 :: \
        --device=/dev/kvmshm2 echo";
    let shm_big = shm(&big, "16M", 0);
    let shm_small = shm(&small, "2M", 1);
    let shm_echo = shm(&mailbox, "64K", 2);
    let vm = spawn_vm(run, &["--shm", &shm_big, "--shm", &shm_small, "--shm", &shm_echo]);

    // The echo server starts after the writers are done; while it serves,
    // the VM runs and the host reads the guest's records from its own
    // mapping of the files, without any restart.
    let (mut vm, echo) = kvmshm_beside_vm(
        vm,
        &["send", mailbox.to_str().unwrap(), "--count", "1000", "--wait", "600", "--keep-serving"],
    );
    if echo.code != Some(0) {
        vm.kill();
        panic!("echo failed: {}\nVM: {}", echo.transcript(), vm.finish().transcript());
    }
    assert!(echo.console.starts_with("1000 requests"), "{}", echo.transcript());
    assert!(vm.is_running(), "the VM is still running while the host checks");
    let live = ok(kvmshm(&["verify", big.to_str().unwrap(), "--writers", "4", "--records", "10000"]));
    assert!(live.console.contains("all 40000 records intact, each exactly once"), "{}", live.transcript());
    assert!(vm.is_running(), "the VM is still running after the live check");
    ok(kvmshm(&["send", mailbox.to_str().unwrap(), "--count", "1", "--wait", "10"]));

    let out = vm.finish();
    assert_eq!(out.code, Some(0), "{}", out.transcript());
    for line in [
        "verify: OK: all 16773120 bytes match",
        "verify: OK: all 2093056 bytes match",
        "check-api: 6 bad mmap requests refused with EINVAL, region unchanged, pread/pwrite agree with the mapping, BAR0 and BAR2 of each device claimed: OK",
        "check-api: a whole mapping of 16 MiB took a page fault per 2 MiB (8), and agrees with the device's after a hole is punched in it; a mapping from 4 KiB agrees too: OK",
        "write: 4 processes, 40000 records, 2560000 bytes",
        "write: 2 processes, 2000 records, 128000 bytes",
        "echo: served 1001 requests",
    ] {
        assert!(out.console.contains(line), "missing {line:?}\n{}", out.transcript());
    }

    // After the VM has ended, the files hold exactly what the guest wrote.
    let after = ok(kvmshm(&["verify", big.to_str().unwrap(), "--writers", "4", "--records", "10000"]));
    assert!(after.console.contains("all 40000 records intact, each exactly once"), "{}", after.transcript());
    let after = ok(kvmshm(&["verify", small.to_str().unwrap(), "--writers", "2", "--records", "1000"]));
    assert!(after.console.contains("all 2000 records intact, each exactly once"), "{}", after.transcript());
    assert_eq!(std::fs::metadata(&small).unwrap().len(), 2 * MIB, "the file keeps its size");
}

#[test]
fn a_flipped_byte_fails_the_guest_check_and_the_vmm_status() {
    let scratch = Scratch::new("flipped");
    let file = scratch.path("data");
    new_file(&file, MIB);
    ok(kvmshm(&["fill", file.to_str().unwrap(), "--seed", "7"]));
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[0x12345] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();

    let shm = shm(&file, "1M", 0);
    let out = run_vm("/bin/kvmshm-demo -- verify --seed 7", &["--shm", &shm]);
    assert_eq!(out.code, Some(1), "{}", out.transcript());
    let expected = format!(
        "verify: MISMATCH at offset 0x12345: expected {:#04x}, found {:#04x}",
        bytes[0x12345] ^ 1,
        bytes[0x12345]
    );
    assert!(out.console.contains(&expected), "missing {expected:?}\n{}", out.transcript());
}

#[test]
fn records_published_before_a_sigkill_survive_it() {
    let scratch = Scratch::new("sigkill");
    let file = scratch.path("records");
    // Writers that pause between records, so that the VM is killed while
    // they are all still writing.
    let shm = shm(&file, "64M", 0);
    let mut vm = spawn_vm("/bin/kvmshm-demo -- write --procs 4 --records 200000 --spin 100000", &["--shm", &shm]);

    let deadline = Instant::now() + Duration::from_secs(600);
    let report = loop {
        assert!(vm.is_running(), "the VM ended before it was killed");
        assert!(Instant::now() < deadline, "the guest published no records in time");
        if let Ok(report) = MappedFile::open(&file).and_then(|f| f.verify_records(4, 200_000))
            && report.published >= 1000
        {
            break report;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let killed = vm.kill();
    assert_eq!(killed.code(), None, "killed by a signal");

    let after = MappedFile::open(&file).unwrap().verify_records(4, 200_000).unwrap();
    assert_eq!(after.faults(), 0, "{after}");
    assert!(after.published >= report.published, "{after} (before the kill: {report})");
    assert_eq!(after.intact, after.published, "every published record is intact: {after}");
    assert!(after.shortfall() > 0, "the run was cut short: {after}");
}

#[test]
fn removing_a_mapped_device_leaves_the_guest_running_and_the_mapping_gone() {
    let scratch = Scratch::new("removal");
    let file = scratch.path("shm");
    let shm = shm(&file, "1M", 0);
    let out = run_vm("/bin/kvmshm-demo -- check-removal", &["--shm", &shm]);
    assert_eq!(out.code, Some(0), "{}", out.transcript());
    let line = "check-removal: removed 0000:00:01.0; access to the old mapping: SIGBUS; read after removal: ENODEV";
    assert!(out.console.contains(line), "missing {line:?}\n{}", out.transcript());
    let data = std::fs::read(&file).unwrap();
    assert!(data.starts_with(b"written before the device was removed"), "the guest's write reached the file");
}

#[test]
fn the_memory_slot_follows_bar2_when_the_guest_moves_it() {
    let scratch = Scratch::new("move-bar");
    let file = scratch.path("shm");
    new_file(&file, 4 * MIB);
    ok(kvmshm(&["fill", file.to_str().unwrap(), "--seed", "5"]));
    let shm = shm(&file, "4M", 0);
    // The guest moves BAR2 through the configuration space, then Linux
    // rediscovers the device and assigns its BARs again (moving them once
    // more); the data must be where the guest looks each time.
    let run = "/bin/kvmshm-demo -- move-bar --to=0x200000000 :: verify --seed=5 :: write --procs=2 --records=1000";
    let out = run_vm(run, &["--shm", &shm]);
    assert_eq!(out.code, Some(0), "{}", out.transcript());
    assert!(out.console.contains("BAR2 moved from 0x100000000 to 0x200000000"), "{}", out.transcript());
    assert!(out.log.contains("BAR2 of 00:01.0 mapped at 0x200000000"), "the VMM moved the slot\n{}", out.transcript());
    assert!(out.console.contains("verify: OK"), "{}", out.transcript());
    let after = ok(kvmshm(&["verify", file.to_str().unwrap(), "--writers", "2", "--records", "1000"]));
    assert!(after.console.contains("all 2000 records intact"), "{}", after.transcript());
}

#[test]
fn as_many_devices_as_the_bus_takes_each_claimed_read_and_written() {
    const DEVICES: usize = 31;
    let scratch = Scratch::new("many-devices");
    let files: Vec<_> = (0..DEVICES).map(|i| scratch.path(&format!("shm{i}"))).collect();
    for (i, f) in files.iter().enumerate() {
        new_file(f, 64 << 10);
        ok(kvmshm(&["fill", f.to_str().unwrap(), "--seed", &(100 + i).to_string()]));
    }
    let shm: Vec<String> = files.iter().enumerate().map(|(i, f)| shm(f, "64K", i as u32)).collect();
    let args: Vec<&str> = shm.iter().flat_map(|s| ["--shm", s.as_str()]).collect();
    // /dev/kvmshmN is the device in slot N+1, whose file is number N: with
    // `--device all`, device N checks seed 100 + N and writes with seed 7 + N.
    let run = "/bin/kvmshm-demo -- --device=/dev/kvmshm30 check-api :: \
        --device=all verify --seed=100 :: --device=all write --procs=1 --records=500 --seed=7";
    let out = run_vm(run, &args);
    assert_eq!(out.code, Some(0), "{}", out.transcript());
    assert!(out.console.contains("BAR0 and BAR2 of each device claimed: OK"), "{}", out.transcript());
    assert_eq!(out.console.matches("verify: OK").count(), DEVICES, "{}", out.transcript());
    for f in &files {
        let check = ok(kvmshm(&["verify", f.to_str().unwrap(), "--writers", "1", "--records", "500"]));
        assert!(check.console.contains("all 500 records intact"), "{}: {}", f.display(), check.transcript());
    }
}
