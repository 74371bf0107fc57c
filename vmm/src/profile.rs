//! A sampling profiler of the guest: a timer thread interrupts KVM_RUN with
//! a signal, the vCPU loop records the guest's RIP and, in kernel code, the
//! word on top of its stack, and the report names the kernel functions from
//! a System.map. Where guest kernel code is emulated (about 1 us an
//! instruction) this is how boot time is found and cut.
//!
//! The word on top of the stack is the return address while a function has
//! pushed nothing, as in leaf functions such as `strlen` or `memset`: for
//! those the report names the caller, which is what tells one `strlen` from
//! another. For other functions it is whatever they last pushed, so the
//! report lists only callers that are kernel functions and that take a
//! tenth of a function's samples or more.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::lock;
use crate::vcpu::Kickers;

/// How often each guest RIP was sampled, with the word on top of the stack
/// (0 where it was not read); every vCPU records into the same one.
#[derive(Clone, Default)]
pub struct Samples(Arc<Mutex<HashMap<(u64, u64), u32>>>);

impl Samples {
    pub fn record(&self, rip: u64, stack_top: u64) {
        *lock(&self.0).entry((rip, stack_top)).or_default() += 1;
    }
}

/// Whether `addr` is in the upper half, where the guest kernel lives.
pub fn kernel_address(addr: u64) -> bool {
    addr >= 1 << 63
}

/// A share of a function's samples below which a caller is not listed.
const CALLER_SHARE: u32 = 10;
const CALLERS_LISTED: usize = 3;

pub struct Profiler {
    /// Kernel text symbols by address, read at start (the VMM opens no
    /// files once it runs under its seccomp filter).
    symbols: Vec<(u64, String)>,
    samples: Samples,
    stop: Arc<AtomicBool>,
    timer: Option<JoinHandle<()>>,
}

impl Profiler {
    /// Reads `system_map`. The vCPUs record into [`Profiler::samples`]
    /// whenever they are kicked; [`Profiler::start`] kicks them.
    pub fn new(system_map: &Path) -> std::io::Result<Self> {
        let symbols = read_symbols(system_map)?;
        Ok(Self { symbols, samples: Samples::default(), stop: Arc::default(), timer: None })
    }

    pub fn samples(&self) -> Samples {
        self.samples.clone()
    }

    /// Kicks every vCPU every `interval`, until dropped.
    pub fn start(&mut self, kickers: Kickers, interval: Duration) -> std::io::Result<()> {
        let stop = self.stop.clone();
        self.timer = Some(crate::spawn_started("profiler", move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(interval);
                kickers.kick();
            }
        })?);
        Ok(())
    }

    /// The `top` functions by share of samples (user-space samples are
    /// counted together), each followed by its main callers as far as the
    /// top of the stack tells them (see the module's doc).
    pub fn report(&self, top: usize) -> String {
        let mut by_function: HashMap<&str, (u32, HashMap<&str, u32>)> = HashMap::new();
        let samples = lock(&self.samples.0);
        let total: u32 = samples.values().sum();
        for (&(rip, stack_top), &n) in samples.iter() {
            let (count, callers) = by_function.entry(self.function(rip)).or_default();
            *count += n;
            if let Some(caller) = self.kernel_function(stack_top).filter(|&f| f != NOT_CODE) {
                *callers.entry(caller).or_default() += n;
            }
        }
        let mut rows: Vec<_> = by_function.into_iter().collect();
        rows.sort_unstable_by(|a, b| b.1.0.cmp(&a.1.0).then(a.0.cmp(b.0)));
        let mut out = format!("guest profile: {total} samples (<- callers, as the top of the stack tells them)\n");
        for (name, (n, callers)) in rows.into_iter().take(top) {
            out += &format!("{:6.2}% {n:7} {name}\n", 100.0 * f64::from(n) / f64::from(total.max(1)));
            let mut callers: Vec<_> = callers.into_iter().filter(|&(_, k)| k * CALLER_SHARE >= n).collect();
            callers.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            for (caller, k) in callers.into_iter().take(CALLERS_LISTED) {
                out += &format!("        {k:7} <- {caller}\n");
            }
        }
        out
    }

    fn function(&self, rip: u64) -> &str {
        if kernel_address(rip) {
            self.kernel_function(rip).unwrap_or("(unknown kernel address)")
        } else {
            "(guest user space)"
        }
    }

    /// The kernel function (or module area) `addr` lies in, if any.
    fn kernel_function(&self, addr: u64) -> Option<&str> {
        if !kernel_address(addr) {
            return None;
        }
        match self.symbols.partition_point(|&(a, _)| a <= addr) {
            0 => None,
            i => Some(self.symbols[i - 1].1.as_str()),
        }
    }
}

