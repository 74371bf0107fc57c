//! The benchmark's outputs: JSON for machines, an SVG chart and a Markdown
//! report for people, and a summary on stdout.

use std::fmt::Write;

use crate::{Boots, Latency, Results};

/// Goals from the benchmark issue.
const THROUGHPUT_GOAL: f64 = 0.9;
const LATENCY_GOAL: f64 = 2.0;
/// Goal from the boot-cost issue: boot to init in at most this many million
/// emulated-instruction times.
const BOOT_GOAL_MILLION: f64 = 10.0;

fn ratio(a: f64, b: f64) -> f64 {
    a / b
}

fn median_ratio(r: &Results) -> f64 {
    r.vm_latency.quantile(0.5) as f64 / r.host_latency.quantile(0.5) as f64
}

fn latency_json(l: &Latency) -> String {
    format!(
        "{{\"round_trips\": {}, \"median_ns\": {}, \"p99_ns\": {}, \"max_ns\": {}}}",
        l.sorted_ns.len(),
        l.quantile(0.5),
        l.quantile(0.99),
        l.max()
    )
}

fn boots_json(b: &Boots) -> String {
    format!(
        "{{\"boots\": {}, \"to_init_s\": {:.2}, \"process_s\": {:.2}, \"ns_per_instruction\": {:.0}, \"million_instruction_times\": {:.1}}}",
        b.0.len(),
        b.to_init_s(),
        b.process_s(),
        b.ns_per_instruction(),
        b.million_instructions()
    )
}

fn quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => write!(out, "\\u{:04x}", c as u32).unwrap(),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub fn json(r: &Results) -> String {
    let machine: Vec<String> = r.machine.iter().map(|(k, v)| format!("{}: {}", quoted(k), quoted(v))).collect();
    let memory: Vec<String> = r
        .memory
        .iter()
        .map(|m| {
            format!(
                "{{\"caching\": {}, \"copy_in_mbps\": {:.0}, \"copy_out_mbps\": {:.0}}}",
                quoted(&m.caching),
                m.copy_in_mbps,
                m.copy_out_mbps
            )
        })
        .collect();
    let (qemu, qemu_note) = match &r.boot_qemu {
        Ok(q) => (boots_json(&q.boots), format!("QEMU microvm -cpu {}", q.cpu)),
        Err(why) => ("null".to_string(), why.clone()),
    };
    format!(
        "{{\n  \"machine\": {{{}}},\n  \"stream_bytes\": {},\n  \"host_memcpy_gbps\": {:.3},\n  \"host_thread_stream_gbps\": {:.3},\n  \
         \"guest_to_host_gbps\": {:.3},\n  \"host_to_guest_gbps\": {:.3},\n  \
         \"guest_to_host_ratio\": {:.3},\n  \"host_to_guest_ratio\": {:.3},\n  \
         \"round_trip_vm\": {},\n  \"round_trip_host_threads\": {},\n  \"round_trip_median_ratio\": {:.3},\n  \
         \"guest_mapping\": [{}],\n  \"boot\": {{\"kvmshm_vmm\": {}, \"qemu_microvm\": {qemu}, \"qemu_note\": {}}}\n}}\n",
        machine.join(", "),
        r.total_bytes,
        r.host_memcpy_gbps,
        r.host_stream_gbps,
        r.guest_to_host_gbps,
        r.host_to_guest_gbps,
        ratio(r.guest_to_host_gbps, r.host_memcpy_gbps),
        ratio(r.host_to_guest_gbps, r.host_memcpy_gbps),
        latency_json(&r.vm_latency),
        latency_json(&r.host_latency),
        median_ratio(r),
        memory.join(", "),
        boots_json(&r.boot_ours),
        quoted(&qemu_note),
    )
}

const WIDTH: f64 = 900.0;
const LABEL_W: f64 = 230.0;
const BAR_H: f64 = 22.0;

struct Svg(String);

