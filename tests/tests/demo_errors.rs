//! Bad arguments to the guest demo get status 2 and a message before any
//! command runs or any device is opened. Run on the host: the image's
//! `kvmshm-demo` is a static binary, and these paths touch no device.

use std::process::Command;

use kvmshm_tests::image_file;

fn demo(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(image_file("kvmshm-demo")).args(args).output().expect("start kvmshm-demo");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn bad_arguments_end_with_status_2_and_say_why() {
    for (args, why) in [
        (&["bogus"][..], "unknown command \"bogus\""),
        (&["write", "--procs=0", "--records=1"], "--procs must be at least 1"),
        (&["--caching=xx", "memspeed", "--mib=1"], "--caching takes wb, wc or uc"),
        (&["clocks"], "clocks needs --seconds"),
        (&["clocks", "--seconds=x"], "--seconds \"x\" is not a number"),
        (&["host-clock", "--seconds=0"], "host-clock needs at least one second"),
        // The commands that map no device refuse a caching mode for it.
        (&["--caching=wb", "clocks", "--seconds=1"], "--caching applies to the commands that map the device"),
        (&["--caching=uc", "meminfo"], "--caching applies to the commands that map the device"),
    ] {
        let (code, _, err) = demo(args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(why), "{args:?}: {err}");
    }
}

#[test]
fn a_bad_command_anywhere_stops_the_run_before_the_first_command() {
    let (code, out, err) = demo(&["meminfo", "::", "clocks", "--seconds=1", "::", "bogus"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("unknown command \"bogus\""), "{err}");
    assert!(out.is_empty(), "a command ran: {out}");
    // The same run without the typo does run them.
    let (code, out, err) = demo(&["meminfo", "::", "clocks", "--seconds=1"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("meminfo: ") && out.contains("clocks: "), "{out}");
}
