//! The conformance suite: the ZFS behaviour cairn relies on, written once and run against
//! both the in-memory model (`cargo test`) and real OpenZFS (`cargo xtask vm-test`).
//!
//! Every case gets a fresh pool through a [`Harness`], which also gives it the few things
//! the [`Zfs`] trait deliberately lacks: writing and reading files in a dataset.

use std::path::{Path, PathBuf};

use crate::cli::ZfsCli;
use crate::model::ZfsModel;
use crate::name::{DatasetName, ObjectName, PoolName, PropName, SnapshotName};
use crate::{
    Change, CreateOptions, DatasetType, DestroyOptions, ErrorKind, ListRequest, MountOptions,
    PropSource, ReceiveRequest, Result, SendRequest, Zfs, ZfsError,
};

/// A fresh pool and ways to touch file contents in it.
pub trait Harness {
    fn zfs(&self) -> &dyn Zfs;
    fn pool(&self) -> &PoolName;
    /// Writes a file into a mounted dataset and makes it durable.
    fn write_file(&self, ds: &DatasetName, path: &str, data: &[u8]);
    fn remove_file(&self, ds: &DatasetName, path: &str);
    /// Makes a file written with `write_file` executable (mode 0755).
    fn set_executable(&self, ds: &DatasetName, path: &str);
    /// Reads a file from a dataset or snapshot; `None` if it does not exist.
    fn read_file(&self, target: &ObjectName, path: &str) -> Option<Vec<u8>>;
    /// Reads a file below a path returned by [`Zfs::mount`].
    fn read_mounted(&self, mount: &Path, path: &str) -> Option<Vec<u8>>;
    /// A directory the case may use for mounts.
    fn scratch(&self) -> PathBuf;
}

/// One conformance case.
pub type Case = fn(&dyn Harness);

/// Every case, by name.
pub const CASES: &[(&str, Case)] = &[
    ("create_list_and_depth", create_list_and_depth),
    ("create_missing_parent_fails", create_missing_parent_fails),
    ("create_existing_fails", create_existing_fails),
    (
        "user_property_set_get_inherit",
        user_property_set_get_inherit,
    ),
    ("native_properties", native_properties),
    (
        "property_values_checked_before_write",
        property_values_checked_before_write,
    ),
    (
        "snapshot_many_atomically_with_props",
        snapshot_many_atomically_with_props,
    ),
    ("snapshot_all_or_nothing", snapshot_all_or_nothing),
    (
        "snapshot_inherits_user_properties",
        snapshot_inherits_user_properties,
    ),
    (
        "clone_records_origin_and_contents",
        clone_records_origin_and_contents,
    ),
    (
        "clone_of_missing_snapshot_fails",
        clone_of_missing_snapshot_fails,
    ),
    ("promote_swaps_origin", promote_swaps_origin),
    ("promote_non_clone_fails", promote_non_clone_fails),
    ("rollback_restores_contents", rollback_restores_contents),
    (
        "rollback_past_newer_snapshots_refused",
        rollback_past_newer_snapshots_refused,
    ),
    (
        "rename_dataset_moves_snapshots_and_origins",
        rename_dataset_moves_snapshots_and_origins,
    ),
    ("rename_to_existing_fails", rename_to_existing_fails),
    ("rename_snapshot", rename_snapshot),
    (
        "destroy_dry_run_estimates_and_changes_nothing",
        destroy_dry_run_estimates_and_changes_nothing,
    ),
    (
        "destroy_with_children_refused",
        destroy_with_children_refused,
    ),
    (
        "destroy_snapshot_with_clone_refused",
        destroy_snapshot_with_clone_refused,
    ),
    ("destroy_missing_fails", destroy_missing_fails),
    ("destroy_recursive", destroy_recursive),
    ("holds_block_destroy", holds_block_destroy),
    (
        "hold_twice_and_release_unknown_fail",
        hold_twice_and_release_unknown_fail,
    ),
    ("send_receive_full_round_trip", send_receive_full_round_trip),
    (
        "send_estimate_close_to_stream_size",
        send_estimate_close_to_stream_size,
    ),
    ("receive_incremental_as_clone", receive_incremental_as_clone),
    (
        "receive_incremental_onto_wrong_base_fails",
        receive_incremental_onto_wrong_base_fails,
    ),
    ("receive_incremental_in_place", receive_incremental_in_place),
    ("send_raw_round_trip", send_raw_round_trip),
    (
        "diff_between_snapshots_and_head",
        diff_between_snapshots_and_head,
    ),
    ("mount_read_only_at_path", mount_read_only_at_path),
    ("pool_figures_and_bootfs", pool_figures_and_bootfs),
    (
        "invalid_names_refused_by_validator_and_backend",
        invalid_names_refused_by_validator_and_backend,
    ),
    ("space_accounting", space_accounting),
];

// ---------------------------------------------------------------------------------------
// helpers

const MIB: usize = 1 << 20;

/// Incompressible bytes (xorshift), so space figures mean what they say.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

fn ds(h: &dyn Harness, rel: &str) -> DatasetName {
    DatasetName::new(format!("{}/{rel}", h.pool())).expect("valid test dataset name")
}

fn snap(h: &dyn Harness, rel: &str) -> SnapshotName {
    SnapshotName::new(format!("{}/{rel}", h.pool())).expect("valid test snapshot name")
}

fn p(name: &str) -> PropName {
    PropName::new(name).expect("valid property name")
}

fn mk(h: &dyn Harness, rel: &str) -> DatasetName {
    let d = ds(h, rel);
    h.zfs()
        .create(
            &d,
            &CreateOptions {
                parents: true,
                props: vec![],
            },
        )
        .unwrap_or_else(|e| panic!("create {d}: {e}"));
    d
}

fn snapshot(h: &dyn Harness, s: &SnapshotName) {
    h.zfs()
        .snapshot(std::slice::from_ref(s), &[])
        .unwrap_or_else(|e| panic!("snapshot {s}: {e}"));
}

fn expect_kind<T: std::fmt::Debug>(r: Result<T>, kind: ErrorKind, what: &str) -> ZfsError {
    match r {
        Ok(v) => panic!("{what}: expected {kind:?}, got Ok({v:?})"),
        Err(e) => {
            assert_eq!(e.kind(), kind, "{what}: expected {kind:?}, got {e}");
            assert!(!e.to_string().is_empty());
            e
        }
    }
}

/// Every name below the pool (datasets and snapshots), sorted.
fn names(h: &dyn Harness) -> Vec<String> {
    let mut v: Vec<String> = h
        .zfs()
        .list(&ListRequest {
            roots: vec![h.pool().root()],
            recursive: true,
            types: vec![DatasetType::Filesystem, DatasetType::Snapshot],
            ..Default::default()
        })
        .expect("list")
        .into_iter()
        .map(|e| e.name.to_string())
        .collect();
    v.sort();
    v
}

