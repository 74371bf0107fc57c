//! Issue 11: ivshmem-doorbell. VMs and host processes join one ivshmem
//! server (`kvmshm server`), share its memory and ring each other: the VMM's
//! device (MSI-X, ioeventfd, irqfd), the guest driver's ring, wait and
//! masking, QEMU's ivshmem-doorbell on the same server, and the server
//! surviving a peer that dies.

use std::process::{Command, Stdio};
use std::time::Duration;

use kvmshm_tests::{
    IvshmemServer, Qemu, Running, Scratch, VmResult, host_binary, kvmshm, kvmshm_beside_vm, run_vm, spawn_vm, vmm,
};

/// A host process and a guest: 1,000 interrupt-driven round trips through
/// the echo mailbox, every answer checked in order; neither side polls.
#[test]
fn a_host_peer_and_a_guest_make_1000_interrupt_driven_round_trips() {
    let scratch = Scratch::new("doorbell-echo");
    let server = IvshmemServer::start(&scratch, 2);
    let vm = spawn_vm("/bin/kvmshm-demo -- echo --interrupts=1", &["--shm", &server.shm_option()]);
    let shm = server.shm.to_str().unwrap();
    let socket = server.socket.to_str().unwrap();
    let (vm, send) = kvmshm_beside_vm(vm, &["send", shm, "--socket", socket, "--count", "1000", "--wait", "600"]);
    assert_eq!(send.code, Some(0), "{}", send.transcript());
    assert!(send.console.starts_with("1000 requests"), "{}", send.transcript());
    assert!(!send.log.contains("the echo server polls"), "the guest waited for interrupts\n{}", send.transcript());
    let out = vm.finish();
    assert_eq!(out.code, Some(0), "{}", out.transcript());
    assert!(out.console.contains("echo: served 1000 requests (interrupts)"), "{}", out.transcript());
    assert!(out.log.contains(" (2 vectors): the memory of ivshmem server"), "{}", out.transcript());
}

/// The guest rings itself: delivered at once; held as the pending bit while
/// it masks the vector in the MSI-X table; delivered when it unmasks it.
#[test]
fn a_masked_vector_holds_its_rings_pending_until_unmasked() {
    let scratch = Scratch::new("doorbell-mask");
    let server = IvshmemServer::start(&scratch, 1);
    let out = run_vm("/bin/kvmshm-demo -- check-doorbell --slot=1 :: check-api", &["--shm", &server.shm_option()]);
    assert_eq!(out.code, Some(0), "{}", out.transcript());
    for line in ["check-doorbell: peer 0: a ring is delivered; masked, 3 rings set the pending bit", "check-api:"] {
        assert!(out.console.contains(line), "missing {line:?}\n{}", out.transcript());
    }
}

/// A guest process blocked waiting for the doorbell's interrupts, without
/// a timeout, when the device is removed: it is woken with ENODEV, and the
/// old mapping and the file behave as for a plain device.
#[test]
fn removal_wakes_a_blocked_waiter_with_enodev() {
    let scratch = Scratch::new("doorbell-removal");
    let server = IvshmemServer::start(&scratch, 1);
    let out = run_vm("/bin/kvmshm-demo -- check-removal", &["--shm", &server.shm_option()]);
    assert_eq!(out.code, Some(0), "{}", out.transcript());
    for line in [
        "check-removal: a wait blocked at removal: ENODEV",
        "check-removal: removed 0000:00:01.0; access to the old mapping: SIGBUS; read after removal: ENODEV",
    ] {
        assert!(out.console.contains(line), "missing {line:?}\n{}", out.transcript());
    }
}

/// The lead's command for [`pingpong_with_our_vm`]: `rounds` rounds of
/// `pingpong` as side 0 against peer 1.
fn lead_run(rounds: u32) -> String {
    format!("/bin/kvmshm-demo -- pingpong --peer=1 --rounds={rounds} --side=0")
}

