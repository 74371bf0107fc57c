//! What this host's KVM does with guest kernel code, found by running a few
//! instructions at CPL0 in a throw-away VM rather than guessed.
//!
//! On KVM without hardware virtualisation (a nested "PVM" KVM) guest kernel
//! code runs in KVM's instruction emulator: about 1 us an instruction, and
//! some instructions (popcnt, xsave, cmpxchg16b, SMAP's clac/stac, int3...)
//! stop the guest with an emulation failure. The guest kernel then needs
//! command-line flags that keep it off those instructions.

use std::fmt;
use std::ops::Range;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress};

use crate::vcpu::Kicker;
use crate::{cpu, memory};

/// The CPU features that Linux must not use where its code is emulated:
/// the emulator lacks their instructions (POPCNT, CMPXCHG16B, SMAP's
/// CLAC/STAC, the SSE4 and AVX library code's LDMXCSR...), or, for ERMS and
/// FSRM, runs them slowly (see `memops_rep_quad` below). By Linux's name
/// (for people) and number (word * 32 + bit; word 4 is CPUID 1 ECX, 9 is
/// CPUID 7 EBX, 16 is CPUID 7 ECX, 18 is CPUID 7 EDX), and the command
/// line gives the numbers: Linux compares a name with each of its 700
/// feature names (1% of a boot here), and older kernels read only numbers.
/// Masking them in the vCPUs' CPUID does not do: on this kind of host the
/// guest kernel still sees the host's bits. AVX, AVX2 and PKU are not
/// listed: `noxsave` clears them, since Linux derives them from XSAVE.
const CLEARED_CPU_FEATURES: [(&str, u16); 17] = [
    ("popcnt", 4 * 32 + 23),
    ("cx16", 4 * 32 + 13),
    ("smap", 9 * 32 + 20),
    ("fsgsbase", 9 * 32),
    ("rdrand", 4 * 32 + 30),
    ("rdseed", 9 * 32 + 18),
    ("rdpid", 16 * 32 + 22),
    ("ssse3", 4 * 32 + 9),
    ("sse4_1", 4 * 32 + 19),
    ("sse4_2", 4 * 32 + 20),
    ("sha_ni", 9 * 32 + 29),
    ("aes", 4 * 32 + 25),
    ("pclmulqdq", 4 * 32 + 1),
    ("bmi1", 9 * 32 + 3),
    ("bmi2", 9 * 32 + 8),
    ("erms", 9 * 32 + 9),
    ("fsrm", 18 * 32 + 4),
];

/// With `clearcpuid=` (from [`CLEARED_CPU_FEATURES`]), the flags that keep
/// Linux off the instructions the emulator lacks, then those that spare the
/// boot emulated work it does not need: `retain_initrd` keeps the
/// initramfs's 1 MB rather than poisoning and freeing it, and the image's
/// switches (images/patches/0006 to 0008, 0014, 0021 and 0024; other
/// kernels ignore them): `no_thp_size_sysfs` skips the nine per-size THP
/// sysfs directories and `no_irq_sysfs` /sys/kernel/irq (193 nodes, 3% of
/// the boot), and `no_execmem_rox_cache`
/// gives module text pages of its own rather than a 2 MiB block filled with
/// INT3. `sysctl.vm.compaction_proactiveness=0` (Linux's own) keeps kcompactd
/// asleep until an allocation needs compaction: it otherwise wakes every
/// 500 ms to score fragmentation, and that wake-up and the switches it brings
/// took 1.2 to 1.8% of a busy guest CPU here (a spinning guest process lost
/// 7.0% of its time, 5.8% with the switch). Nothing in the image needs memory
/// compacted ahead of time: anonymous memory stays on 4 KiB pages (THP
/// "never") and the driver's huge mappings are PFN maps.
/// `timekeeping_interval_ms=250` (patch 0029) has the tick advance the
/// timekeeper every fourth tick rather than every one: a spinning guest
/// process lost 2.8 ms a tick on average instead of 3.3 (alternating boots),
/// and the coarse clocks and `time()` may now be a quarter second behind the
/// clock (clock_gettime stays exact). `timekeeping_resync` (patch 0031)
/// sets the real-time clock again from kvm-clock's wall clock once
/// kvm-clock has replaced jiffies, late in the boot: the timekeeper counts
/// ticks until then, each comes milliseconds late here, and the guest's
/// clock fell 1.3 to 1.6 s behind the host's. With more than one
/// vCPU, [`EMULATED_SMP_SWITCHES`] follow; then [`sched_slice_switch`]. Where the probe
/// finds REP STOSQ cheap, `memops_rep_quad` (patch 0011) follows: memset and
/// memcpy then move eight bytes per REP iteration (with ERMS and FSRM
/// hidden, they would otherwise run unrolled loops, at about twice the cost
/// here).
/// INT3, FWAIT and UD0/1/2, which Linux cannot avoid, are finished by the
/// VMM instead ([`crate::emulator::finish_instruction`]), so that kernels
/// without the image's patches boot too.
const EMULATED_KERNEL_SWITCHES: &str = "noxsave retain_initrd keep_kernel_image_gaps \
    keep_unpatched_alternatives no_execmem_rox_cache no_thp_size_sysfs no_irq_sysfs \
    sysctl.vm.compaction_proactiveness=0 timekeeping_interval_ms=250 timekeeping_resync";

