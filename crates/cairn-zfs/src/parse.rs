//! Pure parsers for the scripted (`-H -p`) output of `zfs` and `zpool`.
//!
//! Each takes the command's stdout as `&str` and returns typed values or a message saying
//! which line did not make sense. They are tested on output captured from real OpenZFS
//! (`fixtures/`).

use std::collections::BTreeMap;

use crate::name::{DatasetName, ObjectName, PoolName, PropName, SnapshotName};
use crate::{Change, DatasetType, DiffEntry, Hold, ListEntry, PoolInfo, PropSource, PropValue};

/// A parse failure: the line and what was wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

type Result<T> = std::result::Result<T, ParseError>;

fn bad(line: &str, why: &str) -> ParseError {
    ParseError(format!("{why} in line {line:?}"))
}

fn fields(line: &str, n: usize) -> Result<Vec<&str>> {
    let f: Vec<&str> = line.split('\t').collect();
    if f.len() != n {
        return Err(bad(
            line,
            &format!("expected {n} tab-separated fields, found {}", f.len()),
        ));
    }
    Ok(f)
}

fn dash(v: &str) -> Option<String> {
    (v != "-").then(|| v.to_owned())
}

pub fn parse_type(s: &str) -> Option<DatasetType> {
    Some(match s {
        "filesystem" => DatasetType::Filesystem,
        "volume" => DatasetType::Volume,
        "snapshot" => DatasetType::Snapshot,
        "bookmark" => DatasetType::Bookmark,
        _ => return None,
    })
}

/// `zfs list -H -p -o name,type,<props...>`.
pub fn parse_list(out: &str, props: &[PropName]) -> Result<Vec<ListEntry>> {
    let mut entries = Vec::new();
    for line in out.lines().filter(|l| !l.is_empty()) {
        let f = fields(line, 2 + props.len())?;
        let kind = parse_type(f[1]).ok_or_else(|| bad(line, "unknown type"))?;
        if kind == DatasetType::Bookmark {
            continue;
        }
        let name = ObjectName::parse(f[0]).map_err(|e| bad(line, &e.to_string()))?;
        let props = props
            .iter()
            .cloned()
            .zip(f[2..].iter().map(|v| dash(v)))
            .collect();
        entries.push(ListEntry { name, kind, props });
    }
    Ok(entries)
}

/// The `source` column of `zfs get`.
pub fn parse_source(s: &str) -> Result<PropSource> {
    Ok(match s {
        "local" => PropSource::Local,
        "default" => PropSource::Default,
        "received" => PropSource::Received,
        "temporary" => PropSource::Temporary,
        "-" | "none" => PropSource::None,
        other => match other.strip_prefix("inherited from ") {
            Some(ds) => PropSource::Inherited(
                DatasetName::new(ds).map_err(|e| ParseError(format!("source {s:?}: {e}")))?,
            ),
            None => return Err(ParseError(format!("unknown property source {s:?}"))),
        },
    })
}

/// `zfs get -H -p -o property,value,source <props> <one object>`.
pub fn parse_get(out: &str) -> Result<BTreeMap<PropName, PropValue>> {
    let mut map = BTreeMap::new();
    for line in out.lines().filter(|l| !l.is_empty()) {
        let f = fields(line, 3)?;
        let name = PropName::new(f[0]).map_err(|e| bad(line, &e.to_string()))?;
        let source = parse_source(f[2]).map_err(|e| bad(line, &e.0))?;
        // An unset user property, or a computed one that does not apply (`origin` of a
        // non-clone), prints value `-` with source `-`.
        let value = if f[1] == "-" && source == PropSource::None {
            None
        } else {
            Some(f[1].to_owned())
        };
        map.insert(name, PropValue { value, source });
    }
    Ok(map)
}

