//! The engine test suite, written once and run on the model (`cargo test`) and on real
//! OpenZFS in the VM (`cargo xtask vm-test`), like the zfs layer's conformance suite.
//!
//! A [`World`] is a fresh pool with an engine, a boot loader that follows
//! [`BootState::select`], and a way to build vendor releases (send streams) with files
//! and migration hooks in them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cairn_zfs::conformance::{Harness, ModelHarness, RealHarness};
use cairn_zfs::{
    CreateOptions, DatasetName, DatasetType, ListRequest, PropName, SendRequest, SnapshotName, Zfs,
};

use crate::host::HookFailure;
use crate::{
    Activation, Boot, BootKind, Booted, DataSpec, Engine, EngineError, Layout, LayoutFile, MemBoot,
    Part, Payload, RealHost, SimHost, StageRequest, Stored, VersionId, steps,
};

/// What a migration hook does, so the model and a real shell script do the same thing.
#[derive(Debug, Clone)]
pub enum HookAction {
    /// Appends a line to a file in the config.
    AppendConfig {
        file: &'static str,
        line: &'static str,
    },
    /// Writes a file into the root it runs in (package staging).
    WriteRoot {
        file: &'static str,
        text: &'static str,
    },
    /// Exits with this status after printing a message.
    Fail { code: i32, message: &'static str },
    /// Never finishes.
    Hang,
}

/// A fresh pool with an engine on it.
pub trait World {
    fn h(&self) -> &dyn Harness;
    fn engine(&self) -> &Engine;
    /// A new engine over the same machine, as after a process restart.
    fn restart(&mut self);
    /// Boots the machine once: the loader decides from the boot state.
    fn reboot(&self) -> Booted;
    /// Declares what is running (the first boot after provisioning).
    fn boot_into(&self, id: &VersionId, kind: BootKind);
    /// Installs a hook executable at `path` in dataset `ds`.
    fn hook(&self, ds: &DatasetName, path: &str, action: HookAction);
}

pub type Case = fn(&mut dyn World);

pub const CASES: &[(&str, Case)] = &[
    (
        "init_lays_out_and_refuses_twice",
        init_lays_out_and_refuses_twice,
    ),
    (
        "stage_full_stream_beside_running",
        stage_full_stream_beside_running,
    ),
    ("stage_incremental_as_clone", stage_incremental_as_clone),
    (
        "migration_changes_only_the_new_config",
        migration_changes_only_the_new_config,
    ),
    (
        "migration_failure_leaves_nothing",
        migration_failure_leaves_nothing,
    ),
    (
        "migration_hang_times_out_and_leaves_nothing",
        migration_hang_times_out_and_leaves_nothing,
    ),
    ("bad_requests_change_nothing", bad_requests_change_nothing),
    (
        "trial_confirm_makes_default_and_lkg",
        trial_confirm_makes_default_and_lkg,
    ),
    (
        "trial_without_confirm_falls_back",
        trial_without_confirm_falls_back,
    ),
    (
        "rollback_many_steps_and_roll_forward",
        rollback_many_steps_and_roll_forward,
    ),
    ("boot_once_keeps_default", boot_once_keeps_default),
    ("mount_read_only_and_diff", mount_read_only_and_diff),
    (
        "package_staging_leaves_running_root_alone",
        package_staging_leaves_running_root_alone,
    ),
    (
        "adopt_a_stock_root_on_zfs_system",
        adopt_a_stock_root_on_zfs_system,
    ),
    (
        "adopt_restored_versions_not_foreign_ones",
        adopt_restored_versions_not_foreign_ones,
    ),
    (
        "journal_records_who_what_and_steps",
        journal_records_who_what_and_steps,
    ),
    ("crash_at_every_upgrade_step", crash_at_every_upgrade_step),
    (
        "crash_at_every_activation_step",
        crash_at_every_activation_step,
    ),
    ("crash_at_every_confirm_step", crash_at_every_confirm_step),
    (
        "cancel_stops_staging_and_undoes_it",
        cancel_stops_staging_and_undoes_it,
    ),
    ("pin_and_unpin", pin_and_unpin),
    (
        "factory_baseline_is_held_and_never_booted",
        factory_baseline_is_held_and_never_booted,
    ),
    ("delta_onto_the_factory_clone", delta_onto_the_factory_clone),
    (
        "early_boot_mounts_the_booted_config",
        early_boot_mounts_the_booted_config,
    ),
    (
        "reset_config_gives_this_versions_defaults",
        reset_config_gives_this_versions_defaults,
    ),
    ("reset_system_and_full", reset_system_and_full),
    ("crash_at_every_reset_step", crash_at_every_reset_step),
    (
        "stage_tree_into_a_fresh_dataset",
        stage_tree_into_a_fresh_dataset,
    ),
    (
        "retention_over_generated_histories",
        retention_over_generated_histories,
    ),
    (
        "cleanup_dry_run_changes_nothing_and_protects",
        cleanup_dry_run_changes_nothing_and_protects,
    ),
];

const BY: &str = "test";

fn id(s: &str) -> VersionId {
    VersionId::new(s).expect("valid id")
}

/// A vendor release built in `<pool>/vendor` and sent as streams.
struct Vendor {
    ds: DatasetName,
    last: Option<SnapshotName>,
}

impl Vendor {
    fn new(w: &dyn World) -> Self {
        let ds = w.h().pool().root().child("vendor").expect("valid");
        w.h()
            .zfs()
            .create(&ds, &CreateOptions::default())
            .expect("vendor dataset");
        Self { ds, last: None }
    }

    /// Writes `files`, snapshots `@rel-<version>`, returns (full stream, incremental
    /// stream from the previous release if any).
    fn release(
        &mut self,
        w: &dyn World,
        version: &str,
        files: &[(&str, &str)],
    ) -> (Vec<u8>, Option<Vec<u8>>) {
        for (path, text) in files {
            w.h().write_file(&self.ds, path, text.as_bytes());
        }
        let snap = self.ds.snapshot(&format!("rel-{version}")).expect("valid");
        w.h()
            .zfs()
            .snapshot(std::slice::from_ref(&snap), &[])
            .expect("vendor snapshot");
        let mut full = Vec::new();
        w.h()
            .zfs()
            .send(&SendRequest::full(snap.clone()), &mut full)
            .expect("send full");
        let inc = self.last.as_ref().map(|from| {
            let mut v = Vec::new();
            w.h()
                .zfs()
                .send(
                    &SendRequest::incremental(from.clone(), snap.clone()),
                    &mut v,
                )
                .expect("send incremental");
            v
        });
        self.last = Some(snap);
        (full, inc)
    }
}

/// Every name in the pool outside the vendor dataset, sorted.
fn names(w: &dyn World) -> Vec<String> {
    let mut v: Vec<String> = w
        .h()
        .zfs()
        .list(&ListRequest {
            roots: vec![w.h().pool().root()],
            recursive: true,
            types: vec![DatasetType::Filesystem, DatasetType::Snapshot],
            ..Default::default()
        })
        .expect("list")
        .into_iter()
        .map(|e| e.name.to_string())
        .filter(|n| !n.contains("/vendor"))
        .collect();
    v.sort();
    v
}

fn data_ds(w: &dyn World) -> DatasetName {
    w.engine().layout().data[0].0.clone()
}

/// Lays out the pool, installs v1 from a release, boots it. Returns the vendor.
fn provisioned(w: &mut dyn World) -> Vendor {
    w.engine().init(BY).expect("init");
    let mut vendor = Vendor::new(w);
    let (full, _) = vendor.release(w, "1.0", &[("/usr/lib/app/version", "1.0\n")]);
    let v1 = w
        .engine()
        .install_first("1.0", &mut full.as_slice(), BY)
        .expect("install v1");
    assert_eq!(v1, id("1.0"));
    w.boot_into(&v1, BootKind::Normal);
    w.engine().reconcile(BY).expect("first reconcile");
    w.h()
        .write_file(&data_ds(w), "customer.db", b"precious customer data");
    vendor
}

fn stage(
    w: &dyn World,
    version: &str,
    stream: &[u8],
    migrations: &[&str],
) -> Result<VersionId, EngineError> {
    let mut s = stream;
    w.engine().stage(
        StageRequest {
            version: version.into(),
            payload: Payload::FullStream(&mut s),
            size_hint: stream.len() as u64,
            migrations: migrations.iter().map(|m| m.to_string()).collect(),
            migration_timeout: Duration::from_secs(5),
            bundle: Some("sha256:test".into()),
            allow_downgrade: false,
            defaults: None,
        },
        BY,
    )
}

fn read_config(w: &dyn World, v: &VersionId, file: &str) -> Option<String> {
    let at = w.h().scratch().join(format!("cfg-{v}"));
    let mnt = w
        .engine()
        .mount(v, Part::Config, None, &at)
        .expect("mount config");
    let text = w
        .h()
        .read_mounted(&mnt, file)
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    w.engine().unmount(&mnt).expect("unmount config");
    text
}

/// Reads a file from a version's root through a read-only mount (roots are not mounted).
fn read_root(w: &dyn World, v: &VersionId, file: &str) -> Option<Vec<u8>> {
    let at = w.h().scratch().join(format!("root-{v}"));
    let mnt = w
        .engine()
        .mount(v, Part::Root, None, &at)
        .expect("mount root");
    let bytes = w.h().read_mounted(&mnt, file);
    w.engine().unmount(&mnt).expect("unmount root");
    bytes
}

fn data_intact(w: &dyn World) {
    assert_eq!(
        w.h()
            .read_file(&data_ds(w).into(), "customer.db")
            .as_deref(),
        Some(&b"precious customer data"[..]),
        "customer data unchanged"
    );
}

fn state_of(w: &dyn World, v: &str) -> &'static str {
    w.engine().version(&id(v)).expect("version").state
}