/// With more than one vCPU (so an SMP kernel, whose vCPUs fold their memory
/// statistics every second), `sysctl.vm.stat_interval=10` has them do it
/// every 10 s: each fold stopped a busy vCPU for 6 ms here (0.6%), and
/// /proc/meminfo may now lag by that much. Only then: a kernel without SMP
/// has no such sysctl and says so on the console.
/// `cpuhp.parallel=0` starts the application processors one at a time:
/// in Linux's parallel bring-up every AP is started at once and then spins
/// in `cpuhp_ap_sync_alive` until the boot CPU gets to it, which here is
/// emulated spinning on the host's cores, taken from the boot CPU doing the
/// work (12 vCPUs on 2 cores booted in 14 s instead of 21, 32 in 47 s
/// instead of 135; 2 and 4 vCPUs 2% sooner).
/// `sched_busy_balance_ms=1000` (images/patches/0028) has a busy CPU
/// balance load at most once a second rather than every CPUs x 1.6 ticks at
/// 16 Hz (the kernel's clamp, HZ x CPUs / 10 jiffies: every third on 2 CPUs):
/// each pass stops the CPU's task for emulated milliseconds, pinned tasks
/// or not (two processes sharing CPU 1 of 2 ran 88.2 to 88.7% of the time
/// between them with it, 85.2 to 86.1% without; idle CPUs still pull work
/// at once). With it, a CPU that [`nohz_full_switch`] left without a tick
/// balances too, asked once a second by the first CPU while another CPU has
/// tasks waiting: three spinning processes left on CPU 0 of 2 while CPU 1
/// ran one stayed there for seconds, or for good, until then.
/// [`nohz_full_switch`] may follow.
const EMULATED_SMP_SWITCHES: &str = "sysctl.vm.stat_interval=10 cpuhp.parallel=0 sched_busy_balance_ms=1000";

/// `nohz_full=` every CPU but the first, so that a CPU running one task has
/// no tick (CONFIG_NO_HZ_FULL, images/smp.config): an SMP kernel's tick
/// stops a spinning process for about 6 ms here, 16 times a second (12% of
/// its time); on such a CPU it lost 3%, as much as a host thread (a 10 s
/// spin on CPU 1 of 2: 4 to 10 stops of a millisecond or more instead of
/// 160). The first CPU keeps the tick and does the others' timekeeping, RCU
/// callbacks and housekeeping, so only up to [`NOHZ_FULL_VCPUS_PER_HOST_CPU`]
/// vCPUs per host CPU. A kernel without NO_HZ_FULL ignores the switch (with
/// a warning in its log).
fn nohz_full_switch(cpus: u8, host_cpus: usize) -> String {
    if cpus > 1 && usize::from(cpus) <= NOHZ_FULL_VCPUS_PER_HOST_CPU * host_cpus {
        format!(" nohz_full=1-{}", cpus - 1)
    } else {
        String::new()
    }
}

