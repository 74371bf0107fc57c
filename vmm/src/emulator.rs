//! Finishing the instructions that KVM's instruction emulator cannot run.
//!
//! Where guest kernel code runs in KVM's emulator (hosts without hardware
//! virtualisation), an instruction it lacks stops the vCPU with an internal
//! error. Linux cannot avoid some of them, and the VMM finishes those as
//! the CPU would have:
//! - INT3 (Linux's boot self-test uses it on purpose): inject the #BP it
//!   would have raised;
//! - FWAIT (Linux runs it when a task that owns the FPU exits, to flush
//!   delayed x87 exceptions): raise #MF if an unmasked x87 exception is
//!   pending, else step over it;
//! - UD0, UD1 and UD2 (Linux's WARN() and BUG() are these): inject the #UD
//!   they raise, so that a guest kernel warning is reported and stepped
//!   over by the guest as on any host, instead of ending the VM.
//!
//! Anything else is fatal, and the error names the instruction's bytes.
//! On an ordinary KVM host these exits never happen.

use kvm_ioctls::VcpuFd;
use log::Level;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::limited;
use crate::ratelimit::LogLimit;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("KVM could not emulate the guest instruction at RIP {rip:#x} (bytes {bytes}); suberror {suberror}")]
    EmulationFailure { rip: u64, bytes: String, suberror: u32 },
    #[error("KVM {what}")]
    Kvm { what: &'static str, source: kvm_ioctls::Error },
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

const BP: u8 = 3;
const UD: u8 = 6;
const MF: u8 = 16;
const INT3: u8 = 0xcc;
const FWAIT: u8 = 0x9b;

/// Handles a `KVM_EXIT_INTERNAL_ERROR` with `suberror`: finishes the
/// instruction at RIP if it is one of ours, else fails with its bytes.
/// `log` bounds the messages: a guest kernel can run INT3 in a loop.
pub fn finish_instruction(vcpu: &VcpuFd, mem: &GuestMemoryMmap, suberror: u32, log: &LogLimit) -> Result<(), Error> {
    let mut regs = vcpu.get_regs().map_err(kvm("get regs"))?;
    let bytes = instruction_bytes(vcpu, mem, regs.rip);
    let emulation = suberror == kvm_bindings::KVM_INTERNAL_ERROR_EMULATION;
    let fault = match bytes.first() {
        Some(&INT3) if emulation => {
            limited!(
                log,
                Level::Info,
                "guest kernel ran INT3 at {:#x}, which KVM's emulator lacks: injected #BP",
                regs.rip
            );
            regs.rip += 1;
            Some(BP)
        }
        Some(&FWAIT) if emulation => {
            const X87_EXCEPTIONS: u16 = 0x3f;
            let fpu = vcpu.get_fpu().map_err(kvm("get FPU"))?;
            let pending = fpu.fsw & !fpu.fcw & X87_EXCEPTIONS != 0;
            let done = if pending { "raised #MF" } else { "stepped over it" };
            limited!(
                log,
                Level::Debug,
                "guest kernel ran FWAIT at {:#x}, which KVM's emulator lacks: {done}",
                regs.rip
            );
            if pending {
                Some(MF)
            } else {
                regs.rip += 1;
                None
            }
        }
        _ if emulation && undefined_opcode(&bytes) => {
            limited!(
                log,
                Level::Info,
                "guest kernel ran an undefined opcode at {:#x} (Linux's WARN or BUG), which KVM's emulator lacks: injected #UD",
                regs.rip
            );
            Some(UD)
        }
        _ => {
            let bytes = bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ");
            let bytes = if bytes.is_empty() { "unreadable".into() } else { bytes };
            return Err(Error::EmulationFailure { rip: regs.rip, bytes, suberror });
        }
    };
    vcpu.set_regs(&regs).map_err(kvm("set regs"))?;
    if let Some(nr) = fault {
        let mut events = vcpu.get_vcpu_events().map_err(kvm("get vCPU events"))?;
        events.exception.injected = 1;
        events.exception.nr = nr;
        events.exception.has_error_code = 0;
        vcpu.set_vcpu_events(&events).map_err(kvm("inject an exception"))?;
    }
    Ok(())
}

/// Whether `bytes` are UD0, UD1 or UD2 (0f ff, 0f b9, 0f 0b) after any
/// prefixes: Linux's WARN() is UD1 with an address-size prefix and REX.W.
fn undefined_opcode(bytes: &[u8]) -> bool {
    let prefix = |b: &u8| matches!(b, 0x26 | 0x2e | 0x36 | 0x3e | 0x40..=0x4f | 0x64..=0x67 | 0xf0 | 0xf2 | 0xf3);
    let opcode = bytes.iter().position(|b| !prefix(b)).map(|at| &bytes[at..]);
    matches!(opcode, Some([0x0f, 0x0b | 0xb9 | 0xff, ..]))
}

/// Up to 15 bytes at the guest's virtual address `rip`, or none if it does
/// not translate to RAM.
fn instruction_bytes(vcpu: &VcpuFd, mem: &GuestMemoryMmap, rip: u64) -> Vec<u8> {
    let Ok(t) = vcpu.translate_gva(rip) else { return Vec::new() };
    if t.valid == 0 {
        return Vec::new();
    }
    let mut bytes = vec![0u8; 15];
    match mem.read_slice(&mut bytes, GuestAddress(t.physical_address)) {
        Ok(()) => bytes,
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undefined_opcodes_are_ud0_ud1_and_ud2_after_any_prefixes() {
        // Linux 7.3's WARN, as the guest ran it on this host.
        assert!(undefined_opcode(&[0x67, 0x48, 0x0f, 0xb9, 0x3a, 0x44, 0x8b]));
        assert!(undefined_opcode(&[0x0f, 0x0b]));
        assert!(undefined_opcode(&[0x0f, 0xff, 0x00]));
        assert!(!undefined_opcode(&[0x0f, 0x05])); // syscall
        assert!(!undefined_opcode(&[0x48, 0x0f, 0xb8, 0xc3])); // popcnt: not ours to finish
        assert!(!undefined_opcode(&[0x67, 0x48]));
        assert!(!undefined_opcode(&[]));
    }
}
