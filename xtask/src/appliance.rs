//! The demo appliance (tier 2): its disk is assembled in the tier-1 guest (the host has no
//! ZFS), then booted through SeaBIOS and GRUB under QEMU TCG and driven over its serial
//! console, as an operator would. `cargo xtask demo` narrates; `vm-test --e2e` asserts.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use sha2::{Digest, Sha256};

use crate::vm;

/// Bumped when the way the demo image is assembled (outside the hashed inputs) changes.
const DEMO_FORMAT: &str = "demo-1";

/// A built demo appliance: the provisioned disk, the bundle stick, and the VM saved at a
/// root shell after its first boot.
pub struct DemoImage {
    pub dir: PathBuf,
}

impl DemoImage {
    /// The "USB stick" with the update bundles 2-5 and the vendor key.
    pub fn stick(&self) -> PathBuf {
        self.dir.join("stick.img")
    }
    /// The disk after the first boot (an overlay over `disk`), and the VM's state then.
    pub fn booted(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("booted.qcow2"), self.dir.join("booted.state"))
    }
}

/// The release builds of cairnd, cairnctl and the vendor tool `cairn` that go into the
/// appliance (streams of hundreds of MiB are hashed under TCG: debug builds are too slow).
pub fn release_bins() -> Result<Vec<(String, PathBuf)>> {
    vm::sh(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(vm::root())
            .args(["build", "-q", "--release", "--locked"])
            .args(["-p", "cairn-daemon", "--bin", "cairnd"])
            .args(["-p", "cairn-cli", "--bin", "cairnctl"])
            .args(["-p", "cairn-bundle", "--bin", "cairn"])
            // Packaged, not part of the demo image.
            .args(["-p", "cairn-fleet", "--bin", "cairn-fleet"]),
    )?;
    Ok(["cairnd", "cairnctl", "cairn"]
        .iter()
        .map(|b| (b.to_string(), vm::root().join("target/release").join(b)))
        .collect())
}

/// Hashes every file under `dir` (path and contents, in a stable order).
pub fn hash_tree(h: &mut Sha256, dir: &Path) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            hash_tree(h, &p)?;
        } else {
            h.update(
                p.strip_prefix(vm::root())
                    .unwrap_or(&p)
                    .to_string_lossy()
                    .as_bytes(),
            );
            h.update(std::fs::read(&p)?);
        }
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    vm::sh(Command::new("cp").arg("-a").arg(from).arg(to))
}

