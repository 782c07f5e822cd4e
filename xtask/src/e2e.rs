//! The end-to-end suite on the demo appliance (`cargo xtask vm-test --e2e`): scenarios an
//! operator lives through, and power loss at every named step. Each case starts from the
//! saved first boot (a qcow2 overlay and the VM state), so it costs only its own reboots.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::appliance::{Appliance, DemoImage, overlay};
use crate::vm;

/// How long a boot may take under TCG before the case fails (GRUB to root shell).
const BOOT: Duration = Duration::from_secs(420);

/// One appliance run for a case: its own disk overlay and console log.
pub struct Device {
    pub vm: Appliance,
    disk: PathBuf,
    log: PathBuf,
    echo: bool,
    boots: u32,
}

impl Device {
    /// The booted demo appliance (v1 running, root shell), resumed from the saved state.
    pub fn resume(img: &DemoImage, work: &Path, name: &str, echo: bool) -> Result<Self> {
        let (base, state) = img.booted();
        let disk = work.join(format!("{name}.qcow2"));
        overlay(&base, &disk)?;
        let log = work.join(format!("{name}.log"));
        let vm = Appliance::start(img, &disk, Some(&state), &log, echo)?;
        let mut b = Self {
            vm,
            disk,
            log,
            echo,
            boots: 0,
        };
        // The saved shell is at its prompt; the first command syncs the console.
        b.vm.sh_ok("true", 120)?;
        Ok(b)
    }

    /// Powers a disk image on from cold (no saved state) and waits for its root shell.
    pub fn cold(img: &DemoImage, disk: &Path, work: &Path, name: &str, echo: bool) -> Result<Self> {
        let log = work.join(format!("{name}.log"));
        let vm = Appliance::start(img, disk, None, &log, echo)?;
        let mut b = Self {
            vm,
            disk: disk.to_owned(),
            log,
            echo,
            boots: 0,
        };
        b.wait_boot()?;
        Ok(b)
    }

    pub fn sh(&mut self, cmd: &str) -> Result<String> {
        self.vm.sh_ok(cmd, 900)
    }

    pub fn sh_rc(&mut self, cmd: &str) -> Result<(i32, String)> {
        self.vm.sh(cmd, 900)
    }

    /// `cairnctl status --json`, its `data`.
    pub fn status(&mut self) -> Result<Value> {
        let out = self.sh("cairnctl --json status")?;
        let start = out.find('{').context("no JSON in cairnctl status")?;
        let v: Value = serde_json::from_str(out[start..].trim())
            .with_context(|| format!("cairnctl status printed:\n{out}"))?;
        Ok(v["data"].clone())
    }

    /// The version running now (`booted.version`).
    pub fn running(&mut self) -> Result<String> {
        let s = self.status()?;
        Ok(s["booted"]["version"].as_str().unwrap_or("?").to_owned())
    }