/// Once `lead` (started with [`lead_run`]) has joined `server` as peer 0,
/// one of our VMs follows as peer 1; both must play every round, with data
/// and rings both ways, and end with status 0. Returns the lead's output.
fn pingpong_with_our_vm(lead: Running, server: &IvshmemServer, rounds: u32) -> VmResult {
    // Ids go in the order of joining: the lead is 0, the follower 1.
    server.await_log("peer 0 joined", 1, Duration::from_secs(60));
    let run = format!("/bin/kvmshm-demo -- pingpong --peer=0 --rounds={rounds} --side=1");
    let follower = spawn_vm(&run, &["--shm", &server.shm_option()]);
    let (follower, lead) = (follower.finish(), lead.finish());
    for (out, line) in [
        (&lead, format!("pingpong: {rounds} rounds with peer 1 as side 0, data and rings both ways")),
        (&follower, format!("pingpong: {rounds} rounds with peer 0 as side 1, data and rings both ways")),
    ] {
        assert_eq!(out.code, Some(0), "{}", out.transcript());
        assert!(out.console.contains(&line), "missing {line:?}\n{}", out.transcript());
    }
    lead
}

/// Two of our VMs on one server take turns: each writes data for the other
/// and rings it, 50 rounds, both ways.
#[test]
fn two_vms_exchange_data_and_rings_both_ways() {
    let scratch = Scratch::new("doorbell-vms");
    let server = IvshmemServer::start(&scratch, 1);
    let lead = Running::vmm(vmm(&lead_run(50), &["--shm", &server.shm_option()]));
    pingpong_with_our_vm(lead, &server, 50);
}

/// QEMU interop: a QEMU VM (Debian's QEMU, its own ivshmem-doorbell, our
/// image and driver) and one of our VMs on one server take turns, 20 rounds,
/// each writing data for the other and ringing it.
#[test]
fn a_qemu_vm_and_ours_exchange_data_and_rings_both_ways() {
    let qemu = Qemu::detect().unwrap_or_else(|e| panic!("QEMU is needed here (test.sh installs it): {e}"));
    let scratch = Scratch::new("doorbell-qemu");
    let server = IvshmemServer::start(&scratch, 1);
    let lead = Running::spawn(qemu.doorbell_vm(&server, &lead_run(20)))
        .expect("start qemu-system-x86_64 (Debian package qemu-system-x86)");
    let lead = pingpong_with_our_vm(lead, &server, 20);
    assert!(lead.console.contains("kvmshm-init: exit status 0"), "{}", lead.transcript());
}

/// A host peer killed with SIGKILL in the middle of its requests: the server
/// announces it gone, the guest's rings to it are dropped, and a new host
/// peer is served as if nothing happened.
#[test]
fn a_peer_killed_mid_way_is_announced_gone_and_nobody_hangs() {
    let scratch = Scratch::new("doorbell-kill");
    let server = IvshmemServer::start(&scratch, 1);
    let mut vm = spawn_vm("/bin/kvmshm-demo -- echo --interrupts=1", &["--shm", &server.shm_option()]);
    let (shm, socket) = (server.shm.to_str().unwrap(), server.socket.to_str().unwrap());
    // Warm up: the guest is serving once this returns.
    let (vm_back, first) =
        kvmshm_beside_vm(vm, &["send", shm, "--socket", socket, "--count", "1", "--wait", "600", "--keep-serving"]);
    vm = vm_back;
    assert_eq!(first.code, Some(0), "{}", first.transcript());
    server.await_log(" left: closed its connection", 1, Duration::from_secs(30));

    let mut doomed = Command::new(host_binary("kvmshm"))
        .args(["send", shm, "--socket", socket, "--count", "1000000", "--keep-serving"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The VM, the first client and this one.
    server.await_log(" joined", 3, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(2));
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    server.await_log(" left: closed its connection", 2, Duration::from_secs(30));
    assert!(vm.is_running(), "the VM died with the peer");

    let after = kvmshm(&["send", shm, "--socket", socket, "--count", "100", "--wait", "60"]);
    assert_eq!(after.code, Some(0), "{}", after.transcript());
    assert!(after.console.starts_with("100 requests"), "{}", after.transcript());
    let out = vm.finish();
    assert_eq!(out.code, Some(0), "{}", out.transcript());
    assert!(out.log.matches(" left").count() >= 2, "the VMM heard of both leaving\n{}", out.transcript());
}
