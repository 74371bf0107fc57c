//! x86-64 vCPU state at boot: long mode with an identity map of the first
//! GiB, CPUID, MSRs, FPU and the local APIC's LINT pins.

use kvm_bindings::{
    CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, KVM_MAX_CPUID_ENTRIES, Msrs, kvm_cpuid_entry2, kvm_fpu, kvm_msr_entry,
    kvm_regs, kvm_segment,
};
use kvm_ioctls::{Kvm, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("KVM {what}")]
    Kvm { what: &'static str, source: kvm_ioctls::Error },
    #[error("the CPUID table has more entries than KVM takes")]
    CpuidTooLong,
    #[error("writing the boot page tables or GDT")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

// Segment descriptors: 64-bit code, data, and a TSS that Intel's VM entry requires.
const GDT: [u64; 4] = [0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff, 0x0080_8b00_0000_0000];
const CODE: u16 = 1;
const DATA: u16 = 2;
const TSS: u16 = 3;

fn segment(index: u16) -> kvm_segment {
    let d = GDT[usize::from(index)];
    kvm_segment {
        base: 0,
        limit: if d & (1 << 55) != 0 { 0xffff_ffff } else { 0xffff },
        selector: index * 8,
        type_: ((d >> 40) & 0xf) as u8,
        present: ((d >> 47) & 1) as u8,
        dpl: ((d >> 45) & 3) as u8,
        db: ((d >> 54) & 1) as u8,
        s: ((d >> 44) & 1) as u8,
        l: ((d >> 53) & 1) as u8,
        g: ((d >> 55) & 1) as u8,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Puts the vCPU in 64-bit mode at `entry` with RSI = `rsi`, paging on and
/// the first GiB identity-mapped with 2 MiB pages.
pub fn setup_long_mode(mem: &GuestMemoryMmap, vcpu: &VcpuFd, entry: u64, rsi: u64) -> Result<(), Error> {
    for (i, d) in GDT.iter().enumerate() {
        mem.write_obj(*d, GuestAddress(layout::BOOT_GDT + i as u64 * 8))?;
    }
    mem.write_obj(0u64, GuestAddress(layout::BOOT_IDT))?;
    mem.write_obj(layout::PDPT | 3, GuestAddress(layout::PML4))?;
    mem.write_obj(layout::PD | 3, GuestAddress(layout::PDPT))?;
    for i in 0..512u64 {
        mem.write_obj((i << 21) | 0x83, GuestAddress(layout::PD + i * 8))?;
    }

    let mut sregs = vcpu.get_sregs().map_err(kvm("get sregs"))?;
    sregs.gdt.base = layout::BOOT_GDT;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = layout::BOOT_IDT;
    sregs.idt.limit = 7;
    sregs.cs = segment(CODE);
    let data = segment(DATA);
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.tr = segment(TSS);
    sregs.cr3 = layout::PML4;
    sregs.cr4 |= CR4_PAE;
    sregs.cr0 |= CR0_PE | CR0_ET | CR0_NE | CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs).map_err(kvm("set sregs"))?;

    let regs =
        kvm_regs { rip: entry, rsi, rsp: layout::BOOT_STACK, rbp: layout::BOOT_STACK, rflags: 2, ..Default::default() };
    vcpu.set_regs(&regs).map_err(kvm("set regs"))?;
    Ok(())
}

/// What every vCPU of a VM shares.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub cpus: u8,
    /// Whether the guest may use KVM's paravirtual features that make
    /// hypercalls (see [`crate::host::HostKvm::hypercalls_fail`]).
    pub hypercalls: bool,
    /// Whether KVM's in-kernel local APIC has the TSC-deadline timer
    /// (KVM_CAP_TSC_DEADLINE_TIMER): KVM_GET_SUPPORTED_CPUID reports it
    /// only from Linux 6.14 on, so a VMM sets the bit itself, as QEMU does.
    pub tsc_deadline: bool,
}

/// KVM's paravirtual features (CPUID 0x40000001 EAX) that Linux uses
/// through hypercalls: PV_UNHALT, PV_SEND_IPI, PV_SCHED_YIELD.
const KVM_HYPERCALL_FEATURES: u32 = (1 << 7) | (1 << 11) | (1 << 13);

/// A CPUID vendor string as leaf 0 returns it in EBX, EDX, ECX.
pub fn vendor(name: &[u8; 12]) -> [u32; 3] {
    let word = |i: usize| u32::from_le_bytes(name[i..i + 4].try_into().expect("4 bytes"));
    [word(0), word(4), word(8)]
}

/// The CPUID KVM supports: fetched once per VM, for every vCPU.
pub fn supported_cpuid(kvm_fd: &Kvm) -> Result<CpuId, Error> {
    kvm_fd.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(kvm("get supported CPUID"))
}

/// The CPUID KVM supports, with what a VMM adds: the hypervisor bit (so
/// the guest looks for kvm-clock), the TSC-deadline timer where KVM has it
/// (without it Linux calibrates the local APIC timer, and a kernel with
/// fewer than 19 ticks a second, as the image's, cannot use the PIT for
/// that or for its tick), and a topology of `config.cpus` cores in
/// one package, one thread each, this vCPU's APIC ID being `vcpu_id`. The
/// topology is said the ways Linux reads it: leaf 0xB (Intel), leaf
/// 0x80000008's core count with TOPOEXT off (AMD, where KVM's leaf
/// 0x8000001E would give every CPU APIC ID 0), leaf 1's count, and leaf
/// 4's cores per package and threads per cache.
fn vcpu_cpuid(supported: &[kvm_cpuid_entry2], vcpu_id: u8, config: &Config) -> Vec<kvm_cpuid_entry2> {
    const HTT: u32 = 1 << 28;
    const TSC_DEADLINE: u32 = 1 << 24;
    const HYPERVISOR: u32 = 1 << 31;
    const TOPOEXT: u32 = 1 << 22;
    const LEVEL_SMT: u32 = 1 << 8;
    const LEVEL_CORE: u32 = 2 << 8;
    let (id, n) = (u32::from(vcpu_id), u32::from(config.cpus));
    // Bits of the APIC ID that number the cores.
    let core_bits = n.next_power_of_two().trailing_zeros();
    let mut entries: Vec<_> = supported.iter().filter(|e| e.function != 0xb && e.function != 0x1f).copied().collect();
    for e in &mut entries {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (id << 24) | (n << 16);
                e.ecx |= HYPERVISOR;
                if config.tsc_deadline {
                    e.ecx |= TSC_DEADLINE;
                }
                e.edx = if n > 1 { e.edx | HTT } else { e.edx & !HTT };
            }
            4 => {
                // Level 1 and 2 caches are each core's own; level 3 is shared.
                let shared_by = if (e.eax >> 5) & 7 >= 3 { n - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | (shared_by << 14) | ((n - 1) << 26);
            }
            0x8000_0001 => e.ecx &= !TOPOEXT,
            0x8000_0008 => e.ecx = (e.ecx & !0xf0ff) | (core_bits << 12) | (n - 1),
            0x4000_0001 if !config.hypercalls => e.eax &= !KVM_HYPERCALL_FEATURES,
            _ => {}
        }
    }
    let leaf_b = |index: u32, eax: u32, ebx: u32, ecx: u32| kvm_cpuid_entry2 {
        function: 0xb,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax,
        ebx,
        ecx: ecx | index,
        edx: id,
        ..Default::default()
    };
    entries.push(leaf_b(0, 0, 1, LEVEL_SMT));
    entries.push(leaf_b(1, core_bits, n, LEVEL_CORE));
    entries.push(leaf_b(2, 0, 0, 0));
    entries
}

