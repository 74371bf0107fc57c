//! Helpers for the host-side tests: they boot the real VMM (target/release/vmm)
//! with the real guest image (images/out/), as a user would.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the repository").to_path_buf()
}

/// A host binary of this workspace, built by test.sh before the tests run.
pub fn host_binary(name: &str) -> PathBuf {
    let path = repo().join("target/release").join(name);
    assert!(
        path.exists(),
        "{} is missing: run ./test.sh, or `cargo build --release -p vmm --bins` first",
        path.display()
    );
    path
}

pub fn image_file(name: &str) -> PathBuf {
    let path = repo().join("images/out").join(name);
    assert!(path.exists(), "{} is missing: build the guest image with images/build.sh first", path.display());
    path
}

fn require_kvm() {
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        panic!("VM tests need /dev/kvm, which cannot be opened here: {e}");
    }
}

/// A scratch directory for one test, removed when dropped.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(test: &str) -> Self {
        Self::new_in(&std::env::temp_dir(), test)
    }

    pub fn new_in(base: &Path, test: &str) -> Self {
        let dir = base.join(format!("kvmshm-test-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch directory");
        Self(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A VMM command line for the test kernel with `initrd` and `cmdline`.
pub fn vmm_with(initrd: &Path, cmdline: &str, extra: &[&str]) -> Command {
    require_kvm();
    let mut cmd = Command::new(host_binary("vmm"));
    cmd.arg("--kernel")
        .arg(image_file("vmlinux"))
        .arg("--initrd")
        .arg(initrd)
        .arg("--cmdline")
        .arg(cmdline)
        .args(extra)
        .env("RUST_LOG", "info");
    cmd
}

/// A VMM command line for the test image: `run` is what goes after `run=`
/// (the program and, after ` -- `, its arguments).
pub fn vmm(run: &str, extra: &[&str]) -> Command {
    vmm_with(&image_file("initramfs.cpio"), &format!("run={run}"), extra)
}

pub struct VmResult {
    pub code: Option<i32>,
    pub console: String,
    pub log: String,
}

impl VmResult {
    pub fn from_output(out: Output) -> Self {
        Self {
            code: out.status.code(),
            console: String::from_utf8_lossy(&out.stdout).into_owned(),
            log: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// For assertion messages: everything the VM printed.
    pub fn transcript(&self) -> String {
        format!("exit code {:?}\n--- console ---\n{}\n--- vmm log ---\n{}", self.code, self.console, self.log)
    }
}

pub fn run_vm(run: &str, extra: &[&str]) -> VmResult {
    VmResult::from_output(vmm(run, extra).output().expect("start the VMM"))
}

pub fn spawn_vm(run: &str, extra: &[&str]) -> RunningVm {
    RunningVm(Some(vmm(run, extra).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start the VMM")))
}

/// A VMM started by a test. Dropping it kills the VM, so that a test that
/// fails half-way does not leave a guest spinning (an echo server, say).
pub struct RunningVm(Option<Child>);

impl RunningVm {
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("the VM is only taken by finish()")
    }

    pub fn is_running(&mut self) -> bool {
        self.child().try_wait().expect("wait for the VMM").is_none()
    }

    /// Kills the VM with SIGKILL and returns how it ended.
    pub fn kill(&mut self) -> std::process::ExitStatus {
        let child = self.child();
        child.kill().expect("kill the VMM");
        child.wait().expect("wait for the VMM")
    }

    /// Waits for the VM to end and returns what it printed.
    pub fn finish(mut self) -> VmResult {
        VmResult::from_output(self.0.take().expect("finished once").wait_with_output().expect("VMM output"))
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Builds `programs/NAME.c` as a static musl binary in `scratch`.
pub fn static_c_program(scratch: &Scratch, name: &str) -> PathBuf {
    let source = repo().join("tests/programs").join(format!("{name}.c"));
    let out = scratch.path(name);
    let status = Command::new("musl-gcc")
        .args(["-static", "-Os", "-s", "-o"])
        .arg(&out)
        .arg(&source)
        .status()
        .expect("run musl-gcc (package musl-tools, installed by images/build.sh)");
    assert!(status.success(), "musl-gcc failed on {}", source.display());
    out
}

/// The image's initramfs with `files` (guest path under /, host file) added
/// as a second cpio archive: Linux unpacks concatenated archives in order.
pub fn initrd_with(scratch: &Scratch, files: &[(&str, &Path)]) -> PathBuf {
    let root = scratch.path("extra-root");
    let mut list = String::new();
    for (guest, host) in files {
        let dest = root.join(guest.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(host, &dest).unwrap();
        list += guest.trim_start_matches('/');
        list.push('\n');
    }
    let mut cpio = Command::new("cpio")
        .args(["--quiet", "-o", "-H", "newc", "-R", "0:0"])
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run cpio (installed by images/build.sh)");
    std::io::Write::write_all(cpio.stdin.as_mut().unwrap(), list.as_bytes()).unwrap();
    let extra = cpio.wait_with_output().unwrap();
    assert!(extra.status.success(), "cpio failed");
    let mut initrd = std::fs::read(image_file("initramfs.cpio")).unwrap();
    initrd.resize(initrd.len().next_multiple_of(4), 0);
    initrd.extend_from_slice(&extra.stdout);
    let path = scratch.path("initramfs-extra.cpio");
    std::fs::write(&path, initrd).unwrap();
    path
}

/// Runs the host tool `kvmshm` and returns its status and output.
pub fn kvmshm(args: &[&str]) -> VmResult {
    VmResult::from_output(Command::new(host_binary("kvmshm")).args(args).output().expect("start kvmshm"))
}

/// Runs `kvmshm` with `args` while `vm` runs. If the VM ends first, the
/// command is stopped and the test fails with what the VM printed: a guest
/// that died must not leave the host waiting for it.
pub fn kvmshm_beside_vm(vm: RunningVm, args: &[&str]) -> (RunningVm, VmResult) {
    let mut vm = vm;
    let mut tool = Command::new(host_binary("kvmshm"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kvmshm");
    loop {
        if tool.try_wait().expect("wait for kvmshm").is_some() {
            return (vm, VmResult::from_output(tool.wait_with_output().expect("kvmshm output")));
        }
        if !vm.is_running() {
            let _ = tool.kill();
            let tool = VmResult::from_output(tool.wait_with_output().expect("kvmshm output"));
            panic!(
                "the VM ended while `kvmshm {}` ran\nVM: {}\nkvmshm: {}",
                args.join(" "),
                vm.finish().transcript(),
                tool.transcript()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