fn kind<T: std::fmt::Debug>(r: Result<T, EngineError>, want: fn(&EngineError) -> bool, what: &str) {
    match r {
        Ok(v) => panic!("{what}: expected an error, got Ok({v:?})"),
        Err(e) => assert!(want(&e), "{what}: wrong error: {e}"),
    }
}

// ---------------------------------------------------------------------------------------

fn init_lays_out_and_refuses_twice(w: &mut dyn World) {
    let created = w.engine().init(BY).unwrap();
    let l = w.engine().layout().clone();
    for ds in [
        l.root_container(),
        l.config_container(),
        l.journal(),
        data_ds(w),
    ] {
        assert!(created.contains(&ds), "{ds} in {created:?}");
    }
    // Leaves carry cairn:managed; containers do not, so nothing inherits it.
    for (ds, want) in [
        (l.journal(), Some("yes")),
        (data_ds(w), Some("yes")),
        (l.root_container(), None),
    ] {
        let got = w
            .h()
            .zfs()
            .get(&ds.clone().into(), &[crate::props::managed()])
            .unwrap();
        assert_eq!(got.values().next().unwrap().value.as_deref(), want, "{ds}");
    }
    let before = names(w);
    kind(
        w.engine().init(BY),
        |e| matches!(e, EngineError::AlreadyInitialized),
        "init twice",
    );
    assert_eq!(names(w), before);
}

fn stage_full_stream_beside_running(w: &mut dyn World) {
    let mut vendor = provisioned(w);
    let (full, _) = vendor.release(w, "2.0", &[("/usr/lib/app/version", "2.0\n")]);
    let running_before = read_root(w, &id("1.0"), "/usr/lib/app/version");
    assert_eq!(running_before.as_deref(), Some(&b"1.0\n"[..]));
    let v2 = stage(w, "2.0", &full, &[]).unwrap();
    let vs = w.engine().versions().unwrap();
    let ids: Vec<_> = vs.iter().map(|v| (v.id.to_string(), v.state)).collect();
    assert_eq!(
        ids,
        [("2.0".into(), "staged"), ("1.0".into(), "active")],
        "newest first"
    );
    let v = &vs[0];
    assert_eq!(v.version, "2.0");
    assert_eq!(v.bundle.as_deref(), Some("sha256:test"));
    assert!(!v.is_default && !v.is_booted);
    // The pre-upgrade snapshots of root, config and data: one call, one txg.
    let l = w.engine().layout().clone();
    let pre = [
        Layout::pre_snapshot(&l.root(&id("1.0")), &v2),
        Layout::pre_snapshot(&l.config(&id("1.0")), &v2),
        Layout::pre_snapshot(&data_ds(w), &v2),
    ];
    let txg = |s: &SnapshotName| {
        let p = PropName::native("createtxg");
        w.h()
            .zfs()
            .get(&s.into(), std::slice::from_ref(&p))
            .unwrap()[&p]
            .value
            .clone()
    };
    assert!(
        pre.iter().all(|s| txg(s).is_some()),
        "pre-upgrade snapshots exist"
    );
    assert!(pre.windows(2).all(|p| txg(&p[0]) == txg(&p[1])), "atomic");
    // The new root is a separate dataset; the running one is untouched.
    assert_eq!(
        read_root(w, &id("1.0"), "/usr/lib/app/version"),
        running_before
    );
    assert_eq!(
        read_root(w, &v2, "/usr/lib/app/version").as_deref(),
        Some(&b"2.0\n"[..])
    );
    let plain = w
        .h()
        .zfs()
        .get(
            &l.root(&v2).into(),
            &[crate::props::state(), PropName::native("canmount")],
        )
        .unwrap();
    let vals: Vec<_> = plain.values().map(|v| v.value.clone().unwrap()).collect();
    assert_eq!(
        vals,
        ["staged", "noauto"],
        "plain zfs get tells the story (cairn:state, canmount)"
    );
    data_intact(w);
}

fn stage_incremental_as_clone(w: &mut dyn World) {
    let mut vendor = provisioned(w);
    let (_, inc) = vendor.release(w, "2.0", &[("/usr/lib/app/version", "2.0\n")]);
    let inc = inc.expect("incremental");
    let mut s = inc.as_slice();
    let v2 = w
        .engine()
        .stage(
            StageRequest {
                version: "2.0".into(),
                payload: Payload::IncrementalStream {
                    base: id("1.0"),
                    stream: &mut s,
                },
                size_hint: inc.len() as u64,
                migrations: vec![],
                migration_timeout: Duration::from_secs(5),
                bundle: None,
                allow_downgrade: false,
                defaults: None,
            },
            BY,
        )
        .unwrap();
    let v = w.engine().version(&v2).unwrap();
    let pristine = w.engine().pristine(&id("1.0")).unwrap();
    assert_eq!(
        v.origin.as_deref(),
        Some(pristine.as_str()),
        "received as a clone of 1.0's pristine snapshot"
    );
    assert_eq!(
        read_root(w, &v2, "/usr/lib/app/version").as_deref(),
        Some(&b"2.0\n"[..])
    );
}

fn migration_changes_only_the_new_config(w: &mut dyn World) {
    let mut vendor = provisioned(w);
    w.engine()
        .activate(&id("1.0"), Activation::Permanent, false, BY)
        .unwrap();
    w.hook(
        &vendor.ds,
        "/usr/lib/app/migrate",
        HookAction::AppendConfig {
            file: "app.conf",
            line: "schema=2",
        },
    );
    let (full, _) = vendor.release(w, "2.0", &[]);
    let v2 = stage(w, "2.0", &full, &["/usr/lib/app/migrate"]).unwrap();
    assert_eq!(
        read_config(w, &v2, "app.conf").as_deref(),
        Some("schema=2\n")
    );
    assert_eq!(
        read_config(w, &id("1.0"), "app.conf"),
        None,
        "the old version's config is untouched"
    );
}

fn migration_failure_leaves_nothing(w: &mut dyn World) {
    let mut vendor = provisioned(w);
    w.hook(
        &vendor.ds,
        "/usr/lib/app/migrate",
        HookAction::Fail {
            code: 3,
            message: "schema too new",
        },
    );
    let (full, _) = vendor.release(w, "2.0", &[]);
    let before = names(w);
    let r = stage(w, "2.0", &full, &["/usr/lib/app/migrate"]);
    match r {
        Err(EngineError::MigrationFailed { hook, status, .. }) => {
            assert_eq!(hook, "/usr/lib/app/migrate");
            assert!(status.contains('3'), "{status}");
        }
        other => panic!("expected MigrationFailed, got {other:?}"),
    }
    assert_eq!(names(w), before, "nothing left behind");
    data_intact(w);
    let last = w.engine().journal_entries().unwrap().pop().unwrap();
    assert!(last.result.starts_with("failed:"), "{last:?}");
}

fn migration_hang_times_out_and_leaves_nothing(w: &mut dyn World) {
    let mut vendor = provisioned(w);
    w.hook(&vendor.ds, "/usr/lib/app/migrate", HookAction::Hang);
    let (full, _) = vendor.release(w, "2.0", &[]);
    let before = names(w);
    kind(
        stage(w, "2.0", &full, &["/usr/lib/app/migrate"]),
        |e| matches!(e, EngineError::MigrationTimedOut { secs: 5, .. }),
        "hanging migration",
    );
    assert_eq!(names(w), before);
}

fn bad_requests_change_nothing(w: &mut dyn World) {
    let mut vendor = provisioned(w);
    let (full, _) = vendor.release(w, "2.0", &[]);
    let before = names(w);
    let boot_before = w.engine().boot().read().unwrap();
    kind(
        w.engine()
            .activate(&id("9.9"), Activation::Permanent, false, BY),
        |e| matches!(e, EngineError::UnknownVersion { .. }),
        "unknown version",
    );
    kind(
        stage(w, "1.0", &full, &[]),
        |e| matches!(e, EngineError::VersionExists { .. }),
        "same version again",
    );
    kind(
        stage(w, "0.9", &full, &[]),
        |e| matches!(e, EngineError::Downgrade { .. }),
        "downgrade",
    );
    kind(
        stage(w, "--", &full, &[]),
        |e| matches!(e, EngineError::BadVersionId { .. }),
        "bad id",
    );
    let mut s = full.as_slice();
    let huge = w.engine().stage(
        StageRequest {
            version: "3.0".into(),
            payload: Payload::FullStream(&mut s),
            size_hint: 1 << 40,
            migrations: vec![],
            migration_timeout: Duration::from_secs(5),
            bundle: None,
            allow_downgrade: false,
            defaults: None,
        },
        BY,
    );
    kind(
        huge,
        |e| matches!(e, EngineError::NotEnoughSpace { .. }),
        "no space",
    );
    let mut s = full.as_slice();
    let nobase = w.engine().stage(
        StageRequest {
            version: "3.0".into(),
            payload: Payload::IncrementalStream {
                base: id("0.5"),
                stream: &mut s,
            },
            size_hint: 1,
            migrations: vec![],
            migration_timeout: Duration::from_secs(5),
            bundle: None,
            allow_downgrade: false,
            defaults: None,
        },
        BY,
    );
    kind(
        nobase,
        |e| matches!(e, EngineError::UnknownVersion { .. }),
        "delta on a missing base",
    );
    kind(
        w.engine().confirm("", BY),
        |e| matches!(e, EngineError::NoTrial { .. }),
        "confirm without a trial",
    );
    assert_eq!(names(w), before, "no dataset changed");
    assert_eq!(
        w.engine().boot().read().unwrap(),
        boot_before,
        "boot state unchanged"
    );
    // A failed version is not activated without force.
    let v2 = stage(w, "2.0", &full, &[]).unwrap();
    w.engine().mark_failed(&v2, "bad build", BY).unwrap();
    let boot_before = w.engine().boot().read().unwrap();
    kind(
        w.engine().activate(&v2, Activation::Trial(2), false, BY),
        |e| matches!(e, EngineError::VersionFailed { reason, .. } if reason == "bad build"),
        "failed version",
    );
    assert_eq!(w.engine().boot().read().unwrap(), boot_before);
    w.engine()
        .activate(&v2, Activation::Trial(2), true, BY)
        .unwrap();
}