const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// MTRRs enabled with write-back as the default type, as firmware leaves
/// them: with MTRRs disabled all memory would be uncached to a guest (or a
/// hypervisor) that honours them, and kernels older than the PAT/MTRR split
/// (Linux 6.2) set PAT (write-combining) up only with MTRRs on. The image's
/// kernel boots as fast either way (five alternating boots: 5.12 s with
/// them, 5.11 s without).
const MTRR_ENABLED_DEFAULT_WB: u64 = (1 << 11) | 6;

/// Sets vCPU `vcpu_id` up as firmware leaves a CPU; `supported` is
/// [`supported_cpuid`].
pub fn setup(supported: &CpuId, vcpu: &VcpuFd, vcpu_id: u8, config: &Config) -> Result<(), Error> {
    let cpuid =
        CpuId::from_entries(&vcpu_cpuid(supported.as_slice(), vcpu_id, config)).map_err(|_| Error::CpuidTooLong)?;
    vcpu.set_cpuid2(&cpuid).map_err(kvm("set CPUID"))?;
    let msr = |index, data| kvm_msr_entry { index, data, ..Default::default() };
    let msrs = Msrs::from_entries(&[
        msr(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        msr(MSR_MTRR_DEF_TYPE, MTRR_ENABLED_DEFAULT_WB),
    ])
    .expect("two MSRs fit");
    vcpu.set_msrs(&msrs).map_err(kvm("set MSRs"))?;
    let fpu = kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() };
    vcpu.set_fpu(&fpu).map_err(kvm("set FPU"))?;
    setup_lint(vcpu)
}

