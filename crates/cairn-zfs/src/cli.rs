//! The real [`Zfs`]: runs `/usr/sbin/zfs` and `/usr/sbin/zpool` with `-H -p -o` output and
//! maps their refusals onto [`ZfsError`] variants.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::cmd::{Cmd, Finished, Runner};
use crate::error::{Result, ZfsError};
use crate::name::{DatasetName, ObjectName, PoolName, PropName, SnapshotName, check_hold_tag};
use crate::parse::{self, ParseError};
use crate::{
    CreateOptions, DestroyOptions, DestroyReport, DiffEntry, Hold, ListEntry, ListRequest,
    MountOptions, PoolInfo, PropValue, ReceiveRequest, SendRequest, Zfs, check_props,
};

/// The real backend.
#[derive(Debug, Clone)]
pub struct ZfsCli {
    runner: Runner,
    zfs: PathBuf,
    zpool: PathBuf,
    mount: PathBuf,
    umount: PathBuf,
}

impl ZfsCli {
    /// Finds the tools; fails with a clear message when ZFS is not installed.
    pub fn new() -> Result<Self> {
        let find = |p: &str| {
            Runner::which(p).ok_or_else(|| ZfsError::Spawn {
                cmd: p.to_owned(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{p} not found in /usr/sbin, /sbin, /usr/bin, /bin; is zfsutils-linux installed?"),
                ),
            })
        };
        Ok(Self {
            runner: Runner::new(),
            zfs: find("zfs")?,
            zpool: find("zpool")?,
            mount: find("mount")?,
            umount: find("umount")?,
        })
    }

    fn zfs(&self) -> Cmd {
        Cmd::new(&self.zfs)
    }

    fn zpool(&self) -> Cmd {
        Cmd::new(&self.zpool)
    }

    /// Runs a command about `name`; a failure becomes the matching named error.
    fn run(&self, cmd: &Cmd, name: &str) -> Result<String> {
        let fin = self.runner.run_unchecked(cmd)?;
        if fin.success() {
            Ok(fin.stdout)
        } else {
            Err(refusal(cmd, name, fin))
        }
    }

    fn parse<T>(cmd: &Cmd, r: std::result::Result<T, ParseError>) -> Result<T> {
        r.map_err(|e| ZfsError::Parse {
            cmd: cmd.display(),
            detail: e.0,
        })
    }

    /// `zpool create` for provisioning and tests: `vdevs` as given, `-O` properties for
    /// the root dataset, `-m` mountpoint.
    pub fn create_pool(
        &self,
        pool: &PoolName,
        vdevs: &[PathBuf],
        mountpoint: Option<&Path>,
        root_props: &[(PropName, String)],
    ) -> Result<()> {
        let mut cmd = self.zpool().args(["create", "-f"]);
        if let Some(m) = mountpoint {
            cmd = cmd.arg("-m").arg(m);
        }
        for (k, v) in root_props {
            cmd = cmd.arg("-O").arg(format!("{k}={v}"));
        }
        cmd = cmd.arg(pool.as_str()).args(vdevs);
        self.run(&cmd, pool.as_str()).map(drop)
    }

    /// `zpool destroy -f`, for tests and provisioning.
    pub fn destroy_pool(&self, pool: &PoolName) -> Result<()> {
        let cmd = self.zpool().args(["destroy", "-f", pool.as_str()]);
        self.run(&cmd, pool.as_str()).map(drop)
    }

    /// The `zfs version` line of the userland tools.
    pub fn version(&self) -> Result<String> {
        let cmd = self.zfs().arg("version");
        let out = self.run(&cmd, "zfs")?;
        Ok(out.lines().next().unwrap_or_default().to_owned())
    }

    fn mountpoint_of(&self, ds: &DatasetName) -> Result<String> {
        let mp = PropName::native("mountpoint");
        let got = self.get(&ds.into(), std::slice::from_ref(&mp))?;
        Ok(got
            .get(&mp)
            .and_then(|v| v.value.clone())
            .unwrap_or_default())
    }

