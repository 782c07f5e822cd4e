//! The parsers on output captured from real OpenZFS 2.3 (`cargo xtask capture-fixtures`
//! writes `fixtures/`; the pool it builds is described in `xtask/scripts/capture-fixtures.sh`).

use cairn_zfs::parse::{
    parse_destroy_dry_run, parse_diff, parse_get, parse_holds, parse_list, parse_pool,
    parse_send_estimate,
};
use cairn_zfs::{Change, DatasetType, PoolName, PropName, PropSource};

fn fixture(name: &str) -> String {
    let path = format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn props(names: &[&str]) -> Vec<PropName> {
    names.iter().map(|n| PropName::new(*n).unwrap()).collect()
}

#[test]
fn version_is_2_3() {
    let v = fixture("zfs-version.txt");
    assert!(v.starts_with("zfs-2.3"), "{v}");
}

#[test]
fn list_all() {
    let p = props(&["used", "referenced", "origin", "createtxg", "cairn:version"]);
    let entries = parse_list(&fixture("list-all.txt"), &p).unwrap();
    let names: Vec<_> = entries.iter().map(|e| e.name.to_string()).collect();
    for want in [
        "fx",
        "fx/ROOT/v1",
        "fx/ROOT/v1@factory",
        "fx/ROOT/v1@s2",
        "fx/ROOT/v2",
        "fx/DATA/app@factory",
    ] {
        assert!(names.contains(&want.to_string()), "{want} not in {names:?}");
    }
    let v2 = entries
        .iter()
        .find(|e| e.name.as_str() == "fx/ROOT/v2")
        .unwrap();
    assert_eq!(v2.kind, DatasetType::Filesystem);
    assert_eq!(v2.prop("origin"), Some("fx/ROOT/v1@factory"));
    assert_eq!(v2.prop("cairn:version"), Some("2.0"));
    let v1 = entries
        .iter()
        .find(|e| e.name.as_str() == "fx/ROOT/v1")
        .unwrap();
    assert_eq!(v1.prop("origin"), None, "'-' is unset");
    assert!(
        v1.num("used").unwrap() >= 1 << 20,
        "1 MiB of random data was written"
    );
    let s = entries
        .iter()
        .find(|e| e.name.as_str() == "fx/ROOT/v1@factory")
        .unwrap();
    assert_eq!(s.kind, DatasetType::Snapshot);
    assert_eq!(
        s.prop("cairn:version"),
        Some("1.0"),
        "inherited from the dataset"
    );
    let t1 = entries
        .iter()
        .find(|e| e.name.as_str() == "fx/CONFIG/v1@factory")
        .unwrap()
        .num("createtxg");
    assert_eq!(s.num("createtxg"), t1, "one zfs snapshot call, one txg");
}

#[test]
fn list_depth_one_includes_children_not_grandchildren() {
    let p = props(&["cairn:version"]);
    let entries = parse_list(&fixture("list-depth1.txt"), &p).unwrap();
    let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
    assert!(
        names.contains(&"fx/ROOT/v1") && names.contains(&"fx/ROOT/v2"),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.contains('@')),
        "snapshots of children are depth 2: {names:?}"
    );
}

#[test]
fn get_sources() {
    let got = parse_get(&fixture("get-user.txt")).unwrap();
    let v = |k: &str| got[&PropName::new(k).unwrap()].clone();
    assert_eq!(v("cairn:version").value.as_deref(), Some("2.0"));
    assert_eq!(v("cairn:version").source, PropSource::Local);
    assert_eq!(v("cairn:unset").value, None);
    assert_eq!(v("cairn:unset").source, PropSource::None);
    assert_eq!(v("canmount").value.as_deref(), Some("noauto"));
    assert_eq!(v("origin").value.as_deref(), Some("fx/ROOT/v1@factory"));
    assert!(v("guid").value.unwrap().parse::<u64>().is_ok());
    let inh = parse_get(&fixture("get-inherited.txt")).unwrap();
    let mp = &inh[&PropName::new("mountpoint").unwrap()];
    assert_eq!(
        (mp.value.as_deref(), &mp.source),
        (None, &PropSource::None),
        "snapshots have no mountpoint"
    );
    let r = &inh[&PropName::new("cairn:reason").unwrap()];
    assert_eq!(r.value.as_deref(), Some("factory"));
    assert_eq!(r.source, PropSource::Local);
}