/// `zfs holds -H -p <snapshots>`: `name\ttag\ttimestamp`. The timestamp is epoch seconds
/// with `-p` (OpenZFS 2.2+); older releases print a date, which we keep as 0.
pub fn parse_holds(out: &str) -> Result<Vec<(SnapshotName, Hold)>> {
    let mut holds = Vec::new();
    for line in out.lines().filter(|l| !l.is_empty()) {
        let f = fields(line, 3)?;
        let snap = SnapshotName::new(f[0]).map_err(|e| bad(line, &e.to_string()))?;
        holds.push((
            snap,
            Hold {
                tag: f[1].to_owned(),
                created: f[2].trim().parse().unwrap_or(0),
            },
        ));
    }
    Ok(holds)
}

/// `zfs send -n -v -P ...`: the `size` line.
pub fn parse_send_estimate(out: &str) -> Result<u64> {
    for line in out.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if f.first() == Some(&"size") && f.len() == 2 {
            return f[1]
                .trim()
                .parse()
                .map_err(|_| bad(line, "size is not a number"));
        }
    }
    Err(ParseError(format!("no size line in {out:?}")))
}

/// `zfs destroy -n -v -p ...`: `destroy\t<name>` lines and, for snapshots only, one
/// `reclaim\t<bytes>` (OpenZFS prints no estimate for filesystems).
pub fn parse_destroy_dry_run(out: &str) -> Result<(Vec<String>, Option<u64>)> {
    let mut destroyed = Vec::new();
    let mut reclaim = None;
    for line in out.lines().filter(|l| !l.is_empty()) {
        match line.split_once('\t') {
            Some(("destroy", name)) => destroyed.push(name.to_owned()),
            Some(("reclaim", n)) => {
                reclaim = Some(
                    n.trim()
                        .parse()
                        .map_err(|_| bad(line, "reclaim is not a number"))?,
                )
            }
            _ => return Err(bad(line, "expected destroy or reclaim")),
        }
    }
    Ok((destroyed, reclaim))
}

/// Undoes `zfs diff`'s escaping: bytes outside `!`..`~` and `\` print as `\` plus octal.
pub fn unescape_diff_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            let digits = b[i + 1..]
                .iter()
                .take(4)
                .take_while(|c| (b'0'..=b'7').contains(c))
                .count();
            if digits > 0 {
                let oct = std::str::from_utf8(&b[i + 1..i + 1 + digits]).unwrap_or("0");
                out.push(u8::from_str_radix(oct, 8).unwrap_or(b'?'));
                i += 1 + digits;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where `/proc/self/mounts` says a dataset is mounted (octal escapes decoded).
pub fn mount_paths(mounts: &str, dataset: &str) -> Vec<String> {
    mounts
        .lines()
        .filter_map(|l| {
            let mut w = l.split(' ');
            let (src, at, fstype) = (w.next()?, w.next()?, w.next()?);
            (fstype == "zfs" && src == dataset).then(|| unescape_diff_path(at))
        })
        .collect()
}

/// `zfs diff -H -F <from> <to>`: `change\ttype\tpath[\tnewpath]`. Paths come back
/// relative to the longest of `roots` (where the datasets are mounted) that prefixes
/// them, starting with `/`.
pub fn parse_diff<S: AsRef<str>>(out: &str, roots: &[S]) -> Result<Vec<DiffEntry>> {
    let mut roots: Vec<&str> = roots
        .iter()
        .map(|r| r.as_ref().trim_end_matches('/'))
        .collect();
    roots.sort_by_key(|r| std::cmp::Reverse(r.len()));
    let rel = |p: &str| -> String {
        let p = unescape_diff_path(p);
        for root in &roots {
            match p.strip_prefix(root) {
                Some("") => return "/".to_owned(),
                Some(r) if r.starts_with('/') => return r.to_owned(),
                _ => {}
            }
        }
        p
    };
    let mut entries = Vec::new();
    for line in out.lines().filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 3 {
            return Err(bad(line, "expected change, type and path"));
        }
        let file_type = f[1].chars().next().ok_or_else(|| bad(line, "empty type"))?;
        let change = match (f[0], f.len()) {
            ("+", 3) => Change::Added,
            ("-", 3) => Change::Removed,
            ("M", 3) => Change::Modified,
            ("R", 4) => Change::Renamed(rel(f[3])),
            _ => return Err(bad(line, "unknown change")),
        };
        entries.push(DiffEntry {
            path: rel(f[2]),
            change,
            file_type,
        });
    }
    entries.sort();
    Ok(entries)
}

