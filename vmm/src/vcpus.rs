//! The vCPU threads of a VM: one per vCPU, all spawned while the VM is built
//! (the seccomp filter, installed later, refuses what a new thread's set-up
//! needs), started together by [`VcpuThreads::run`] and stopped together.
//!
//! | event | outcome |
//! |---|---|
//! | a vCPU stops for its own reason (reset, shutdown, error, or a stop asked of it) | that is the VM's [`Stop`]; every other vCPU is asked to stop |
//! | the other vCPUs stop | their outcomes are logged if they are not [`Stop::Kicked`] |
//! | the guest never started some of them | a warning says how many it started (a kernel without `CONFIG_SMP` starts one) |
//! | [`VcpuThreads`] is dropped | each thread drops its vCPU and ends; they are joined |
//!
//! Application processors (every vCPU but the first) start in KVM's
//! wait-for-SIPI state: their `KVM_RUN` sleeps in KVM until the guest starts
//! them through their local APICs.

use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use kvm_ioctls::VcpuFd;
use vm_memory::GuestMemoryMmap;

use crate::device_manager::DeviceManager;
use crate::profile::Samples;
use crate::vcpu::{self, Kickers, Stop, Vcpu};

/// What a vCPU thread is told, in this order: whether to run the guest,
/// then (after its run, or instead) to end.
enum Go {
    Run,
    End,
}

/// What a vCPU thread tells when its run ends.
struct Report {
    index: usize,
    stop: Result<Stop, vcpu::Error>,
    /// Whether the guest started the vCPU (see [`Vcpu::started`]); true
    /// when KVM could not tell.
    started: bool,
}

struct Thread {
    go: SyncSender<Go>,
    handle: JoinHandle<()>,
}

pub struct VcpuThreads {
    threads: Vec<Thread>,
    kickers: Kickers,
    reports: Receiver<Report>,
}

impl VcpuThreads {
    /// Spawns a thread for each of `fds`; each takes its vCPU over and waits
    /// for [`VcpuThreads::run`].
    pub fn spawn(
        fds: Vec<VcpuFd>,
        devices: &Arc<Mutex<DeviceManager>>,
        mem: &GuestMemoryMmap,
        samples: Option<&Samples>,
    ) -> std::io::Result<Self> {
        let (report, reports) = mpsc::channel();
        let mut threads = Vec::new();
        let mut kickers = Vec::new();
        for (index, fd) in fds.into_iter().enumerate() {
            let (go, told) = mpsc::sync_channel(2);
            let (made, kicker) = mpsc::channel();
            let (devices, mem, samples, report) = (devices.clone(), mem.clone(), samples.cloned(), report.clone());
            let handle = crate::spawn_started(&format!("vcpu{index}"), move || {
                let mut vcpu = match Vcpu::new(index, fd, samples) {
                    Ok(vcpu) => vcpu,
                    Err(e) => return drop(made.send(Err(e))),
                };
                let _ = made.send(Ok(vcpu.kicker()));
                if let Ok(Go::Run) = told.recv() {
                    let stop = vcpu.run(&devices, &mem);
                    let started = vcpu.started().unwrap_or(true);
                    let _ = report.send(Report { index, stop, started });
                    // The vCPU (and with it this thread's kicker) stays
                    // until the VM is done with every kicker.
                    let _ = told.recv();
                }
            })?;
            let kicker = kicker.recv().map_err(std::io::Error::other)??;
            threads.push(Thread { go, handle });
            kickers.push(kicker);
        }
        Ok(Self { threads, kickers: Kickers::new(kickers), reports })
    }

    pub fn kickers(&self) -> Kickers {
        self.kickers.clone()
    }

    /// Runs every vCPU until one stops, then stops the others; returns the
    /// first vCPU's stop and its index.
    pub fn run(&mut self) -> (usize, Result<Stop, vcpu::Error>) {
        for t in &self.threads {
            let _ = t.go.send(Go::Run);
        }
        // Every vCPU thread reports its stop: a panic aborts the VMM (the
        // release profile), so none can end without.
        let first = self.reports.recv().expect("every vCPU thread reports");
        self.kickers.request_stop();
        let mut started = usize::from(first.started);
        for _ in 1..self.threads.len() {
            let report = self.reports.recv().expect("every vCPU thread reports");
            started += usize::from(report.started);
            if !matches!(report.stop, Ok(Stop::Kicked)) {
                log::info!("vCPU {} also stopped: {:?}", report.index, report.stop);
            }
        }
        let cpus = self.threads.len();
        if started < cpus {
            log::warn!(
                "the guest started {started} of its {cpus} vCPUs (a kernel without CONFIG_SMP, or booted with \
                 nosmp or maxcpus=, starts fewer)"
            );
        }
        (first.index, first.stop)
    }
}

impl Drop for VcpuThreads {
    fn drop(&mut self) {
        self.kickers.request_stop();
        for t in &self.threads {
            let _ = t.go.send(Go::End);
        }
        for t in self.threads.drain(..) {
            let _ = t.handle.join();
        }
    }
}