fn trial_confirm_makes_default_and_lkg(w: &mut dyn World) {
    let mut vendor = provisioned(w);
    w.engine()
        .activate(&id("1.0"), Activation::Permanent, false, BY)
        .unwrap();
    let (full, _) = vendor.release(w, "2.0", &[]);
    let v2 = stage(w, "2.0", &full, &[]).unwrap();
    w.engine()
        .activate(&v2, Activation::Trial(2), false, BY)
        .unwrap();
    assert_eq!(state_of(w, "2.0"), "trial");
    let b = w.reboot();
    assert_eq!((b.version.clone(), b.kind), (v2.clone(), BootKind::Trial));
    w.restart();
    w.engine().reconcile(BY).unwrap();
    w.engine().confirm("all checks passed", BY).unwrap();
    assert_eq!(state_of(w, "2.0"), "active");
    assert_eq!(state_of(w, "1.0"), "last-known-good");
    let v = w.engine().version(&v2).unwrap();
    assert_eq!(v.stored, Stored::Confirmed);
    assert_eq!(v.health.as_deref(), Some("all checks passed"));
    assert!(v.last_booted.is_some());
    let pool = w.h().zfs().pool(w.h().pool()).unwrap();
    assert_eq!(
        pool.bootfs,
        Some(w.engine().layout().root(&v2)),
        "bootfs follows the default"
    );
    assert_eq!(w.reboot().version, v2, "it stays");
    data_intact(w);
}

fn trial_without_confirm_falls_back(w: &mut dyn World) {
    let mut vendor = provisioned(w);
    w.engine()
        .activate(&id("1.0"), Activation::Permanent, false, BY)
        .unwrap();
    let (full, _) = vendor.release(w, "2.0", &[]);
    let v2 = stage(w, "2.0", &full, &[]).unwrap();
    w.engine()
        .activate(&v2, Activation::Trial(2), false, BY)
        .unwrap();
    let boots: Vec<_> = (0..3).map(|_| w.reboot()).collect();
    let seen: Vec<_> = boots
        .iter()
        .map(|b| (b.version.to_string(), b.kind))
        .collect();
    assert_eq!(
        seen,
        [
            ("2.0".into(), BootKind::Trial),
            ("2.0".into(), BootKind::Trial),
            ("1.0".into(), BootKind::Fallback)
        ]
    );
    w.restart();
    let report = w.engine().reconcile(BY).unwrap();
    assert!(
        report
            .actions
            .iter()
            .any(|a| a.contains("trial of 2.0 failed")),
        "{report:?}"
    );
    let v = w.engine().version(&v2).unwrap();
    assert_eq!(v.state, "failed");
    assert!(v.failed_reason.unwrap().contains("attempts ran out"));
    assert_eq!(state_of(w, "1.0"), "active");
    assert_eq!(w.engine().boot().read().unwrap().trial, None);
    data_intact(w);
}

fn rollback_many_steps_and_roll_forward(w: &mut dyn World) {
    let mut vendor = provisioned(w);
    w.engine()
        .activate(&id("1.0"), Activation::Permanent, false, BY)
        .unwrap();
    for v in ["2.0", "3.0", "4.0"] {
        let (full, _) = vendor.release(w, v, &[]);
        let vid = stage(w, v, &full, &[]).unwrap();
        w.engine()
            .activate(&vid, Activation::Permanent, false, BY)
            .unwrap();
    }
    assert_eq!(state_of(w, "4.0"), "active");
    assert_eq!(w.engine().rollback(2, BY).unwrap(), id("2.0"));
    assert_eq!(state_of(w, "2.0"), "active");
    assert_eq!(state_of(w, "4.0"), "last-known-good");
    assert_eq!(w.reboot().version, id("2.0"));
    assert_eq!(w.engine().roll_forward(BY).unwrap(), id("3.0"));
    assert_eq!(w.engine().rollback(2, BY).unwrap(), id("1.0"));
    kind(
        w.engine().rollback(1, BY),
        |e| matches!(e, EngineError::NothingToRollTo { .. }),
        "past the oldest",
    );
    data_intact(w);
}

fn boot_once_keeps_default(w: &mut dyn World) {
    let mut vendor = provisioned(w);
    w.engine()
        .activate(&id("1.0"), Activation::Permanent, false, BY)
        .unwrap();
    let (full, _) = vendor.release(w, "2.0", &[]);
    let v2 = stage(w, "2.0", &full, &[]).unwrap();
    w.engine()
        .activate(&v2, Activation::Once, false, BY)
        .unwrap();
    let b = w.reboot();
    assert_eq!((b.version, b.kind), (v2.clone(), BootKind::Once));
    assert_eq!(w.reboot().version, id("1.0"), "once means once");
    assert_eq!(state_of(w, "2.0"), "staged");
}

fn mount_read_only_and_diff(w: &mut dyn World) {
    let mut vendor = provisioned(w);
    let (_, inc) = vendor.release(
        w,
        "2.0",
        &[("/usr/lib/app/version", "2.0\n"), ("/usr/lib/app/new", "x")],
    );
    let inc = inc.unwrap();
    let mut s = inc.as_slice();
    let v2 = w
        .engine()
        .stage(
            StageRequest {
                version: "2.0".into(),
                payload: Payload::IncrementalStream {
                    base: id("1.0"),
                    stream: &mut s,
                },
                size_hint: 1,
                migrations: vec![],
                migration_timeout: Duration::from_secs(5),
                bundle: None,
                allow_downgrade: false,
                defaults: None,
            },
            BY,
        )
        .unwrap();
    let at = w.h().scratch().join("inspect-1");
    let mnt = w.engine().mount(&id("1.0"), Part::Root, None, &at).unwrap();
    assert_eq!(
        w.h().read_mounted(&mnt, "/usr/lib/app/version").as_deref(),
        Some(&b"1.0\n"[..])
    );
    w.engine().unmount(&mnt).unwrap();
    // Neither root is mounted: diff mounts what it needs and unmounts it again.
    let d = w.engine().diff(&id("1.0"), &v2).unwrap();
    let paths: Vec<_> = d
        .iter()
        .filter(|e| e.file_type == 'F')
        .map(|e| (e.path.clone(), e.change.clone()))
        .collect();
    assert!(
        paths.contains(&("/usr/lib/app/new".into(), cairn_zfs::Change::Added)),
        "{d:?}"
    );
    assert!(
        paths.contains(&("/usr/lib/app/version".into(), cairn_zfs::Change::Modified)),
        "{d:?}"
    );
    kind(
        w.engine().mount(&id("7.0"), Part::Root, None, &at),
        |e| matches!(e, EngineError::UnknownVersion { .. }),
        "mount unknown",
    );
}

fn package_staging_leaves_running_root_alone(w: &mut dyn World) {
    let _vendor = provisioned(w);
    let l = w.engine().layout().clone();
    let r1 = l.root(&id("1.0"));
    // The "package manager" is a hook inside the running root (its clone runs it).
    w.hook(
        &r1,
        "/usr/bin/upgrade",
        HookAction::WriteRoot {
            file: "/usr/lib/app/pkg",
            text: "upgraded",
        },
    );
    let before = read_root(w, &id("1.0"), "/usr/lib/app/pkg");
    assert_eq!(before, None);
    let v = w
        .engine()
        .stage_packages(
            "1.1",
            &["/usr/bin/upgrade".to_string()],
            Duration::from_secs(10),
            &[],
            BY,
        )
        .unwrap();
    assert_eq!(
        read_root(w, &v, "/usr/lib/app/pkg").as_deref(),
        Some(&b"upgraded"[..])
    );
    assert_eq!(
        read_root(w, &id("1.0"), "/usr/lib/app/pkg"),
        before,
        "running root untouched"
    );
    assert_eq!(state_of(w, "1.1"), "staged");
    // A failing command leaves nothing.
    w.hook(
        &r1,
        "/usr/bin/broken",
        HookAction::Fail {
            code: 100,
            message: "E: unmet dependencies",
        },
    );
    let names_before = names(w);
    kind(
        w.engine().stage_packages(
            "1.2",
            &["/usr/bin/broken".to_string()],
            Duration::from_secs(10),
            &[],
            BY,
        ),
        |e| matches!(e, EngineError::StagingCommandFailed { .. }),
        "failing package command",
    );
    assert_eq!(names(w), names_before);
}

