//! libFuzzer target: sequences of guest actions against the device model,
//! with the invariants of `vmm::fuzz` checked after each one. At exit it
//! prints how many actions and checks ran in this process.

#![no_main]

use std::sync::atomic::Ordering;

use libfuzzer_sys::fuzz_target;
use vmm::fuzz::{ACTIONS, CHECKS, run};

extern "C" fn report() {
    println!(
        "device-model fuzzer: {} actions run, {} invariant checks passed",
        ACTIONS.load(Ordering::Relaxed),
        CHECKS.load(Ordering::Relaxed)
    );
}

fuzz_target!(
    init: {
        // SAFETY: `report` is a plain function that only reads atomics and
        // prints; atexit runs it once, when libFuzzer exits.
        unsafe { libc::atexit(report) };
    },
    |data: &[u8]| {
        if let Err(violation) = run(data) {
            panic!("{violation}");
        }
    }
);