/// How many vCPUs a host CPU may carry for [`nohz_full_switch`], measured
/// on 2 host cores with a writer pinned to every vCPU: with 4 vCPUs, three
/// alternating runs each, a process spinning on CPU 3 lost 2.8 to 4.0% of
/// its time with the switch and 12.9 to 16.6% without, and four writers
/// made 51 to 58 M records a second against 45 to 50; with 8 vCPUs the
/// spin on CPU 7 still lost less (2.6 to 3.2% against 9.6 to 11.2%), but
/// eight writers made 45 to 58 M either way and two made 46 to 57 M
/// against 55 to 60 (three alternating runs each); with 32 vCPUs the
/// run did not finish in 600 s with the switch (RCU stalls: the
/// grace-period thread on CPU 0, a sixteenth of a core, starved), 67 s
/// without.
const NOHZ_FULL_VCPUS_PER_HOST_CPU: usize = 2;

/// How long a task runs before another that shares its CPU gets a turn,
/// where guest kernel code is emulated: Linux's 0.7 ms (times
/// 1 + log2 of the CPUs) would leave tasks sharing a CPU almost no time to
/// run, since each switch (the slice's timer interrupt, the scheduler, the
/// switch itself) costs about 4 ms here. Four spinning processes on one
/// vCPU lost 20% of its time with 50 ms slices, 13% with 200 ms and 11% with
/// 1 s (one alone: 8%). The price is latency on a busy CPU: a process waking
/// every 10 ms beside three spinning ones woke late by 5 to 7 ms at the
/// median either way, but by 300 ms at the 99th percentile with 200 ms
/// slices (95 ms with 50 ms). A process that needs to run soon on a busy
/// CPU can ask for a shorter slice of its own (`sched_setattr`'s
/// `sched_runtime`), which also lets it preempt on waking.
const SLICE_US: u32 = 200_000;

/// `sched_base_slice_us` (images/patches/0008; other kernels ignore it) for
/// [`SLICE_US`] whatever the vCPU count: the kernel multiplies the base
/// slice by 1 + log2 of the CPUs (at most 8), as it does its own default.
fn sched_slice_switch(cpus: u8) -> String {
    let factor = 1 + cpus.clamp(1, 8).ilog2();
    format!(" sched_base_slice_us={}", SLICE_US / factor)
}

/// `memops_rep_quad` where an iteration of REP STOSQ costs less than this
/// many loop instructions: the unrolled loops it replaces take more than
/// one instruction per eight bytes, each a store (on this kind of host an
/// iteration costs about one loop instruction: 0.056 s per 512 KiB by REP
/// STOSQ at CPL0, 0.30 s by a loop of moves).
const REP_QUAD_MAX_INSTRUCTIONS: f64 = 2.0;

/// The names of [`CLEARED_CPU_FEATURES`], for the log.
pub fn cleared_cpu_feature_names() -> impl Iterator<Item = &'static str> {
    CLEARED_CPU_FEATURES.iter().map(|(name, _)| *name)
}

fn emulated_kernel_cmdline(rep_quad: bool, cpus: u8, host_cpus: usize) -> String {
    let features: Vec<String> = CLEARED_CPU_FEATURES.iter().map(|(_, bit)| bit.to_string()).collect();
    let smp = if cpus > 1 { format!(" {EMULATED_SMP_SWITCHES}") } else { String::new() };
    let nohz_full = nohz_full_switch(cpus, host_cpus);
    let slice = sched_slice_switch(cpus);
    let rep_quad = if rep_quad { " memops_rep_quad" } else { "" };
    format!("clearcpuid={} {EMULATED_KERNEL_SWITCHES}{smp}{nohz_full}{slice}{rep_quad}", features.join(","))
}