/// A system installed as the OpenZFS root-on-ZFS guide does (`ROOT/debian` at `/`, a
/// zectl-made BE beside it) is taken under management in place, after a dry run.
fn adopt_a_stock_root_on_zfs_system(w: &mut dyn World) {
    let l = w.engine().layout().clone();
    let z = w.h().zfs();
    let fs = |props: &[(&'static str, &str)]| CreateOptions {
        parents: false,
        props: props
            .iter()
            .map(|(k, v)| (PropName::native(k), v.to_string()))
            .collect(),
    };
    z.create(
        &l.root_container(),
        &fs(&[("canmount", "off"), ("mountpoint", "none")]),
    )
    .unwrap();
    let debian = l.root_container().child("debian").unwrap();
    let other = l.root_container().child("zectl-be").unwrap();
    // Installed elsewhere first (as a chroot install is), then set to mount at `/`.
    for (be, dir) in [(&debian, "/install-debian"), (&other, "/install-other")] {
        z.create(be, &fs(&[("mountpoint", dir)])).unwrap();
        w.h().write_file(be, "etc/debian_version", b"13.2\n");
        let mp = PropName::native("mountpoint");
        let at = z
            .get(&be.clone().into(), std::slice::from_ref(&mp))
            .unwrap()[&mp]
            .value
            .clone()
            .unwrap();
        z.unmount(std::path::Path::new(&at)).unwrap();
        z.set(
            &be.clone().into(),
            &[
                (PropName::native("canmount"), "noauto".into()),
                (mp, "/".into()),
            ],
        )
        .unwrap();
    }
    let install = debian.snapshot("install").unwrap();
    z.snapshot(std::slice::from_ref(&install), &[]).unwrap();
    let before = names(w);

    // Bad requests are refused by name before anything is touched.
    kind(
        w.engine().adopt_system("nosuch", "13.2", false, BY),
        |e| matches!(e, EngineError::NotAdoptable { detail } if detail.contains("nosuch")),
        "no such BE",
    );
    kind(
        w.engine().adopt_system("Not A Name", "13.2", false, BY),
        |e| matches!(e, EngineError::BadVersionId { .. }),
        "bad BE name",
    );
    z.create(&l.config_container(), &fs(&[("mountpoint", "none")]))
        .unwrap();
    kind(
        w.engine().adopt_system("debian", "13.2", false, BY),
        |e| matches!(e, EngineError::NotAdoptable { detail } if detail.contains("CONFIG")),
        "a dataset in the way",
    );
    z.destroy(
        &l.config_container().into(),
        cairn_zfs::DestroyOptions::default(),
    )
    .unwrap();
    assert_eq!(names(w), before, "refused adoptions changed nothing");

    let dry = w.engine().adopt_system("debian", "13.2", true, BY).unwrap();
    assert_eq!(names(w), before, "the dry run changed nothing");
    kind(
        w.engine().versions(),
        |e| matches!(e, EngineError::NotInitialized),
        "after the dry run",
    );
    assert_eq!(dry.left_alone, [other.to_string()]);
    let said = dry.actions.join("\n");
    for ds in [l.config(&id("debian")), l.journal()] {
        assert!(said.contains(&format!("create {ds}")), "{said}");
    }

    let done = w
        .engine()
        .adopt_system("debian", "13.2", false, BY)
        .unwrap();
    assert_eq!(done.actions, dry.actions, "it did what the dry run said");
    let vs = w.engine().versions().unwrap();
    let got: Vec<_> = vs
        .iter()
        .map(|v| (v.id.to_string(), v.version.clone(), v.stored))
        .collect();
    assert_eq!(got, [("debian".into(), "13.2".into(), Stored::Confirmed)]);
    assert_eq!(
        read_root(w, &id("debian"), "/etc/debian_version").as_deref(),
        Some(&b"13.2\n"[..]),
        "the root's contents stay where they were"
    );
    assert_eq!(
        w.engine().boot().read().unwrap().default,
        Some(id("debian"))
    );
    assert_eq!(
        w.engine().pristine(&id("debian")).unwrap(),
        install,
        "the guide's @install snapshot is the pristine state"
    );
    let root_props = z
        .get(
            &debian.clone().into(),
            &[
                PropName::native("mountpoint"),
                crate::props::zbm_commandline(),
            ],
        )
        .unwrap();
    let vals: Vec<_> = root_props.values().map(|v| v.value.clone()).collect();
    assert_eq!(
        vals,
        [
            Some("/".to_string()),
            Some("cairn.version=debian cairn.boot=normal".to_string())
        ]
    );
    kind(
        w.engine()
            .activate(&id("zectl-be"), Activation::Permanent, false, BY),
        |e| matches!(e, EngineError::Foreign { .. }),
        "the other BE stays foreign",
    );
    let after = names(w);
    kind(
        w.engine().adopt_system("debian", "13.2", false, BY),
        |e| matches!(e, EngineError::AlreadyInitialized),
        "adopting twice",
    );
    assert_eq!(names(w), after);

    // The adopted system upgrades like any other.
    w.boot_into(&id("debian"), BootKind::Normal);
    w.engine().reconcile(BY).unwrap();
    let mut vendor = Vendor::new(w);
    let (full, _) = vendor.release(w, "14.0", &[("/etc/debian_version", "14.0\n")]);
    let v = stage(w, "14.0", &full, &[]).unwrap();
    w.engine()
        .activate(&v, Activation::Trial(1), false, BY)
        .unwrap();
    assert_eq!(w.reboot().version, v);
    w.engine().confirm("", BY).unwrap();
    assert_eq!(w.engine().boot().read().unwrap().default, Some(v));
}

fn adopt_restored_versions_not_foreign_ones(w: &mut dyn World) {
    let mut vendor = provisioned(w);
    let (full, _) = vendor.release(w, "2.0", &[]);
    let v2 = stage(w, "2.0", &full, &[]).unwrap();
    // A foreign BE beside ours (someone's `zfs create`), and a "restored" cairn version
    // the journal does not know: simulate by receiving v2's stream under another id.
    let l = w.engine().layout().clone();
    let foreign = l.root_container().child("debian").unwrap();
    w.h()
        .zfs()
        .create(&foreign, &CreateOptions::default())
        .unwrap();
    let restored = l.root(&id("2.5"));
    let mut rr = cairn_zfs::ReceiveRequest::new(restored.clone());
    rr.no_mount = true;
    rr.props = vec![
        (crate::props::managed(), "yes".into()),
        (crate::props::version(), "2.5".into()),
        (crate::props::state(), "staged".into()),
        (PropName::native("canmount"), "noauto".into()),
    ];
    w.h().zfs().receive(&rr, &mut full.as_slice()).unwrap();
    w.h()
        .zfs()
        .create(
            &l.config(&id("2.5")),
            &CreateOptions {
                parents: false,
                props: vec![(crate::props::managed(), "yes".into())],
            },
        )
        .unwrap();
    let adopted = w.engine().adopt(BY).unwrap();
    assert_eq!(adopted, [id("2.5")]);
    let ids: Vec<_> = w
        .engine()
        .versions()
        .unwrap()
        .into_iter()
        .map(|v| v.id.to_string())
        .collect();
    assert!(
        !ids.contains(&"debian".to_string()),
        "foreign BE not listed: {ids:?}"
    );
    assert!(ids.contains(&v2.to_string()));
    assert!(
        w.engine().adopt(BY).unwrap().is_empty(),
        "adopting twice adopts nothing"
    );
    kind(
        w.engine()
            .activate(&id("debian"), Activation::Permanent, false, BY),
        |e| matches!(e, EngineError::Foreign { .. }),
        "foreign BE",
    );
}

fn journal_records_who_what_and_steps(w: &mut dyn World) {
    let mut vendor = provisioned(w);
    let (full, _) = vendor.release(w, "2.0", &[]);
    stage(w, "2.0", &full, &[]).unwrap();
    let j = w.engine().journal_entries().unwrap();
    let up = j.iter().find(|e| e.op == "upgrade").expect("upgrade entry");
    assert_eq!(up.by, BY);
    assert_eq!(up.target, "2.0");
    assert_eq!(up.result, "ok");
    assert_eq!(up.steps, steps::UPGRADE);
    assert!(j.iter().any(|e| e.op == "init"));
}

/// Stops an upgrade before each step, restarts, reconciles, and checks the box: nothing
/// of the new version left, the running version and data untouched, and the upgrade can
/// then be done again.
fn crash_at_every_upgrade_step(w: &mut dyn World) {
    let mut vendor = provisioned(w);
    w.hook(
        &vendor.ds,
        "/usr/lib/app/migrate",
        HookAction::AppendConfig {
            file: "app.conf",
            line: "schema=2",
        },
    );
    let (full, _) = vendor.release(w, "2.0", &[]);
    let before = names(w);
    let boot_before = w.engine().boot().read().unwrap();
    for step in steps::UPGRADE {
        w.engine().crash_at(Some(&format!("upgrade:{step}")));
        kind(
            stage(w, "2.0", &full, &["/usr/lib/app/migrate"]),
            |e| matches!(e, EngineError::Crashed { .. }),
            step,
        );
        w.restart();
        let report = w.engine().reconcile(BY).unwrap();
        // The record is written once, at the first step; recovery needs no more.
        assert_eq!(
            report.actions.first().map(String::as_str),
            Some("found unfinished upgrade of 2.0 (recorded at its first step, snapshot)"),
            "{step}: reconcile found the record"
        );
        assert_eq!(
            names(w),
            before,
            "after a crash at {step}, reconcile restores the pool"
        );
        assert_eq!(w.engine().boot().read().unwrap(), boot_before);
        assert_eq!(state_of(w, "1.0"), "active");
        data_intact(w);
    }
    let v2 = stage(w, "2.0", &full, &["/usr/lib/app/migrate"]).unwrap();
    assert_eq!(
        read_config(w, &v2, "app.conf").as_deref(),
        Some("schema=2\n")
    );
}

/// Stops an activation before each step; reconcile finishes it with the same result as
/// an uninterrupted run.
fn crash_at_every_activation_step(w: &mut dyn World) {
    let mut vendor = provisioned(w);
    w.engine()
        .activate(&id("1.0"), Activation::Permanent, false, BY)
        .unwrap();
    let (full, _) = vendor.release(w, "2.0", &[]);
    let v2 = stage(w, "2.0", &full, &[]).unwrap();
    for (how, expect_default, expect_trial) in [
        (Activation::Trial(3), id("1.0"), Some(v2.clone())),
        (Activation::Permanent, v2.clone(), None),
    ] {
        let steps: &[&str] = match how {
            Activation::Permanent => steps::ACTIVATE,
            _ => &steps::ACTIVATE[..1],
        };
        for step in steps {
            let reset = crate::BootState {
                default: Some(id("1.0")),
                ..Default::default()
            };
            w.engine().boot().write(&reset).unwrap();
            w.engine().crash_at(Some(&format!("activate:{step}")));
            kind(
                w.engine().activate(&v2, how, false, BY),
                |e| matches!(e, EngineError::Crashed { .. }),
                step,
            );
            w.restart();
            w.engine().reconcile(BY).unwrap();
            let st = w.engine().boot().read().unwrap();
            assert_eq!(
                st.default.as_ref(),
                Some(&expect_default),
                "{how:?} crash at {step}"
            );
            assert_eq!(st.trial, expect_trial, "{how:?} crash at {step}");
            if how == Activation::Permanent {
                let pool = w.h().zfs().pool(w.h().pool()).unwrap();
                assert_eq!(
                    pool.bootfs,
                    Some(w.engine().layout().root(&v2)),
                    "bootfs after {step}"
                );
            }
            data_intact(w);
        }
    }
}

fn crash_at_every_confirm_step(w: &mut dyn World) {
    let mut vendor = provisioned(w);
    w.engine()
        .activate(&id("1.0"), Activation::Permanent, false, BY)
        .unwrap();
    let (full, _) = vendor.release(w, "2.0", &[]);
    let v2 = stage(w, "2.0", &full, &[]).unwrap();
    for step in steps::CONFIRM {
        let reset = crate::BootState {
            default: Some(id("1.0")),
            trial: Some(v2.clone()),
            attempts_left: 3,
            once: None,
        };
        w.engine().boot().write(&reset).unwrap();
        assert_eq!(w.reboot().kind, BootKind::Trial);
        w.engine().crash_at(Some(&format!("confirm:{step}")));
        kind(
            w.engine().confirm("ok", BY),
            |e| matches!(e, EngineError::Crashed { .. }),
            step,
        );
        w.restart();
        w.engine().reconcile(BY).unwrap();
        assert_eq!(state_of(w, "2.0"), "active", "crash at confirm:{step}");
        assert_eq!(
            state_of(w, "1.0"),
            "last-known-good",
            "crash at confirm:{step}"
        );
        assert_eq!(w.engine().version(&v2).unwrap().stored, Stored::Confirmed);
        let pool = w.h().zfs().pool(w.h().pool()).unwrap();
        assert_eq!(pool.bootfs, Some(w.engine().layout().root(&v2)));
        // Back to the starting point for the next step.
        w.engine()
            .activate(&id("1.0"), Activation::Permanent, false, BY)
            .unwrap();
        w.reboot();
    }
}

fn cancel_stops_staging_and_undoes_it(w: &mut dyn World) {
    let mut vendor = provisioned(w);
    let (full, _) = vendor.release(w, "2.0", &[]);
    let before = names(w);
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    w.engine().set_observer(Some(Arc::new(move |op, step, pct| {
        log.lock().unwrap().push(format!("{op}:{step}:{pct}"));
        step != "clone-config"
    })));
    kind(
        stage(w, "2.0", &full, &[]),
        |e| matches!(e, EngineError::Cancelled { step } if step == "clone-config"),
        "cancelled staging",
    );
    w.engine().set_observer(None);
    assert_eq!(
        *seen.lock().unwrap(),
        [
            "upgrade:snapshot:0",
            "upgrade:receive:16",
            "upgrade:clone-config:33"
        ],
        "progress in order"
    );
    assert_eq!(names(w), before, "cancel undid everything");
    stage(w, "2.0", &full, &[]).unwrap();
}

fn stage_tree_into_a_fresh_dataset(w: &mut dyn World) {
    let _vendor = provisioned(w);
    let mut defaults = |dir: &std::path::Path| -> std::io::Result<()> {
        std::fs::write(dir.join("app.conf"), "schema=2\ndefault=yes\n")
    };
    let mut writer = |dir: &std::path::Path| -> std::io::Result<()> {
        std::fs::create_dir_all(dir.join("usr/lib/app"))?;
        std::fs::write(dir.join("usr/lib/app/version"), "2.0-tree\n")
    };
    let v2 = w
        .engine()
        .stage(
            StageRequest {
                version: "2.0".into(),
                payload: Payload::Tree(&mut writer),
                size_hint: 1024,
                migrations: vec![],
                migration_timeout: Duration::from_secs(5),
                bundle: None,
                allow_downgrade: false,
                defaults: Some(&mut defaults),
            },
            BY,
        )
        .unwrap();
    assert_eq!(
        read_root(w, &v2, "/usr/lib/app/version").as_deref(),
        Some(&b"2.0-tree\n"[..])
    );
    let pristine = w.engine().pristine(&v2).unwrap();
    assert_eq!(pristine.snap(), crate::INSTALLED_SNAPSHOT);
    let at = w.h().scratch().join("defaults-2.0");
    let mnt = w.engine().mount(&v2, Part::Defaults, None, &at).unwrap();
    assert_eq!(
        w.h().read_mounted(&mnt, "app.conf").as_deref(),
        Some(&b"schema=2\ndefault=yes\n"[..]),
        "this version's own defaults"
    );
    w.engine().unmount(&mnt).unwrap();
    assert_eq!(
        w.engine().version(&v2).unwrap().origin,
        None,
        "a fresh dataset, not a clone"
    );
    // A writer that fails leaves nothing behind.
    let before = names(w);
    let mut broken = |_: &std::path::Path| -> std::io::Result<()> {
        Err(std::io::Error::other("corrupt archive"))
    };
    let r = w.engine().stage(
        StageRequest {
            version: "3.0".into(),
            payload: Payload::Tree(&mut broken),
            size_hint: 1024,
            migrations: vec![],
            migration_timeout: Duration::from_secs(5),
            bundle: None,
            allow_downgrade: false,
            defaults: None,
        },
        BY,
    );
    kind(
        r,
        |e| matches!(e, EngineError::Io { .. }),
        "failing tree writer",
    );
    assert_eq!(names(w), before);
}

/// A small deterministic generator for histories.
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Builds a history: full and package-staged versions (clones of clones through the
/// config lineage and package staging), activations with reboots, pins, and cleanups
/// in between. Returns the number of versions staged.
pub fn generate_history(w: &mut dyn World, seed: u64, ops: usize) -> usize {
    let mut vendor = provisioned(w);
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut n = 1;
    // Every root can run the "package manager": 1.0's, and every later release's.
    let upgrade = HookAction::WriteRoot {
        file: "/usr/lib/app/pkg",
        text: "upgraded",
    };
    let r1 = w.engine().layout().root(&id("1.0"));
    w.hook(&r1, "/usr/bin/upgrade", upgrade.clone());
    w.hook(&vendor.ds, "/usr/bin/upgrade", upgrade);
    for _ in 0..ops {
        match rng.next(6) {
            0 | 1 => {
                n += 1;
                let v = format!("{n}.0");
                let (full, _) = vendor.release(w, &v, &[("/usr/lib/app/version", "x")]);
                stage(w, &v, &full, &[]).expect("stage");
            }
            2 => {
                n += 1;
                let v = format!("{n}.0");
                w.engine()
                    .stage_packages(
                        &v,
                        &["/usr/bin/upgrade".to_string()],
                        Duration::from_secs(20),
                        &[],
                        BY,
                    )
                    .expect("package staging");
            }
            3 => {
                let vs: Vec<_> = w
                    .engine()
                    .versions()
                    .unwrap()
                    .into_iter()
                    .filter(|v| v.stored != Stored::Failed)
                    .collect();
                let pick = &vs[rng.next(vs.len() as u64) as usize];
                w.engine()
                    .activate(&pick.id, Activation::Permanent, false, BY)
                    .expect("activate");
                w.reboot();
                w.restart();
                w.engine().reconcile(BY).expect("reconcile");
            }
            4 => {
                let vs = w.engine().versions().unwrap();
                let pick = &vs[rng.next(vs.len() as u64) as usize];
                w.engine().pin(&pick.id, !pick.pinned, BY).expect("pin");
            }
            _ => {
                let policy = crate::retention::Policy {
                    keep_min: 1 + rng.next(3) as usize,
                    keep_max: 3 + rng.next(4) as usize,
                    expire_after_days: 0,
                    expire_never_booted_days: 0,
                    free_space_percent: 0,
                    grace_days: 0,
                    data_snapshots_keep: 1 + rng.next(2) as usize,
                };
                check_cleanup(w, &policy);
            }
        }
    }
    n
}

/// Plans, checks the plan's properties, executes it, checks the outcome.
pub fn check_cleanup(w: &mut dyn World, policy: &crate::retention::Policy) -> crate::Cleanup {
    use crate::retention::{Step, protection};
    let inv = w.engine().inventory().unwrap();
    let protected: Vec<&crate::retention::VersionFacts> = inv
        .versions
        .iter()
        .filter(|v| protection(v).is_some())
        .collect();
    let protected_ds: Vec<String> = protected
        .iter()
        .flat_map(|v| v.datasets.iter().map(|d| d.name.clone()))
        .collect();
    let before_names = names(w);
    let dry = w.engine().cleanup(policy, true, BY).unwrap();
    assert_eq!(names(w), before_names, "a dry run changes nothing");
    for id in &dry.plan.remove {
        assert!(
            protected.iter().all(|p| &p.id != id),
            "protected {id} planned: {:?}",
            dry.plan
        );
    }
    for s in &dry.plan.steps {
        if let Step::Destroy { target, .. } = s {
            let ds = target.split('@').next().unwrap();
            assert!(
                !protected_ds.iter().any(|p| p == ds),
                "destroys protected {target}"
            );
        }
    }
    let free_before = w.h().zfs().pool(w.h().pool()).unwrap().free;
    let done = w
        .engine()
        .cleanup(policy, false, BY)
        .unwrap_or_else(|e| panic!("plan not executable: {e}\n{:?}", dry.plan));
    // The dry run is what was executed (expiry dates count from each run's clock).
    assert_eq!(
        done.plan.steps, dry.plan.steps,
        "the dry run's steps are what ran"
    );
    assert_eq!(done.plan.remove, dry.plan.remove);
    let ids =
        |p: &crate::retention::Plan| p.expiries.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&done.plan), ids(&dry.plan));
    let after = w.engine().versions().unwrap();
    for p in &protected {
        assert!(
            after.iter().any(|v| v.id == p.id),
            "protected {} survived",
            p.id
        );
    }
    let kept = after.len();
    assert!(
        kept >= policy.keep_min.min(inv.versions.len()),
        "keep_min {} but {kept} left",
        policy.keep_min
    );
    for id in &done.plan.remove {
        assert!(after.iter().all(|v| &v.id != id), "{id} was removed");
    }
    w.h().zfs().sync(w.h().pool()).unwrap();
    let freed: u64 = done.freed.iter().map(|(_, b)| b).sum();
    let free_after = w.h().zfs().pool(w.h().pool()).unwrap().free;
    if !done.freed.is_empty() {
        assert!(
            free_after > free_before || freed == 0,
            "space came back: {free_before} -> {free_after}, reported {freed}"
        );
    }
    // Every version left still boots: its root and config exist.
    for v in &after {
        let l = w.engine().layout();
        assert!(
            w.h()
                .zfs()
                .get(&l.root(&v.id).into(), &[PropName::native("type")])
                .is_ok()
        );
        assert!(
            w.h()
                .zfs()
                .get(&l.config(&v.id).into(), &[PropName::native("type")])
                .is_ok()
        );
    }
    data_intact(w);
    done
}