    fn send_args(req: &SendRequest) -> Vec<String> {
        let mut a = vec!["send".to_owned()];
        if req.raw {
            a.push("-w".into());
        } else {
            a.extend(["-L".into(), "-c".into()]);
        }
        if req.properties {
            a.push("-p".into());
        }
        if let Some(from) = &req.from {
            a.push("-i".into());
            a.push(from.to_string());
        }
        a
    }
}

/// Maps `zfs`'s stderr onto a named error. The messages are those of OpenZFS 2.1–2.3
/// (`libzfs_util.c`, `zfs_main.c`), matched on stable fragments.
fn refusal(cmd: &Cmd, name: &str, fin: Finished) -> ZfsError {
    let e = fin.stderr.to_lowercase();
    let name = name.to_owned();
    let has = |s: &str| e.contains(s);
    if has("does not exist")
        || has("no such pool")
        || has("could not find any snapshots")
        || has("unable to open the dataset")
        || has("no such file or directory")
    {
        ZfsError::NotFound { name }
    } else if has("name is too long")
        || has("invalid character")
        || has("empty component")
        || has("leading slash")
        || has("trailing slash")
        || has("multiple '@'")
        || has("reserved")
        || has("must begin with a letter")
    {
        ZfsError::RefusedName {
            name,
            detail: crate::cmd::stderr_tail(fin.stderr.as_bytes()),
        }
    } else if has("tag already exists") {
        ZfsError::HoldExists {
            name,
            tag: String::new(),
        }
    } else if has("no such tag") {
        ZfsError::NoSuchHold {
            name,
            tag: String::new(),
        }
    } else if has("already exists") || (has("destination") && has("must specify -f")) {
        ZfsError::AlreadyExists { name }
    } else if has("dependent clones") || has("has dependent") || has("clones of previous snapshots")
    {
        ZfsError::HasDependentClones { name }
    } else if has("more recent snapshots") {
        ZfsError::NewerSnapshots { name }
    } else if has("has children") {
        ZfsError::HasChildren { name }
    } else if has("not a cloned filesystem") {
        ZfsError::NotAClone { name }
    } else if has("out of space") {
        ZfsError::NoSpace { name }
    } else if has("dataset is busy")
        || has("pool or dataset is busy")
        || has("target is busy")
        || has("being held")
    {
        ZfsError::Busy { name }
    } else if has("does not match incremental source")
        || has("most recent snapshot")
        || has("destination has been modified")
    {
        ZfsError::StreamMismatch {
            name,
            detail: crate::cmd::stderr_tail(fin.stderr.as_bytes()),
        }
    } else if has("not currently mounted") || has("not mounted") || has("unmounted") {
        ZfsError::NotMounted { name }
    } else {
        fin.into_error(cmd)
    }
}