fn get1(h: &dyn Harness, target: &ObjectName, prop: &str) -> Option<String> {
    let pn = p(prop);
    h.zfs()
        .get(target, std::slice::from_ref(&pn))
        .unwrap_or_else(|e| panic!("get {prop} of {target}: {e}"))
        .remove(&pn)
        .and_then(|v| v.value)
}

fn num(h: &dyn Harness, target: &ObjectName, prop: &str) -> u64 {
    get1(h, target, prop)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{prop} of {target} is not a number"))
}

fn send_to_vec(h: &dyn Harness, req: &SendRequest) -> Vec<u8> {
    let mut buf = Vec::new();
    let n = h.zfs().send(req, &mut buf).expect("send");
    assert_eq!(n as usize, buf.len(), "send reports the bytes it wrote");
    buf
}

// ---------------------------------------------------------------------------------------
// datasets and properties

fn create_list_and_depth(h: &dyn Harness) {
    let a = mk(h, "a");
    let ab = mk(h, "a/b/c");
    snapshot(h, &a.snapshot("s1").unwrap());
    let all = names(h);
    for want in [
        a.to_string(),
        ds(h, "a/b").to_string(),
        ab.to_string(),
        format!("{a}@s1"),
    ] {
        assert!(all.contains(&want), "{want} missing from {all:?}");
    }
    let one = h
        .zfs()
        .list(&ListRequest {
            roots: vec![a.clone()],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(one.len(), 1, "no -r lists the root only: {one:?}");
    assert_eq!(one[0].kind, DatasetType::Filesystem);
    let depth1 = h
        .zfs()
        .list(&ListRequest {
            roots: vec![a.clone()],
            depth: Some(1),
            types: vec![DatasetType::Filesystem, DatasetType::Snapshot],
            props: vec![p("createtxg"), p("cairn:none")],
            ..Default::default()
        })
        .unwrap();
    let mut got: Vec<_> = depth1.iter().map(|e| e.name.to_string()).collect();
    got.sort();
    assert_eq!(
        got,
        [a.to_string(), ds(h, "a/b").to_string(), format!("{a}@s1")]
    );
    for e in &depth1 {
        assert!(e.num("createtxg").is_some(), "{e:?}");
        assert_eq!(
            e.prop("cairn:none"),
            None,
            "unset user property reads as None"
        );
    }
    let snaps: Vec<_> = depth1
        .iter()
        .filter(|e| e.kind == DatasetType::Snapshot)
        .collect();
    assert_eq!(snaps.len(), 1);
    let missing = h.zfs().list(&ListRequest {
        roots: vec![ds(h, "nope")],
        ..Default::default()
    });
    expect_kind(missing, ErrorKind::NotFound, "list of a missing dataset");
}

fn create_missing_parent_fails(h: &dyn Harness) {
    let before = names(h);
    let r = h.zfs().create(&ds(h, "x/y"), &CreateOptions::default());
    expect_kind(r, ErrorKind::NotFound, "create without parent");
    assert_eq!(names(h), before, "nothing was created");
}

fn create_existing_fails(h: &dyn Harness) {
    let a = mk(h, "a");
    let r = h.zfs().create(&a, &CreateOptions::default());
    expect_kind(r, ErrorKind::AlreadyExists, "create twice");
}

fn user_property_set_get_inherit(h: &dyn Harness) {
    let a = mk(h, "a");
    let b = mk(h, "a/b");
    let key = p("cairn:state");
    h.zfs()
        .set(&(&a).into(), &[(key.clone(), "staged".into())])
        .unwrap();
    let got = h
        .zfs()
        .get(&(&b).into(), std::slice::from_ref(&key))
        .unwrap();
    assert_eq!(got[&key].value.as_deref(), Some("staged"));
    assert_eq!(got[&key].source, PropSource::Inherited(a.clone()));
    h.zfs()
        .set(
            &(&b).into(),
            &[
                (key.clone(), "trial".into()),
                (p("cairn:version"), "2.0".into()),
            ],
        )
        .unwrap();
    let got = h
        .zfs()
        .get(&(&b).into(), &[key.clone(), p("cairn:version")])
        .unwrap();
    assert_eq!(got[&key].value.as_deref(), Some("trial"));
    assert_eq!(got[&key].source, PropSource::Local);
    assert_eq!(got[&p("cairn:version")].value.as_deref(), Some("2.0"));
    h.zfs().inherit(&(&b).into(), &key).unwrap();
    assert_eq!(
        get1(h, &(&b).into(), "cairn:state").as_deref(),
        Some("staged")
    );
    h.zfs().inherit(&(&a).into(), &key).unwrap();
    let got = h
        .zfs()
        .get(&(&b).into(), std::slice::from_ref(&key))
        .unwrap();
    assert_eq!(got[&key].value, None, "unset user property");
    assert_eq!(got[&key].source, PropSource::None);
    let r = h.zfs().set(&ds(h, "missing").into(), &[(key, "x".into())]);
    expect_kind(r, ErrorKind::NotFound, "set on a missing dataset");
}

fn native_properties(h: &dyn Harness) {
    let root = mk(h, "ROOT");
    let be = mk(h, "ROOT/v1");
    h.zfs()
        .set(&(&be).into(), &[(p("canmount"), "noauto".into())])
        .unwrap();
    assert_eq!(
        get1(h, &(&be).into(), "canmount").as_deref(),
        Some("noauto")
    );
    let mp = get1(h, &(&be).into(), "mountpoint").unwrap();
    let root_mp = get1(h, &(&root).into(), "mountpoint").unwrap();
    assert_eq!(
        mp,
        format!("{root_mp}/v1"),
        "mountpoint inherits with the path appended"
    );
    let got = h
        .zfs()
        .get(&(&be).into(), &[p("mountpoint"), p("guid"), p("type")])
        .unwrap();
    assert_eq!(
        got[&p("mountpoint")].source,
        PropSource::Inherited(h.pool().root())
    );
    assert_eq!(got[&p("type")].value.as_deref(), Some("filesystem"));
    assert!(
        got[&p("guid")]
            .value
            .as_deref()
            .unwrap()
            .parse::<u64>()
            .is_ok()
    );
    h.zfs()
        .set(&(&root).into(), &[(p("readonly"), "on".into())])
        .unwrap();
    let ro = h.zfs().get(&(&be).into(), &[p("readonly")]).unwrap();
    assert_eq!(ro[&p("readonly")].value.as_deref(), Some("on"));
    assert_eq!(
        ro[&p("readonly")].source,
        PropSource::Inherited(root.clone())
    );
}

fn property_values_checked_before_write(h: &dyn Harness) {
    let a = mk(h, "a");
    for bad in ["two\tfields", "two\nlines", "-"] {
        let r = h.zfs().set(
            &(&a).into(),
            &[(p("cairn:ok"), "fine".into()), (p("cairn:x"), bad.into())],
        );
        expect_kind(r, ErrorKind::InvalidName, "bad value");
    }
    assert_eq!(
        get1(h, &(&a).into(), "cairn:ok"),
        None,
        "nothing of a refused set was written"
    );
    let twice = [
        (p("cairn:ok"), "a".to_string()),
        (p("cairn:ok"), "b".to_string()),
    ];
    let r = h.zfs().create(
        &ds(h, "b"),
        &CreateOptions {
            parents: false,
            props: twice.to_vec(),
        },
    );
    expect_kind(r, ErrorKind::InvalidName, "one property twice");
    assert!(!names(h).contains(&ds(h, "b").to_string()));
    assert!(PropName::user("Cairn:x").is_err());
    assert!(PropName::user("nocolon").is_err());
}

// ---------------------------------------------------------------------------------------
// snapshots, clones, promote, rollback

fn snapshot_many_atomically_with_props(h: &dyn Harness) {
    let root = mk(h, "ROOT/v1");
    let conf = mk(h, "CONFIG/v1");
    let data = mk(h, "DATA/app");
    let snaps: Vec<_> = [&root, &conf, &data]
        .iter()
        .map(|d| d.snapshot("pre-v2").unwrap())
        .collect();
    h.zfs()
        .snapshot(&snaps, &[(p("cairn:reason"), "upgrade".into())])
        .unwrap();
    let txgs: Vec<u64> = snaps
        .iter()
        .map(|s| num(h, &s.into(), "createtxg"))
        .collect();
    assert!(
        txgs.windows(2).all(|w| w[0] == w[1]),
        "one transaction: {txgs:?}"
    );
    for s in &snaps {
        assert_eq!(
            get1(h, &s.into(), "cairn:reason").as_deref(),
            Some("upgrade")
        );
        assert_eq!(get1(h, &s.into(), "type").as_deref(), Some("snapshot"));
    }
}

fn snapshot_all_or_nothing(h: &dyn Harness) {
    let a = mk(h, "a");
    let b = mk(h, "b");
    snapshot(h, &a.snapshot("s").unwrap());
    let before = names(h);
    let r = h
        .zfs()
        .snapshot(&[b.snapshot("s").unwrap(), a.snapshot("s").unwrap()], &[]);
    expect_kind(
        r,
        ErrorKind::AlreadyExists,
        "snapshot set with an existing member",
    );
    assert_eq!(names(h), before, "no member of a failed set was created");
    let r = h.zfs().snapshot(
        &[
            b.snapshot("t").unwrap(),
            ds(h, "missing").snapshot("t").unwrap(),
        ],
        &[],
    );
    expect_kind(
        r,
        ErrorKind::NotFound,
        "snapshot set with a missing dataset",
    );
    assert_eq!(names(h), before);
}

fn snapshot_inherits_user_properties(h: &dyn Harness) {
    let a = mk(h, "a");
    h.zfs()
        .set(&(&a).into(), &[(p("cairn:managed"), "yes".into())])
        .unwrap();
    let s = a.snapshot("s").unwrap();
    snapshot(h, &s);
    let got = h.zfs().get(&(&s).into(), &[p("cairn:managed")]).unwrap();
    assert_eq!(got[&p("cairn:managed")].value.as_deref(), Some("yes"));
    assert_eq!(
        got[&p("cairn:managed")].source,
        PropSource::Inherited(a.clone())
    );
    h.zfs()
        .set(&(&s).into(), &[(p("cairn:managed"), "snap".into())])
        .unwrap();
    assert_eq!(
        get1(h, &(&s).into(), "cairn:managed").as_deref(),
        Some("snap")
    );
    assert_eq!(
        get1(h, &(&a).into(), "cairn:managed").as_deref(),
        Some("yes")
    );
}

fn clone_records_origin_and_contents(h: &dyn Harness) {
    let a = mk(h, "ROOT/v1");
    h.write_file(&a, "etc/version", b"1\n");
    let s = a.snapshot("factory").unwrap();
    snapshot(h, &s);
    h.write_file(&a, "etc/version", b"1-modified\n");
    let c = ds(h, "ROOT/v2");
    h.zfs()
        .clone_snapshot(&s, &c, &[(p("cairn:version"), "2".into())])
        .unwrap();
    assert_eq!(get1(h, &(&c).into(), "origin").as_deref(), Some(s.as_str()));
    assert_eq!(get1(h, &(&c).into(), "cairn:version").as_deref(), Some("2"));
    assert_eq!(
        h.read_file(&(&c).into(), "etc/version").as_deref(),
        Some(&b"1\n"[..])
    );
    assert_eq!(get1(h, &(&s).into(), "clones").as_deref(), Some(c.as_str()));
    let r = h.zfs().clone_snapshot(&s, &c, &[]);
    expect_kind(r, ErrorKind::AlreadyExists, "clone onto an existing name");
}

fn clone_of_missing_snapshot_fails(h: &dyn Harness) {
    mk(h, "a");
    let before = names(h);
    let r = h.zfs().clone_snapshot(&snap(h, "a@nope"), &ds(h, "b"), &[]);
    expect_kind(r, ErrorKind::NotFound, "clone of a missing snapshot");
    assert_eq!(names(h), before);
}

fn promote_swaps_origin(h: &dyn Harness) {
    let v1 = mk(h, "ROOT/v1");
    h.write_file(&v1, "f", b"one");
    let s1 = v1.snapshot("s1").unwrap();
    snapshot(h, &s1);
    let s2 = v1.snapshot("s2").unwrap();
    snapshot(h, &s2);
    let v2 = ds(h, "ROOT/v2");
    h.zfs().clone_snapshot(&s1, &v2, &[]).unwrap();
    h.zfs().promote(&v2).unwrap();
    let moved = v2.snapshot("s1").unwrap();
    assert_eq!(
        get1(h, &(&v2).into(), "origin"),
        None,
        "promoted clone has no origin"
    );
    assert_eq!(
        get1(h, &(&v1).into(), "origin").as_deref(),
        Some(moved.as_str())
    );
    let all = names(h);
    assert!(all.contains(&moved.to_string()), "{all:?}");
    assert!(!all.contains(&s1.to_string()), "s1 moved: {all:?}");
    assert!(
        all.contains(&s2.to_string()),
        "newer snapshots stay: {all:?}"
    );
    assert_eq!(
        h.read_file(&(&moved).into(), "f").as_deref(),
        Some(&b"one"[..])
    );
    // Now v1 is the clone and can be destroyed while v2 lives on.
    h.zfs()
        .destroy(
            &(&v1).into(),
            DestroyOptions {
                recursive: true,
                dry_run: false,
            },
        )
        .unwrap();
    assert_eq!(
        h.read_file(&(&v2).into(), "f").as_deref(),
        Some(&b"one"[..])
    );
}

fn promote_non_clone_fails(h: &dyn Harness) {
    let a = mk(h, "a");
    expect_kind(
        h.zfs().promote(&a),
        ErrorKind::NotAClone,
        "promote a non-clone",
    );
    expect_kind(
        h.zfs().promote(&ds(h, "missing")),
        ErrorKind::NotFound,
        "promote a missing dataset",
    );
}

fn rollback_restores_contents(h: &dyn Harness) {
    let a = mk(h, "a");
    h.write_file(&a, "keep", b"v1");
    let s = a.snapshot("s").unwrap();
    snapshot(h, &s);
    h.write_file(&a, "keep", b"v2");
    h.write_file(&a, "new", b"x");
    h.zfs().rollback(&s, false).unwrap();
    assert_eq!(
        h.read_file(&(&a).into(), "keep").as_deref(),
        Some(&b"v1"[..])
    );
    assert_eq!(h.read_file(&(&a).into(), "new"), None);
    expect_kind(
        h.zfs().rollback(&a.snapshot("nope").unwrap(), false),
        ErrorKind::NotFound,
        "rollback to a missing snapshot",
    );
}

fn rollback_past_newer_snapshots_refused(h: &dyn Harness) {
    let a = mk(h, "a");
    h.write_file(&a, "f", b"1");
    let s1 = a.snapshot("s1").unwrap();
    snapshot(h, &s1);
    h.write_file(&a, "f", b"2");
    let s2 = a.snapshot("s2").unwrap();
    snapshot(h, &s2);
    h.write_file(&a, "f", b"3");
    let before = names(h);
    expect_kind(
        h.zfs().rollback(&s1, false),
        ErrorKind::NewerSnapshots,
        "rollback past s2",
    );
    assert_eq!(names(h), before);
    assert_eq!(
        h.read_file(&(&a).into(), "f").as_deref(),
        Some(&b"3"[..]),
        "contents untouched"
    );
    // A clone of the newer snapshot blocks even a forced rollback.
    let c = ds(h, "c");
    h.zfs().clone_snapshot(&s2, &c, &[]).unwrap();
    expect_kind(
        h.zfs().rollback(&s1, true),
        ErrorKind::HasDependentClones,
        "rollback -r past a cloned snapshot",
    );
    assert_eq!(h.read_file(&(&a).into(), "f").as_deref(), Some(&b"3"[..]));
    h.zfs()
        .destroy(&(&c).into(), DestroyOptions::default())
        .unwrap();
    h.zfs().rollback(&s1, true).unwrap();
    assert!(
        !names(h).contains(&s2.to_string()),
        "rollback -r destroyed s2"
    );
    assert_eq!(h.read_file(&(&a).into(), "f").as_deref(), Some(&b"1"[..]));
}

// ---------------------------------------------------------------------------------------
// rename and destroy

fn rename_dataset_moves_snapshots_and_origins(h: &dyn Harness) {
    let a = mk(h, "ROOT/a");
    mk(h, "ROOT/a/child");
    let s = a.snapshot("s").unwrap();
    snapshot(h, &s);
    let c = ds(h, "ROOT/c");
    h.zfs().clone_snapshot(&s, &c, &[]).unwrap();
    let b = ds(h, "ROOT/b");
    h.zfs().rename(&(&a).into(), &(&b).into()).unwrap();
    let all = names(h);
    assert!(all.contains(&format!("{b}@s")), "{all:?}");
    assert!(all.contains(&format!("{b}/child")), "{all:?}");
    assert!(
        !all.iter().any(|n| n.starts_with(&format!("{a}"))),
        "{all:?}"
    );
    assert_eq!(get1(h, &(&c).into(), "origin"), Some(format!("{b}@s")));
    let r = h
        .zfs()
        .rename(&ds(h, "missing").into(), &ds(h, "other").into());
    expect_kind(r, ErrorKind::NotFound, "rename a missing dataset");
}

fn rename_to_existing_fails(h: &dyn Harness) {
    let a = mk(h, "a");
    let b = mk(h, "b");
    let before = names(h);
    expect_kind(
        h.zfs().rename(&(&a).into(), &(&b).into()),
        ErrorKind::AlreadyExists,
        "rename onto an existing dataset",
    );
    assert_eq!(names(h), before);
}

fn rename_snapshot(h: &dyn Harness) {
    let a = mk(h, "a");
    let s = a.snapshot("old").unwrap();
    snapshot(h, &s);
    let t = a.snapshot("new").unwrap();
    h.zfs().rename(&(&s).into(), &(&t).into()).unwrap();
    let all = names(h);
    assert!(
        all.contains(&t.to_string()) && !all.contains(&s.to_string()),
        "{all:?}"
    );
    let u = a.snapshot("u").unwrap();
    snapshot(h, &u);
    expect_kind(
        h.zfs().rename(&(&u).into(), &(&t).into()),
        ErrorKind::AlreadyExists,
        "rename onto an existing snapshot",
    );
}

fn destroy_dry_run_estimates_and_changes_nothing(h: &dyn Harness) {
    let a = mk(h, "a");
    h.write_file(&a, "big", &noise(MIB, 1));
    let s = a.snapshot("s").unwrap();
    snapshot(h, &s);
    h.remove_file(&a, "big");
    h.write_file(&a, "other", &noise(MIB / 2, 2));
    let before = names(h);
    let report = h
        .zfs()
        .destroy(
            &(&s).into(),
            DestroyOptions {
                recursive: false,
                dry_run: true,
            },
        )
        .unwrap();
    assert_eq!(report.destroyed, [s.to_string()]);
    assert!(
        report.reclaim >= MIB as u64,
        "snapshot alone holds the 1 MiB file: {}",
        report.reclaim
    );
    assert!(
        report.reclaim < 2 * MIB as u64,
        "estimate too high: {}",
        report.reclaim
    );
    assert_eq!(names(h), before, "a dry run destroys nothing");
    let whole = h
        .zfs()
        .destroy(
            &(&a).into(),
            DestroyOptions {
                recursive: true,
                dry_run: true,
            },
        )
        .unwrap();
    let mut got = whole.destroyed.clone();
    got.sort();
    assert_eq!(got, [a.to_string(), s.to_string()]);
    assert!(whole.reclaim >= (MIB + MIB / 2) as u64, "{}", whole.reclaim);
    let done = h
        .zfs()
        .destroy(&(&s).into(), DestroyOptions::default())
        .unwrap();
    assert_eq!(
        done.reclaim, report.reclaim,
        "the real run reports the dry run's estimate"
    );
    assert!(!names(h).contains(&s.to_string()));
}

fn destroy_with_children_refused(h: &dyn Harness) {
    let a = mk(h, "a");
    mk(h, "a/b");
    let before = names(h);
    expect_kind(
        h.zfs().destroy(&(&a).into(), DestroyOptions::default()),
        ErrorKind::HasChildren,
        "destroy with a child",
    );
    let c = mk(h, "c");
    snapshot(h, &c.snapshot("s").unwrap());
    let before_c = names(h);
    expect_kind(
        h.zfs().destroy(&(&c).into(), DestroyOptions::default()),
        ErrorKind::HasChildren,
        "destroy with a snapshot",
    );
    assert_eq!(names(h), before_c);
    assert!(before.iter().all(|n| names(h).contains(n)));
}

fn destroy_snapshot_with_clone_refused(h: &dyn Harness) {
    let a = mk(h, "a");
    let s = a.snapshot("s").unwrap();
    snapshot(h, &s);
    h.zfs().clone_snapshot(&s, &ds(h, "c"), &[]).unwrap();
    let before = names(h);
    expect_kind(
        h.zfs().destroy(&(&s).into(), DestroyOptions::default()),
        ErrorKind::HasDependentClones,
        "destroy a cloned snapshot",
    );
    expect_kind(
        h.zfs().destroy(
            &(&a).into(),
            DestroyOptions {
                recursive: true,
                dry_run: false,
            },
        ),
        ErrorKind::HasDependentClones,
        "destroy -r of the clone's origin",
    );
    assert_eq!(names(h), before);
}

fn destroy_missing_fails(h: &dyn Harness) {
    let r = h
        .zfs()
        .destroy(&ds(h, "missing").into(), DestroyOptions::default());
    expect_kind(r, ErrorKind::NotFound, "destroy a missing dataset");
    mk(h, "a");
    let r = h
        .zfs()
        .destroy(&snap(h, "a@missing").into(), DestroyOptions::default());
    expect_kind(r, ErrorKind::NotFound, "destroy a missing snapshot");
}

fn destroy_recursive(h: &dyn Harness) {
    let a = mk(h, "a");
    let b = mk(h, "a/b");
    h.zfs()
        .snapshot(&[a.snapshot("s").unwrap(), b.snapshot("s").unwrap()], &[])
        .unwrap();
    // `destroy -r a@s` takes the same snapshot of every descendant.
    let r = h
        .zfs()
        .destroy(
            &snap(h, "a@s").into(),
            DestroyOptions {
                recursive: true,
                dry_run: false,
            },
        )
        .unwrap();
    let mut got = r.destroyed;
    got.sort();
    assert_eq!(got, [format!("{b}@s"), format!("{a}@s")]);
    h.zfs()
        .destroy(
            &(&a).into(),
            DestroyOptions {
                recursive: true,
                dry_run: false,
            },
        )
        .unwrap();
    assert_eq!(names(h), [h.pool().to_string()]);
}

fn holds_block_destroy(h: &dyn Harness) {
    let a = mk(h, "a");
    let b = mk(h, "b");
    let (sa, sb) = (
        a.snapshot("factory").unwrap(),
        b.snapshot("factory").unwrap(),
    );
    h.zfs().snapshot(&[sa.clone(), sb.clone()], &[]).unwrap();
    h.zfs()
        .hold(&[sa.clone(), sb.clone()], "cairn:factory")
        .unwrap();
    let holds = h.zfs().holds(&sa).unwrap();
    assert_eq!(holds.len(), 1);
    assert_eq!(holds[0].tag, "cairn:factory");
    assert_eq!(num(h, &(&sa).into(), "userrefs"), 1);
    expect_kind(
        h.zfs().destroy(&(&sa).into(), DestroyOptions::default()),
        ErrorKind::Busy,
        "destroy a held snapshot",
    );
    expect_kind(
        h.zfs().destroy(
            &(&a).into(),
            DestroyOptions {
                recursive: true,
                dry_run: false,
            },
        ),
        ErrorKind::Busy,
        "destroy -r over a held snapshot",
    );
    assert!(names(h).contains(&sa.to_string()), "held snapshot survives");
    h.zfs()
        .release(std::slice::from_ref(&sa), "cairn:factory")
        .unwrap();
    assert!(h.zfs().holds(&sa).unwrap().is_empty());
    h.zfs()
        .destroy(&(&sa).into(), DestroyOptions::default())
        .unwrap();
    assert_eq!(h.zfs().holds(&sb).unwrap().len(), 1, "other hold untouched");
    expect_kind(
        h.zfs().holds(&sa),
        ErrorKind::NotFound,
        "holds of a destroyed snapshot",
    );
}

fn hold_twice_and_release_unknown_fail(h: &dyn Harness) {
    let a = mk(h, "a");
    let s = a.snapshot("s").unwrap();
    snapshot(h, &s);
    h.zfs().hold(std::slice::from_ref(&s), "t1").unwrap();
    expect_kind(
        h.zfs().hold(std::slice::from_ref(&s), "t1"),
        ErrorKind::HoldExists,
        "hold twice",
    );
    expect_kind(
        h.zfs().release(std::slice::from_ref(&s), "t2"),
        ErrorKind::NoSuchHold,
        "release unknown tag",
    );
    expect_kind(
        h.zfs().hold(&[a.snapshot("nope").unwrap()], "t1"),
        ErrorKind::NotFound,
        "hold a missing snapshot",
    );
    assert_eq!(h.zfs().holds(&s).unwrap().len(), 1);
    expect_kind(
        h.zfs().hold(std::slice::from_ref(&s), "bad\ttag"),
        ErrorKind::InvalidName,
        "tag with a tab",
    );
}

// ---------------------------------------------------------------------------------------
// send and receive

fn send_receive_full_round_trip(h: &dyn Harness) {
    let a = mk(h, "src");
    let payload = noise(300_000, 3);
    h.write_file(&a, "bin/app", &payload);
    h.write_file(&a, "etc/conf", b"k=v\n");
    let s = a.snapshot("rel-1").unwrap();
    snapshot(h, &s);
    let stream = send_to_vec(h, &SendRequest::full(s.clone()));
    let target = ds(h, "dst");
    let got = h
        .zfs()
        .receive(&ReceiveRequest::new(target.clone()), &mut stream.as_slice())
        .unwrap();
    assert_eq!(got, target.snapshot("rel-1").unwrap());
    assert_eq!(
        h.read_file(&(&target).into(), "bin/app"),
        Some(payload.clone())
    );
    assert_eq!(
        h.read_file(&(&got).into(), "etc/conf").as_deref(),
        Some(&b"k=v\n"[..])
    );
    assert_eq!(
        get1(h, &(&got).into(), "guid"),
        get1(h, &(&s).into(), "guid"),
        "same snapshot guid"
    );
    // Receiving the same full stream again onto the existing dataset is refused.
    let before = names(h);
    let r = h
        .zfs()
        .receive(&ReceiveRequest::new(target.clone()), &mut stream.as_slice());
    expect_kind(
        r,
        ErrorKind::AlreadyExists,
        "full stream onto an existing dataset",
    );
    assert_eq!(names(h), before);
    // A truncated stream is refused and leaves nothing behind.
    let cut = &stream[..stream.len() / 2];
    let r = h
        .zfs()
        .receive(&ReceiveRequest::new(ds(h, "cut")), &mut &cut[..]);
    assert!(r.is_err(), "truncated stream accepted");
    assert_eq!(names(h), before, "a failed receive leaves nothing");
}

fn send_estimate_close_to_stream_size(h: &dyn Harness) {
    let a = mk(h, "a");
    h.write_file(&a, "f", &noise(MIB, 4));
    let s1 = a.snapshot("s1").unwrap();
    snapshot(h, &s1);
    h.write_file(&a, "g", &noise(MIB / 4, 5));
    let s2 = a.snapshot("s2").unwrap();
    snapshot(h, &s2);
    for req in [
        SendRequest::full(s2.clone()),
        SendRequest::incremental(s1.clone(), s2.clone()),
    ] {
        let est = h.zfs().send_estimate(&req).unwrap();
        let actual = send_to_vec(h, &req).len() as u64;
        let slack = (actual / 10).max(128 * 1024);
        assert!(
            est.abs_diff(actual) <= slack,
            "estimate {est} vs actual {actual} ({req:?})"
        );
    }
    let inc = send_to_vec(h, &SendRequest::incremental(s1.clone(), s2.clone())).len();
    let full = send_to_vec(h, &SendRequest::full(s2.clone())).len();
    assert!(
        inc < full / 2,
        "incremental {inc} should be much smaller than full {full}"
    );
}

fn receive_incremental_as_clone(h: &dyn Harness) {
    // The vendor side: release 1, then release 2 as an incremental stream.
    let vendor = mk(h, "vendor");
    h.write_file(&vendor, "app", b"release 1");
    h.write_file(&vendor, "lib", &noise(200_000, 6));
    let r1 = vendor.snapshot("r1").unwrap();
    snapshot(h, &r1);
    h.write_file(&vendor, "app", b"release 2");
    let r2 = vendor.snapshot("r2").unwrap();
    snapshot(h, &r2);
    let full1 = send_to_vec(h, &SendRequest::full(r1.clone()));
    let inc12 = send_to_vec(h, &SendRequest::incremental(r1.clone(), r2.clone()));
    // The appliance: release 1 installed, release 2 received as a clone of its snapshot.
    mk(h, "ROOT");
    let v1 = ds(h, "ROOT/v1");
    let got1 = h
        .zfs()
        .receive(&ReceiveRequest::new(v1.clone()), &mut full1.as_slice())
        .unwrap();
    let v2 = ds(h, "ROOT/v2");
    let mut req = ReceiveRequest::new(v2.clone());
    req.origin = Some(got1.clone());
    let got2 = h.zfs().receive(&req, &mut inc12.as_slice()).unwrap();
    assert_eq!(got2, v2.snapshot("r2").unwrap());
    assert_eq!(
        get1(h, &(&v2).into(), "origin").as_deref(),
        Some(got1.as_str())
    );
    assert_eq!(
        h.read_file(&(&v2).into(), "app").as_deref(),
        Some(&b"release 2"[..])
    );
    assert_eq!(
        h.read_file(&(&v1).into(), "app").as_deref(),
        Some(&b"release 1"[..]),
        "base untouched"
    );
    assert_eq!(h.read_file(&(&v2).into(), "lib"), Some(noise(200_000, 6)));
}

fn receive_incremental_onto_wrong_base_fails(h: &dyn Harness) {
    let v = mk(h, "vendor");
    h.write_file(&v, "f", b"1");
    let r1 = v.snapshot("r1").unwrap();
    snapshot(h, &r1);
    h.write_file(&v, "f", b"2");
    let r2 = v.snapshot("r2").unwrap();
    snapshot(h, &r2);
    let inc = send_to_vec(h, &SendRequest::incremental(r1, r2));
    let other = mk(h, "other");
    h.write_file(&other, "f", b"unrelated");
    let os = other.snapshot("r1").unwrap();
    snapshot(h, &os);
    let before = names(h);
    let mut req = ReceiveRequest::new(ds(h, "v2"));
    req.origin = Some(os);
    let r = h.zfs().receive(&req, &mut inc.as_slice());
    expect_kind(
        r,
        ErrorKind::StreamMismatch,
        "incremental onto an unrelated origin",
    );
    assert_eq!(names(h), before, "nothing received");
    let mut req = ReceiveRequest::new(ds(h, "v3"));
    req.origin = Some(snap(h, "other@missing"));
    let r = h.zfs().receive(&req, &mut inc.as_slice());
    expect_kind(r, ErrorKind::NotFound, "incremental onto a missing origin");
    assert_eq!(names(h), before);
}

fn receive_incremental_in_place(h: &dyn Harness) {
    let v = mk(h, "vendor");
    h.write_file(&v, "f", b"1");
    let r1 = v.snapshot("r1").unwrap();
    snapshot(h, &r1);
    h.write_file(&v, "f", b"2");
    let r2 = v.snapshot("r2").unwrap();
    snapshot(h, &r2);
    let full = send_to_vec(h, &SendRequest::full(r1.clone()));
    let inc = send_to_vec(h, &SendRequest::incremental(r1, r2));
    let copy = ds(h, "copy");
    h.zfs()
        .receive(&ReceiveRequest::new(copy.clone()), &mut full.as_slice())
        .unwrap();
    h.zfs()
        .receive(&ReceiveRequest::new(copy.clone()), &mut inc.as_slice())
        .unwrap();
    assert_eq!(
        h.read_file(&(&copy).into(), "f").as_deref(),
        Some(&b"2"[..])
    );
    // The same incremental again: OpenZFS ignores a snapshot it already has, and succeeds.
    let before = names(h);
    let again = h
        .zfs()
        .receive(&ReceiveRequest::new(copy.clone()), &mut inc.as_slice())
        .unwrap();
    assert_eq!(again, copy.snapshot("r2").unwrap());
    assert_eq!(names(h), before, "nothing changed");
    // An incremental whose source the destination does not have is refused.
    let v3 = v.snapshot("r3").unwrap();
    h.write_file(&v, "f", b"3");
    snapshot(h, &v3);
    let skip = send_to_vec(h, &SendRequest::incremental(v.snapshot("r2").unwrap(), v3));
    let fresh = ds(h, "fresh");
    h.zfs()
        .receive(&ReceiveRequest::new(fresh.clone()), &mut full.as_slice())
        .unwrap();
    let before = names(h);
    let r = h
        .zfs()
        .receive(&ReceiveRequest::new(fresh.clone()), &mut skip.as_slice());
    expect_kind(
        r,
        ErrorKind::StreamMismatch,
        "incremental from a snapshot the target lacks",
    );
    assert_eq!(names(h), before);
}

fn send_raw_round_trip(h: &dyn Harness) {
    let a = mk(h, "a");
    h.write_file(&a, "f", b"raw bytes");
    let s = a.snapshot("s").unwrap();
    snapshot(h, &s);
    let mut req = SendRequest::full(s);
    req.raw = true;
    let stream = send_to_vec(h, &req);
    let b = ds(h, "b");
    h.zfs()
        .receive(&ReceiveRequest::new(b.clone()), &mut stream.as_slice())
        .unwrap();
    assert_eq!(
        h.read_file(&(&b).into(), "f").as_deref(),
        Some(&b"raw bytes"[..])
    );
}

// ---------------------------------------------------------------------------------------
// diff, mount, pool

fn diff_between_snapshots_and_head(h: &dyn Harness) {
    let a = mk(h, "a");
    h.write_file(&a, "same", b"s");
    h.write_file(&a, "changed", b"1");
    h.write_file(&a, "gone", b"g");
    let s1 = a.snapshot("s1").unwrap();
    snapshot(h, &s1);
    h.write_file(&a, "changed", b"2");
    h.remove_file(&a, "gone");
    h.write_file(&a, "added", b"n");
    let s2 = a.snapshot("s2").unwrap();
    snapshot(h, &s2);
    let d = h.zfs().diff(&s1, &(&s2).into()).unwrap();
    let files: Vec<_> = d
        .iter()
        .filter(|e| e.file_type == 'F')
        .map(|e| (e.path.as_str(), e.change.clone()))
        .collect();
    assert_eq!(
        files,
        [
            ("/added", Change::Added),
            ("/changed", Change::Modified),
            ("/gone", Change::Removed)
        ],
        "{d:?}"
    );
    assert!(
        d.iter()
            .any(|e| e.path == "/" && e.change == Change::Modified && e.file_type == '/'),
        "root dir modified: {d:?}"
    );
    h.write_file(&a, "later", b"l");
    let d = h.zfs().diff(&s2, &(&a).into()).unwrap();
    assert!(
        d.iter()
            .any(|e| e.path == "/later" && e.change == Change::Added),
        "{d:?}"
    );
    expect_kind(
        h.zfs().diff(&a.snapshot("nope").unwrap(), &(&a).into()),
        ErrorKind::NotFound,
        "diff from a missing snapshot",
    );
}

fn mount_read_only_at_path(h: &dyn Harness) {
    let a = mk(h, "ROOT/v1");
    h.write_file(&a, "etc/version", b"1");
    let s = a.snapshot("s").unwrap();
    snapshot(h, &s);
    h.write_file(&a, "etc/version", b"2");
    let at = h.scratch().join("inspect-snap");
    let got = h
        .zfs()
        .mount(
            &(&s).into(),
            &MountOptions {
                at: Some(at.clone()),
                read_only: true,
            },
        )
        .unwrap();
    assert_eq!(got, at);
    assert_eq!(
        h.read_mounted(&at, "etc/version").as_deref(),
        Some(&b"1"[..])
    );
    h.zfs().unmount(&at).unwrap();
    let b = ds(h, "ROOT/v2");
    h.zfs()
        .clone_snapshot(&s, &b, &[(p("canmount"), "noauto".into())])
        .unwrap();
    let at2 = h.scratch().join("inspect-ds");
    h.zfs()
        .mount(
            &(&b).into(),
            &MountOptions {
                at: Some(at2.clone()),
                read_only: true,
            },
        )
        .unwrap();
    assert_eq!(
        h.read_mounted(&at2, "etc/version").as_deref(),
        Some(&b"1"[..])
    );
    h.zfs().unmount(&at2).unwrap();
    expect_kind(
        h.zfs().unmount(&at2),
        ErrorKind::NotMounted,
        "unmount twice",
    );
    let r = h.zfs().mount(
        &snap(h, "ROOT/v1@nope").into(),
        &MountOptions {
            at: Some(at),
            read_only: true,
        },
    );
    expect_kind(r, ErrorKind::NotFound, "mount a missing snapshot");
}

fn pool_figures_and_bootfs(h: &dyn Harness) {
    let info = h.zfs().pool(h.pool()).unwrap();
    assert_eq!(&info.name, h.pool());
    assert!(info.size > 0 && info.free > 0 && info.free <= info.size);
    assert_eq!(info.bootfs, None);
    assert_eq!(info.health, "ONLINE");
    let be = mk(h, "ROOT/v1");
    h.zfs().set_bootfs(h.pool(), Some(&be)).unwrap();
    assert_eq!(h.zfs().pool(h.pool()).unwrap().bootfs, Some(be.clone()));
    h.zfs().set_bootfs(h.pool(), None).unwrap();
    assert_eq!(h.zfs().pool(h.pool()).unwrap().bootfs, None);
    let before = h.zfs().pool(h.pool()).unwrap().allocated;
    h.write_file(&be, "f", &noise(2 * MIB, 7));
    h.zfs().sync(h.pool()).unwrap();
    let after = h.zfs().pool(h.pool()).unwrap().allocated;
    // Real ZFS accounts allocation per metaslab and lags a little: about 2 MiB.
    assert!(
        after >= before + 3 * MIB as u64 / 2,
        "allocated {before} -> {after}"
    );
    let missing = PoolName::new("nosuchpool").unwrap();
    expect_kind(
        h.zfs().pool(&missing),
        ErrorKind::NotFound,
        "a missing pool",
    );
}

fn invalid_names_refused_by_validator_and_backend(h: &dyn Harness) {
    let long = format!("{}/{}", h.pool(), "x".repeat(256 - h.pool().as_str().len()));
    let bad_char = format!("{}/a*b", h.pool());
    let empty = format!("{}//a", h.pool());
    for name in [&long, &bad_char, &empty] {
        let err = DatasetName::new(name.as_str()).expect_err(name);
        assert!(!err.to_string().is_empty());
        let before = names(h);
        let r = h.zfs().create(
            &DatasetName::new_unchecked(name.as_str()),
            &CreateOptions::default(),
        );
        expect_kind(r, ErrorKind::InvalidName, name);
        assert_eq!(names(h), before);
    }
    let a = mk(h, "a");
    let long_snap = format!("{a}@{}", "s".repeat(256 - a.as_str().len()));
    assert!(SnapshotName::new(long_snap.as_str()).is_err());
    let r = h
        .zfs()
        .snapshot(&[SnapshotName::new_unchecked(long_snap)], &[]);
    expect_kind(r, ErrorKind::InvalidName, "too-long snapshot name");
}

fn space_accounting(h: &dyn Harness) {
    let a = mk(h, "a");
    h.write_file(&a, "f", &noise(MIB, 8));
    let s = a.snapshot("s").unwrap();
    snapshot(h, &s);
    assert!(
        num(h, &(&s).into(), "used") < 64 * 1024,
        "a fresh snapshot shares everything"
    );
    h.write_file(&a, "f", &noise(MIB, 9));
    h.zfs().sync(h.pool()).unwrap();
    let used = num(h, &(&s).into(), "used");
    assert!(
        (MIB as u64..2 * MIB as u64).contains(&used),
        "snapshot now owns the old 1 MiB: {used}"
    );
    let refer = num(h, &(&a).into(), "referenced");
    assert!(refer >= MIB as u64, "{refer}");
    let ubs = num(h, &(&a).into(), "usedbysnapshots");
    assert!(ubs >= MIB as u64, "usedbysnapshots {ubs}");
    let total = num(h, &(&a).into(), "used");
    assert!(total >= 2 * MIB as u64, "used {total}");
    let written = num(h, &(&a).into(), "written");
    assert!(written >= MIB as u64, "written since s: {written}");
}

// ---------------------------------------------------------------------------------------
// harnesses

/// A model pool of 1 GiB per case.
#[derive(Debug)]
pub struct ModelHarness {
    model: std::sync::Arc<ZfsModel>,
    pool: PoolName,
}

impl ModelHarness {
    pub fn new() -> Self {
        let model = std::sync::Arc::new(ZfsModel::new());
        let pool = PoolName::new("tank").expect("valid");
        model.create_pool(&pool, 1 << 30).expect("fresh model");
        // As the real harness does with `zpool create -m`.
        model
            .set(
                &pool.root().into(),
                &[(PropName::native("mountpoint"), "/model/tank".into())],
            )
            .expect("fresh model");
        Self { model, pool }
    }

    pub fn model(&self) -> &std::sync::Arc<ZfsModel> {
        &self.model
    }
}

impl Default for ModelHarness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness for ModelHarness {
    fn zfs(&self) -> &dyn Zfs {
        self.model.as_ref()
    }
    fn pool(&self) -> &PoolName {
        &self.pool
    }
    fn write_file(&self, ds: &DatasetName, path: &str, data: &[u8]) {
        self.model.write_file(ds, path, data).expect("model write");
    }
    fn remove_file(&self, ds: &DatasetName, path: &str) {
        self.model.remove_file(ds, path).expect("model remove");
    }
    fn set_executable(&self, _ds: &DatasetName, _path: &str) {
        // The model keeps no modes; SimHost runs any hook present in the root.
    }
    fn read_file(&self, target: &ObjectName, path: &str) -> Option<Vec<u8>> {
        self.model.read_file(target, path).expect("model read")
    }
    fn read_mounted(&self, mount: &Path, path: &str) -> Option<Vec<u8>> {
        self.model.read_mounted(mount, path).expect("model mount")
    }
    fn scratch(&self) -> PathBuf {
        PathBuf::from("/model-scratch")
    }
}

/// A real pool on a sparse file vdev under `dir`, destroyed when dropped.
#[derive(Debug)]
pub struct RealHarness {
    zfs: ZfsCli,
    pool: PoolName,
    dir: PathBuf,
}

impl RealHarness {
    /// Creates pool `name` on a 512 MiB file in `dir`, mounted under `dir/mnt`.
    pub fn new(dir: &Path, name: &str) -> Result<Self> {
        let zfs = ZfsCli::new()?;
        let pool = PoolName::new(name)?;
        let dir = dir.join(name);
        let io = |what: &str| {
            let what = what.to_owned();
            move |source| ZfsError::Io { what, source }
        };
        std::fs::create_dir_all(&dir).map_err(io("creating the harness dir"))?;
        let vdev = dir.join("vdev");
        let f = std::fs::File::create(&vdev).map_err(io("creating the vdev file"))?;
        f.set_len(512 << 20).map_err(io("sizing the vdev file"))?;
        let mnt = dir.join("mnt");
        zfs.create_pool(
            &pool,
            &[vdev],
            Some(&mnt),
            &[(PropName::native("compression"), "off".into())],
        )?;
        Ok(Self { zfs, pool, dir })
    }

    fn mountpoint(&self, ds: &DatasetName) -> PathBuf {
        let mp = PropName::native("mountpoint");
        let v = self
            .zfs
            .get(&ds.into(), std::slice::from_ref(&mp))
            .expect("mountpoint");
        PathBuf::from(v[&mp].value.clone().expect("mountpoint set"))
    }
}

impl Drop for RealHarness {
    fn drop(&mut self) {
        let _ = self.zfs.destroy_pool(&self.pool);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Harness for RealHarness {
    fn zfs(&self) -> &dyn Zfs {
        &self.zfs
    }
    fn pool(&self) -> &PoolName {
        &self.pool
    }
    fn write_file(&self, ds: &DatasetName, path: &str, data: &[u8]) {
        let full = self.mountpoint(ds).join(path.trim_start_matches('/'));
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent).expect("mkdir in dataset");
        }
        std::fs::write(&full, data).unwrap_or_else(|e| panic!("write {}: {e}", full.display()));
        std::fs::File::open(&full)
            .and_then(|f| f.sync_all())
            .expect("fsync");
        self.zfs.sync(&self.pool).expect("zpool sync");
    }
    fn remove_file(&self, ds: &DatasetName, path: &str) {
        let full = self.mountpoint(ds).join(path.trim_start_matches('/'));
        std::fs::remove_file(&full).unwrap_or_else(|e| panic!("remove {}: {e}", full.display()));
        self.zfs.sync(&self.pool).expect("zpool sync");
    }
    fn set_executable(&self, ds: &DatasetName, path: &str) {
        use std::os::unix::fs::PermissionsExt;
        let full = self.mountpoint(ds).join(path.trim_start_matches('/'));
        std::fs::set_permissions(&full, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", full.display()));
    }
    fn read_file(&self, target: &ObjectName, path: &str) -> Option<Vec<u8>> {
        let rel = path.trim_start_matches('/');
        let full = match target {
            ObjectName::Dataset(d) => self.mountpoint(d).join(rel),
            ObjectName::Snapshot(s) => self
                .mountpoint(&s.dataset())
                .join(".zfs/snapshot")
                .join(s.snap())
                .join(rel),
        };
        std::fs::read(full).ok()
    }
    fn read_mounted(&self, mount: &Path, path: &str) -> Option<Vec<u8>> {
        std::fs::read(mount.join(path.trim_start_matches('/'))).ok()
    }
    fn scratch(&self) -> PathBuf {
        self.dir.join("scratch")
    }
}