fn retention_over_generated_histories(w: &mut dyn World) {
    let staged = generate_history(w, 7, 14);
    assert!(staged >= 3, "the history has versions to retire");
    let policy = crate::retention::Policy {
        keep_min: 1,
        keep_max: 2,
        expire_after_days: 0,
        expire_never_booted_days: 0,
        free_space_percent: 0,
        grace_days: 0,
        data_snapshots_keep: 1,
    };
    check_cleanup(w, &policy);
}

fn cleanup_dry_run_changes_nothing_and_protects(w: &mut dyn World) {
    let mut vendor = provisioned(w);
    for v in ["2.0", "3.0", "4.0"] {
        let (full, _) = vendor.release(w, v, &[]);
        stage(w, v, &full, &[]).unwrap();
    }
    w.engine().pin(&id("2.0"), true, BY).unwrap();
    let policy = crate::retention::Policy {
        grace_days: 7,
        expire_never_booted_days: 0,
        keep_min: 1,
        ..Default::default()
    };
    let before = names(w);
    let first = w.engine().cleanup(&policy, false, BY).unwrap();
    assert!(first.plan.steps.is_empty(), "grace first: {:?}", first.plan);
    let expiring: Vec<_> = w
        .engine()
        .versions()
        .unwrap()
        .into_iter()
        .filter(|v| v.expires.is_some())
        .map(|v| v.id.to_string())
        .collect();
    // Never booted and older than the default? No: they are newer than 1.0, the default.
    assert!(expiring.is_empty(), "{expiring:?}");
    assert_eq!(names(w), before);
    // More than keep_max: the oldest unprotected ones expire, after grace.
    let tight = crate::retention::Policy {
        keep_max: 3,
        grace_days: 0,
        ..policy.clone()
    };
    let dry = w.engine().cleanup(&tight, true, BY).unwrap();
    assert_eq!(names(w), before, "dry run");
    let ids: Vec<_> = dry.plan.expiries.iter().map(|e| e.id.to_string()).collect();
    assert_eq!(
        ids,
        ["3.0"],
        "1.0 is running, 2.0 pinned; 3.0 is the oldest other one"
    );
    let done = w.engine().cleanup(&tight, false, BY).unwrap();
    assert_eq!(done.plan.remove, [id("3.0")]);
    assert!(done.freed.iter().any(|(t, _)| t.ends_with("ROOT/3.0")));
    let left: Vec<_> = w
        .engine()
        .versions()
        .unwrap()
        .into_iter()
        .map(|v| v.id.to_string())
        .collect();
    assert_eq!(left, ["4.0", "2.0", "1.0"]);
}