#[test]
fn holds() {
    let h = parse_holds(&fixture("holds.txt")).unwrap();
    assert_eq!(h.len(), 2);
    assert!(h.iter().all(|(_, h)| h.tag == "cairn:factory"));
    assert!(
        h.iter().all(|(_, h)| h.created > 1_700_000_000),
        "epoch seconds with -p: {h:?}"
    );
}

#[test]
fn send_estimates() {
    let full = parse_send_estimate(&fixture("send-full-estimate.txt")).unwrap();
    assert!(full >= 1 << 20, "{full}");
    let inc = parse_send_estimate(&fixture("send-incremental-estimate.txt")).unwrap();
    assert!(inc < full, "{inc} < {full}");
}

#[test]
fn destroy_dry_runs() {
    let (d, reclaim) = parse_destroy_dry_run(&fixture("destroy-dry-run.txt")).unwrap();
    assert_eq!(d, ["fx/ROOT/v1@s2"]);
    assert_eq!(
        reclaim,
        Some(0),
        "s2 shares everything with the live dataset"
    );
    let (d, reclaim) = parse_destroy_dry_run(&fixture("destroy-dry-run-recursive.txt")).unwrap();
    assert_eq!(reclaim, None, "no estimate for filesystems");
    assert!(
        d.contains(&"fx/DATA/app".to_string()) && d.contains(&"fx/DATA/app@factory".to_string()),
        "{d:?}"
    );
}

#[test]
fn diff() {
    let d = parse_diff(&fixture("diff.txt"), &["/scratch/be"]).unwrap();
    let find = |p: &str| {
        d.iter()
            .find(|e| e.path == p)
            .unwrap_or_else(|| panic!("{p} in {d:?}"))
    };
    assert_eq!(find("/new").change, Change::Added);
    assert_eq!(find("/old").change, Change::Removed);
    assert_eq!(find("/same").change, Change::Modified);
    assert_eq!(
        find("/with space").change,
        Change::Added,
        "escaped space decoded"
    );
    assert_eq!(find("/").file_type, '/');
}

#[test]
fn pool() {
    let p = parse_pool(&PoolName::new("fx").unwrap(), &fixture("zpool-get.txt")).unwrap();
    assert_eq!(p.bootfs.unwrap().as_str(), "fx/ROOT/v1");
    assert_eq!(p.health, "ONLINE");
    assert!(p.size > p.free && p.allocated > 0 && p.guid > 0);
}

#[test]
fn refusal_messages_are_the_ones_the_cli_backend_maps() {
    // The CLI backend matches these fragments (cli.rs, `refusal`); if OpenZFS rewords
    // one, this test names it.
    let cases = [
        ("err-destroy-held.txt", "being held"),
        ("err-destroy-clone-origin.txt", "dependent clones"),
        ("err-destroy-children.txt", "has children"),
        ("err-missing.txt", "does not exist"),
        ("err-exists.txt", "already exists"),
        ("err-rollback-newer.txt", "more recent snapshots"),
        ("err-promote-nonclone.txt", "not a cloned filesystem"),
        ("err-hold-twice.txt", "tag already exists"),
        ("err-release-unknown.txt", "no such tag"),
        ("err-too-long.txt", "name is too long"),
        ("err-bad-char.txt", "invalid character"),
    ];
    for (file, fragment) in cases {
        let text = fixture(file).to_lowercase();
        assert!(
            text.contains(fragment),
            "{file}: {text:?} lacks {fragment:?}"
        );
    }
}
