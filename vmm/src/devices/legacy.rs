//! PC legacy devices: the 16550 UART at 0x3f8 and the i8042 reset line.

use std::io::Write;

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::{Action, BusDevice};

pub const COM1: u64 = 0x3f8;
pub const COM1_LEN: u64 = 8;
pub const COM1_GSI: u32 = 4;
pub const I8042: u64 = 0x60;
pub const I8042_LEN: u64 = 5;

/// Raises the UART's interrupt through an irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

pub struct SerialPort<W: Write + Send>(pub Serial<IrqTrigger, vm_superio::serial::NoEvents, W>);

impl<W: Write + Send> SerialPort<W> {
    pub fn new(irq: EventFd, out: W) -> Self {
        Self(Serial::new(IrqTrigger(irq), out))
    }
}

impl<W: Write + Send> BusDevice for SerialPort<W> {
    fn read(&mut self, _: u64, offset: u64, data: &mut [u8]) {
        if let [b] = data {
            *b = self.0.read(offset as u8);
        }
    }

    fn write(&mut self, _: u64, offset: u64, data: &[u8]) -> Option<Action> {
        if let [b] = data
            && let Err(e) = self.0.write(offset as u8, *b)
        {
            log::warn!("serial: {e:?}");
        }
        None
    }
}

/// Just enough of the i8042 keyboard controller for Linux's `reboot=k`:
/// the controller is always ready, and command 0xfe (pulse the reset line)
/// asks the VM to stop.
pub struct ResetPort;

const I8042_COMMAND: u64 = 4;
const CMD_RESET_CPU: u8 = 0xfe;

impl BusDevice for ResetPort {
    fn read(&mut self, _: u64, _: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _: u64, offset: u64, data: &[u8]) -> Option<Action> {
        (offset == I8042_COMMAND && data == [CMD_RESET_CPU]).then_some(Action::Reset)
    }
}
