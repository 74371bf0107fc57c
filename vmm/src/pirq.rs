//! An empty PCI IRQ routing table (`$PIR`, PCI BIOS 2.1 format) at the
//! first address Linux looks for one.
//!
//! Without ACPI, Linux searches 0xf0000..0x100000 for a `$PIR` table at
//! every 16 bytes, then for AMI's `$IRT` at every byte (arch/x86/pci/irq.c,
//! `pirq_find_routing_table`): about 300,000 instructions, a second of boot
//! where guest kernel code is emulated. A valid table at 0xf0000 ends the
//! search at once. It routes nothing: interrupts reach the IOAPIC as the MP
//! table says, and Linux drops a routing table whenever it uses the IOAPIC.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout;

/// The header alone (32 bytes): a table without slots.
const SIZE: u16 = 32;

fn build() -> Vec<u8> {
    let mut table = Vec::with_capacity(SIZE as usize);
    table.extend_from_slice(b"$PIR");
    table.extend_from_slice(&[0, 1]); // version 1.0
    table.extend_from_slice(&SIZE.to_le_bytes());
    // Router bus and devfn, exclusive PCI IRQs, router vendor and device,
    // miniport data, reserved: all zero.
    table.resize(SIZE as usize, 0);
    table[31] = table.iter().fold(0u8, |sum, b| sum.wrapping_sub(*b));
    table
}

pub fn write(mem: &GuestMemoryMmap) -> Result<(), vm_memory::GuestMemoryError> {
    mem.write_slice(&build(), GuestAddress(layout::PIRQ_TABLE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_table_without_slots() {
        let table = build();
        assert_eq!(&table[..4], b"$PIR");
        assert_eq!(u16::from_le_bytes([table[6], table[7]]) as usize, table.len());
        assert_eq!(table.len() % 16, 0);
        assert_eq!(table.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
    }
}