/// Lays out the pool and provisions the factory baseline (1.0, config `schema=1`);
/// 1.0 boots and the customer writes data.
fn provisioned_factory(w: &mut dyn World) -> Vendor {
    w.engine().init(BY).expect("init");
    let mut vendor = Vendor::new(w);
    let (full, _) = vendor.release(w, "1.0", &[("/usr/lib/app/version", "1.0\n")]);
    let mut defaults = |d: &std::path::Path| -> std::io::Result<()> {
        std::fs::write(d.join("app.conf"), "schema=1\n")
    };
    let v1 = w
        .engine()
        .provision_factory(
            "1.0",
            Payload::FullStream(&mut full.as_slice()),
            Some(&mut defaults),
            BY,
        )
        .expect("provision");
    assert_eq!(v1, id("1.0"));
    w.boot_into(&v1, BootKind::Normal);
    w.engine().reconcile(BY).expect("reconcile");
    w.h()
        .write_file(&data_ds(w), "customer.db", b"precious customer data");
    vendor
}

/// `cairnd mount-config` at boot: the booted version's own config dataset, at the
/// layout's config path; the journal mount is idempotent.
fn early_boot_mounts_the_booted_config(w: &mut dyn World) {
    let _vendor = provisioned(w);
    w.engine()
        .mount_journal()
        .expect("journal already mounted: no-op");
    let at = w
        .engine()
        .mount_booted_config()
        .expect("mount")
        .expect("booted through cairn's menu");
    assert_eq!(at, w.engine().layout().config_mountpoint);
    let cfg = w.engine().layout().config(&id("1.0"));
    let mounted = w
        .h()
        .zfs()
        .get(&(&cfg).into(), &[PropName::native("mounted")])
        .expect("get");
    assert_eq!(
        mounted.values().next().and_then(|v| v.value.as_deref()),
        Some("yes"),
        "1.0's config is mounted"
    );
    w.engine().unmount(&at).expect("unmount");
}

/// The first version is a clone of the baseline with no snapshot of its own: a vendor
/// delta from that release applies on the baseline's snapshot (same GUID as the release).
fn delta_onto_the_factory_clone(w: &mut dyn World) {
    let mut vendor = provisioned_factory(w);
    let (_, inc) = vendor.release(w, "2.0", &[("/usr/lib/app/version", "2.0\n")]);
    let inc = inc.expect("incremental");
    let l = w.engine().layout().clone();
    let f = l.root(&id(crate::factory::FACTORY_ID));
    let received = format!("{f}@rel-1.0");
    let baseline = format!("{f}@factory");
    assert_eq!(
        w.engine().pristine(&id("1.0")).unwrap().as_str(),
        received,
        "1.0 is the baseline, which was received as the vendor's release"
    );
    let mut s = inc.as_slice();
    let v2 = w
        .engine()
        .stage(
            StageRequest {
                version: "2.0".into(),
                payload: Payload::IncrementalStream {
                    base: id("1.0"),
                    stream: &mut s,
                },
                size_hint: inc.len() as u64,
                migrations: vec![],
                migration_timeout: Duration::from_secs(5),
                bundle: None,
                allow_downgrade: false,
                defaults: None,
            },
            BY,
        )
        .expect("a delta from the factory release stages");
    assert_eq!(
        w.engine().version(&v2).unwrap().origin.as_deref(),
        Some(received.as_str())
    );
    assert!(names(w).contains(&baseline), "the baseline snapshot stays");
    assert_eq!(
        read_root(w, &v2, "/usr/lib/app/version").as_deref(),
        Some(&b"2.0\n"[..])
    );
    data_intact(w);
}

