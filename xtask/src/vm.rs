//! The tier-1 VM: a cached Debian guest with real OpenZFS, booted under QEMU TCG with a
//! payload disk of test binaries; results come back on a raw results disk.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use sha2::{Digest, Sha256};

/// Bumped when the way the cached image is assembled (not the script) changes.
const IMAGE_FORMAT: &str = "guest-1";

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

pub fn scripts() -> PathBuf {
    root().join("xtask/scripts")
}

pub fn cache_dir() -> PathBuf {
    if let Ok(d) = std::env::var("CAIRN_CACHE") {
        return PathBuf::from(d);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".cache/cairn")
}

pub fn sh(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let st = cmd.status().with_context(|| format!("starting {shown}"))?;
    ensure!(st.success(), "{shown} failed: {st}");
    Ok(())
}

pub fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("starting {shown}"))?;
    ensure!(
        out.status.success(),
        "{shown} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn host_deps() -> Result<()> {
    host_deps_with(&[])
}

/// [`host_deps`] and these packages too.
pub fn host_deps_with(extra: &[&str]) -> Result<()> {
    sh(Command::new("bash")
        .arg(scripts().join("host-deps.sh"))
        .args(extra))
}

/// Tier 0: the plain test suite on the host.
pub fn cargo_test() -> Result<()> {
    sh(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(root())
            .args(["test", "--workspace", "--locked"]),
    )
}

/// A built guest: kernel, initrd and the root filesystem image.
pub struct Guest {
    pub dir: PathBuf,
}

impl Guest {
    fn kernel(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }
    fn initrd(&self) -> PathBuf {
        self.dir.join("initrd.img")
    }
    fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs.ext4")
    }
}

/// The cache key: everything that decides what the guest contains.
pub fn image_key() -> Result<String> {
    let mut h = Sha256::new();
    h.update(IMAGE_FORMAT);
    let script = scripts().join("build-guest.sh");
    h.update(std::fs::read(&script).with_context(|| format!("reading {}", script.display()))?);
    Ok(format!("{:x}", h.finalize())[..16].to_owned())
}

