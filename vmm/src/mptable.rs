//! The Intel MultiProcessor table (spec 1.4): without ACPI it is how Linux
//! learns about the CPUs, the IOAPIC and how ISA interrupts reach it.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout;

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const LOCAL_APIC: u32 = 0xfee0_0000;
/// Interrupts 0..=15 are ISA; the in-kernel IOAPIC has 24 pins.
const IOAPIC_PINS: u8 = 24;

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |sum, b| sum.wrapping_sub(*b))
}

/// Builds the floating pointer followed by the configuration table for
/// `vcpus` CPUs, as it sits at `addr`.
fn build(addr: u64, vcpus: u8) -> Vec<u8> {
    let ioapic_id = vcpus;
    let mut entries = Vec::new();
    let mut count = 0u16;
    for id in 0..vcpus {
        let flags = 1 | if id == 0 { 2 } else { 0 }; // enabled, bootstrap
        entries.extend_from_slice(&[0, id, APIC_VERSION, flags]);
        entries.extend_from_slice(&0x600u32.to_le_bytes()); // family 6
        entries.extend_from_slice(&0x201u32.to_le_bytes()); // FPU, APIC
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[1, 0]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(layout::IOAPIC as u32).to_le_bytes());
    count += 2;
    for irq in 0..IOAPIC_PINS {
        // type 3 (I/O interrupt), INT, default polarity and trigger, ISA bus 0.
        entries.extend_from_slice(&[3, 0, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // type 4 (local interrupt): ExtINT on LINT0, NMI on LINT1 of every CPU.
    entries.extend_from_slice(&[4, 3, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_addr = addr + 16;
    let mut table = Vec::new();
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    table.extend_from_slice(&[4, 0]); // spec 1.4, checksum
    table.extend_from_slice(b"KVMSHM  ");
    table.extend_from_slice(b"000000000000");
    table.extend_from_slice(&[0; 4]); // OEM table pointer
    table.extend_from_slice(&[0; 2]); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&LOCAL_APIC.to_le_bytes());
    table.extend_from_slice(&[0; 4]); // extended table length, checksum, reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut floating = Vec::new();
    floating.extend_from_slice(b"_MP_");
    floating.extend_from_slice(&(table_addr as u32).to_le_bytes());
    floating.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]); // 16 bytes long, spec 1.4
    floating[10] = checksum(&floating);
    floating.extend_from_slice(&table);
    floating
}

pub fn write(mem: &GuestMemoryMmap, vcpus: u8) -> Result<(), vm_memory::GuestMemoryError> {
    let bytes = build(layout::MPTABLE, vcpus);
    assert!(layout::MPTABLE + bytes.len() as u64 <= layout::EBDA_END, "MP table outgrew its reserved area");
    mem.write_slice(&bytes, GuestAddress(layout::MPTABLE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_and_pointers_are_consistent() {
        let bytes = build(layout::MPTABLE, 2);
        assert_eq!(&bytes[..4], b"_MP_");
        assert_eq!(bytes[..16].iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
        let table_addr = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as u64;
        let table = &bytes[(table_addr - layout::MPTABLE) as usize..];
        assert_eq!(&table[..4], b"PCMP");
        let len = u16::from_le_bytes([table[4], table[5]]) as usize;
        assert_eq!(len, table.len());
        assert_eq!(table.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
        // 2 CPUs, a bus, an IOAPIC, 24 I/O and 2 local interrupt entries.
        assert_eq!(u16::from_le_bytes([table[34], table[35]]), 2 + 2 + 24 + 2);
    }
}
