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

use vmm_sys_util::signal::{SIGRTMIN, register_signal_handler};

extern "C" fn interrupt_kvm_run(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

pub struct Profiler {
    samples: HashMap<u64, u32>,
    stop: Arc<AtomicBool>,
    timer: Option<JoinHandle<()>>,
}

impl Profiler {
    /// Starts interrupting the calling thread (the vCPU thread) every `interval`.
    pub fn start(interval: Duration) -> std::io::Result<Self> {
        register_signal_handler(SIGRTMIN(), interrupt_kvm_run)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
        // SAFETY: pthread_self has no preconditions.
        let vcpu_thread = unsafe { libc::pthread_self() };
        let stop = Arc::new(AtomicBool::new(false));
        let stop_timer = stop.clone();
        let timer = std::thread::spawn(move || {
            while !stop_timer.load(Ordering::Relaxed) {
                std::thread::sleep(interval);
                // SAFETY: the vCPU thread outlives the timer: Drop joins the
                // timer before the Profiler, owned by the vCPU thread, is gone.
                unsafe { libc::pthread_kill(vcpu_thread, SIGRTMIN()) };
            }
        });
        Ok(Self { samples: HashMap::new(), stop, timer: Some(timer) })
    }

    pub fn record(&mut self, rip: u64) {
        *self.samples.entry(rip).or_default() += 1;
    }

    /// The `top` functions by share of samples, named from `system_map`
    /// (user-space samples are counted together).
    pub fn report(&self, system_map: &Path, top: usize) -> std::io::Result<String> {
        let text = std::fs::read_to_string(system_map)?;
        let mut symbols: Vec<(u64, &str)> = text
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let addr = u64::from_str_radix(f.next()?, 16).ok()?;
                let kind = f.next()?;
                matches!(kind, "t" | "T").then_some((addr, f.next()?))
            })
            .collect();
        symbols.sort_unstable();
        let mut by_function: HashMap<&str, u32> = HashMap::new();
        let total: u32 = self.samples.values().sum();
        for (&rip, &n) in &self.samples {
            let name = if rip < 1 << 63 {
                "(guest user space)"
            } else {
                match symbols.partition_point(|&(a, _)| a <= rip) {
                    0 => "(unknown kernel address)",
                    i => symbols[i - 1].1,
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
        Ok(out)
    }
}

impl Drop for Profiler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.timer.take() {
            let _ = t.join();
        }
    }
}