fn factory_baseline_is_held_and_never_booted(w: &mut dyn World) {
    let _v = provisioned_factory(w);
    let f = id(crate::factory::FACTORY_ID);
    let vs = w.engine().versions().unwrap();
    let states: Vec<_> = vs.iter().map(|v| (v.id.to_string(), v.state)).collect();
    assert!(
        states.contains(&("factory".into(), "factory")),
        "{states:?}"
    );
    assert!(states.contains(&("1.0".into(), "active")), "{states:?}");
    let l = w.engine().layout().clone();
    let v1 = w.engine().version(&id("1.0")).unwrap();
    assert_eq!(
        v1.origin.as_deref(),
        Some(format!("{}@factory", l.root(&f)).as_str()),
        "1.0 is a clone of the baseline"
    );
    assert_eq!(
        read_config(w, &id("1.0"), "app.conf").as_deref(),
        Some("schema=1\n")
    );
    for s in w.engine().factory_snapshots().unwrap().expect("baseline") {
        let holds = w.h().zfs().holds(&s).unwrap();
        assert!(
            holds.iter().any(|h| h.tag == crate::factory::FACTORY_HOLD),
            "plain zfs holds says why: {holds:?}"
        );
        let r = w
            .h()
            .zfs()
            .destroy(&(&s).into(), cairn_zfs::DestroyOptions::default());
        let k = r.unwrap_err().kind();
        assert!(
            matches!(
                k,
                cairn_zfs::ErrorKind::Busy | cairn_zfs::ErrorKind::HasDependentClones
            ),
            "cannot be destroyed: {k:?}"
        );
    }
    let before = names(w);
    kind(
        w.engine().activate(&f, Activation::Permanent, false, BY),
        |e| matches!(e, EngineError::NotBootable { .. }),
        "activate the baseline",
    );
    kind(
        w.engine().activate(&f, Activation::Trial(2), true, BY),
        |e| matches!(e, EngineError::NotBootable { .. }),
        "force does not help",
    );
    kind(
        w.engine().mark_failed(&f, "x", BY),
        |e| matches!(e, EngineError::NotBootable { .. }),
        "mark the baseline",
    );
    let all = crate::retention::Policy {
        keep_min: 1,
        keep_max: 1,
        expire_after_days: 0,
        expire_never_booted_days: 0,
        grace_days: 0,
        free_space_percent: 0,
        data_snapshots_keep: 0,
    };
    let plan = w.engine().cleanup(&all, false, BY).unwrap();
    assert!(
        !plan.plan.remove.contains(&f),
        "retention never plans the baseline"
    );
    assert_eq!(names(w), before, "nothing about the baseline changed");
}

fn reset_config_gives_this_versions_defaults(w: &mut dyn World) {
    let mut vendor = provisioned_factory(w);
    // 2.0 ships its own defaults (schema 2) and a migration of the live config.
    w.hook(
        &vendor.ds,
        "/usr/lib/app/migrate",
        HookAction::AppendConfig {
            file: "app.conf",
            line: "migrated=yes",
        },
    );
    let (full, _) = vendor.release(w, "2.0", &[]);
    let mut defaults = |d: &std::path::Path| -> std::io::Result<()> {
        std::fs::write(d.join("app.conf"), "schema=2\n")
    };
    let mut s = full.as_slice();
    let v2 = w
        .engine()
        .stage(
            StageRequest {
                version: "2.0".into(),
                payload: Payload::FullStream(&mut s),
                size_hint: 1,
                migrations: vec!["/usr/lib/app/migrate".into()],
                migration_timeout: Duration::from_secs(10),
                bundle: None,
                allow_downgrade: false,
                defaults: Some(&mut defaults),
            },
            BY,
        )
        .unwrap();
    w.engine()
        .activate(&v2, Activation::Permanent, false, BY)
        .unwrap();
    w.reboot();
    assert_eq!(
        read_config(w, &v2, "app.conf").as_deref(),
        Some("schema=1\nmigrated=yes\n")
    );
    let dry = w
        .engine()
        .factory_reset(crate::factory::ResetMode::Config, "", true, BY)
        .unwrap();
    let steps: Vec<_> = dry.iter().map(|a| a.step.as_str()).collect();
    assert_eq!(steps, ["clone-defaults", "keep-old", "swap"]);
    let before = names(w);
    let done = w
        .engine()
        .factory_reset(crate::factory::ResetMode::Config, "", false, BY)
        .unwrap();
    assert_eq!(done, dry, "the dry run lists exactly what was done");
    assert_eq!(
        read_config(w, &v2, "app.conf").as_deref(),
        Some("schema=2\n"),
        "2.0's own defaults, not the factory's"
    );
    let after = names(w);
    let kept = format!("{}/CONFIG/2.0.before-reset-1", w.h().pool());
    assert!(
        after.contains(&kept) && !before.contains(&kept),
        "the old config is kept: {after:?}"
    );
    assert_eq!(
        read_config(w, &id("1.0"), "app.conf").as_deref(),
        Some("schema=1\n"),
        "other versions untouched"
    );
    data_intact(w);
}

fn reset_system_and_full(w: &mut dyn World) {
    let mut vendor = provisioned_factory(w);
    let (full, _) = vendor.release(w, "2.0", &[]);
    let v2 = stage(w, "2.0", &full, &[]).unwrap();
    w.engine()
        .activate(&v2, Activation::Permanent, false, BY)
        .unwrap();
    w.reboot();
    let dry = w
        .engine()
        .factory_reset(crate::factory::ResetMode::System, "", true, BY)
        .unwrap();
    assert_eq!(
        dry.iter().map(|a| a.step.as_str()).collect::<Vec<_>>(),
        ["clone-root", "clone-config", "activate"]
    );
    let done = w
        .engine()
        .factory_reset(crate::factory::ResetMode::System, "", false, BY)
        .unwrap();
    assert_eq!(done, dry);
    assert_eq!(state_of(w, "1.0-reset-1"), "active");
    assert_eq!(
        read_config(w, &id("1.0-reset-1"), "app.conf").as_deref(),
        Some("schema=1\n"),
        "factory config"
    );
    assert!(
        w.engine().version(&v2).is_ok(),
        "older versions are kept: the reset can be undone"
    );
    data_intact(w);
    // Full reset: refused without the token, and nothing changes.
    let before = names(w);
    kind(
        w.engine()
            .factory_reset(crate::factory::ResetMode::Full, "yes", false, BY),
        |e| matches!(e, EngineError::ConfirmationRequired { .. }),
        "full reset without the token",
    );
    assert_eq!(names(w), before);
    data_intact(w);
    let dry = w
        .engine()
        .factory_reset(
            crate::factory::ResetMode::Full,
            crate::factory::FULL_RESET_TOKEN,
            true,
            BY,
        )
        .unwrap();
    assert_eq!(names(w), before, "dry run");
    let done = w
        .engine()
        .factory_reset(
            crate::factory::ResetMode::Full,
            crate::factory::FULL_RESET_TOKEN,
            false,
            BY,
        )
        .unwrap();
    assert_eq!(done, dry);
    assert!(dry.iter().any(|a| a.step == "erase-data"));
    assert_eq!(
        w.h().read_file(&data_ds(w).into(), "customer.db"),
        None,
        "data erased"
    );
    assert!(
        !names(w).iter().any(|n| n.contains("/DATA/app@")),
        "data snapshots gone too"
    );
    assert_eq!(state_of(w, "1.0-reset-2"), "active");
}

fn crash_at_every_reset_step(w: &mut dyn World) {
    let _vendor = provisioned_factory(w);
    for (mode, steps) in [
        (
            crate::factory::ResetMode::Config,
            &["clone-defaults", "keep-old", "swap"][..],
        ),
        (
            crate::factory::ResetMode::System,
            &["clone-root", "clone-config", "activate"][..],
        ),
    ] {
        for step in steps {
            w.engine()
                .crash_at(Some(&format!("reset-{}:{step}", mode.as_str())));
            kind(
                w.engine().factory_reset(mode, "", false, BY),
                |e| matches!(e, EngineError::Crashed { .. }),
                step,
            );
            w.restart();
            let r = w.engine().reconcile(BY).unwrap();
            assert!(
                r.actions
                    .iter()
                    .any(|a| a.contains("finished the interrupted")),
                "{mode:?} {step}: {r:?}"
            );
            match mode {
                crate::factory::ResetMode::Config => {
                    let running = w.engine().host().booted().unwrap().version;
                    assert_eq!(
                        read_config(w, &running, "app.conf").as_deref(),
                        Some("schema=1\n"),
                        "config after {step}"
                    );
                }
                _ => {
                    let default = w.engine().boot().read().unwrap().default.unwrap();
                    assert!(
                        default.as_str().starts_with("1.0-reset-"),
                        "system reset finished after {step}: {default}"
                    );
                    w.reboot();
                }
            }
            data_intact(w);
        }
    }
}