/// Builds the guest, or returns the cached one.
pub fn image() -> Result<Guest> {
    let key = image_key()?;
    let dir = cache_dir().join(format!("guest-{key}"));
    let guest = Guest { dir: dir.clone() };
    if dir.join("ready").exists() {
        eprintln!("vm-image: using cached guest {}", dir.display());
        return Ok(guest);
    }
    host_deps()?;
    let start = Instant::now();
    let tmp = cache_dir().join(format!("guest-{key}.building"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    eprintln!(
        "vm-image: building the guest (Debian trixie, kernel, zfs-dkms) into {}",
        tmp.display()
    );
    sh(Command::new("bash")
        .arg(scripts().join("build-guest.sh"))
        .arg(&tmp))?;
    let tree = tmp.join("rootfs");
    sh(Command::new("mke2fs")
        .args(["-q", "-t", "ext4", "-L", "cairn-guest", "-d"])
        .arg(&tree)
        .arg(tmp.join("rootfs.ext4"))
        .arg("6G"))?;
    std::fs::remove_dir_all(&tree)?;
    publish(&tmp, &dir, "guest-", start)?;
    eprintln!("vm-image: built in {:.0?}", start.elapsed());
    Ok(guest)
}

/// Marks a built cache entry ready, moves it into place, and drops the entries with the
/// same `prefix` and other keys: they were built from stale inputs, and the cache would
/// otherwise grow without bound.
pub fn publish(tmp: &Path, dir: &Path, prefix: &str, start: Instant) -> Result<()> {
    std::fs::write(
        tmp.join("ready"),
        format!("built in {:?}\n", start.elapsed()),
    )?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(tmp, dir)?;
    for e in std::fs::read_dir(cache_dir())?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) && e.path() != dir {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    Ok(())
}

/// What a guest run produced.
pub struct Outcome {
    pub results: String,
    pub elapsed: Duration,
}

/// Boots the guest with `payload` as its second disk; the payload's `run` script does the
/// work and writes its report to the results disk.
fn boot(guest: &Guest, payload: &Path, work: &Path, timeout: Duration) -> Result<Outcome> {
    boot_with(guest, payload, work, timeout, &[])
}

/// [`boot`] with more raw disks after the results disk (`/dev/vde`, `/dev/vdf`, ...).
pub fn boot_with(
    guest: &Guest,
    payload: &Path,
    work: &Path,
    timeout: Duration,
    extra: &[&Path],
) -> Result<Outcome> {
    let overlay = work.join("root.qcow2");
    let payload_img = work.join("payload.ext4");
    let scratch = work.join("scratch.img");
    let results = work.join("results.img");
    let _ = std::fs::remove_file(&overlay);
    sh(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(guest.rootfs())
        .arg(&overlay))?;
    let payload_size = dir_size(payload)? / (1 << 20) + 64;
    let _ = std::fs::remove_file(&payload_img);
    sh(Command::new("mke2fs")
        .args(["-q", "-t", "ext4", "-d"])
        .arg(payload)
        .arg(&payload_img)
        .arg(format!("{payload_size}M")))?;
    for (img, size) in [(&scratch, 8u64 << 30), (&results, 16 << 20)] {
        let f = std::fs::File::create(img)?;
        f.set_len(size)?;
    }
    let log_path = work.join("serial.log");
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "3072"])
        .args([
            "-nographic",
            "-no-reboot",
            "-nic",
            "none",
            "-serial",
            "stdio",
            "-monitor",
            "none",
        ])
        .arg("-kernel")
        .arg(guest.kernel())
        .arg("-initrd")
        .arg(guest.initrd())
        .args([
            "-append",
            "console=ttyS0 root=/dev/vda rw init=/sbin/cairn-guest-init quiet loglevel=3 panic=-1",
        ])
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=qcow2", overlay.display()))
        .arg("-drive")
        .arg(format!(
            "file={},if=virtio,format=raw,readonly=on",
            payload_img.display()
        ))
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=raw", scratch.display()))
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=raw", results.display()))
        .args(extra.iter().flat_map(|d| {
            [
                "-drive".to_owned(),
                format!("file={},if=virtio,format=raw", d.display()),
            ]
        }))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64 (run `cargo xtask host-deps`)")?;
    let start = Instant::now();
    let stdout = child.stdout.take().expect("piped");
    let log_path2 = log_path.clone();
    let reader = std::thread::spawn(move || -> Result<()> {
        let mut log = std::fs::File::create(&log_path2)?;
        for line in BufReader::new(stdout).split(b'\n') {
            let line = line?;
            let text = strip_escapes(&String::from_utf8_lossy(&line));
            use std::io::Write;
            writeln!(log, "{text}")?;
            println!("guest| {text}");
        }
        Ok(())
    });
    loop {
        if let Some(st) = child.try_wait()? {
            eprintln!("vm: guest exited ({st}) after {:.0?}", start.elapsed());
            break;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the guest did not finish within {timeout:?} and was killed; the serial log is {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = reader.join();
    let mut raw = Vec::new();
    std::fs::File::open(&results)?.read_to_end(&mut raw)?;
    let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
    Ok(Outcome {
        results: String::from_utf8_lossy(&raw[..end]).into_owned(),
        elapsed: start.elapsed(),
    })
}

pub fn strip_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for n in chars.by_ref() {
                    if n.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else if c != '\r' {
            out.push(c);
        }
    }
    out
}

fn dir_size(p: &Path) -> Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(p)? {
        let e = e?;
        let md = e.metadata()?;
        total += if md.is_dir() {
            dir_size(&e.path())?
        } else {
            md.len()
        };
    }
    Ok(total)
}

pub fn work_dir(name: &str) -> Result<PathBuf> {
    let d = root().join("target/vm").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// Builds every `*_real` test target and returns (target name, executable).
fn real_test_binaries() -> Result<Vec<(String, PathBuf)>> {
    test_binaries("_real")
}

/// Builds the test targets whose name ends in `suffix`.
fn test_binaries(suffix: &str) -> Result<Vec<(String, PathBuf)>> {
    let out = output(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(root())
            .args(["test", "--workspace", "--no-run", "--message-format=json"]),
    )?;
    let mut bins = Vec::new();
    for line in out.lines() {
        // A tiny extraction instead of a JSON dependency: we need two fields.
        if !line.contains("\"reason\":\"compiler-artifact\"") || !line.contains("\"test\":true") {
            continue;
        }
        let name = field(line, "\"target\":{", "\"name\":\"");
        let exe = field(line, "", "\"executable\":\"");
        if let (Some(name), Some(exe)) = (name, exe)
            && name.ends_with(suffix)
        {
            bins.push((name, PathBuf::from(exe)));
        }
    }
    ensure!(!bins.is_empty(), "no *{suffix} test targets were built");
    bins.sort();
    Ok(bins)
}

fn field(line: &str, after: &str, key: &str) -> Option<String> {
    let from = line.find(after)? + after.len();
    let rest = &line[from..];
    let start = rest.find(key)? + key.len();
    let end = rest[start..].find('"')?;
    Some(rest[start..start + end].to_owned())
}

pub const GUEST_PRELUDE: &str = r#"#!/bin/sh
# Runs inside the guest as init. Reports go to /tmp/results, then to the results disk.
R=/tmp/results
: > $R
finish() {
  echo "CAIRN-DONE" >> $R
  dd if=$R of=/dev/vdd bs=1M conv=fsync 2>/dev/null
  sync
  echo o > /proc/sysrq-trigger
  sleep 30
}
modprobe zfs || { echo "CAIRN-FATAL modprobe zfs failed" | tee -a $R; finish; }
mkfs.ext4 -q -F /dev/vdc && mkdir -p /scratch && mount /dev/vdc /scratch \
  || { echo "CAIRN-FATAL scratch disk" | tee -a $R; finish; }
echo "CAIRN-INFO kernel $(uname -r)" | tee -a $R
echo "CAIRN-INFO $(zfs version | tr '\n' ' ')" | tee -a $R
"#;

/// `cargo xtask vm-test`: the real-ZFS suites in the guest.
pub fn test(filter: Option<String>, timeout_secs: u64) -> Result<()> {
    let total = Instant::now();
    let guest = image()?;
    let bins = real_test_binaries()?;
    let work = work_dir("test")?;
    let payload = work.join("payload");
    std::fs::create_dir_all(payload.join("bins"))?;
    let mut script = GUEST_PRELUDE.to_owned();
    let filter_arg = filter
        .map(|f| format!(" '{}'", f.replace('\'', "")))
        .unwrap_or_default();
    for (name, exe) in &bins {
        std::fs::copy(exe, payload.join("bins").join(name))?;
        script.push_str(&format!(
            "echo \"CAIRN-BEGIN {name}\" >> $R\n\
             ( cd /scratch && CAIRN_SCRATCH=/scratch timeout 1800 /payload/bins/{name} --include-ignored --test-threads=1{filter_arg} 2>&1; \
             echo \"CAIRN-EXIT {name} $?\" ) | tee -a $R\n"
        ));
    }
    script.push_str("finish\n");
    write_exec(&payload.join("run"), &script)?;
    let outcome = boot(&guest, &payload, &work, Duration::from_secs(timeout_secs))?;
    let report = summarize(&outcome.results, &bins)?;
    println!("{report}");
    println!(
        "vm-test: guest ran for {:.0?}, whole task {:.0?}",
        outcome.elapsed,
        total.elapsed()
    );
    Ok(())
}

pub fn write_exec(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Reads the guest's report: every test line with its binary, and the exit codes.
fn summarize(results: &str, bins: &[(String, PathBuf)]) -> Result<String> {
    if let Some(fatal) = results.lines().find(|l| l.starts_with("CAIRN-FATAL")) {
        bail!("the guest could not run the tests: {fatal}");
    }
    ensure!(
        results.lines().any(|l| l == "CAIRN-DONE"),
        "the guest's report is incomplete (no CAIRN-DONE); see target/vm/test/serial.log"
    );
    let mut out = String::new();
    let (mut passed, mut failed) = (0, Vec::new());
    let mut current = String::new();
    let mut in_list = false;
    for line in results.lines() {
        if let Some(info) = line.strip_prefix("CAIRN-INFO ") {
            out.push_str(&format!("guest: {info}\n"));
        } else if let Some(b) = line.strip_prefix("CAIRN-BEGIN ") {
            current = b.to_owned();
        } else if let Some(rest) = line.strip_prefix("test ") {
            if let Some((_, verdict)) = rest.rsplit_once(" ... ")
                && verdict.trim() == "ok"
            {
                passed += 1;
            }
        } else if line == "failures:" {
            // libtest prints two `failures:` sections; the second lists the names.
            in_list = true;
        } else if in_list {
            match line.strip_prefix("    ") {
                Some(name) if !name.is_empty() && !name.contains(' ') => {
                    let entry = format!("{current}::{name}");
                    if !failed.contains(&entry) {
                        failed.push(entry);
                    }
                }
                _ => in_list = !line.is_empty() && line.starts_with("----"),
            }
        }
    }
    for (name, _) in bins {
        let exit = results
            .lines()
            .find_map(|l| l.strip_prefix(&format!("CAIRN-EXIT {name} ")))
            .with_context(|| format!("{name} did not report an exit status"))?;
        if exit.trim() != "0" && failed.iter().all(|f| !f.starts_with(&format!("{name}::"))) {
            failed.push(format!("{name} (exit status {})", exit.trim()));
        }
    }
    out.push_str(&format!(
        "real ZFS: {passed} passed, {} failed\n",
        failed.len()
    ));
    if !failed.is_empty() {
        bail!("{out}failed on real ZFS:\n  {}", failed.join("\n  "));
    }
    ensure!(passed > 0, "{out}no test ran in the guest");
    Ok(out)
}

/// `cargo xtask capture-fixtures`: runs zfs/zpool in the guest on a small pool and stores
/// each command's stdout as a fixture for the parser tests.
pub fn capture_fixtures() -> Result<()> {
    let guest = image()?;
    let work = work_dir("fixtures")?;
    let payload = work.join("payload");
    std::fs::create_dir_all(&payload)?;
    let script = std::fs::read_to_string(scripts().join("capture-fixtures.sh"))?;
    write_exec(
        &payload.join("run"),
        &format!("{GUEST_PRELUDE}\n{script}\nfinish\n"),
    )?;
    let outcome = boot(&guest, &payload, &work, Duration::from_secs(900))?;
    let dest = root().join("crates/cairn-zfs/fixtures");
    std::fs::create_dir_all(&dest)?;
    let mut current: Option<(String, String)> = None;
    let mut written = 0;
    for line in outcome.results.lines() {
        if let Some(name) = line.strip_prefix("CAIRN-FIXTURE ") {
            current = Some((name.trim().to_owned(), String::new()));
        } else if line == "CAIRN-END" {
            if let Some((name, text)) = current.take() {
                std::fs::write(dest.join(&name), text)?;
                written += 1;
            }
        } else if let Some((_, text)) = current.as_mut() {
            text.push_str(line);
            text.push('\n');
        } else if line.starts_with("CAIRN-INFO") {
            println!("{line}");
        }
    }
    ensure!(written > 0, "the guest produced no fixtures");
    println!("wrote {written} fixtures to {}", dest.display());
    Ok(())
}

/// `cargo xtask bench`: the real-ZFS benchmarks in the guest, the host-side benchmarks of
/// the pure cores, and cairnd's idle memory; the table goes to `docs/bench.md`.
pub fn bench() -> Result<()> {
    let guest = image()?;
    let bins: Vec<_> = test_binaries("_zfs")?
        .into_iter()
        .filter(|(n, _)| n.starts_with("bench_"))
        .collect();
    ensure!(!bins.is_empty(), "no bench_*_zfs targets were built");
    let work = work_dir("bench")?;
    let payload = work.join("payload");
    std::fs::create_dir_all(payload.join("bins"))?;
    let mut script = GUEST_PRELUDE.to_owned();
    for (name, exe) in &bins {
        std::fs::copy(exe, payload.join("bins").join(name))?;
        script.push_str(&format!(
            "( cd /scratch && CAIRN_SCRATCH=/scratch /payload/bins/{name} 2>&1 ) | tee -a $R\n"
        ));
    }
    script.push_str("finish\n");
    write_exec(&payload.join("run"), &script)?;
    let outcome = boot(&guest, &payload, &work, Duration::from_secs(3600))?;
    let guest_info: Vec<&str> = outcome
        .results
        .lines()
        .filter_map(|l| l.strip_prefix("CAIRN-INFO "))
        .collect();
    let table: Vec<&str> = outcome
        .results
        .lines()
        .skip_while(|l| *l != "CAIRN-BENCH-BEGIN")
        .skip(1)
        .take_while(|l| *l != "CAIRN-BENCH-END")
        .collect();
    ensure!(
        !table.is_empty(),
        "the guest printed no benchmark table; see target/vm/bench/serial.log"
    );
    let host = output(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(root())
            .args([
                "bench",
                "-q",
                "-p",
                "cairn-grub",
                "--bench",
                "menu_and_planner",
            ]),
    )?;
    let rss = cairnd_idle_rss().unwrap_or_else(|e| format!("not measured: {e:#}"));
    let doc = format!(
        "# cairn benchmarks\n\nMade by `cargo xtask bench` on {date}; 2 cores, QEMU TCG guest ({guest}).\nEach figure is measured side by side in one run; none is a test assertion.\n\n## On real OpenZFS (guest)\n\n{table}\n\n## Pure cores (host, release build)\n\n{host}\n## cairnd\n\n| measurement | value |\n|---|---|\n| idle RSS of `cairnd --sim` (release build, target <= 10 MiB) | {rss} |\n",
        date = output(Command::new("date").args(["-u", "+%F"]))?.trim(),
        guest = guest_info.join("; "),
        table = table.join("\n"),
        host = host.trim_end().to_owned() + "\n",
    );
    std::fs::create_dir_all(root().join("docs"))?;
    std::fs::write(root().join("docs/bench.md"), &doc)?;
    println!("{doc}");
    Ok(())
}

/// Starts a private bus and `cairnd --sim` (release, as shipped), waits for it to settle, reads its VmRSS.
fn cairnd_idle_rss() -> Result<String> {
    sh(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(root())
            .args([
                "build",
                "-q",
                "--release",
                "-p",
                "cairn-daemon",
                "--bin",
                "cairnd",
            ]),
    )?;
    let out = output(Command::new("dbus-daemon").args([
        "--session",
        "--fork",
        "--print-address=1",
        "--print-pid=1",
    ]))?;
    let mut lines = out.lines();
    let address = lines.next().context("bus address")?.to_owned();
    let bus_pid = lines.next().context("bus pid")?.trim().to_owned();
    let mut child = Command::new(root().join("target/release/cairnd"))
        .args([
            "--sim",
            "--address",
            &address,
            "--support-key",
            "/nonexistent/dir/key",
        ])
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_secs(3));
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()))?;
    let _ = child.kill();
    let _ = child.wait();
    let _ = Command::new("kill").arg(&bus_pid).status();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    Ok(rss.trim_start_matches("VmRSS:").trim().to_owned())
}