/// LINT0 as ExtINT (the PIC's virtual wire), LINT1 as NMI, as firmware leaves them.
fn setup_lint(vcpu: &VcpuFd) -> Result<(), Error> {
    const APIC_LVT0: usize = 0x350;
    const APIC_LVT1: usize = 0x360;
    const MODE_EXTINT: u32 = 0x7 << 8;
    const MODE_NMI: u32 = 0x4 << 8;
    let mut lapic = vcpu.get_lapic().map_err(kvm("get LAPIC"))?;
    for (reg, mode) in [(APIC_LVT0, MODE_EXTINT), (APIC_LVT1, MODE_NMI)] {
        let bytes: &mut [u8] = bytemuck_regs(&mut lapic.regs[reg..reg + 4]);
        let value = u32::from_le_bytes(bytes.try_into().unwrap());
        bytes.copy_from_slice(&((value & !0x700) | mode).to_le_bytes());
    }
    vcpu.set_lapic(&lapic).map_err(kvm("set LAPIC"))?;
    Ok(())
}

fn bytemuck_regs(regs: &mut [std::os::raw::c_char]) -> &mut [u8] {
    // SAFETY: c_char and u8 have the same size and alignment, and every bit
    // pattern is valid for both.
    unsafe { std::slice::from_raw_parts_mut(regs.as_mut_ptr().cast(), regs.len()) }
}

/// The guest's physical address width, from CPUID leaf 0x80000008 (36 bits if absent).
pub fn phys_address_bits(supported: &CpuId) -> u8 {
    supported.as_slice().iter().find(|e| e.function == 0x8000_0008).map_or(36, |e| (e.eax & 0xff) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 { function, index, eax, ebx, ecx, edx, ..Default::default() }
    }

    fn find(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> kvm_cpuid_entry2 {
        *entries.iter().find(|e| e.function == function && e.index == index).expect("leaf present")
    }

    #[test]
    fn each_vcpu_has_its_apic_id_in_a_package_of_n_cores() {
        let host = [
            leaf(1, 0, 0, 0x0810_0800, 0, 0),
            leaf(4, 0, (1 << 5) | 1, 0, 0, 0),
            leaf(4, 3, (3 << 5) | 3, 0, 0, 0),
            leaf(0xb, 0, 1, 2, 0x100, 7),
            leaf(0x4000_0001, 0, 0xffff_ffff, 0, 0, 0),
            leaf(0x8000_0001, 0, 0, 0, 1 << 22, 0),
            leaf(0x8000_0008, 0, 0x3030, 0, 0x700f, 0),
        ];
        let config = Config { cpus: 3, hypercalls: false, tsc_deadline: true };
        let e = vcpu_cpuid(&host, 2, &config);
        let l1 = find(&e, 1, 0);
        assert_eq!((l1.ebx >> 24, (l1.ebx >> 16) & 0xff), (2, 3), "APIC ID and logical count");
        assert_ne!(l1.edx & (1 << 28), 0, "HTT: more than one logical CPU");
        assert_ne!(l1.ecx & (1 << 31), 0, "hypervisor bit");
        assert_ne!(l1.ecx & (1 << 24), 0, "TSC-deadline timer, which the host's leaf 1 lacks");
        assert_eq!(find(&e, 4, 0).eax >> 14, 2 << 12, "L1: one thread, 3 cores");
        assert_eq!(find(&e, 4, 3).eax >> 14, (2 << 12) | 2, "L3: shared by the 3");
        assert_eq!((find(&e, 0xb, 0).ebx, find(&e, 0xb, 0).edx), (1, 2), "SMT level: one thread");
        let core = find(&e, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 3, 0x201, 2), "core level: 3 cores, 2 ID bits");
        assert_eq!(find(&e, 0xb, 2).ecx, 2, "no third level");
        assert_eq!(find(&e, 0x8000_0001, 0).ecx & (1 << 22), 0, "TOPOEXT off");
        assert_eq!(find(&e, 0x8000_0008, 0).ecx, 0x2002, "2 core ID bits, 3 cores");
        assert_eq!(find(&e, 0x4000_0001, 0).eax & KVM_HYPERCALL_FEATURES, 0, "no hypercall features");
        assert_eq!(e.iter().filter(|l| l.function == 0xb).count(), 3, "the host's leaf 0xB is replaced");

        let one = vcpu_cpuid(&host, 0, &Config { cpus: 1, hypercalls: true, tsc_deadline: false });
        assert_eq!(find(&one, 1, 0).edx & (1 << 28), 0, "no HTT with one CPU");
        assert_eq!(find(&one, 1, 0).ecx & (1 << 24), 0, "no TSC-deadline timer where KVM has none");
        assert_eq!(find(&one, 0x4000_0001, 0).eax, 0xffff_ffff, "hypercall features kept where they work");
    }
}