impl Svg {
    fn text(&mut self, x: f64, y: f64, size: u32, anchor: &str, s: &str) {
        let s = s.replace('&', "&amp;").replace('<', "&lt;");
        writeln!(self.0, r#"<text x="{x:.1}" y="{y:.1}" font-size="{size}" text-anchor="{anchor}">{s}</text>"#)
            .unwrap();
    }

    /// A titled panel of horizontal bars; returns the y below it.
    fn bars(&mut self, y: f64, title: &str, bars: &[(String, f64, String, &str)]) -> f64 {
        self.text(10.0, y + 16.0, 15, "start", title);
        let max = bars.iter().map(|b| b.1).fold(f64::MIN_POSITIVE, f64::max);
        let span = WIDTH - LABEL_W - 130.0;
        let mut y = y + 28.0;
        for (label, value, shown, color) in bars {
            let w = (value / max * span).max(1.0);
            self.text(LABEL_W - 8.0, y + 16.0, 13, "end", label);
            writeln!(self.0, r#"<rect x="{LABEL_W}" y="{y:.1}" width="{w:.1}" height="{BAR_H}" fill="{color}"/>"#)
                .unwrap();
            self.text(LABEL_W + w + 6.0, y + 16.0, 13, "start", shown);
            y += BAR_H + 6.0;
        }
        y + 14.0
    }

    /// Round-trip times as cumulative distributions on a log time axis.
    fn cdf(&mut self, y: f64, series: &[(&str, &Latency, &str)]) -> f64 {
        self.text(10.0, y + 16.0, 15, "start", "Round-trip time, cumulative distribution (log scale)");
        let (x0, x1, top, h) = (LABEL_W, WIDTH - 40.0, y + 30.0, 220.0);
        let (lo, hi) = (1.0f64, 7.0f64); // 10 ns .. 10 ms
        let px = |ns: u64| x0 + ((ns.max(10) as f64).log10() - lo) / (hi - lo) * (x1 - x0);
        writeln!(
            self.0,
            r##"<rect x="{x0}" y="{top}" width="{:.1}" height="{h}" fill="none" stroke="#999"/>"##,
            x1 - x0
        )
        .unwrap();
        for (i, label) in ["10 ns", "100 ns", "1 us", "10 us", "100 us", "1 ms", "10 ms"].iter().enumerate() {
            let x = x0 + i as f64 / 6.0 * (x1 - x0);
            writeln!(self.0, r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/>"##, top + h)
                .unwrap();
            self.text(x, top + h + 16.0, 12, "middle", label);
        }
        for (q, label) in [(0.0, "0"), (0.5, "50%"), (0.99, "99%")] {
            let yy = top + h - q * h;
            self.text(x0 - 6.0, yy + 4.0, 12, "end", label);
        }
        for (i, (name, lat, color)) in series.iter().enumerate() {
            let n = lat.sorted_ns.len();
            let step = (n / 400).max(1);
            let points: Vec<String> = (0..n)
                .step_by(step)
                .chain([n - 1])
                .map(|k| format!("{:.1},{:.1}", px(lat.sorted_ns[k]), top + h - (k as f64 + 1.0) / n as f64 * h))
                .collect();
            writeln!(
                self.0,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                points.join(" ")
            )
            .unwrap();
            let ly = top + 18.0 + i as f64 * 18.0;
            writeln!(
                self.0,
                r#"<rect x="{:.1}" y="{:.1}" width="14" height="4" fill="{color}"/>"#,
                x0 + 10.0,
                ly - 5.0
            )
            .unwrap();
            self.text(x0 + 30.0, ly, 12, "start", name);
        }
        top + h + 40.0
    }
}

fn us(ns: u64) -> String {
    format!("{:.2} us", ns as f64 / 1000.0)
}

pub fn svg(r: &Results) -> String {
    let mut s = Svg(String::new());
    let gb = |v: f64| format!("{v:.2} GB/s");
    let mut y = 10.0;
    let stream = [
        ("host memcpy (the limit)".to_string(), r.host_memcpy_gbps, gb(r.host_memcpy_gbps), "#888"),
        (
            "host thread -> thread".to_string(),
            r.host_stream_gbps,
            format!("{} ({:.2}x)", gb(r.host_stream_gbps), ratio(r.host_stream_gbps, r.host_memcpy_gbps)),
            "#aaa",
        ),
        (
            "guest -> host".to_string(),
            r.guest_to_host_gbps,
            format!("{} ({:.2}x)", gb(r.guest_to_host_gbps), ratio(r.guest_to_host_gbps, r.host_memcpy_gbps)),
            "#2b6cb0",
        ),
        (
            "host -> guest".to_string(),
            r.host_to_guest_gbps,
            format!("{} ({:.2}x)", gb(r.host_to_guest_gbps), ratio(r.host_to_guest_gbps, r.host_memcpy_gbps)),
            "#2f855a",
        ),
    ];
    y = s.bars(y, &format!("Streaming {} MiB in 1 MiB chunks", r.total_bytes >> 20), &stream);
    let memory: Vec<_> = r
        .memory
        .iter()
        .flat_map(|m| {
            [
                (
                    format!("{} copy into mapping", m.caching),
                    m.copy_in_mbps / 1000.0,
                    gb(m.copy_in_mbps / 1000.0),
                    "#c05621",
                ),
                (
                    format!("{} copy out of mapping", m.caching),
                    m.copy_out_mbps / 1000.0,
                    gb(m.copy_out_mbps / 1000.0),
                    "#dd6b20",
                ),
            ]
        })
        .collect();
    y = s.bars(y, "Guest copies through the mapping, by memory type", &memory);
    let vm = format!("VM <-> host: median {}, p99 {}", us(r.vm_latency.quantile(0.5)), us(r.vm_latency.quantile(0.99)));
    let host = format!(
        "host thread <-> thread: median {}, p99 {}",
        us(r.host_latency.quantile(0.5)),
        us(r.host_latency.quantile(0.99))
    );
    y = s.cdf(y, &[(&vm, &r.vm_latency, "#2b6cb0"), (&host, &r.host_latency, "#888")]);
    let shown = |b: &Boots| format!("{:.1} M ({:.1} s)", b.million_instructions(), b.to_init_s());
    let mut boot = vec![("kvmshm VMM".to_string(), r.boot_ours.million_instructions(), shown(&r.boot_ours), "#2b6cb0")];
    if let Ok(q) = &r.boot_qemu {
        boot.push(("QEMU microvm".to_string(), q.boots.million_instructions(), shown(&q.boots), "#888"));
    }
    y = s.bars(y, "Boot to the first line of the guest's init, in emulated-instruction times (seconds)", &boot);
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{y:.0}\" font-family=\"sans-serif\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n{}</svg>\n",
        s.0
    )
}

fn goal(met: bool) -> &'static str {
    if met { "met" } else { "missed" }
}

pub fn summary(r: &Results) -> String {
    let g2h = ratio(r.guest_to_host_gbps, r.host_memcpy_gbps);
    let h2g = ratio(r.host_to_guest_gbps, r.host_memcpy_gbps);
    let lat = median_ratio(r);
    let mut s = String::new();
    writeln!(s, "host memcpy          {:8.2} GB/s", r.host_memcpy_gbps).unwrap();
    writeln!(
        s,
        "host thread stream   {:8.2} GB/s  {:.2} x memcpy (the same stream between two host threads)",
        r.host_stream_gbps,
        ratio(r.host_stream_gbps, r.host_memcpy_gbps)
    )
    .unwrap();
    writeln!(
        s,
        "guest -> host        {:8.2} GB/s  {g2h:.2} x memcpy (goal >= {THROUGHPUT_GOAL}: {})",
        r.guest_to_host_gbps,
        goal(g2h >= THROUGHPUT_GOAL)
    )
    .unwrap();
    writeln!(
        s,
        "host -> guest        {:8.2} GB/s  {h2g:.2} x memcpy (goal >= {THROUGHPUT_GOAL}: {})",
        r.host_to_guest_gbps,
        goal(h2g >= THROUGHPUT_GOAL)
    )
    .unwrap();
    for (name, l) in [("round trip VM", &r.vm_latency), ("round trip host", &r.host_latency)] {
        writeln!(
            s,
            "{name:<20} median {}, p99 {}, max {} ({} round trips)",
            us(l.quantile(0.5)),
            us(l.quantile(0.99)),
            us(l.max()),
            l.sorted_ns.len()
        )
        .unwrap();
    }
    writeln!(s, "round-trip median    {lat:.2} x host threads (goal <= {LATENCY_GOAL}: {})", goal(lat <= LATENCY_GOAL))
        .unwrap();
    for m in &r.memory {
        writeln!(
            s,
            "guest mapping {}      copy in {:.0} MB/s, copy out {:.0} MB/s",
            m.caching, m.copy_in_mbps, m.copy_out_mbps
        )
        .unwrap();
    }
    let boot = |b: &Boots| {
        let (least, most) = b.probe_drift();
        format!(
            "{:.1} M emulated-instruction times ({:.1} s to init at {:.0} ns each; {:.1} s to the end; \
             probe after / before a boot {:.2} to {:.2})",
            b.million_instructions(),
            b.to_init_s(),
            b.ns_per_instruction(),
            b.process_s(),
            least,
            most
        )
    };
    let ours = r.boot_ours.million_instructions();
    writeln!(
        s,
        "boot, ours           {} (goal <= {BOOT_GOAL_MILLION} M: {}; median of {})",
        boot(&r.boot_ours),
        goal(ours <= BOOT_GOAL_MILLION),
        r.boot_ours.0.len()
    )
    .unwrap();
    match &r.boot_qemu {
        Ok(q) => {
            writeln!(s, "boot, QEMU microvm   {} (-cpu {})", boot(&q.boots), q.cpu).unwrap();
            let to_init = q.ours_over_qemu(&r.boot_ours, |b| b.to_init_s);
            writeln!(
                s,
                "boot, ours / QEMU    {to_init:.2} to init, {:.2} to the end (goal <= 1: {}; medians of each round's ratio)",
                q.ours_over_qemu(&r.boot_ours, |b| b.process_s),
                goal(to_init <= 1.0)
            )
            .unwrap();
        }
        Err(why) => writeln!(s, "boot, QEMU microvm   {why}").unwrap(),
    }
    s
}

pub fn markdown(r: &Results) -> String {
    let mut s = String::from(
        "# Benchmark report\n\nWritten by `./bench.sh` (tests/src/bin/bench); every number below comes from one run.\n\n",
    );
    s += "![chart](chart.svg)\n\n## Machine\n\n| | |\n|---|---|\n";
    for (k, v) in &r.machine {
        writeln!(s, "| {k} | {v} |").unwrap();
    }
    s += "\n## Results\n\n```\n";
    s += &summary(r);
    s += "```\n\nRaw numbers: [results.json](results.json).\n\n";
    s += "## What was measured\n\n\
        - **Streaming**: a ring of 16 chunks of 1 MiB in the shared memory. The guest process copies each chunk \
        from a private buffer into the ring and publishes it; a host process copies it out into a private buffer \
        and frees the slot (and the reverse for host -> guest). Time is taken on the host, from the first chunk \
        to the last one consumed. The limit is a single-threaded host memcpy of the same size in the same chunks \
        (from a 1 MiB buffer into a 16 MiB ring); the same stream between two host threads shows what crossing \
        cores costs without any VM.\n\
        - **Round trips**: one 8-byte message each way, both sides spinning on a cache line (no system calls, no \
        interrupts). The baseline runs the same code between two host threads.\n\
        - **Memory types**: the guest maps the device write-back, write-combining and uncached in turn (the \
        driver's `KVMSHM_IOC_SET_CACHING`) and copies 64 MiB in and out.\n\
        - **Boot**: from starting the VMM process to the first line the guest's init prints, and to the end of the \
        process (the guest resets itself once its program has run), for our VMM and for QEMU's microvm on the same \
        vmlinux, initramfs and guest command line, neither with devices; the two take turns, the figures are \
        medians, and ours / QEMU is the median of each round's ratio. Where guest kernel code is emulated, boot \
        time follows the emulator's speed, which differs \
        between machines and from minute to minute: boot time divided by the time per emulated instruction \
        (the mean of the probes just before and just after the boot: our VMM's at its start, vmm/src/host.rs, \
        and `kvmshm probe`'s) is the boot's cost in emulated-instruction times, the figure to compare between \
        machines.\n";
    s += &limits(r);
    s
}

/// What limits the numbers, read from the numbers themselves.
fn limits(r: &Results) -> String {
    let mut s = String::from("\n## What limits them\n\n");
    let host_ratio = ratio(r.host_stream_gbps, r.host_memcpy_gbps);
    let vm_ratio = ratio(r.guest_to_host_gbps.min(r.host_to_guest_gbps), r.host_stream_gbps);
    writeln!(
        s,
        "- **Crossing cores.** The same stream between two host threads reaches {host_ratio:.2} x memcpy: every \
         chunk is written in one core's cache and read from another's, while the memcpy baseline stays in one \
         core. The VM streams reach {vm_ratio:.2} x or more of the host-thread stream; the rest is the guest's \
         share of the CPU (below)."
    )
    .unwrap();
    writeln!(
        s,
        "- **Guest timer ticks.** Guest user space runs natively, but every guest timer tick and interrupt \
         runs in the guest kernel, which on a host without hardware virtualisation is emulated: milliseconds \
         each, during which the guest side of a stream stands still (the Scale section measures the share of \
         its time a spinning guest process loses). The host side is interrupted too: the longest round trips were {} through the VM and {} between \
         host threads. The guest also copies with musl's memcpy, the host with glibc's.",
        us(r.vm_latency.max()),
        us(r.host_latency.max())
    )
    .unwrap();
    // Where the guest's page attributes reach the memory, uncached copies
    // are many times slower than write-back ones; here they may not be.
    let speeds = |caching: &str| -> Vec<f64> {
        r.memory.iter().filter(|m| m.caching == caching).flat_map(|m| [m.copy_in_mbps, m.copy_out_mbps]).collect()
    };
    let wb_slowest = speeds("wb").into_iter().fold(f64::MAX, f64::min);
    let uc_fastest = speeds("uc").into_iter().fold(0.0, f64::max);
    if r.memory.is_empty() {
        // Nothing measured, nothing to explain.
    } else if uc_fastest * 3.0 < wb_slowest {
        s += "- **Memory types.** The guest's page attributes take effect on this host: uncached copies run at \
              a fraction of write-back ones, which is why write-back is the driver's default.\n";
    } else {
        s += "- **Memory types.** Uncached copies were not slower than write-back ones: this host maps guest \
              memory write-back whatever the guest's page attributes say, and what differs between the three \
              rows is this host's noise. On hosts that honour them, uncached access is many times slower, \
              which is why write-back is the driver's default.\n";
    }
    s
}