/// `zpool get -H -p -o property,value guid,size,allocated,free,health,bootfs <pool>`.
pub fn parse_pool(pool: &PoolName, out: &str) -> Result<PoolInfo> {
    let mut kv = BTreeMap::new();
    for line in out.lines().filter(|l| !l.is_empty()) {
        let f = fields(line, 2)?;
        kv.insert(f[0], f[1]);
    }
    let num = |k: &str| -> Result<u64> {
        kv.get(k)
            .ok_or_else(|| ParseError(format!("no {k} in zpool output")))?
            .parse()
            .map_err(|_| ParseError(format!("{k} is not a number")))
    };
    let bootfs = match kv.get("bootfs").copied() {
        None | Some("-") | Some("") => None,
        Some(b) => Some(DatasetName::new(b).map_err(|e| ParseError(format!("bootfs: {e}")))?),
    };
    Ok(PoolInfo {
        name: pool.clone(),
        guid: num("guid")?,
        size: num("size")?,
        allocated: num("allocated")?,
        free: num("free")?,
        health: kv.get("health").unwrap_or(&"UNKNOWN").to_string(),
        bootfs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(names: &[&str]) -> Vec<PropName> {
        names.iter().map(|n| PropName::new(*n).unwrap()).collect()
    }

    #[test]
    fn list_rejects_wrong_field_count_and_types() {
        let p = props(&["used"]);
        assert!(parse_list("a\tfilesystem\n", &p).is_err());
        assert!(parse_list("a\tfrob\t1\n", &p).is_err());
        assert!(parse_list("a//b\tfilesystem\t1\n", &p).is_err());
        let e = parse_list("p/a\tfilesystem\t-\n", &p).unwrap();
        assert_eq!(e[0].prop("used"), None);
    }

    #[test]
    fn sources() {
        assert_eq!(parse_source("local").unwrap(), PropSource::Local);
        assert_eq!(
            parse_source("inherited from p/a").unwrap(),
            PropSource::Inherited(DatasetName::new("p/a").unwrap())
        );
        assert!(parse_source("frobbed").is_err());
    }

    #[test]
    fn diff_unescapes_and_relativises() {
        let out = "M\t/\t/mnt/p/a\n+\tF\t/mnt/p/a/new\\0040file\nR\tF\t/mnt/p/a/x\t/mnt/p/a/y\n";
        let d = parse_diff(out, &["/mnt", "/mnt/p/a"]).unwrap();
        assert_eq!(
            d,
            vec![
                DiffEntry {
                    path: "/".into(),
                    change: Change::Modified,
                    file_type: '/'
                },
                DiffEntry {
                    path: "/new file".into(),
                    change: Change::Added,
                    file_type: 'F'
                },
                DiffEntry {
                    path: "/x".into(),
                    change: Change::Renamed("/y".into()),
                    file_type: 'F'
                },
            ]
        );
        assert!(parse_diff("Q\tF\t/x\n", &["/"]).is_err());
        let m = "rpool/ROOT/v1 / zfs rw 0 0\nt/a /mnt/with\\040space zfs ro 0 0\n";
        assert_eq!(mount_paths(m, "t/a"), ["/mnt/with space"]);
    }

    #[test]
    fn estimates_and_dry_runs() {
        assert_eq!(
            parse_send_estimate("full\tp/a@s\t4242\nsize\t4242\n").unwrap(),
            4242
        );
        assert!(parse_send_estimate("nothing\n").is_err());
        let (d, r) = parse_destroy_dry_run("destroy\tp/a@s\nreclaim\t1024\n").unwrap();
        assert_eq!(d, ["p/a@s"]);
        assert_eq!(r, Some(1024));
        assert!(parse_destroy_dry_run("would destroy p/a\n").is_err());
    }
}