fn pin_and_unpin(w: &mut dyn World) {
    let _vendor = provisioned(w);
    w.engine().pin(&id("1.0"), true, BY).unwrap();
    assert!(w.engine().version(&id("1.0")).unwrap().pinned);
    w.engine().pin(&id("1.0"), false, BY).unwrap();
    assert!(!w.engine().version(&id("1.0")).unwrap().pinned);
    kind(
        w.engine().pin(&id("9"), true, BY),
        |e| matches!(e, EngineError::UnknownVersion { .. }),
        "pin unknown",
    );
}

// ---------------------------------------------------------------------------------------
// worlds

fn layout_for(h: &dyn Harness) -> Layout {
    let scratch = h.scratch();
    Layout::from_file(&LayoutFile {
        pool: h.pool().to_string(),
        prefix: String::new(),
        config_mountpoint: PathBuf::from("/etc/appliance"),
        data: vec![DataSpec {
            name: "app".into(),
            mountpoint: scratch.join("data/app"),
        }],
        journal_mountpoint: scratch.join("journal"),
    })
    .expect("valid test layout")
}

/// The model world: ZfsModel, MemBoot, SimHost.
#[derive(Debug)]
pub struct ModelWorld {
    h: ModelHarness,
    boot: Arc<MemBoot>,
    host: Arc<SimHost>,
    engine: Engine,
    baked: VersionId,
}

impl ModelWorld {
    pub fn new() -> Self {
        let h = ModelHarness::new();
        let boot = Arc::new(MemBoot::new());
        let host = Arc::new(SimHost::new(h.model().clone(), boot.clone()));
        let engine = Self::make(&h, &boot, &host);
        Self {
            h,
            boot,
            host,
            engine,
            baked: id("1.0"),
        }
    }

    fn make(h: &ModelHarness, boot: &Arc<MemBoot>, host: &Arc<SimHost>) -> Engine {
        Engine::new(h.model().clone(), boot.clone(), host.clone(), layout_for(h))
    }
}

impl Default for ModelWorld {
    fn default() -> Self {
        Self::new()
    }
}

impl World for ModelWorld {
    fn h(&self) -> &dyn Harness {
        &self.h
    }
    fn engine(&self) -> &Engine {
        &self.engine
    }
    fn restart(&mut self) {
        self.engine = Self::make(&self.h, &self.boot, &self.host);
    }
    fn reboot(&self) -> Booted {
        self.host.reboot(&self.baked).expect("sim reboot")
    }
    fn boot_into(&self, v: &VersionId, kind: BootKind) {
        self.host.set_booted(v, kind);
    }
    fn hook(&self, ds: &DatasetName, path: &str, action: HookAction) {
        self.h.write_file(ds, path, b"#!/bin/sh\n# simulated\n");
        let hook: crate::host::SimHook = match action {
            HookAction::AppendConfig { file, line } => Arc::new(move |m, _root, config| {
                let target = config.expect("migrations run with the config mounted");
                let old = m
                    .read_file(&target.into(), file)
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                let mut new = old;
                new.extend_from_slice(format!("{line}\n").as_bytes());
                m.write_file(target, file, &new)
                    .map_err(|e| HookFailure::Failed {
                        status: "1".into(),
                        output: e.to_string(),
                    })
            }),
            HookAction::WriteRoot { file, text } => Arc::new(move |m, root, _config| {
                m.write_file(root, file, text.as_bytes())
                    .map_err(|e| HookFailure::Failed {
                        status: "1".into(),
                        output: e.to_string(),
                    })
            }),
            HookAction::Fail { code, message } => Arc::new(move |_, _, _| {
                Err(HookFailure::Failed {
                    status: format!("exit status: {code}"),
                    output: message.into(),
                })
            }),
            HookAction::Hang => Arc::new(|_, _, _| Err(HookFailure::TimedOut)),
        };
        self.host.register_hook(path, hook);
    }
}

/// The real world: real OpenZFS, RealHost with chroot hooks; the boot loader is MemBoot
/// (GRUB is proven in the tier-2 suite) and the kernel command line is a file.
#[derive(Debug)]
pub struct RealWorld {
    h: RealHarness,
    boot: Arc<MemBoot>,
    engine: Engine,
    cmdline: PathBuf,
    baked: VersionId,
}

impl RealWorld {
    pub fn new(scratch: &std::path::Path, pool: &str) -> cairn_zfs::Result<Self> {
        let h = RealHarness::new(scratch, pool)?;
        let boot = Arc::new(MemBoot::new());
        let cmdline = h.scratch().join("cmdline");
        std::fs::create_dir_all(h.scratch()).map_err(|source| cairn_zfs::ZfsError::Io {
            what: "scratch".into(),
            source,
        })?;
        std::fs::write(&cmdline, "").map_err(|source| cairn_zfs::ZfsError::Io {
            what: "cmdline".into(),
            source,
        })?;
        let engine = Self::make(&h, &boot, &cmdline);
        Ok(Self {
            h,
            boot,
            engine,
            cmdline,
            baked: id("1.0"),
        })
    }

    fn make(h: &RealHarness, boot: &Arc<MemBoot>, cmdline: &std::path::Path) -> Engine {
        let zfs: Arc<dyn Zfs> = Arc::new(cairn_zfs::cli::ZfsCli::new().expect("zfs tools"));
        let layout = layout_for(h);
        let host = Arc::new(RealHost::new(
            zfs.clone(),
            &layout.journal_mountpoint,
            &h.scratch().join("work"),
            cmdline,
        ));
        Engine::new(zfs, boot.clone(), host, layout)
    }
}

/// The shell and the libraries it needs, so hooks can run in a chroot of a test root.
fn shell_files() -> Vec<String> {
    let out = cairn_zfs::cmd::Runner::new()
        .run(&cairn_zfs::cmd::Cmd::new("/usr/bin/ldd").arg("/bin/sh"))
        .expect("ldd /bin/sh");
    let mut files = vec!["/bin/sh".to_string()];
    files.extend(out.lines().filter_map(|l| {
        l.split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(str::to_owned)
    }));
    files
}

impl World for RealWorld {
    fn h(&self) -> &dyn Harness {
        &self.h
    }
    fn engine(&self) -> &Engine {
        &self.engine
    }
    fn restart(&mut self) {
        self.engine = Self::make(&self.h, &self.boot, &self.cmdline);
    }
    fn reboot(&self) -> Booted {
        let d = self.boot.read().expect("boot").select(&self.baked);
        self.boot.write(&d.next).expect("boot");
        self.boot_into(&d.version, d.kind);
        Booted {
            version: d.version,
            kind: d.kind,
        }
    }
    fn boot_into(&self, v: &VersionId, kind: BootKind) {
        std::fs::write(
            &self.cmdline,
            format!(
                "root=ZFS=x cairn.version={v} cairn.boot={}\n",
                kind.as_str()
            ),
        )
        .expect("write cmdline");
    }
    fn hook(&self, ds: &DatasetName, path: &str, action: HookAction) {
        let script = match action {
            HookAction::AppendConfig { file, line } => {
                format!("#!/bin/sh\necho '{line}' >> \"$CAIRN_CONFIG/{file}\"\n")
            }
            HookAction::WriteRoot { file, text } => {
                format!("#!/bin/sh\necho -n '{text}' > '{file}'\n")
            }
            HookAction::Fail { code, message } => {
                format!("#!/bin/sh\necho '{message}' >&2\nexit {code}\n")
            }
            HookAction::Hang => "#!/bin/sh\nwhile :; do :; done\n".to_owned(),
        };
        // Roots the engine manages are not mounted: mount one for the install.
        let at = self.h.scratch().join("hook-install");
        self.h
            .zfs()
            .mount(
                &ds.into(),
                &cairn_zfs::MountOptions {
                    at: Some(at.clone()),
                    read_only: false,
                },
            )
            .expect("mount for hook");
        let write = |p: &str, bytes: &[u8]| {
            use std::os::unix::fs::PermissionsExt;
            let full = at.join(p.trim_start_matches('/'));
            std::fs::create_dir_all(full.parent().expect("absolute path")).expect("mkdir");
            std::fs::write(&full, bytes).expect("write hook file");
            std::fs::set_permissions(&full, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        };
        for f in shell_files() {
            let real = std::fs::canonicalize(&f).unwrap_or_else(|_| PathBuf::from(&f));
            write(&f, &std::fs::read(real).expect("read shell file"));
        }
        write(path, script.as_bytes());
        self.h.zfs().unmount(&at).expect("unmount after hook");
        self.h.zfs().sync(self.h.pool()).expect("sync");
    }
}

/// Runs one case on a fresh real pool (for `tests/engine_real.rs`).
pub fn run_real(case: Case, scratch: &std::path::Path, pool: &str) -> Result<(), String> {
    let mut w = RealWorld::new(scratch, pool)
        .map_err(|e| format!("could not create the test pool: {e}"))?;
    case(&mut w);
    Ok(())
}

/// Runs `f` and turns a panic into an error message (for libtest-mimic).
pub fn catch(f: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(e) => Err(e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panicked".into())),
    }
}