    /// The one-word state of version `id`, as `cairnctl status` shows it.
    pub fn state_of(&mut self, id: &str) -> Result<String> {
        let s = self.status()?;
        Ok(s["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["id"] == id)
            .and_then(|v| v["state"].as_str())
            .unwrap_or("absent")
            .to_owned())
    }

    /// How many versions GRUB's Recovery menu lists (staged or confirmed ones).
    pub fn bootable(&mut self) -> Result<usize> {
        let s = self.status()?;
        Ok(s["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v["stored"] == "staged" || v["stored"] == "confirmed")
            .count())
    }

    /// A digest of every file of customer data (`/var/lib/app`).
    pub fn data_digest(&mut self) -> Result<String> {
        let out = self.sh(
            "(cd /var/lib/app && find . -type f | sort | xargs -r sha256sum) | sha256sum | cut -c1-16",
        )?;
        Ok(out.trim().to_owned())
    }

    /// Waits for the next boot to reach the root shell and finish starting up.
    pub fn wait_boot(&mut self) -> Result<()> {
        self.boots += 1;
        self.vm.wait_shell(BOOT)?;
        // Startup done (a trial's health check included); `degraded` is fine here.
        let _ = self.vm.sh("systemctl is-system-running --wait", 600)?;
        Ok(())
    }

    /// Reboots from the shell and waits for the next boot.
    pub fn reboot(&mut self) -> Result<()> {
        self.vm.send("systemctl reboot\n")?;
        self.wait_boot()
    }

    /// Cuts the power, then powers the same disk on again (a cold boot, no saved state).
    pub fn power_cycle(mut self, img: &DemoImage) -> Result<Self> {
        let disk = self.disk.clone();
        let log = self.log.with_extension("after-power-loss.log");
        let echo = self.echo;
        let boots = self.boots;
        self.vm.kill()?;
        let vm = Appliance::start(img, &disk, None, &log, echo)?;
        let mut b = Self {
            vm,
            disk,
            log,
            echo,
            boots,
        };
        b.wait_boot()?;
        Ok(b)
    }

    /// Installs update bundle `n` from the stick.
    pub fn install(&mut self, n: u32) -> Result<()> {
        // The stick is mounted at boot when it shows up in time; mount it if it did not.
        self.sh(&format!(
            "(mountpoint -q /media/stick || mount /media/stick) && cairnctl install /media/stick/demo-{n}.cairn"
        ))
        .map(drop)
    }

    /// In GRUB's menu (the box is rebooting): opens Recovery, then follows `path`, the
    /// index of the entry to choose in each menu in turn (0 is the first).
    pub fn grub_choose(&mut self, path: &[usize]) -> Result<()> {
        self.vm.wait_for("Recovery", BOOT)?;
        // Stop the countdown, go down to "Recovery", open it.
        self.vm.send("\x1b[B")?;
        std::thread::sleep(Duration::from_millis(300));
        self.vm.send("\r")?;
        for (depth, &i) in path.iter().enumerate() {
            // Wait for the next menu to be drawn before moving in it.
            self.vm
                .wait_for("Use the", Duration::from_secs(60))
                .with_context(|| format!("GRUB submenu at depth {depth}"))?;
            std::thread::sleep(Duration::from_millis(500));
            for _ in 0..i {
                self.vm.send("\x1b[B")?;
                std::thread::sleep(Duration::from_millis(200));
            }
            self.vm.send("\r")?;
        }
        Ok(())
    }
}

type Scenario = fn(&mut Device, &DemoImage) -> Result<String>;

/// The operator scenarios; each returns a one-line account of what it showed.
pub const SCENARIOS: &[(&str, Scenario)] = &[
    ("upgrade_trial_confirm", upgrade_trial_confirm),
    (
        "failing_health_check_falls_back",
        failing_health_check_falls_back,
    ),
    (
        "hanging_trial_falls_back_after_attempts",
        hanging_trial_falls_back,
    ),
    ("rollback_many_steps_and_roll_forward", rollback_and_forward),
    ("older_version_from_grub_menu", older_version_from_grub),
    ("factory_reset_from_cli", factory_reset_from_cli),
    ("factory_reset_from_grub_menu", factory_reset_from_grub),
];

/// Orders: customer data written before anything else happens.
fn customer_data(b: &mut Device) -> Result<String> {
    b.sh("demo-app order 'pallet of widgets' && demo-app order '3 spare rotors'")?;
    b.data_digest()
}

fn upgrade_trial_confirm(b: &mut Device, _: &DemoImage) -> Result<String> {
    let data = customer_data(b)?;
    b.install(2)?;
    ensure!(b.state_of("2")? == "staged", "2 is staged after install");
    b.sh("cairnctl activate --try 2")?;
    b.reboot()?;
    ensure!(b.running()? == "2", "the trial boots 2");
    let st = b.state_of("2")?;
    ensure!(
        st == "active",
        "2 confirmed by its health check, state {st}"
    );
    let app = b.sh("demo-app status")?;
    ensure!(
        app.contains("demo-app 2 serving") && app.contains("[blue]"),
        "2 runs with its migrated config (schema 2, color from the migration): {app}"
    );
    // The older version's config is its own: the migration did not touch it.
    b.sh("mkdir -p /mnt/old && cairnctl mount 1 --config /mnt/old")?;
    let old = b.sh("cat /mnt/old/app.conf")?;
    ensure!(
        old.contains("schema=1") && old.contains("greeting="),
        "1's config untouched by 2's migration: {old}"
    );
    b.sh("cairnctl unmount /mnt/old")?;
    ensure!(b.data_digest()? == data, "data unchanged by the upgrade");
    let s = b.status()?;
    ensure!(
        s["boot"]["default"] == "2" && s["boot"]["trial"].is_null(),
        "2 is the default and no trial is left: {}",
        s["boot"]
    );
    Ok(
        "2 installed, tried, confirmed by its health check; 1's config untouched; data identical"
            .into(),
    )
}

fn failing_health_check_falls_back(b: &mut Device, _: &DemoImage) -> Result<String> {
    let data = customer_data(b)?;
    for n in [2, 3, 4] {
        b.install(n)?;
    }
    b.sh("cairnctl activate --try 4")?;
    // The trial boot fails its health check, marks 4 failed and reboots by itself.
    b.vm.send("systemctl reboot\n")?;
    b.vm.wait_for("booting 4 (trial)", BOOT)
        .context("the trial boot of 4")?;
    b.vm.wait_for("booting 1 (normal)", BOOT)
        .context("the reboot after 4's failed health check")?;
    b.wait_boot()?;
    let running = b.running()?;
    ensure!(
        running == "1",
        "fell back to 1 with no operator action, runs {running}"
    );
    let st = b.state_of("4")?;
    ensure!(st == "failed", "4 is marked failed, state {st}");
    let reason = b.sh("cairnctl show 4")?;
    ensure!(
        reason.contains("health check failed"),
        "the reason names the health check: {reason}"
    );
    ensure!(b.data_digest()? == data, "data unchanged");
    Ok("4's trial failed its health check; the box rebooted into 1 by itself; 4 failed with the reason".into())
}

fn hanging_trial_falls_back(b: &mut Device, _: &DemoImage) -> Result<String> {
    let data = customer_data(b)?;
    for n in [2, 3, 5] {
        b.install(n)?;
    }
    b.sh("cairnctl activate --try 5 --attempts 1")?;
    b.vm.send("systemctl reboot\n")?;
    // The trial boot hangs in demo-app; the trial deadline reboots it; with no attempt
    // left GRUB falls back to 1. (GRUB's counting over several attempts is covered by
    // the menu tests; each attempt here costs a 150 s deadline under TCG.)
    for attempt in 1..=1 {
        b.vm.wait_for("booting 5 (trial)", BOOT)
            .with_context(|| format!("trial attempt {attempt} of 5"))?;
    }
    b.vm.wait_for("booting 1 (fallback)", BOOT)
        .context("the fallback boot after the attempts ran out")?;
    b.wait_boot()?;
    let running = b.running()?;
    ensure!(
        running == "1",
        "after the attempts ran out 1 boots, runs {running}"
    );
    let st = b.state_of("5")?;
    ensure!(st == "failed", "5 marked failed by reconcile, state {st}");
    ensure!(b.data_digest()? == data, "data unchanged");
    Ok("5 hung on its trial boot; the trial deadline rebooted it; with no attempt left 1 booted and 5 was marked failed".into())
}

fn rollback_and_forward(b: &mut Device, _: &DemoImage) -> Result<String> {
    let data = customer_data(b)?;
    b.install(2)?;
    b.install(3)?;
    b.sh("cairnctl activate 3")?;
    b.reboot()?;
    ensure!(b.running()? == "3", "3 runs");
    b.sh("cairnctl rollback 2")?;
    b.reboot()?;
    ensure!(b.running()? == "1", "two steps back is 1");
    let app = b.sh("demo-app status")?;
    ensure!(
        app.contains("demo-app 1 serving: Welcome"),
        "1 runs with its own schema-1 config: {app}"
    );
    b.sh("cairnctl roll-forward")?;
    b.reboot()?;
    let r = b.running()?;
    ensure!(
        r == "2",
        "roll forward goes to the next newer kept version, runs {r}"
    );
    ensure!(b.data_digest()? == data, "data unchanged through rollbacks");
    Ok("3 -> rollback 2 steps -> 1 (own config) -> roll forward -> 2; data identical".into())
}

fn older_version_from_grub(b: &mut Device, _: &DemoImage) -> Result<String> {
    let data = customer_data(b)?;
    b.install(2)?;
    b.sh("cairnctl activate 2")?;
    b.reboot()?;
    ensure!(b.running()? == "2", "2 is the default");
    b.vm.send("systemctl reboot\n")?;
    // Recovery lists versions newest first: 2, then 1.
    b.grub_choose(&[1])?;
    b.wait_boot()?;
    let s = b.status()?;
    ensure!(
        s["booted"]["version"] == "1" && s["booted"]["kind"] == "once",
        "1 booted once from the menu: {}",
        s["booted"]
    );
    ensure!(
        s["boot"]["default"] == "2" && s["boot"]["once"].is_null(),
        "the default stays 2 and the boot-once was consumed: {}",
        s["boot"]
    );
    ensure!(b.data_digest()? == data, "data unchanged");
    Ok(
        "chose 1 in GRUB's Recovery menu over the serial console: booted once, default still 2"
            .into(),
    )
}

fn factory_reset_from_cli(b: &mut Device, _: &DemoImage) -> Result<String> {
    let data = customer_data(b)?;
    b.install(2)?;
    b.sh("cairnctl activate 2")?;
    b.reboot()?;
    // config: this version's defaults come back; the old config is kept aside.
    b.sh("sed -i 's/^color=.*/color=hotpink/' /etc/appliance/app.conf")?;
    let plan = b.sh("cairnctl factory-reset config --dry-run")?;
    ensure!(
        plan.contains("clone"),
        "the dry run lists the steps: {plan}"
    );
    b.sh("cairnctl factory-reset config")?;
    b.reboot()?;
    let conf = b.sh("cat /etc/appliance/app.conf")?;
    ensure!(
        conf.contains("color=green") && !conf.contains("hotpink"),
        "2's shipped defaults after a config reset: {conf}"
    );
    ensure!(b.data_digest()? == data, "config reset keeps data");
    // system: a fresh clone of the factory baseline becomes the default; data kept.
    b.sh("cairnctl factory-reset system")?;
    b.reboot()?;
    let app = b.sh("demo-app status")?;
    ensure!(
        app.contains("demo-app 1 serving"),
        "the factory release runs: {app}"
    );
    ensure!(b.data_digest()? == data, "system reset keeps data");
    ensure!(b.state_of("2")? != "absent", "2 stays installed");
    // full: refused without the token, then data is erased.
    let (rc, out) = b.sh_rc("cairnctl factory-reset full")?;
    ensure!(rc != 0, "full reset without the token is refused: {out}");
    ensure!(
        b.data_digest()? == data,
        "a refused full reset changes nothing"
    );
    b.sh("cairnctl factory-reset full --confirm ERASE-ALL-DATA")?;
    b.reboot()?;
    let orders = b.sh("demo-app status")?;
    ensure!(
        orders.contains("orders: 0"),
        "data erased by a full reset: {orders}"
    );
    Ok("config reset restored 2's defaults; system reset booted the factory release with data kept; full reset (token required) erased data".into())
}

fn factory_reset_from_grub(b: &mut Device, _: &DemoImage) -> Result<String> {
    let data = customer_data(b)?;
    b.vm.send("systemctl reboot\n")?;
    // Recovery: [1, Factory reset]; Factory reset: [config, system, full]; then the
    // confirmation submenu: [Back, Yes].
    b.grub_choose(&[1, 1, 1])?;
    // cairn-reset.service resets before data is mounted, then reboots by itself.
    b.wait_boot()?;
    let app = b.sh("demo-app status")?;
    ensure!(
        app.contains("demo-app 1 serving"),
        "the factory release runs after a system reset from the menu: {app}"
    );
    ensure!(b.data_digest()? == data, "a system reset keeps data");
    // The Recovery menu lists the bootable versions, then "Factory reset".
    let versions = b.bootable()?;
    b.vm.send("systemctl reboot\n")?;
    b.grub_choose(&[versions, 2, 1])?;
    b.wait_boot()?;
    let orders = b.sh("demo-app status")?;
    ensure!(
        orders.contains("orders: 0"),
        "full reset from the menu erased data: {orders}"
    );
    Ok(
        "system reset from GRUB's menu (data kept), then full reset from the menu (data erased)"
            .into(),
    )
}

/// The named steps cut by power loss (`operation:step`, as the engine names them; the
/// steps of every mutating operation an operator or the box starts).
pub const POWER_STEPS: &[&str] = &[
    "upgrade:snapshot",
    "upgrade:receive",
    "upgrade:clone-config",
    "upgrade:defaults",
    "upgrade:migrate",
    "upgrade:mark-staged",
    "activate:boot",
    "activate:bootfs",
    "activate:lkg",
    "confirm:boot",
    "confirm:lkg",
    "confirm:bootfs",
    "confirm:mark",
    "reset-config:clone-defaults",
    "reset-config:keep-old",
    "reset-config:swap",
    "reset-system:clone-root",
    "reset-system:clone-config",
    "reset-system:activate",
    "reset-full:clone-root",
    "reset-full:clone-config",
    "reset-full:activate",
    "reset-full:erase-data",
    "cleanup:expiries",
    "cleanup:remove",
];

/// Arms cairnd (after a restart) to halt at `point` and announce it on ttyS1. The
/// drop-in removes itself (durably) when cairnd starts, so only that start is armed: the
/// boot after the power loss runs cairnd as shipped.
fn arm(b: &mut Device, point: &str, root: &str) -> Result<()> {
    let dropin = "/etc/systemd/system/cairnd.service.d/power-loss.conf";
    b.sh(&format!(
        "mkdir -p {root}/etc/systemd/system/cairnd.service.d && printf '[Service]\\nEnvironment=CAIRN_CRASH_AT={point} CAIRN_CRASH_CHANNEL=/dev/ttyS1\\nExecStartPre=/bin/sh -c \"rm -f {dropin}; sync\"\\n' > {root}{dropin}"
    ))?;
    Ok(())
}

fn arm_running(b: &mut Device, point: &str) -> Result<()> {
    arm(b, point, "/run")?;
    // /run/systemd/system is a unit directory; the drop-in applies after a restart.
    b.sh("mv /run/etc/systemd/system/cairnd.service.d /run/systemd/system/ && systemctl daemon-reload && systemctl restart cairnd")?;
    Ok(())
}

/// One power-loss case: drive the box to `point`, cut the power there, boot again, and
/// report (booted version, data intact, consistent).
fn power_loss(img: &DemoImage, work: &Path, point: &str) -> Result<(String, String, String)> {
    let name = format!("power-{}", point.replace(':', "-"));
    let mut b = Device::resume(img, work, &name, false)?;
    let data = customer_data(&mut b)?;
    let (op, _) = point.split_once(':').context("op:step")?;
    match op {
        "upgrade" => {
            arm_running(&mut b, point)?;
            b.vm.send("cairnctl install /media/stick/demo-2.cairn &\n")?;
        }
        "activate" => {
            b.install(2)?;
            arm_running(&mut b, point)?;
            b.vm.send("cairnctl activate 2 &\n")?;
        }
        "confirm" => {
            b.install(2)?;
            // The trial boot's health check confirms: arm cairnd in 2's own root.
            b.sh("mkdir -p /mnt/v2 && mount -t zfs -o zfsutil rpool/ROOT/2 /mnt/v2")?;
            arm(&mut b, point, "/mnt/v2")?;
            // One attempt: after the power loss GRUB falls back to 1, whose cairnd is not
            // armed and finishes (or undoes) the confirm in reconcile.
            b.sh("umount /mnt/v2 && cairnctl activate --try 2 --attempts 1")?;
            b.vm.send("systemctl reboot\n")?;
        }
        "reset-config" => {
            // 1 has no defaults of its own: the factory configuration is its default.
            b.sh("echo color=hotpink >> /etc/appliance/app.conf")?;
            arm_running(&mut b, point)?;
            b.vm.send("cairnctl factory-reset config &\n")?;
        }
        "reset-system" => {
            arm_running(&mut b, point)?;
            b.vm.send("cairnctl factory-reset system &\n")?;
        }
        "reset-full" => {
            arm_running(&mut b, point)?;
            b.vm.send("cairnctl factory-reset full --confirm ERASE-ALL-DATA &\n")?;
        }
        "cleanup" => {
            // Versions to remove: 2 and 3 installed, never booted, expired at once.
            b.install(2)?;
            b.install(3)?;
            b.sh("mkdir -p /etc/cairn && printf 'keep_min: 1\\nkeep_max: 1\\ngrace_days: 0\\n' > /etc/cairn/retention.yaml")?;
            arm_running(&mut b, point)?;
            b.vm.send("cairnctl cleanup &\n")?;
        }
        other => bail!("no driver for {other}"),
    }
    b.vm.wait_step(point, Duration::from_secs(240))?;
    let mut b = b.power_cycle(img)?;
    let s = b.status()?;
    let booted = s["booted"]["version"].as_str().unwrap_or("?").to_owned();
    let digest = b.data_digest()?;
    // A full reset, once recorded, is finished by reconcile (data erased); anything else
    // must leave customer data exactly as it was. Never anything in between.
    let data_state = if digest == data {
        "intact"
    } else if op == "reset-full" && b.sh("demo-app status")?.contains("orders: 0") {
        "erased (the full reset was finished)"
    } else {
        "CHANGED"
    };
    let op_left = b.sh("zfs get -H -o value cairn:op rpool/ROOT")?;
    let staging = s["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|v| v["state"] == "staging");
    let booted_state = s["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["id"] == booted.as_str())
        .and_then(|v| v["state"].as_str())
        .unwrap_or("absent")
        .to_owned();
    ensure!(
        booted_state != "failed" && booted_state != "absent",
        "after the power loss the box runs {booted}, which is {booted_state}"
    );
    let consistent = if op_left.trim() == "-" && !staging {
        "consistent".to_owned()
    } else {
        format!("inconsistent (op {op_left:?}, staging {staging})")
    };
    Ok((booted, data_state.to_owned(), consistent))
}

/// One case of the suite.
#[derive(Clone, Copy)]
enum Case {
    Scenario(&'static str, Scenario),
    Power(&'static str),
}

/// What a case showed: passed or not, and its line in the report.
struct Verdict {
    ok: bool,
    line: String,
    /// For power-loss cases: the row of the table.
    row: Option<String>,
}

fn run_case(img: &DemoImage, work: &Path, case: Case) -> Verdict {
    let start = Instant::now();
    match case {
        Case::Scenario(name, scenario) => {
            let result = Device::resume(img, work, name, false).and_then(|mut b| {
                let r = scenario(&mut b, img);
                r.map(|what| (what, b.boots))
            });
            match result {
                Ok((what, boots)) => Verdict {
                    ok: true,
                    line: format!(
                        "e2e {name} ... ok ({boots} boots, {:.0?}): {what}",
                        start.elapsed()
                    ),
                    row: None,
                },
                Err(e) => Verdict {
                    ok: false,
                    line: format!(
                        "e2e {name} ... FAILED ({:.0?}): {e:#}\n  console: {}",
                        start.elapsed(),
                        work.join(format!("{name}.log")).display()
                    ),
                    row: None,
                },
            }
        }
        Case::Power(point) => match power_loss(img, work, point) {
            Ok((booted, data, consistent)) => {
                let ok = data != "CHANGED" && consistent == "consistent" && booted != "?";
                Verdict {
                    ok,
                    line: format!(
                        "e2e power-loss {point} ... {} ({:.0?}): booted {booted}, data {data}, {consistent}",
                        if ok { "ok" } else { "FAILED" },
                        start.elapsed(),
                    ),
                    row: Some(format!("| {point} | {booted} | {data} | {consistent} |\n")),
                }
            }
            Err(e) => Verdict {
                ok: false,
                line: format!(
                    "e2e power-loss {point} ... FAILED ({:.0?}): {e:#}",
                    start.elapsed()
                ),
                row: Some(format!(
                    "| {point} | - | - | case failed: {} |\n",
                    first_line(&e)
                )),
            },
        },
    }
}

/// `cargo xtask vm-test --e2e`: every scenario and every power-loss step, `lanes` VMs at a
/// time (`CAIRN_E2E_LANES`, default 2).
pub fn run(filter: Option<&str>) -> Result<()> {
    let total = Instant::now();
    let img = crate::appliance::image()?;
    let work = vm::work_dir("e2e")?;
    let mut cases: Vec<Case> = SCENARIOS
        .iter()
        .map(|(n, f)| Case::Scenario(n, *f))
        .chain(POWER_STEPS.iter().map(|p| Case::Power(p)))
        .collect();
    // A filter is a comma-separated list of name fragments; `:` matches every
    // power-loss step (`op:step`).
    if let Some(f) = filter {
        let parts: Vec<&str> = f.split(',').filter(|p| !p.is_empty()).collect();
        cases.retain(|c| {
            let name = match c {
                Case::Scenario(n, _) => n,
                Case::Power(p) => p,
            };
            parts.iter().any(|p| name.contains(p))
        });
    }
    let lanes: usize = std::env::var("CAIRN_E2E_LANES")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(2)
        .max(1);
    // Taken from the end: reversed, so cases start in the order listed.
    let mut pending: Vec<_> = cases.iter().copied().enumerate().collect();
    pending.reverse();
    let queue = std::sync::Mutex::new(pending);
    let verdicts = std::sync::Mutex::new(Vec::<(usize, Verdict)>::new());
    std::thread::scope(|s| {
        for _ in 0..lanes {
            s.spawn(|| {
                loop {
                    let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop();
                    let Some((i, case)) = next else { break };
                    let v = run_case(&img, &work, case);
                    println!("{}", v.line);
                    verdicts
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((i, v));
                }
            });
        }
    });
    let mut verdicts = verdicts.into_inner().unwrap_or_else(|e| e.into_inner());
    verdicts.sort_by_key(|(i, _)| *i);
    let mut table = String::from(
        "| step | booted after power loss | customer data | state after reconcile |\n|---|---|---|---|\n",
    );
    let (mut passed, mut covered, mut steps) = (0, 0, 0);
    let mut failed = Vec::new();
    for (_, v) in &verdicts {
        if v.ok {
            passed += 1;
        } else {
            failed.push(v.line.lines().next().unwrap_or("").to_owned());
        }
        if let Some(row) = &v.row {
            steps += 1;
            covered += usize::from(v.ok);
            table.push_str(row);
        }
    }
    if steps > 0 {
        println!(
            "\npower loss: {covered} of {} named steps covered:\n{table}",
            POWER_STEPS.len()
        );
        std::fs::write(work.join("power-loss.md"), &table)?;
    }
    println!(
        "e2e: {passed} passed, {} failed, in {:.0?} ({lanes} VMs at a time)",
        failed.len(),
        total.elapsed()
    );
    ensure!(!verdicts.is_empty(), "no e2e case matched the filter");
    if !failed.is_empty() {
        bail!("failed on the demo appliance:\n  {}", failed.join("\n  "));
    }
    Ok(())
}

fn first_line(e: &anyhow::Error) -> String {
    format!("{e:#}")
        .lines()
        .next()
        .unwrap_or("")
        .replace('|', "/")
}

/// Prints a narration line between console output.
fn say(text: &str) {
    println!("\n\x1b[1m==> {text}\x1b[0m");
}

/// `cargo xtask demo`: the walk-through an operator would do, on the real console.
pub fn demo() -> Result<()> {
    let start = Instant::now();
    let img = crate::appliance::image()?;
    let work = vm::work_dir("demo")?;
    say("The demo appliance, booted from its factory image (version 1), at its root console");
    let mut b = Device::resume(&img, &work, "demo", true)?;
    b.sh("cairnctl status")?;
    say("The application keeps customer orders on the shared data dataset");
    b.sh("demo-app order 'pallet of widgets'; demo-app status")?;
    say("Install update 2 from the USB stick: verified, then staged beside the running system");
    b.sh("ls /media/stick; cairnctl install /media/stick/demo-2.cairn")?;
    b.sh("cairnctl activate --try 2")?;
    say("Reboot into the trial; the health check confirms 2");
    b.reboot()?;
    b.sh("cairnctl status; demo-app status; cat /etc/appliance/app.conf")?;
    say("Version 1's own configuration was not touched by 2's migration");
    b.sh("mkdir -p /mnt/old && cairnctl mount 1 --config /mnt/old && cat /mnt/old/app.conf; cairnctl unmount /mnt/old")?;
    say("Install 3 (a delta from 2) and 4, which fails its health check");
    b.install(3)?;
    b.install(4)?;
    b.sh("cairnctl activate --try 4")?;
    b.vm.send("systemctl reboot\n")?;
    say("4's trial boot fails its health check and reboots into 2 by itself");
    b.vm.wait_for("booting 4 (trial)", BOOT)?;
    b.vm.wait_for("booting 2 (normal)", BOOT)?;
    b.wait_boot()?;
    b.sh("cairnctl status; cairnctl show 4")?;
    say("Roll back one step from the CLI");
    b.sh("cairnctl rollback")?;
    b.reboot()?;
    b.sh("cairnctl status; demo-app status")?;
    say("Boot an older version once from GRUB's Recovery menu (2)");
    b.vm.send("systemctl reboot\n")?;
    b.grub_choose(&[1])?;
    b.wait_boot()?;
    b.sh("cairnctl status")?;
    say("Factory reset (system): a fresh factory version becomes the default; data is kept");
    b.sh("cairnctl factory-reset system --dry-run; cairnctl factory-reset system")?;
    b.reboot()?;
    b.sh("cairnctl status; demo-app status; cairnctl journal | tail -n 8")?;
    say(&format!(
        "Done in {:.0?}; the whole console is in {}",
        start.elapsed(),
        work.join("demo.log").display()
    ));
    Ok(())
}
