//! A sampling profiler of the guest: a timer thread interrupts KVM_RUN with
//! a signal, the vCPU loop records the guest's RIP, and the report names the
//! kernel functions from a System.map. Where guest kernel code is emulated
//! (about 1 us an instruction) this is how boot time is found and cut.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::lock;
use crate::vcpu::Kickers;

/// How often each guest RIP was sampled; every vCPU records into the same one.
#[derive(Clone, Default)]
pub struct Samples(Arc<Mutex<HashMap<u64, u32>>>);

impl Samples {
    pub fn record(&self, rip: u64) {
        *lock(&self.0).entry(rip).or_default() += 1;
    }
}

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
    /// counted together).
    pub fn report(&self, top: usize) -> String {
        let symbols = &self.symbols;
        let mut by_function: HashMap<&str, u32> = HashMap::new();
        let samples = lock(&self.samples.0);
        let total: u32 = samples.values().sum();
        for (&rip, &n) in samples.iter() {
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

const PAST_THE_IMAGE: &str = "(past the kernel image: a module)";

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
                ("t" | "T", _) => name.to_string(),
                (_, "_end") => PAST_THE_IMAGE.to_string(),
                _ => return None,
            };
            Some((u64::from_str_radix(addr, 16).ok()?, name))
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
            profiler.samples().record(rip);
        }
        let report = profiler.report(10);
        for line in ["2 (past the kernel image: a module)", "1 start", "1 last_exit", "1 (guest user space)"] {
            assert!(report.contains(line), "{line:?} missing:\n{report}");
        }
    }
}
