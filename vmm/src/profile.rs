//! A sampling profiler of the guest: a timer thread interrupts KVM_RUN with
//! a signal, the vCPU loop records the guest's RIP, and the report names the
//! kernel functions from a System.map. Where guest kernel code is emulated
//! (about 1 us an instruction) this is how boot time is found and cut.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::vcpu::Kicker;

pub struct Profiler {
    /// Kernel text symbols by address, read at start (the VMM opens no
    /// files once it runs under its seccomp filter).
    symbols: Vec<(u64, String)>,
    samples: HashMap<u64, u32>,
    stop: Arc<AtomicBool>,
    timer: Option<JoinHandle<()>>,
}

impl Profiler {
    /// Reads `system_map`, then interrupts the vCPU every `interval`.
    pub fn start(kicker: Kicker, interval: Duration, system_map: &Path) -> std::io::Result<Self> {
        let symbols = read_symbols(system_map)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop_timer = stop.clone();
        let timer = crate::spawn_started("profiler", move || {
            while !stop_timer.load(Ordering::Relaxed) {
                std::thread::sleep(interval);
                kicker.kick();
            }
        })?;
        Ok(Self { symbols, samples: HashMap::new(), stop, timer: Some(timer) })
    }

    pub fn record(&mut self, rip: u64) {
        *self.samples.entry(rip).or_default() += 1;
    }

    /// The `top` functions by share of samples (user-space samples are
    /// counted together).
    pub fn report(&self, top: usize) -> String {
        let symbols = &self.symbols;
        let mut by_function: HashMap<&str, u32> = HashMap::new();
        let total: u32 = self.samples.values().sum();
        for (&rip, &n) in &self.samples {
            let name = if rip < 1 << 63 {
                "(guest user space)"
            } else {
                match symbols.partition_point(|&(a, _)| a <= rip) {
                    0 => "(unknown kernel address)",
                    i => symbols[i - 1].1.as_str(),
                }
            };
            *by_function.entry(name).or_default() += n;
        }
        let mut rows: Vec<_> = by_function.into_iter().collect();
        rows.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let mut out = format!("guest profile: {total} samples\n");
        for (name, n) in rows.into_iter().take(top) {
            out += &format!("{:6.2}% {n:7} {name}\n", 100.0 * f64::from(n) / f64::from(total.max(1)));
        }
        out
    }
}

fn read_symbols(system_map: &Path) -> std::io::Result<Vec<(u64, String)>> {
    let text = std::fs::read_to_string(system_map)?;
    let mut symbols: Vec<(u64, String)> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (addr, kind, name) = (f.next()?, f.next()?, f.next()?);
            let text = matches!(kind, "t" | "T");
            text.then_some((u64::from_str_radix(addr, 16).ok()?, name.to_string()))
        })
        .collect();
    symbols.sort_unstable();
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
