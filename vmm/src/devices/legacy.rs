//! PC legacy devices: the 16550 UART at 0x3f8 and the i8042 reset line.

use std::io::Write;

use log::Level;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::{Action, BusDevice, read_in_units, write_in_units};
use crate::limited;
use crate::ratelimit::LogLimit;

pub const COM1: u16 = 0x3f8;
pub const COM1_LEN: u16 = 8;
pub const COM1_GSI: u32 = 4;
pub const I8042: u16 = 0x60;
pub const I8042_LEN: u16 = 5;

/// Raises the UART's interrupt through an irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

pub struct SerialPort<W: Write + Send> {
    pub uart: Serial<IrqTrigger, vm_superio::serial::NoEvents, W>,
    log: LogLimit,
}

impl<W: Write + Send> SerialPort<W> {
    pub fn new(irq: EventFd, out: W) -> Self {
        Self { uart: Serial::new(IrqTrigger(irq), out), log: LogLimit::new("serial") }
    }
}

/// The UART's registers are bytes: a wider access is split into byte
/// accesses at consecutive offsets, as QEMU does.
impl<W: Write + Send> BusDevice for SerialPort<W> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        read_in_units(1, offset, data, |o| self.uart.read(o as u8).into());
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<Action> {
        write_in_units(1, offset, data, |o, v| {
            if let Err(e) = self.uart.write(o as u8, v as u8) {
                limited!(self.log, Level::Warn, "serial: {e:?}");
            }
            None
        })
    }
}

/// Just enough of the i8042 keyboard controller for Linux's `reboot=k`:
/// the controller is always ready, and command 0xfe (pulse the reset line)
/// asks the VM to stop.
pub struct ResetPort;

const I8042_COMMAND: u64 = 4;
const CMD_RESET_CPU: u8 = 0xfe;

/// Byte registers, like the UART's: reads return 0 (status: ready, no
/// data); of the writes, only 0xfe to the command port means anything.
impl BusDevice for ResetPort {
    fn read(&mut self, _: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<Action> {
        write_in_units(1, offset, data, |o, v| {
            (o == I8042_COMMAND && v == u64::from(CMD_RESET_CPU)).then_some(Action::Reset)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_only_on_the_reset_command() {
        let mut port = ResetPort;
        assert_eq!(port.write(I8042_COMMAND, &[CMD_RESET_CPU]), Some(Action::Reset));
        assert_eq!(
            port.write(I8042_COMMAND - 1, &[0, CMD_RESET_CPU]),
            Some(Action::Reset),
            "a word write is two bytes"
        );
        assert_eq!(port.write(0, &[CMD_RESET_CPU]), None);
        assert_eq!(port.write(I8042_COMMAND, &[0xfd]), None);
    }

    #[test]
    fn wide_serial_accesses_are_byte_accesses() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut serial = SerialPort::new(irq, Vec::new());
        // THR then IER: two bytes, one transmitted.
        serial.write(0, &[b'A', 0]);
        serial.write(0, b"B");
        assert_eq!(serial.uart.writer(), b"AB");
        let mut lsr = [0u8; 2];
        serial.read(4, &mut lsr);
        assert_eq!(lsr[1] & 0x60, 0x60, "LSR at offset 5: transmitter empty");
    }
}
