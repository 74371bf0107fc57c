//! Page size: the demo's `pages` (8-byte writes to the first cache line of
//! random pages of a 64 MiB region, shm_layout::tlb, through a mapping with
//! 2 MiB pages, then through one with 4 KiB pages) run as a host process on
//! a file and in a guest on a device, both backed by a tmpfs mounted
//! `huge=always` for the run: KVM gives the guest 2 MiB pages only where the
//! host's mapping has them.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use kvmshm_tests::{Mount, Running, Scratch, vmm};

use crate::{host_demo, median, on_cpus};

const SECONDS: u64 = 3;
/// Host and guest runs, alternating; the medians are reported.
const RUNS: usize = 3;
const REGION_MIB: u64 = 64;
const PREFIX: &str = "pages: writes to random pages over ";

/// Writes per second through 2 MiB and through 4 KiB pages.
#[derive(Clone, Copy)]
pub struct Rates {
    pub huge: f64,
    pub small: f64,
}

impl Rates {
    fn median(runs: &[Self]) -> Self {
        let of = |f: fn(&Self) -> f64| median(runs.iter().map(f).collect());
        Self { huge: of(|r| r.huge), small: of(|r| r.small) }
    }

    /// "pages: writes to random pages over 64 MiB: 2 MiB pages 378.4 M/s, 4 KiB pages 320.7 M/s"
    fn find(console: &str) -> Option<Self> {
        let line = console.lines().find_map(|l| l.strip_prefix(PREFIX))?;
        let rate = |after: &str| -> Option<f64> {
            let m: f64 = line.split_once(after)?.1.split_whitespace().next()?.parse().ok()?;
            Some(m * 1e6)
        };
        Some(Self { huge: rate("2 MiB pages ")?, small: rate("4 KiB pages ")? })
    }
}

pub struct PagesResults {
    pub host: Rates,
    pub guest: Rates,
}

/// A file of the region's size on `tmpfs`.
fn region_file(tmpfs: &Mount, name: &str) -> anyhow::Result<PathBuf> {
    let path = tmpfs.path(name);
    std::fs::File::create(&path)?.set_len(REGION_MIB << 20)?;
    Ok(path)
}

fn host(file: &Path) -> anyhow::Result<Rates> {
    let text = host_demo(file, &["pages", &format!("--seconds={SECONDS}")])?;
    Rates::find(&text).with_context(|| format!("no {PREFIX:?} line from the host run: {text}"))
}

fn guest(file: &Path) -> anyhow::Result<Rates> {
    let shm = format!("path={},size={REGION_MIB}M", file.display());
    let run = format!("/bin/kvmshm-demo -- pages --seconds={SECONDS}");
    let out = Running::vmm(on_cpus(vmm(&run, &["--shm", &shm]), 0..1)).finish();
    if out.code != Some(0) {
        bail!("the pages run in a guest failed:\n{}", out.transcript());
    }
    Rates::find(&out.console).with_context(|| format!("no {PREFIX:?} line:\n{}", out.transcript()))
}

/// Both runs, or why they could not be made (mounting needs root).
pub fn run(scratch: &Scratch) -> anyhow::Result<Result<PagesResults, String>> {
    let options = format!("huge=always,size={}m", 4 * REGION_MIB);
    let tmpfs = match Mount::new(scratch.path("huge"), "tmpfs", &options) {
        Ok(t) => t,
        Err(e) => return Ok(Err(format!("{e:#}"))),
    };
    let (mut hosts, mut guests) = (Vec::new(), Vec::new());
    for run in 1..=RUNS {
        eprintln!("bench: pages {run} of {RUNS}, writes through 2 MiB and 4 KiB pages on the host, then in a guest...");
        hosts.push(host(&region_file(&tmpfs, "host")?)?);
        guests.push(guest(&region_file(&tmpfs, "guest")?)?);
    }
    Ok(Ok(PagesResults { host: Rates::median(&hosts), guest: Rates::median(&guests) }))
}

pub fn markdown(r: &Result<PagesResults, String>) -> String {
    let mut s = format!(
        "\n## Page size\n\n8-byte writes to the first cache line of random pages of a {REGION_MIB} MiB region for {SECONDS} s \
         (the demo's `pages`: 1 MiB written, which the caches hold, over 16,384 pages, which a TLB of 4 KiB \
         entries does not), \
         through a mapping with 2 MiB pages (the driver maps each 2 MiB-aligned part of a mapping with one PMD) and \
         through one with 4 KiB pages (the same region mapped 4 KiB off a 2 MiB boundary), by a host process on a \
         file and by a guest process on the device, both files on a tmpfs mounted huge=always for the run; \
         medians of {RUNS} runs of each, alternating.\n\n"
    );
    let r = match r {
        Ok(r) => r,
        Err(why) => return s + &format!("Not measured: {why} (mounting a tmpfs needs root).\n"),
    };
    s += "| | 2 MiB pages | 4 KiB pages | 2 MiB / 4 KiB |\n|---|---|---|---|\n";
    for (who, rates) in [("host process", r.host), ("guest process", r.guest)] {
        writeln!(
            s,
            "| {who} | {:.1} M/s | {:.1} M/s | {:.2} |",
            rates.huge / 1e6,
            rates.small / 1e6,
            rates.huge / rates.small
        )
        .unwrap();
    }
    writeln!(s, "| guest / host | {:.2} | {:.2} | |", r.guest.huge / r.host.huge, r.guest.small / r.host.small)
        .unwrap();
    s
}