/// The image's kernel switches (images/patches/) for the two instructions
/// that Linux cannot avoid and QEMU cannot finish where guest kernel code is
/// emulated; our VMM finishes them itself and does not need these.
pub const QEMU_EMULATED_KERNEL_SWITCHES: &str = "no_int3_selftest no_fpu_drop_fwait";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("host probe VM")]
    Kvm(#[from] kvm_ioctls::Error),
    #[error("host probe VM")]
    Cpu(#[from] cpu::Error),
    #[error("host probe VM")]
    Ram(#[from] memory::Error),
    #[error("host probe VM: writing its code")]
    Code(#[from] vm_memory::GuestMemoryError),
    #[error("host probe VM: unexpected exit {0}")]
    Exit(String),
    #[error("host probe VM: its watchdog")]
    Watchdog(#[source] std::io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HostKvm {
    /// Time per guest instruction at CPL0, measured over a loop.
    pub kernel_ns_per_instruction: f64,
    /// Time per iteration of REP STOSQ at CPL0.
    pub kernel_ns_per_rep_stosq: f64,
    /// Whether `popcnt` at CPL0 stopped the probe with an emulation failure.
    pub kernel_popcnt_fails: bool,
    /// Whether the hypercall instruction Linux uses on this CPU's vendor
    /// failed at CPL0: KVM's emulator rewrote it in guest memory (as it does
    /// when it takes the host for another vendor, PVM here: VMMCALL became
    /// VMCALL, which then never finished; in a guest kernel's read-only
    /// text the write faults and the kernel oopses), or did not finish it.
    /// The guest must then make no hypercalls.
    pub hypercalls_fail: bool,
    /// The host CPUs the VMM may run on (its affinity and CPU quota), which
    /// its vCPU threads share.
    pub host_cpus: usize,
}

/// Hardware runs a loop iteration in about a nanosecond; the emulator in about
/// a microsecond. The threshold sits well between the two.
const EMULATED_NS_PER_INSTRUCTION: f64 = 50.0;

/// What the probe found, as the VMM logs it and `kvmshm probe` prints it:
/// where guest kernel code runs and the time per instruction there, the
/// yardstick for boot times on this host.
impl fmt::Display for HostKvm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kernel_code_emulated() {
            write!(
                f,
                "guest kernel code runs in KVM's instruction emulator ({:.0} ns per instruction, {:.0} ns per REP STOSQ iteration, popcnt {})",
                self.kernel_ns_per_instruction,
                self.kernel_ns_per_rep_stosq,
                if self.kernel_popcnt_fails { "not emulated" } else { "emulated" },
            )?;
        } else {
            write!(f, "guest kernel code runs natively ({:.1} ns per instruction)", self.kernel_ns_per_instruction)?;
        }
        if self.hypercalls_fail {
            write!(
                f,
                "; the guest kernel's hypercall instruction fails here (KVM rewrites it, or does not finish it)"
            )?;
        }
        Ok(())
    }
}

impl HostKvm {
    pub fn kernel_code_emulated(&self) -> bool {
        self.kernel_popcnt_fails || self.kernel_ns_per_instruction > EMULATED_NS_PER_INSTRUCTION
    }

    /// What the command line of a guest with `cpus` vCPUs needs on this
    /// host: nothing on an ordinary KVM host.
    pub fn guest_cmdline(&self, cpus: u8) -> String {
        if self.kernel_code_emulated() {
            emulated_kernel_cmdline(self.rep_quad_pays(), cpus, self.host_cpus)
        } else {
            String::new()
        }
    }

    /// Whether memset and memcpy should move eight bytes per REP iteration
    /// (the image's `memops_rep_quad`) rather than run unrolled loops.
    pub fn rep_quad_pays(&self) -> bool {
        self.kernel_ns_per_rep_stosq < REP_QUAD_MAX_INSTRUCTIONS * self.kernel_ns_per_instruction
    }

    /// What the image's guest command line needs on this host under QEMU
    /// with one vCPU (`-smp 1`).
    pub fn qemu_guest_cmdline(&self) -> String {
        if self.kernel_code_emulated() {
            format!("{} {QEMU_EMULATED_KERNEL_SWITCHES}", self.guest_cmdline(1))
        } else {
            String::new()
        }
    }
}

const CODE: u64 = 0x1000;
/// Iterations of the timed loop, two instructions each. Short runs cost
/// nothing in accuracy (loops of 2,000 to 16,000 instructions, alternated
/// 40 times each, gave the same time per instruction within 1.5%: entering
/// and leaving the guest costs 0.03 ms at most), and the probe runs before
/// every boot.
const LOOP_ITERATIONS: u32 = 1_000;
/// Timed runs of each loop; the median is kept.
const PROBE_LOOPS: usize = 9;
const POPCNT: u64 = 0x1010;
const REP_STOSQ: u64 = 0x1040;
/// Where REP STOSQ writes, in the probe VM's RAM, clear of its code and
/// page tables.
const STOSQ_BUFFER: u64 = 1 << 20;
const STOSQ_ITERATIONS: u32 = 1_024;
const HYPERCALL: u64 = 0x1020;
/// A hypercall number KVM does not know: it answers -KVM_ENOSYS and does nothing.
const UNKNOWN_HYPERCALL: u32 = 0xffff;
/// A hypercall takes microseconds; one that has used this much CPU time
/// without returning never will (where KVM does not finish it, `KVM_RUN`
/// spins in the host kernel: the VMM's whole probe then took 0.15 s of
/// system time, with a 100 ms wall-clock limit here before).
const HYPERCALL_CPU_LIMIT: Duration = Duration::from_millis(2);
/// How long the probe waits for the hypercall to get that CPU time on a
/// host too busy to give it.
const HYPERCALL_WAIT_LIMIT: Duration = Duration::from_secs(1);

/// The probe VM's RAM, where its code and page tables go.
const PROBE_RAM: Range<u64> = 0..2 << 20;

pub fn probe(kvm: &Kvm) -> Result<HostKvm, Error> {
    let vm = kvm.create_vm()?;
    // Kept until `vm` is gone (dropped in that order at the end).
    let mem = memory::create_ram(&vm, std::slice::from_ref(&PROBE_RAM))?;
    let mut code = vec![0xb9];
    code.extend_from_slice(&LOOP_ITERATIONS.to_le_bytes()); // mov ecx, N
    code.extend_from_slice(&[0xff, 0xc9, 0x75, 0xfc, 0xf4]); // 1: dec ecx; jnz 1b; hlt
    mem.write_slice(&code, GuestAddress(CODE))?;
    // popcnt rax, rbx; hlt
    mem.write_slice(&[0xf3, 0x48, 0x0f, 0xb8, 0xc3, 0xf4], GuestAddress(POPCNT))?;
    // mov edi, STOSQ_BUFFER; mov ecx, N; xor eax, eax; rep stosq; hlt
    let mut code = vec![0xbf];
    code.extend_from_slice(&(STOSQ_BUFFER as u32).to_le_bytes());
    code.push(0xb9);
    code.extend_from_slice(&STOSQ_ITERATIONS.to_le_bytes());
    code.extend_from_slice(&[0x31, 0xc0, 0xf3, 0x48, 0xab, 0xf4]);
    mem.write_slice(&code, GuestAddress(REP_STOSQ))?;
    // mov eax, UNKNOWN_HYPERCALL; vmcall or vmmcall; hlt
    let hypercall = hypercall_instruction(kvm)?;
    let mut code = vec![0xb8];
    code.extend_from_slice(&UNKNOWN_HYPERCALL.to_le_bytes());
    code.extend_from_slice(&hypercall);
    code.push(0xf4);
    mem.write_slice(&code, GuestAddress(HYPERCALL))?;

    let mut vcpu = vm.create_vcpu(0)?;
    cpu::setup_long_mode(&mem, &vcpu, CODE, 0)?;
    let ns = median_ns(&mut vcpu, CODE, 2 * LOOP_ITERATIONS)?;
    let rep_stosq_ns = median_ns(&mut vcpu, REP_STOSQ, STOSQ_ITERATIONS)?;

    let mut regs = vcpu.get_regs()?;
    regs.rip = POPCNT;
    vcpu.set_regs(&regs)?;
    let popcnt_fails = match vcpu.run()? {
        VcpuExit::Hlt => false,
        VcpuExit::InternalError => true,
        other => return Err(Error::Exit(format!("{other:?} after popcnt"))),
    };

    let mut regs = vcpu.get_regs()?;
    regs.rip = HYPERCALL;
    vcpu.set_regs(&regs)?;
    let finished = run_bounded(&mut vcpu, HYPERCALL_CPU_LIMIT, HYPERCALL_WAIT_LIMIT)?;
    let mut after = [0u8; 3];
    mem.read_slice(&mut after, GuestAddress(HYPERCALL + 5))?;
    drop(vm);
    drop(mem);
    Ok(HostKvm {
        kernel_ns_per_instruction: ns,
        kernel_ns_per_rep_stosq: rep_stosq_ns,
        kernel_popcnt_fails: popcnt_fails,
        hypercalls_fail: !finished || after != hypercall,
        host_cpus: std::thread::available_parallelism().map_or(1, usize::from),
    })
}

/// Runs the code at `rip` to its HLT [`PROBE_LOOPS`] times and returns the
/// median time per `steps` (instructions or iterations): the emulator's
/// speed varies with what else the host runs, and the median of nine short
/// runs is steadier than one run as long as the nine.
fn median_ns(vcpu: &mut VcpuFd, rip: u64, steps: u32) -> Result<f64, Error> {
    let mut samples = Vec::with_capacity(PROBE_LOOPS);
    for _ in 0..PROBE_LOOPS {
        let mut regs = vcpu.get_regs()?;
        regs.rip = rip;
        vcpu.set_regs(&regs)?;
        let start = Instant::now();
        match vcpu.run()? {
            VcpuExit::Hlt => {}
            other => return Err(Error::Exit(format!("{other:?} in a timed run at {rip:#x}"))),
        }
        samples.push(start.elapsed().as_nanos() as f64 / f64::from(steps));
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[PROBE_LOOPS / 2])
}

/// Runs `vcpu` to its next exit; returns whether it stopped at a HLT
/// before this thread had spent `cpu_limit` of CPU time in it or
/// `wait_limit` had passed. Judged by CPU time, not by the clock, so that a
/// vCPU thread the host did not run is not taken for one stuck in KVM;
/// where the time runs out anyway, the guest makes no hypercalls, which
/// costs it only the paravirtual shortcuts.
fn run_bounded(vcpu: &mut VcpuFd, cpu_limit: Duration, wait_limit: Duration) -> Result<bool, Error> {
    let kicker = Kicker::for_this_thread().map_err(Error::Watchdog)?;
    let (done, wait) = mpsc::channel::<()>();
    // Kicked every `cpu_limit` until it returns: this thread runs no Vcpu,
    // so a kick that lands before it enters KVM_RUN is lost.
    let watchdog = std::thread::spawn(move || {
        while wait.recv_timeout(cpu_limit) == Err(RecvTimeoutError::Timeout) {
            kicker.kick();
        }
    });
    let (cpu_start, start) = (thread_cpu_time(), Instant::now());
    let exit = loop {
        match vcpu.run() {
            Ok(VcpuExit::Hlt) => break Ok(true),
            Ok(_) => break Ok(false),
            Err(e) if e.errno() == libc::EINTR => {
                if thread_cpu_time() - cpu_start >= cpu_limit || start.elapsed() >= wait_limit {
                    break Ok(false);
                }
            }
            Err(e) => break Err(Error::Kvm(e)),
        }
    };
    let _ = done.send(());
    let _ = watchdog.join();
    exit
}

/// The CPU time the calling thread has used, in the host kernel included.
fn thread_cpu_time() -> Duration {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec, which `t` is.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// The hypercall instruction Linux uses: VMMCALL on AMD and Hygon CPUs,
/// VMCALL on others.
fn hypercall_instruction(kvm: &Kvm) -> Result<[u8; 3], Error> {
    let cpuid = kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)?;
    let vendor = cpuid.as_slice().iter().find(|e| e.function == 0).map(|e| [e.ebx, e.edx, e.ecx]);
    let amd = matches!(vendor, Some(v) if v == cpu::vendor(b"AuthenticAMD") || v == cpu::vendor(b"HygonGenuine"));
    Ok(if amd { [0x0f, 0x01, 0xd9] } else { [0x0f, 0x01, 0xc1] })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_flags_only_where_kernel_code_is_emulated() {
        let native = HostKvm {
            kernel_ns_per_instruction: 1.0,
            kernel_ns_per_rep_stosq: 0.3,
            kernel_popcnt_fails: false,
            hypercalls_fail: false,
            host_cpus: 4,
        };
        assert_eq!(native.guest_cmdline(4), "");
        assert_eq!(native.qemu_guest_cmdline(), "");
        let slow = HostKvm { kernel_ns_per_instruction: 900.0, kernel_ns_per_rep_stosq: 800.0, ..native };
        assert_eq!(slow.guest_cmdline(1), emulated_kernel_cmdline(true, 1, 4));
        assert!(slow.guest_cmdline(1).ends_with(" memops_rep_quad"));
        assert!(!slow.guest_cmdline(1).contains(EMULATED_SMP_SWITCHES));
        assert!(slow.guest_cmdline(2).contains(EMULATED_SMP_SWITCHES));
        assert!(!slow.guest_cmdline(1).contains("nohz_full"));
        assert!(slow.guest_cmdline(2).contains(" nohz_full=1-1 "));
        assert!(slow.guest_cmdline(4).contains(" nohz_full=1-3 "));
        // Two vCPUs to a host CPU at most: beyond that the first could not
        // keep up with the others' housekeeping.
        assert!(slow.guest_cmdline(8).contains(" nohz_full=1-7 "));
        assert!(!slow.guest_cmdline(9).contains("nohz_full"));
        assert!(slow.guest_cmdline(9).contains(EMULATED_SMP_SWITCHES));
        // The kernel multiplies the base slice by 1, 2, 3 and at most 4.
        for (cpus, base_us) in [(1, 200_000), (2, 100_000), (3, 100_000), (4, 66_666), (8, 50_000), (32, 50_000)] {
            assert!(slow.guest_cmdline(cpus).contains(&format!(" sched_base_slice_us={base_us} ")), "{cpus} vCPUs");
        }
        assert!(slow.qemu_guest_cmdline().starts_with(&emulated_kernel_cmdline(true, 1, 4)));
        // An emulator that took each REP iteration as slowly as several
        // instructions: the unrolled loops are kept.
        let slow_rep = HostKvm { kernel_ns_per_rep_stosq: 5000.0, ..slow };
        assert!(!slow_rep.guest_cmdline(1).contains("memops_rep_quad"));
        assert!(slow.qemu_guest_cmdline().ends_with(QEMU_EMULATED_KERNEL_SWITCHES));
        let gap = HostKvm { kernel_popcnt_fails: true, ..native };
        assert!(gap.kernel_code_emulated());
    }

    #[test]
    fn linux_reads_the_whole_clearcpuid_list() {
        // cpu_parse_early_param() copies the value into a 128-byte buffer:
        // a longer list loses its end (it once lost "rep_good" that way).
        let cmdline = emulated_kernel_cmdline(true, 1, 4);
        let list = cmdline.split(' ').find_map(|w| w.strip_prefix("clearcpuid=")).unwrap();
        assert!(list.len() < 128, "{} characters", list.len());
        assert_eq!(list.split(',').count(), CLEARED_CPU_FEATURES.len());
    }
}