/// Builds the demo appliance (or returns the cached one): release binaries, the builder
/// run in the tier-1 guest, then the first boot saved as a VM state.
pub fn image() -> Result<DemoImage> {
    let guest = vm::image()?;
    let bins = release_bins()?;
    let mut h = Sha256::new();
    h.update(DEMO_FORMAT);
    h.update(vm::image_key()?);
    h.update(std::fs::read(vm::scripts().join("build-demo.sh"))?);
    hash_tree(&mut h, &vm::root().join("demo"))?;
    hash_tree(&mut h, &vm::root().join("systemd"))?;
    for (_, b) in &bins {
        h.update(std::fs::read(b)?);
    }
    let key = format!("{:x}", h.finalize())[..16].to_owned();
    let dir = vm::cache_dir().join(format!("demo-{key}"));
    let img = DemoImage { dir: dir.clone() };
    if dir.join("ready").exists() {
        eprintln!("demo-image: using cached appliance {}", dir.display());
        return Ok(img);
    }
    let start = Instant::now();
    let tmp = vm::cache_dir().join(format!("demo-{key}.building"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    eprintln!("demo-image: assembling the appliance disk in the builder guest");
    let payload = tmp.join("payload");
    std::fs::create_dir_all(payload.join("bin"))?;
    for (name, b) in &bins {
        std::fs::copy(b, payload.join("bin").join(name))?;
    }
    copy_tree(&vm::root().join("demo"), &payload)?;
    copy_tree(&vm::root().join("systemd"), &payload)?;
    vendor_key(&payload)?;
    assemble_disk(
        &guest,
        &tmp,
        "build-demo.sh",
        "appliance disk ready",
        512 << 20,
    )?;
    eprintln!(
        "demo-image: disk assembled in {:.0?}; first boot",
        start.elapsed()
    );
    let staged = DemoImage { dir: tmp.clone() };
    first_boot(&staged)?;
    vm::publish(&tmp, &dir, "demo-", start)?;
    eprintln!("demo-image: ready in {:.0?}", start.elapsed());
    Ok(img)
}

/// The vendor's signing key for an image, made by the real minisign tool in `payload`
/// (`vendor.key`, `vendor.pub`).
pub fn vendor_key(payload: &Path) -> Result<()> {
    vm::sh(
        Command::new("minisign")
            .args(["-G", "-W", "-f", "-p"])
            .arg(payload.join("vendor.pub"))
            .arg("-s")
            .arg(payload.join("vendor.key"))
            .stdout(Stdio::null()),
    )
}

/// Runs `script` (from `xtask/scripts`) in the builder guest with `tmp/payload` as its
/// payload, a blank 4 GiB target disk (/dev/vde) and a blank stick of `stick_size`
/// (/dev/vdf, kept as `tmp/stick.img`); the script must report `done` in its results.
/// The target becomes `tmp/disk.qcow2`; the payload and the builder's own disks go.
pub fn assemble_disk(
    guest: &vm::Guest,
    tmp: &Path,
    script: &str,
    done: &str,
    stick_size: u64,
) -> Result<()> {
    let payload = tmp.join("payload");
    vm::write_exec(
        &payload.join(script),
        &std::fs::read_to_string(vm::scripts().join(script))?,
    )?;
    vm::write_exec(
        &payload.join("run"),
        &format!(
            "{}\nR=$R sh /payload/{script} 2>&1 || echo \"CAIRN-FATAL {script} exited with $?\" >> $R\nfinish\n",
            vm::GUEST_PRELUDE
        ),
    )?;
    let target = tmp.join("target.img");
    let stick = tmp.join("stick.img");
    for (img, size) in [(&target, 4u64 << 30), (&stick, stick_size)] {
        std::fs::File::create(img)?.set_len(size)?;
    }
    let outcome = vm::boot_with(
        guest,
        &payload,
        tmp,
        Duration::from_secs(2400),
        &[&target, &stick],
    )?;
    let log = tmp.join("serial.log");
    if let Some(fatal) = outcome
        .results
        .lines()
        .find(|l| l.starts_with("CAIRN-FATAL"))
    {
        bail!("{script} failed: {fatal}; see {}", log.display());
    }
    ensure!(
        outcome.results.contains(done),
        "{script} did not finish; see {}",
        log.display()
    );
    vm::sh(
        Command::new("qemu-img")
            .args(["convert", "-q", "-O", "qcow2"])
            .arg(&target)
            .arg(tmp.join("disk.qcow2")),
    )?;
    std::fs::remove_file(&target)?;
    std::fs::remove_dir_all(&payload)?;
    // The builder's own disks are not part of the image.
    for f in ["payload.ext4", "results.img", "root.qcow2", "scratch.img"] {
        let _ = std::fs::remove_file(tmp.join(f));
    }
    Ok(())
}

/// Boots the provisioned disk once, waits for the root shell with cairnd answering, and
/// saves the running VM, so every scenario starts from a booted box in seconds.
fn first_boot(img: &DemoImage) -> Result<()> {
    let (disk, state) = img.booted();
    // Relative backing name: the image is built in one directory and renamed after.
    overlay(Path::new("disk.qcow2"), &disk)?;
    let mut vm = Appliance::start(img, &disk, None, &img.dir.join("first-boot.log"), false)?;
    vm.wait_shell(Duration::from_secs(600))?;
    let _ = vm.sh("systemctl is-system-running --wait", 600)?;
    vm.sh_ok("cairnctl status >/dev/null", 120)?;
    // A unit failing on a clean first boot would fail every trial's health check.
    let failed = vm.sh_ok("systemctl list-units --failed --plain --no-legend", 120)?;
    ensure!(
        failed.trim().is_empty(),
        "units failed on the appliance's first boot:\n{failed}"
    );
    vm.save(&state)?;
    Ok(())
}

pub fn overlay(base: &Path, top: &Path) -> Result<()> {
    let _ = std::fs::remove_file(top);
    vm::sh(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(base)
            .arg(top),
    )
}

/// Strips terminal escape sequences from a byte stream, across reads.
#[derive(Default)]
struct Stripper {
    state: u8, // 0 text, 1 after ESC, 2 in CSI
}

impl Stripper {
    fn feed(&mut self, bytes: &[u8], out: &mut String) {
        for &b in bytes {
            match (self.state, b) {
                (0, 0x1b) => self.state = 1,
                (0, b'\r') | (0, 0) => {}
                (0, b) if b == b'\n' || b == b'\t' || b >= 0x20 => out.push(b as char),
                (0, _) => {}
                (1, b'[') => self.state = 2,
                (1, _) => self.state = 0,
                (2, b) if b.is_ascii_alphabetic() || b == b'~' => self.state = 0,
                _ => {}
            }
        }
    }
}

/// A running demo appliance under QEMU.
pub struct Appliance {
    child: Child,
    stdin: ChildStdin,
    serial: Arc<Mutex<String>>,
    cursor: usize,
    monitor: PathBuf,
    /// The second serial port: cairnd's debug channel (power-loss steps).
    pub steps: PathBuf,
    marker: u32,
}

impl Appliance {
    /// Starts QEMU on `disk` (qcow2) with the bundle stick; `incoming` resumes a saved
    /// state instead of booting. The console goes to `log`, and to stdout when `echo`.
    pub fn start(
        img: &DemoImage,
        disk: &Path,
        incoming: Option<&Path>,
        log: &Path,
        echo: bool,
    ) -> Result<Self> {
        let dir = log.parent().context("log has a directory")?;
        let stem = log
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let monitor = dir.join(format!("{stem}.monitor"));
        let steps = dir.join(format!("{stem}.steps"));
        let _ = std::fs::remove_file(&monitor);
        std::fs::write(&steps, "")?;
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "2048"])
            .args(["-display", "none", "-nic", "none", "-serial", "stdio"])
            .arg("-serial")
            .arg(format!("file:{}", steps.display()))
            .arg("-monitor")
            .arg(format!("unix:{},server=on,wait=off", monitor.display()))
            .arg("-drive")
            .arg(format!("file={},if=virtio,format=qcow2", disk.display()))
            .arg("-drive")
            .arg(format!(
                "file={},if=virtio,format=raw,readonly=on",
                img.stick().display()
            ));
        if let Some(state) = incoming {
            cmd.arg("-incoming")
                .arg(format!("exec:cat {}", state.display()));
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting qemu-system-x86_64 (run `cargo xtask host-deps`)")?;
        let stdin = child.stdin.take().expect("piped");
        let mut stdout = child.stdout.take().expect("piped");
        let serial = Arc::new(Mutex::new(String::new()));
        let buf = serial.clone();
        let mut logf = std::fs::File::create(log)?;
        std::thread::spawn(move || {
            let mut strip = Stripper::default();
            let mut chunk = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                let mut text = String::new();
                strip.feed(&chunk[..n], &mut text);
                let _ = logf.write_all(text.as_bytes());
                if echo {
                    print!("{text}");
                    let _ = std::io::stdout().flush();
                }
                buf.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_str(&text);
            }
        });
        let mut vm = Self {
            child,
            stdin,
            serial,
            cursor: 0,
            monitor,
            steps,
            marker: 0,
        };
        if incoming.is_some() {
            vm.resume_incoming()?;
        }
        Ok(vm)
    }

    /// The state was saved stopped: once it is loaded, let the VM run.
    fn resume_incoming(&mut self) -> Result<()> {
        let start = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(300));
            if let Some(st) = self.child.try_wait()? {
                bail!("QEMU exited ({st}) while loading the saved state");
            }
            let status = self
                .monitor("info status", Duration::from_millis(400))
                .unwrap_or_default();
            if status.contains("VM status: paused") && !status.contains("inmigrate") {
                self.monitor("cont", Duration::from_millis(200))?;
                return Ok(());
            }
            ensure!(
                start.elapsed() < Duration::from_secs(120),
                "the saved VM state did not load within 2 minutes: {status}"
            );
        }
    }

    fn text(&self) -> String {
        self.serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until `pattern` appears on the console after the cursor; moves the cursor
    /// past it and returns what came before it.
    pub fn wait_for(&mut self, pattern: &str, timeout: Duration) -> Result<String> {
        let start = Instant::now();
        loop {
            let text = self.text();
            if let Some(i) = text[self.cursor..].find(pattern) {
                let before = text[self.cursor..self.cursor + i].to_owned();
                self.cursor += i + pattern.len();
                return Ok(before);
            }
            if let Some(st) = self.child.try_wait()? {
                bail!("the appliance VM exited ({st}) while waiting for {pattern:?}");
            }
            if start.elapsed() > timeout {
                let tail: String = text[self.cursor..]
                    .chars()
                    .rev()
                    .take(1500)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                bail!("{pattern:?} did not appear within {timeout:?}; the console showed:\n{tail}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Types on the serial console.
    pub fn send(&mut self, keys: &str) -> Result<()> {
        self.stdin.write_all(keys.as_bytes())?;
        self.stdin.flush()?;
        Ok(())
    }

    /// Waits for the autologin root shell of a fresh boot and for the boot to finish.
    pub fn wait_shell(&mut self, timeout: Duration) -> Result<()> {
        // Only a fresh boot logs in; a prompt alone may be the old shell's last one.
        self.wait_for("(automatic login)", timeout)?;
        self.wait_for("root@", Duration::from_secs(60))?;
        self.wait_for("# ", Duration::from_secs(30))?;
        std::thread::sleep(Duration::from_millis(500));
        self.sh("stty cols 1000", 60)?;
        self.sh("export TERM=dumb SYSTEMD_COLORS=0 PAGER=cat", 60)?;
        Ok(())
    }

    /// Runs a shell command at the root prompt; returns (exit status, output).
    pub fn sh(&mut self, cmd: &str, timeout_secs: u64) -> Result<(i32, String)> {
        self.marker += 1;
        let n = self.marker;
        self.send(&format!("{cmd}; echo \"@@$?:{n}@@\"\n"))?;
        // No wait for the command's echo: a line longer than the terminal is redrawn
        // piecemeal (horizontal scrolling), so its echo need not appear verbatim. The
        // result `@@<digits>:n@@` cannot be confused with the echo `@@$?:n@@`.
        let start = Instant::now();
        loop {
            let text = self.text();
            let rest = &text[self.cursor..];
            if let Some((consumed, rc, out)) = command_result(rest, n) {
                self.cursor += consumed;
                return Ok((rc, out));
            }
            if let Some(st) = self.child.try_wait()? {
                bail!("the appliance VM exited ({st}) while running `{cmd}`");
            }
            if rest.contains("cairn: booting") {
                bail!("the appliance rebooted while running `{cmd}`:\n{rest}");
            }
            if start.elapsed() > Duration::from_secs(timeout_secs) {
                bail!("`{cmd}` did not finish within {timeout_secs} s:\n{rest}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// [`Self::sh`] that must succeed; returns its output.
    pub fn sh_ok(&mut self, cmd: &str, timeout_secs: u64) -> Result<String> {
        let (rc, out) = self.sh(cmd, timeout_secs)?;
        ensure!(rc == 0, "`{cmd}` exited with {rc}:\n{out}");
        Ok(out)
    }

    /// Sends one monitor command and returns what the monitor printed within `wait`.
    fn monitor(&self, cmd: &str, wait: Duration) -> Result<String> {
        let mut s = UnixStream::connect(&self.monitor)
            .with_context(|| format!("connecting to {}", self.monitor.display()))?;
        s.set_read_timeout(Some(Duration::from_millis(300)))?;
        s.write_all(format!("{cmd}\n").as_bytes())?;
        let start = Instant::now();
        let mut out = Vec::new();
        let mut chunk = [0u8; 4096];
        while start.elapsed() < wait {
            match s.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
                Err(_) => {}
            }
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Stops the VM and writes its whole state to `state`; the VM is gone afterwards.
    pub fn save(mut self, state: &Path) -> Result<()> {
        self.monitor("stop", Duration::from_millis(500))?;
        self.monitor(
            &format!("migrate \"exec:cat > {}\"", state.display()),
            Duration::from_millis(500),
        )?;
        let start = Instant::now();
        loop {
            let info = self.monitor("info migrate", Duration::from_millis(700))?;
            if info.contains("completed") {
                break;
            }
            ensure!(
                !info.contains("failed"),
                "saving the VM state failed:\n{info}"
            );
            ensure!(
                start.elapsed() < Duration::from_secs(300),
                "saving the VM state did not finish:\n{info}"
            );
        }
        let _ = self.monitor("quit", Duration::from_millis(300));
        let _ = self.child.wait();
        Ok(())
    }

    /// Cuts the power: QEMU is killed, nothing in the guest gets to flush.
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Waits until the guest announces `CAIRN-STEP <point>` on the debug channel.
    pub fn wait_step(&mut self, point: &str, timeout: Duration) -> Result<()> {
        let want = format!("CAIRN-STEP {point}");
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(&self.steps).unwrap_or_default();
            if text.contains(&want) {
                return Ok(());
            }
            if let Some(st) = self.child.try_wait()? {
                bail!("the appliance VM exited ({st}) before step {point}");
            }
            ensure!(
                start.elapsed() < timeout,
                "step {point} was not announced within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Finds the result of command `n` in console text: `@@<digits>:n@@`, which the echo of
/// the command (`@@$?:n@@`) cannot match. Returns how much text it consumed, the exit
/// status and the output: what came between the echo's closing `@@"` (wherever the shell
/// drew it) and the result.
fn command_result(rest: &str, n: u32) -> Option<(usize, i32, String)> {
    let tail = format!(":{n}@@");
    let (end, at, rc) = rest.match_indices(&tail).find_map(|(end, _)| {
        let head = &rest[..end];
        let at = head.rfind("@@")?;
        let digits = &head[at + 2..];
        (!digits.is_empty() && digits.bytes().all(|c| c.is_ascii_digit()))
            .then(|| (end, at, digits.parse::<i32>().unwrap_or(-1)))
    })?;
    let from = rest[..at].rfind("@@\"").map_or(0, |i| i + 3);
    let out = rest[from..at].replace('\r', "");
    Some((end + tail.len(), rc, out.trim_matches('\n').to_owned()))
}

#[cfg(test)]
mod tests {
    use super::command_result;

    #[test]
    fn result_found_when_the_echo_was_redrawn_with_padding() {
        // From CI: a command longer than the terminal, drawn in pieces with padding.
        let console = "root@demo:~# mkdir -p /run/x && printf 'a\\nb' > /run/x/power</x/power; \
            echo \"@@$?:4                              @@\"\r\n@@0:4@@\r\nroot@demo:~# ";
        let (consumed, rc, out) = command_result(console, 4).expect("the result is there");
        assert_eq!(rc, 0);
        assert_eq!(out, "");
        assert_eq!(&console[consumed..], "\r\nroot@demo:~# ");
    }

    #[test]
    fn output_is_what_came_between_echo_and_result() {
        let console = "# cat f; echo \"@@$?:7@@\"\r\nline 1\r\nline 2\r\n@@1:7@@\r\n# ";
        let (_, rc, out) = command_result(console, 7).unwrap();
        assert_eq!((rc, out.as_str()), (1, "line 1\nline 2"));
    }

    #[test]
    fn the_echo_alone_or_another_commands_result_is_not_a_result() {
        assert!(command_result("# true; echo \"@@$?:3@@\"\r\n", 3).is_none());
        assert!(command_result("@@0:31@@ @@0:13@@", 3).is_none());
    }
}
