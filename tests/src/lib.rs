//! Helpers for the host-side tests and the benchmark: they boot the real VMM
//! (target/release/vmm) with the real guest image, as a user would: the
//! one-vCPU image in images/out/, or the SMP one in images/out/smp/ for a VM
//! started with `--cpus` above 1.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a VM started by a test may run before the test fails with what
/// the guest printed last: a hung guest must not hang `cargo test`.
pub const VM_DEADLINE: Duration = Duration::from_secs(600);

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

/// A file of the one-vCPU image.
pub fn image_file(name: &str) -> PathBuf {
    image_file_for(&[], name)
}

/// A file of the image that runs a VMM with arguments `extra`: the SMP image
/// if they ask for more than one vCPU.
pub fn image_file_for(extra: &[&str], name: &str) -> PathBuf {
    let cpus = extra.iter().position(|&a| a == "--cpus").and_then(|i| extra.get(i + 1)?.parse::<u32>().ok());
    let dir = if cpus.is_some_and(|n| n > 1) { "images/out/smp" } else { "images/out" };
    let path = repo().join(dir).join(name);
    assert!(path.exists(), "{} is missing: build the guest images with images/build.sh first", path.display());
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

/// A file system mounted on a directory (made if missing) for a test or the
/// benchmark, unmounted when dropped. Mounting needs root: the error says
/// what `mount` said.
pub struct Mount(PathBuf);

impl Mount {
    pub fn new(dir: PathBuf, fstype: &str, options: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let out = Command::new("mount").args(["-t", fstype, "-o", options, "kvmshm-test"]).arg(&dir).output()?;
        if !out.status.success() {
            anyhow::bail!("mount -t {fstype} -o {options}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(Self(dir))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A hugetlbfs mount of 2 MiB pages with room for a file of some size: the
/// host's hugetlb pool is grown for it, and set back once the mount is gone
/// (when dropped). Needs root: the error says what failed.
pub struct Hugetlbfs {
    // Dropped in this order: unmounting frees the files' pages, which the
    // pool can then give back.
    mount: Mount,
    _pool: HugePagePool,
}

impl Hugetlbfs {
    pub const PAGE: u64 = 2 << 20;

    pub fn new(dir: PathBuf, bytes: u64) -> anyhow::Result<Self> {
        let pool = HugePagePool::grow(bytes.div_ceil(Self::PAGE))?;
        Ok(Self { mount: Mount::new(dir, "hugetlbfs", "pagesize=2M")?, _pool: pool })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.mount.path(name)
    }
}

/// More pages of the host's default huge page size (2 MiB on x86) in its
/// hugetlb pool, which hugetlbfs files take theirs from; the pool is set
/// back to its size before when dropped.
struct HugePagePool {
    before: u64,
}

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

impl HugePagePool {
    fn grow(pages: u64) -> anyhow::Result<Self> {
        let read = || -> anyhow::Result<u64> { Ok(std::fs::read_to_string(NR_HUGEPAGES)?.trim().parse()?) };
        let before = read()?;
        let pool = Self { before };
        std::fs::write(NR_HUGEPAGES, (before + pages).to_string())
            .map_err(|e| anyhow::anyhow!("{NR_HUGEPAGES}: {e}"))?;
        let now = read()?;
        if now < before + pages {
            anyhow::bail!("{NR_HUGEPAGES}: the kernel found {} of {pages} more huge pages", now - before);
        }
        Ok(pool)
    }
}

impl Drop for HugePagePool {
    fn drop(&mut self) {
        let _ = std::fs::write(NR_HUGEPAGES, self.before.to_string());
    }
}

/// A VMM command line for the image's kernel (see [`image_file_for`]) with
/// `initrd` and `cmdline`.
pub fn vmm_with(initrd: &Path, cmdline: &str, extra: &[&str]) -> Command {
    vmm_files(&image_file_for(extra, "vmlinux"), initrd, cmdline, extra)
}

/// A VMM command line for `kernel` with `initrd` and `cmdline`.
pub fn vmm_files(kernel: &Path, initrd: &Path, cmdline: &str, extra: &[&str]) -> Command {
    require_kvm();
    let mut cmd = Command::new(host_binary("vmm"));
    cmd.arg("--kernel")
        .arg(kernel)
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
    vmm_image(&format!("run={run}"), extra)
}

/// A VMM command line for the image (see [`image_file_for`]) with `cmdline`.
pub fn vmm_image(cmdline: &str, extra: &[&str]) -> Command {
    vmm_with(&image_file_for(extra, "initramfs.cpio"), cmdline, extra)
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

    /// Fails unless the guest kernel found every `sysctl.*` the command line
    /// set (those the VMM adds where kernel code is emulated among them):
    /// one it lacks is an error line on the console of every boot.
    pub fn assert_sysctls_taken(&self) {
        assert!(!self.console.contains("Failed to set sysctl parameter"), "{}", self.transcript());
    }
}

/// Boots the test image with `run` and waits for the end (see [`Running::finish`]).
pub fn run_vm(run: &str, extra: &[&str]) -> VmResult {
    spawn_vm(run, extra).finish()
}

/// Boots the test image with `run`, as a [`Running`] VMM.
pub fn spawn_vm(run: &str, extra: &[&str]) -> Running {
    Running::vmm(vmm(run, extra))
}

/// A process started by a test or the benchmark: a VMM, a QEMU. Its output
/// is read as it comes (it never blocks on a full pipe), it has a deadline,
/// and dropping it kills it, so that a test that fails half-way does not
/// leave a guest spinning.
pub struct Running {
    child: Option<Child>,
    deadline: Instant,
    stdout_lines: mpsc::Receiver<(Duration, String)>,
    stdout: Vec<String>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    /// For a VMM: set once every thread of it runs under seccomp.
    seccomp: Option<Arc<AtomicBool>>,
}

impl Running {
    /// Starts `cmd`; it has [`VM_DEADLINE`] to finish.
    pub fn spawn(mut cmd: Command) -> std::io::Result<Self> {
        let start = Instant::now();
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        let (tx, stdout_lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped");
        let out_reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send((start.elapsed(), line)).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let (mut err_pipe, err_text) = (child.stderr.take().expect("piped"), stderr.clone());
        let err_reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = err_pipe.read(&mut buf) {
                err_text.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Ok(Self {
            child: Some(child),
            deadline: start + VM_DEADLINE,
            stdout_lines,
            stdout: Vec::new(),
            stderr,
            readers: vec![out_reader, err_reader],
            seccomp: None,
        })
    }

    /// Starts a VMM and watches `/proc/PID/task/*/status` until every one
    /// of its threads shows `Seccomp: 2` (the filter is on).
    pub fn vmm(cmd: Command) -> Self {
        let mut vm = Self::spawn(cmd).expect("start the VMM");
        let seen = Arc::new(AtomicBool::new(false));
        let (pid, flag) = (vm.pid(), seen.clone());
        vm.readers.push(std::thread::spawn(move || {
            let tasks = PathBuf::from(format!("/proc/{pid}/task"));
            while let Ok(entries) = std::fs::read_dir(&tasks) {
                let statuses: Vec<String> =
                    entries.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("status")).ok()).collect();
                if !statuses.is_empty() && statuses.iter().all(|s| s.lines().any(|l| l == "Seccomp:\t2")) {
                    flag.store(true, Ordering::SeqCst);
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }));
        vm.seccomp = Some(seen);
        vm
    }

    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("the process is only taken by finish()")
    }

    fn collect_stdout(&mut self) {
        self.stdout.extend(self.stdout_lines.try_iter().map(|(_, line)| line));
    }

    /// Kills the process and fails the test with its last output lines.
    fn overran(&mut self) -> ! {
        let _ = self.child().kill();
        let _ = self.child().wait();
        self.collect_stdout();
        let last = self.stdout[self.stdout.len().saturating_sub(30)..].join("\n");
        let log = self.stderr.lock().unwrap().clone();
        panic!("still running after {VM_DEADLINE:?}: killed. Its last console lines:\n{last}\n--- its log ---\n{log}");
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// What it wrote to standard error so far.
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Whether it still runs; fails the test once the deadline has passed.
    pub fn is_running(&mut self) -> bool {
        let running = self.child().try_wait().expect("wait for the child").is_none();
        if running && Instant::now() > self.deadline {
            self.overran();
        }
        running
    }

    /// Kills it with SIGKILL and returns how it ended.
    pub fn kill(&mut self) -> ExitStatus {
        let child = self.child();
        child.kill().expect("kill the child");
        child.wait().expect("wait for the child")
    }

    /// Writes `line` and a newline to its standard input, which the caller
    /// piped (`Command::stdin`): for a VMM with `--console-input`, a line
    /// on the guest's console.
    pub fn send_line(&mut self, line: &str) -> std::io::Result<()> {
        let stdin = self.child().stdin.as_mut().ok_or_else(|| std::io::Error::other("standard input is not piped"))?;
        writeln!(stdin, "{line}")
    }

    /// Waits until a line of standard output contains `marker`; returns
    /// when it came, from the start, or what was printed instead.
    pub fn wait_for(&mut self, marker: &str, timeout: Duration) -> Result<Duration, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout_lines.recv_timeout(left) {
                Ok((at, line)) => {
                    let found = line.contains(marker);
                    self.stdout.push(line);
                    if found {
                        return Ok(at);
                    }
                }
                Err(_) => {
                    return Err(format!(
                        "no {marker:?} within {timeout:?}; output so far:\n{}",
                        self.stdout.join("\n")
                    ));
                }
            }
        }
    }

    /// Waits for the end (failing the test at the deadline) and returns
    /// what it printed. For a VMM, also checks that it ran under seccomp.
    pub fn finish(self) -> VmResult {
        let check = self.seccomp.clone();
        let out = self.finish_unchecked();
        if let Some(seen) = check {
            assert!(
                seen.load(Ordering::SeqCst),
                "the VMM never showed `Seccomp: 2` in /proc/PID/task/*/status\n{}",
                out.transcript()
            );
        }
        out
    }

    /// As [`Running::finish`], without the seccomp check.
    pub fn finish_unchecked(mut self) -> VmResult {
        while self.is_running() {
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = self.child().wait().expect("wait for the child");
        for reader in std::mem::take(&mut self.readers) {
            let _ = reader.join();
        }
        self.collect_stdout();
        self.child = None;
        let console = self.stdout.iter().map(|l| format!("{l}\n")).collect();
        VmResult { code: status.code(), console, log: self.stderr.lock().unwrap().clone() }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
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

/// The initramfs `base` with `files` (guest path under /, host file) added
/// as a second cpio archive: Linux unpacks concatenated archives in order.
pub fn initrd_with(scratch: &Scratch, base: &Path, files: &[(&str, &Path)]) -> PathBuf {
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
    let mut initrd = std::fs::read(base).unwrap();
    initrd.resize(initrd.len().next_multiple_of(4), 0);
    initrd.extend_from_slice(&extra.stdout);
    let path = scratch.path("initramfs-extra.cpio");
    std::fs::write(&path, initrd).unwrap();
    path
}

/// Boots the VM with the image plus `tests/programs/status.c` as
/// /bin/status, `cmdline` and `extra` VMM arguments, to its end.
pub fn run_status_program(test: &str, cmdline: &str, extra: &[&str]) -> VmResult {
    let scratch = Scratch::new(test);
    let program = static_c_program(&scratch, "status");
    let initrd = initrd_with(&scratch, &image_file_for(extra, "initramfs.cpio"), &[("/bin/status", &program)]);
    Running::vmm(vmm_with(&initrd, cmdline, extra)).finish()
}

/// Runs the host tool `kvmshm` and returns its status and output.
pub fn kvmshm(args: &[&str]) -> VmResult {
    VmResult::from_output(Command::new(host_binary("kvmshm")).args(args).output().expect("start kvmshm"))
}

/// Runs `kvmshm` with `args` while `vm` runs. If the VM ends first, the
/// command is stopped and the test fails with what the VM printed: a guest
/// that died must not leave the host waiting for it.
pub fn kvmshm_beside_vm(vm: Running, args: &[&str]) -> (Running, VmResult) {
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
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `kvmshm clock` on `file` beside `vm`, which runs `kvmshm-demo
/// host-clock` on it, and checks that the guest's real-time clock is the
/// host's within `bound_ms` (the median of the guest's readings); fails the
/// test if either side fails.
///
/// The guest's clock copies the host's once, late in its boot, and then
/// runs at the host's monotonic rate: where something steps the host's
/// real-time clock meanwhile (here the machine's own init corrects it, at
/// times by 0.5 ms every 100 ms), the guest rightly differs by the steps
/// taken between its copy and its readings. Those steps lie within what
/// the host's real-time clock moved against its monotonic clock over the
/// whole run, which widens the bound on their side alone.
pub fn assert_guest_clock_is_hosts(vm: Running, file: &Path, bound_ms: f64, what: &str) {
    let (wall, mono) = (std::time::SystemTime::now(), Instant::now());
    let (vm, host) = kvmshm_beside_vm(vm, &["clock", file.to_str().expect("UTF-8 path"), "--wait", "600"]);
    let out = vm.finish();
    let wall_s = wall.elapsed().map_or_else(|e| -e.duration().as_secs_f64(), |d| d.as_secs_f64());
    let stepped_ms = (wall_s - mono.elapsed().as_secs_f64()) * 1e3;
    assert_eq!(host.code, Some(0), "{what}: kvmshm clock: {}\nVM: {}", host.transcript(), out.transcript());
    assert_eq!(out.code, Some(0), "{what}\n{}", out.transcript());
    assert!(out.console.contains("kvmshm-init: exit status 0"), "{what}\n{}", out.transcript());
    let off_ms: f64 = number_after(&out.console, " readings: median ", " ms")
        .unwrap_or_else(|| panic!("{what}: no host-clock line\n{}", out.transcript()));
    let (low, high) = ((-stepped_ms).min(0.0) - bound_ms, (-stepped_ms).max(0.0) + bound_ms);
    assert!(
        (low..=high).contains(&off_ms),
        "{what}: the guest's real-time clock is {off_ms:+} ms off the host's, outside {low:+.3} to {high:+.3} ms \
         ({bound_ms} ms, and the host's clock stepped {stepped_ms:+.3} ms during the run)\n{}",
        out.transcript()
    );
}

/// What a probe of the host found, in our VMM's log or in `kvmshm
/// probe`'s line (vmm/src/host.rs words both): the time per guest kernel
/// instruction, and whether that code is emulated.
pub fn probe_figure(text: &str) -> Option<(f64, bool)> {
    let (_, found) = text.split_once("guest kernel code runs ")?;
    let ns = number_after(found, "(", " ns per instruction")?;
    Some((ns, found.starts_with("in KVM's instruction emulator")))
}

/// The number in `text` right after the first `marker`, up to `end`: how
/// the tests read a figure off a line the guest printed.
pub fn number_after<T: std::str::FromStr>(text: &str, marker: &str, end: &str) -> Option<T> {
    text.split(marker).nth(1)?.split(end).next()?.parse().ok()
}

/// An ivshmem server (`kvmshm server`) with a fresh 1 MiB file, for
/// doorbell tests: its socket and file are in `scratch`.
pub struct IvshmemServer {
    pub process: Running,
    pub socket: PathBuf,
    pub shm: PathBuf,
    pub vectors: u32,
}

impl IvshmemServer {
    pub fn start(scratch: &Scratch, vectors: u32) -> Self {
        let (socket, shm) = (scratch.path("ivshmem.sock"), scratch.path("ivshmem.shm"));
        let mut cmd = Command::new(host_binary("kvmshm"));
        cmd.arg("server").arg("--socket").arg(&socket).arg("--shm").arg(&shm);
        cmd.args(["--size", "1M", "--vectors", &vectors.to_string()]).env("RUST_LOG", "info");
        let process = Running::spawn(cmd).expect("start kvmshm server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "the ivshmem server did not listen at {}", socket.display());
            std::thread::sleep(Duration::from_millis(10));
        }
        Self { process, socket, shm, vectors }
    }

    /// The `--shm` option of a VMM that joins this server.
    pub fn shm_option(&self) -> String {
        format!("server={}", self.socket.display())
    }

    /// Waits until the server's log has said `line` `times` times.
    pub fn await_log(&self, line: &str, times: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.process.log().matches(line).count() < times {
            assert!(
                Instant::now() < deadline,
                "the server did not log {line:?} {times} times:\n{}",
                self.process.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// What QEMU needs on this host, found with the host tool as the README's
/// QEMU command finds it: the `-cpu` model and the guest's extra flags.
pub struct Qemu {
    pub cpu: String,
    pub flags: String,
}

impl Qemu {
    pub fn detect() -> Result<Self, String> {
        let ask = |what: &str| {
            let out = kvmshm(&[what]);
            match out.code {
                Some(0) => Ok(out.console.trim().to_string()),
                _ => Err(format!("kvmshm {what} failed:\n{}", out.transcript())),
            }
        };
        Ok(Self { cpu: ask("qemu-cpu")?, flags: ask("qemu-flags")? })
    }

    /// QEMU's `machine` booting the image with `memory_mib` of RAM and
    /// `cmdline` after the guest flags this host needs; its serial console
    /// is standard output. The guest ends QEMU by a reset through the
    /// keyboard controller (`reboot=k`), which `-no-reboot` makes an exit.
    pub fn command(&self, machine: &str, memory_mib: &str, cmdline: &str) -> Command {
        require_kvm();
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-M", machine, "-enable-kvm", "-cpu", &self.cpu, "-m", memory_mib, "-smp", "1"])
            .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-serial", "stdio"])
            .arg("-kernel")
            .arg(image_file("vmlinux"))
            .arg("-initrd")
            .arg(image_file("initramfs.cpio"))
            .arg("-append")
            .arg(format!("console=ttyS0 reboot=k panic=-1 quiet {} {cmdline}", self.flags));
        cmd
    }

    /// QEMU's `pc` machine (`microvm` has no legacy PCI) booting the image,
    /// `run` as after `run=`, with an ivshmem-doorbell device on `server`.
    pub fn doorbell_vm(&self, server: &IvshmemServer, run: &str) -> Command {
        let mut cmd = self.command("pc", "128", &format!("run={run}"));
        cmd.arg("-chardev")
            .arg(format!("socket,path={},id=doorbell", server.socket.display()))
            .arg("-device")
            .arg(format!("ivshmem-doorbell,chardev=doorbell,vectors={}", server.vectors));
        cmd
    }
}