const PAST_THE_IMAGE: &str = "(past the kernel image: a module)";
/// What follows the kernel's text and its init text: data, never a caller.
const NOT_CODE: &str = "(kernel data)";

fn read_symbols(system_map: &Path) -> std::io::Result<Vec<(u64, String)>> {
    let text = std::fs::read_to_string(system_map)?;
    let mut symbols: Vec<(u64, String)> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (addr, kind, name) = (f.next()?, f.next()?, f.next()?);
            // `_end` closes the last function: what lies past the image
            // (modules, which a System.map does not list) is not its.
            let name = match (kind, name) {
                (_, "_etext" | "_einittext" | "__inittext_end") => NOT_CODE.to_string(),
                ("t" | "T", _) => name.to_string(),
                (_, "_end") => PAST_THE_IMAGE.to_string(),
                _ => return None,
            };
            Some((u64::from_str_radix(addr, 16).ok()?, name))
        })
        .collect();
    // A marker wins over a symbol at its address (`__static_call_text_end`
    // is where `_etext` is).
    symbols.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1.starts_with('(').cmp(&b.1.starts_with('('))));
    Ok(symbols)
}

impl Drop for Profiler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.timer.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_past_the_image_are_not_the_last_functions() {
        let dir = std::env::temp_dir().join(format!("kvmshm-profile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let map = dir.join("System.map");
        std::fs::write(
            &map,
            "ffffffff81000000 T _text\nffffffff81000100 T start\nffffffff81578520 t last_exit\n\
             ffffffff815cb000 B _end\nffffffff815c0000 D some_data\n",
        )
        .unwrap();
        let symbols = read_symbols(&map).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let profiler = Profiler { symbols, samples: Samples::default(), stop: Arc::default(), timer: None };
        for rip in
            [0xffff_ffff_8100_0180, 0xffff_ffff_8157_8530, 0xffff_ffff_a000_1000, 0xffff_ffff_a000_2000, 0x40_0000]
        {
            profiler.samples().record(rip, 0);
        }
        let report = profiler.report(10);
        for line in ["2 (past the kernel image: a module)", "1 start", "1 last_exit", "1 (guest user space)"] {
            assert!(report.contains(line), "{line:?} missing:\n{report}");
        }
        assert!(!report.lines().skip(1).any(|l| l.contains("<-")), "no stack words, no callers:\n{report}");
    }

    #[test]
    fn callers_are_the_kernel_functions_on_top_of_the_stack_that_matter() {
        let symbols = vec![
            (0xffff_ffff_8100_0000, "strlen".to_string()),
            (0xffff_ffff_8100_1000, "parameq".to_string()),
            (0xffff_ffff_8100_2000, NOT_CODE.to_string()),
        ];
        let profiler = Profiler { symbols, samples: Samples::default(), stop: Arc::default(), timer: None };
        let strlen = 0xffff_ffff_8100_0010;
        for _ in 0..18 {
            profiler.samples().record(strlen, 0xffff_ffff_8100_1020);
        }
        // Data, not return addresses; and a caller below a tenth.
        profiler.samples().record(strlen, 0x1234);
        profiler.samples().record(strlen, 0xffff_ffff_8100_2040);
        profiler.samples().record(strlen, 0xffff_ffff_8100_0020);
        let report = profiler.report(10);
        assert!(report.contains("21 strlen\n             18 <- parameq\n"), "{report}");
        assert!(!report.contains("<- strlen"), "{report}");
    }
}
