//! The guest console: copied to our stdout, and read line by line for what
//! the guest reports about itself.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

/// The line the image's init prints when the program it ran has ended.
pub const EXIT_MARKER: &str = "kvmshm-init: exit status ";
const PANIC_MARKER: &str = "Kernel panic - not syncing: ";

/// What the guest has said about how it ended.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GuestReport {
    pub exit_status: Option<i32>,
    pub panic: Option<String>,
}

/// Parses one console line into `report`.
pub fn scan_line(line: &str, report: &mut GuestReport) {
    let line = line.trim_end_matches(['\r', '\n']);
    if let Some(rest) = line.strip_prefix(EXIT_MARKER) {
        if let Ok(status) = rest.trim().parse() {
            report.exit_status = Some(status);
        }
    } else if let Some(i) = line.find(PANIC_MARKER) {
        report.panic.get_or_insert_with(|| line[i + PANIC_MARKER.len()..].to_string());
    }
}

/// A `Write` for the UART: passes bytes to `out` and scans complete lines.
pub struct ConsoleOutput<W: Write> {
    out: W,
    line: Vec<u8>,
    report: Arc<Mutex<GuestReport>>,
}

impl<W: Write> ConsoleOutput<W> {
    pub fn new(out: W, report: Arc<Mutex<GuestReport>>) -> Self {
        Self { out, line: Vec::new(), report }
    }
}

impl<W: Write> Write for ConsoleOutput<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for &b in buf {
            if b == b'\n' {
                scan_line(&String::from_utf8_lossy(&self.line), &mut self.report.lock().unwrap());
                self.line.clear();
            } else if self.line.len() < 4096 {
                self.line.push(b);
            }
        }
        // The console must not stop the guest: a closed stdout loses output only.
        let _ = self.out.write_all(buf);
        if buf.contains(&b'\n') {
            let _ = self.out.flush();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = self.out.flush();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_exit_status_and_panic_across_writes() {
        let report = Arc::new(Mutex::new(GuestReport::default()));
        let mut c = ConsoleOutput::new(Vec::new(), report.clone());
        c.write_all(b"hello\r\nkvmshm-init: exit st").unwrap();
        assert_eq!(report.lock().unwrap().exit_status, None);
        c.write_all(b"atus 3\r\n[    1.0] Kernel panic - not syncing: Attempted to kill init!\r\n").unwrap();
        let r = report.lock().unwrap().clone();
        assert_eq!(r.exit_status, Some(3));
        assert_eq!(r.panic.as_deref(), Some("Attempted to kill init!"));
        assert!(c.out.starts_with(b"hello\r\n"));
    }

    #[test]
    fn ignores_lines_that_merely_mention_the_marker() {
        let mut r = GuestReport::default();
        scan_line("echo kvmshm-init: exit status 5", &mut r);
        scan_line("kvmshm-init: exit status five", &mut r);
        assert_eq!(r.exit_status, None);
    }
}
