//! The guest physical address map.
//!
//! ```text
//! 0x0000_0500  boot GDT                0x0000_7000  zero page (boot_params)
//! 0x0000_8ff0  boot stack (grows down) 0x0000_9000  boot page tables (PML4, PDPT, PD)
//! 0x0002_0000  kernel command line     0x0003_0000  setup_data: a random seed for the kernel
//! 0x0009_fc00  MP table (reserved in the e820 map)
//! 0x000f_0000  PCI IRQ routing table
//! 0x0010_0000  RAM above 1 MiB, up to 3 GiB: kernel at its ELF address, initramfs at the top
//! 0xc000_0000  32-bit PCI window: 8 KiB per ivshmem device, BAR0 (registers) then BAR1 (MSI-X)
//! 0xfec0_0000  IOAPIC                  0xfee0_0000  local APIC
//! 0xfffb_d000  KVM's TSS (3 pages; Intel's VM entry needs one)
//! 4 GiB..      RAM beyond the first 3 GiB, if any
//! then         64-bit PCI window, from the first GiB boundary past RAM and 4 GiB:
//!              BAR2 (shared memory) of each ivshmem device
//! ```

pub const BOOT_GDT: u64 = 0x500;
pub const BOOT_IDT: u64 = 0x520;
pub const ZERO_PAGE: u64 = 0x7000;
pub const BOOT_STACK: u64 = 0x8ff0;
pub const PML4: u64 = 0x9000;
pub const PDPT: u64 = 0xa000;
pub const PD: u64 = 0xb000;
pub const CMDLINE: u64 = 0x20000;
pub const CMDLINE_MAX: usize = 0x10000;
pub const SETUP_DATA: u64 = CMDLINE + CMDLINE_MAX as u64;
pub const MPTABLE: u64 = 0x9fc00;
/// The MP table's kilobyte holds this many CPU entries (20 bytes each) beside
/// its fixed part; each CPU's APIC ID is its index, the IOAPIC's comes after.
pub const MAX_CPUS: u8 = 32;
pub const EBDA_END: u64 = 0xa0000;
pub const PIRQ_TABLE: u64 = 0xf0000;
pub const HIGH_RAM: u64 = 0x10_0000;

/// RAM below 4 GiB ends at the 32-bit PCI window; the rest is above 4 GiB.
pub const LOW_RAM_END: u64 = PCI_MMIO32_START;
pub const RAM_ABOVE_4G: u64 = 1 << 32;
/// A bound on what one asks for by mistake (the host's memory and the
/// guest's address width bound it too).
pub const MAX_RAM: u64 = 1 << 40;
/// The kernel needs room for itself, its page tables and the initramfs.
pub const MIN_RAM: u64 = 32 << 20;

pub const PCI_MMIO32_START: u64 = 0xc000_0000;
pub const PCI_MMIO32_END: u64 = IOAPIC;
pub const PCI_MMIO32_PER_DEVICE: u64 = 0x2000;
pub const IOAPIC: u64 = 0xfec0_0000;
pub const KVM_TSS: u64 = 0xfffb_d000;

/// The guest physical ranges of `size` bytes of RAM: below the 32-bit PCI
/// window, then from 4 GiB on. One KVM memory slot each.
pub fn ram_ranges(size: u64) -> Vec<std::ops::Range<u64>> {
    let low = size.min(LOW_RAM_END);
    let high = (size > low).then(|| RAM_ABOVE_4G..RAM_ABOVE_4G + (size - low));
    std::iter::once(0..low).chain(high).collect()
}