impl Zfs for ZfsCli {
    fn list(&self, req: &ListRequest) -> Result<Vec<ListEntry>> {
        let mut cols = vec!["name".to_owned(), "type".to_owned()];
        cols.extend(req.props.iter().map(|p| p.to_string()));
        let types = if req.types.is_empty() {
            "filesystem,volume".to_owned()
        } else {
            req.types
                .iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut cmd = self
            .zfs()
            .args(["list", "-H", "-p", "-o", &cols.join(","), "-t", &types]);
        if let Some(d) = req.depth {
            cmd = cmd.args(["-d", &d.to_string()]);
        } else if req.recursive {
            cmd = cmd.arg("-r");
        }
        cmd = cmd.args(req.roots.iter().map(|r| r.as_str()));
        let names: Vec<_> = req.roots.iter().map(|r| r.as_str()).collect();
        let out = self.run(&cmd, &names.join(" "))?;
        Self::parse(&cmd, parse::parse_list(&out, &req.props))
    }

    fn get(
        &self,
        target: &ObjectName,
        props: &[PropName],
    ) -> Result<BTreeMap<PropName, PropValue>> {
        let list: Vec<_> = props.iter().map(|p| p.as_str()).collect();
        let cmd = self.zfs().args([
            "get",
            "-H",
            "-p",
            "-o",
            "property,value,source",
            &list.join(","),
            target.as_str(),
        ]);
        let out = self.run(&cmd, target.as_str())?;
        Self::parse(&cmd, parse::parse_get(&out))
    }

    fn set(&self, target: &ObjectName, props: &[(PropName, String)]) -> Result<()> {
        check_props(props)?;
        let cmd = self
            .zfs()
            .arg("set")
            .args(props.iter().map(|(k, v)| format!("{k}={v}")))
            .arg(target.as_str());
        self.run(&cmd, target.as_str()).map(drop)
    }

    fn inherit(&self, target: &ObjectName, prop: &PropName) -> Result<()> {
        let cmd = self.zfs().args(["inherit", prop.as_str(), target.as_str()]);
        self.run(&cmd, target.as_str()).map(drop)
    }

    fn create(&self, dataset: &DatasetName, opts: &CreateOptions) -> Result<()> {
        check_props(&opts.props)?;
        let mut cmd = self.zfs().arg("create");
        if opts.parents {
            cmd = cmd.arg("-p");
        }
        for (k, v) in &opts.props {
            cmd = cmd.arg("-o").arg(format!("{k}={v}"));
        }
        cmd = cmd.arg(dataset.as_str());
        self.run(&cmd, dataset.as_str()).map(drop)
    }

    fn snapshot(&self, snapshots: &[SnapshotName], props: &[(PropName, String)]) -> Result<()> {
        check_props(props)?;
        let mut cmd = self.zfs().arg("snapshot");
        for (k, v) in props {
            cmd = cmd.arg("-o").arg(format!("{k}={v}"));
        }
        cmd = cmd.args(snapshots.iter().map(|s| s.as_str()));
        let names: Vec<_> = snapshots.iter().map(|s| s.as_str()).collect();
        self.run(&cmd, &names.join(" ")).map(drop)
    }

    fn clone_snapshot(
        &self,
        origin: &SnapshotName,
        target: &DatasetName,
        props: &[(PropName, String)],
    ) -> Result<()> {
        check_props(props)?;
        let mut cmd = self.zfs().arg("clone");
        for (k, v) in props {
            cmd = cmd.arg("-o").arg(format!("{k}={v}"));
        }
        cmd = cmd.args([origin.as_str(), target.as_str()]);
        let fin = self.runner.run_unchecked(&cmd)?;
        if fin.success() {
            return Ok(());
        }
        // Name the object ZFS complained about: the origin when it is missing.
        let subject =
            if fin.stderr.contains(origin.as_str()) && !fin.stderr.contains("already exists") {
                origin.as_str()
            } else {
                target.as_str()
            };
        Err(refusal(&cmd, subject, fin))
    }

    fn promote(&self, dataset: &DatasetName) -> Result<()> {
        let cmd = self.zfs().args(["promote", dataset.as_str()]);
        self.run(&cmd, dataset.as_str()).map(drop)
    }

    fn rollback(&self, snapshot: &SnapshotName, destroy_newer: bool) -> Result<()> {
        let mut cmd = self.zfs().arg("rollback");
        if destroy_newer {
            cmd = cmd.arg("-r");
        }
        cmd = cmd.arg(snapshot.as_str());
        self.run(&cmd, snapshot.as_str()).map(drop)
    }

    fn rename(&self, from: &ObjectName, to: &ObjectName) -> Result<()> {
        let cmd = self.zfs().args(["rename", from.as_str(), to.as_str()]);
        let fin = self.runner.run_unchecked(&cmd)?;
        if fin.success() {
            return Ok(());
        }
        let subject = if fin.stderr.contains("already exists") {
            to
        } else {
            from
        };
        Err(refusal(&cmd, subject.as_str(), fin))
    }

    fn destroy(&self, target: &ObjectName, opts: DestroyOptions) -> Result<DestroyReport> {
        // The dry run always goes first: it checks what would go and the estimate.
        let mut dry = self.zfs().args(["destroy", "-n", "-v", "-p"]);
        if opts.recursive {
            dry = dry.arg("-r");
        }
        dry = dry.arg(target.as_str());
        let out = self.run(&dry, target.as_str())?;
        let (destroyed, reclaim) = Self::parse(&dry, parse::parse_destroy_dry_run(&out))?;
        // ZFS estimates reclaimed space only for snapshots; destroying a whole dataset
        // (recursively) frees what its `used` says.
        let reclaim = match (reclaim, target) {
            (Some(r), _) => r,
            (None, ObjectName::Dataset(d)) => {
                let used = PropName::native("used");
                self.get(&d.into(), std::slice::from_ref(&used))?
                    .get(&used)
                    .and_then(|v| v.value.as_deref()?.parse().ok())
                    .unwrap_or(0)
            }
            (None, ObjectName::Snapshot(_)) => 0,
        };
        if !opts.dry_run {
            let mut cmd = self.zfs().arg("destroy");
            if opts.recursive {
                cmd = cmd.arg("-r");
            }
            cmd = cmd.arg(target.as_str());
            self.run(&cmd, target.as_str())?;
        }
        Ok(DestroyReport { destroyed, reclaim })
    }

    fn hold(&self, snapshots: &[SnapshotName], tag: &str) -> Result<()> {
        check_hold_tag(tag)?;
        let cmd = self
            .zfs()
            .args(["hold", tag])
            .args(snapshots.iter().map(|s| s.as_str()));
        let names: Vec<_> = snapshots.iter().map(|s| s.as_str()).collect();
        self.run(&cmd, &names.join(" "))
            .map(drop)
            .map_err(|e| match e {
                ZfsError::HoldExists { name, .. } => ZfsError::HoldExists {
                    name,
                    tag: tag.to_owned(),
                },
                other => other,
            })
    }

    fn release(&self, snapshots: &[SnapshotName], tag: &str) -> Result<()> {
        check_hold_tag(tag)?;
        let cmd = self
            .zfs()
            .args(["release", tag])
            .args(snapshots.iter().map(|s| s.as_str()));
        let names: Vec<_> = snapshots.iter().map(|s| s.as_str()).collect();
        self.run(&cmd, &names.join(" "))
            .map(drop)
            .map_err(|e| match e {
                ZfsError::NoSuchHold { name, .. } => ZfsError::NoSuchHold {
                    name,
                    tag: tag.to_owned(),
                },
                other => other,
            })
    }

    fn holds(&self, snapshot: &SnapshotName) -> Result<Vec<Hold>> {
        let cmd = self.zfs().args(["holds", "-H", "-p", snapshot.as_str()]);
        let out = self.run(&cmd, snapshot.as_str())?;
        let holds = Self::parse(&cmd, parse::parse_holds(&out))?;
        Ok(holds.into_iter().map(|(_, h)| h).collect())
    }

    fn send_estimate(&self, req: &SendRequest) -> Result<u64> {
        let cmd = self
            .zfs()
            .args(Self::send_args(req))
            .args(["-n", "-v", "-P"])
            .arg(req.snapshot.as_str());
        let out = self.run(&cmd, req.snapshot.as_str())?;
        Self::parse(&cmd, parse::parse_send_estimate(&out))
    }

    fn send(&self, req: &SendRequest, out: &mut dyn Write) -> Result<u64> {
        let cmd = self
            .zfs()
            .args(Self::send_args(req))
            .arg(req.snapshot.as_str());
        let (n, fin) = self.runner.run_to_writer(&cmd, out)?;
        if !fin.success() {
            return Err(refusal(&cmd, req.snapshot.as_str(), fin));
        }
        Ok(n)
    }

    fn receive(&self, req: &ReceiveRequest, input: &mut dyn Read) -> Result<SnapshotName> {
        check_props(&req.props)?;
        let mut cmd = self.zfs().args(["receive", "-v"]);
        if req.force {
            cmd = cmd.arg("-F");
        }
        if req.no_mount {
            cmd = cmd.arg("-u");
        }
        if let Some(o) = &req.origin {
            cmd = cmd.arg("-o").arg(format!("origin={o}"));
        }
        for (k, v) in &req.props {
            cmd = cmd.arg("-o").arg(format!("{k}={v}"));
        }
        cmd = cmd.arg(req.target.as_str());
        let fin = self.runner.run_from_reader(&cmd, input)?;
        if !fin.success() {
            return Err(refusal(&cmd, req.target.as_str(), fin));
        }
        // `receive -v` says "received ... stream in N seconds" after
        // "receiving full stream of p/a@s into p/b@s".
        let text = format!("{}\n{}", fin.stdout, fin.stderr);
        text.lines()
            .find_map(|l| l.split(" into ").nth(1))
            .and_then(|s| SnapshotName::new(s.trim()).ok())
            .ok_or_else(|| ZfsError::Parse {
                cmd: cmd.display(),
                detail: format!("no 'into <snapshot>' in {text:?}"),
            })
    }

    fn diff(&self, from: &SnapshotName, to: &ObjectName) -> Result<Vec<DiffEntry>> {
        // `zfs diff` prints absolute paths under wherever the datasets are mounted (their
        // mountpoint, or an alternate path): strip whichever applies.
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut roots = Vec::new();
        for ds in [from.dataset(), to.dataset()] {
            roots.extend(parse::mount_paths(&mounts, ds.as_str()));
            roots.push(self.mountpoint_of(&ds)?);
        }
        let cmd = self
            .zfs()
            .args(["diff", "-H", "-F", from.as_str(), to.as_str()]);
        let out = self.run(&cmd, from.as_str())?;
        Self::parse(&cmd, parse::parse_diff(&out, &roots))
    }

    fn mount(&self, target: &ObjectName, opts: &MountOptions) -> Result<PathBuf> {
        match (&opts.at, target) {
            (None, ObjectName::Dataset(ds)) => {
                let mut cmd = self.zfs().arg("mount");
                if opts.read_only {
                    cmd = cmd.args(["-o", "ro"]);
                }
                cmd = cmd.arg(ds.as_str());
                self.run(&cmd, ds.as_str())?;
                Ok(PathBuf::from(self.mountpoint_of(ds)?))
            }
            (None, ObjectName::Snapshot(s)) => Err(ZfsError::NotMounted {
                name: format!("{s} (a snapshot needs a path to be mounted at)"),
            }),
            (Some(at), target) => {
                std::fs::create_dir_all(at).map_err(|source| ZfsError::Io {
                    what: format!("creating mount point {}", at.display()),
                    source,
                })?;
                // `zfsutil` lets mount.zfs mount a dataset whose mountpoint is not legacy,
                // as zfs-initramfs does; snapshots refuse it and are always read-only.
                let mut o = vec![];
                if matches!(target, ObjectName::Dataset(_)) {
                    o.push("zfsutil");
                }
                if opts.read_only {
                    o.push("ro");
                }
                let cmd = Cmd::new(&self.mount)
                    .args(["-t", "zfs", "-o", &o.join(",")])
                    .arg(target.as_str())
                    .arg(at);
                self.run(&cmd, target.as_str())?;
                Ok(at.clone())
            }
        }
    }

    fn unmount(&self, path: &Path) -> Result<()> {
        let cmd = Cmd::new(&self.umount).arg(path);
        self.run(&cmd, &path.display().to_string()).map(drop)
    }

    fn pool(&self, pool: &PoolName) -> Result<PoolInfo> {
        let cmd = self.zpool().args([
            "get",
            "-H",
            "-p",
            "-o",
            "property,value",
            "guid,size,allocated,free,health,bootfs",
            pool.as_str(),
        ]);
        let out = self.run(&cmd, pool.as_str())?;
        Self::parse(&cmd, parse::parse_pool(pool, &out))
    }

    fn set_bootfs(&self, pool: &PoolName, dataset: Option<&DatasetName>) -> Result<()> {
        let value = dataset.map(|d| d.as_str()).unwrap_or("");
        let cmd = self
            .zpool()
            .args(["set", &format!("bootfs={value}"), pool.as_str()]);
        self.run(&cmd, pool.as_str()).map(drop)
    }

    fn sync(&self, pool: &PoolName) -> Result<()> {
        let cmd = self.zpool().args(["sync", pool.as_str()]);
        self.run(&cmd, pool.as_str()).map(drop)
    }
}
