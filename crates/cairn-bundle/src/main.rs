//! `cairn`: the vendor-side tool. `cairn bundle build|sign|verify|inspect|manifest`.

use std::io::{BufReader, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use cairn_bundle::{
    Acceptance, BundleReader, Manifest, PayloadEntry, PayloadKind, digest_file, public_key, sign,
    write_bundle,
};
use clap::{Parser, Subcommand};

/// cairn's vendor-side tooling: build, sign, verify and inspect update bundles.
#[derive(Parser, Debug)]
#[command(name = "cairn", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand, Debug)]
enum Top {
    /// Update bundles.
    #[command(subcommand)]
    Bundle(BundleCmd),
    /// Support archives exported by appliances.
    #[command(subcommand)]
    Support(SupportCmd),
}

#[derive(Subcommand, Debug)]
enum SupportCmd {
    /// Verify an archive against the appliance's public key and list it (no ZFS needed).
    Inspect {
        archive: PathBuf,
        /// The appliance's support key (`support.pub`).
        #[arg(long)]
        pubkey: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Verify, then receive the streams into a lab pool dataset, read-only.
    Import {
        archive: PathBuf,
        #[arg(long)]
        pubkey: PathBuf,
        /// Dataset to receive under (e.g. `lab/box-42`); created if missing.
        #[arg(long)]
        into: String,
    },
}

#[derive(Subcommand, Debug)]
enum BundleCmd {
    /// Build a bundle from a manifest template and payloads, optionally signing it.
    Build {
        /// Manifest fields (product, version, hardware, min_from, migrations,
        /// health_checks, allow_devices); `payloads` is filled in.
        #[arg(long)]
        template: PathBuf,
        /// Root as a directory (packed as rootfs.tar.zst) or a .tar.zst file.
        #[arg(long, conflicts_with_all = ["zfs_full", "zfs_incremental"])]
        root: Option<PathBuf>,
        /// Root as a full `zfs send` stream file.
        #[arg(long)]
        zfs_full: Option<PathBuf>,
        /// Root as an incremental `zfs send` stream file from release BASE: BASE=FILE.
        #[arg(long)]
        zfs_incremental: Option<String>,
        /// Root straight from a ZFS snapshot on this build host (`pool/ds@snap`).
        #[arg(long, conflicts_with_all = ["root", "zfs_full", "zfs_incremental"])]
        zfs_snapshot: Option<String>,
        /// With --zfs-snapshot: send incrementally from this earlier snapshot, which is
        /// release BASE: BASE=pool/ds@snap.
        #[arg(long, requires = "zfs_snapshot")]
        zfs_from: Option<String>,
        /// Default configuration directory (packed as config.tar.zst).
        #[arg(long)]
        config: Option<PathBuf>,
        /// minisign secret key to sign with (`minisign -G`); unsigned without it.
        #[arg(long)]
        key: Option<PathBuf>,
        /// File with the secret key's password, for encrypted keys.
        #[arg(long)]
        password_file: Option<PathBuf>,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Sign (or re-sign) a bundle: with a secret key, or by embedding a signature made
    /// by the `minisign` tool over `cairn bundle manifest` output.
    Sign {
        bundle: PathBuf,
        #[arg(long, conflicts_with = "signature")]
        key: Option<PathBuf>,
        #[arg(long)]
        password_file: Option<PathBuf>,
        #[arg(long)]
        signature: Option<PathBuf>,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Print the manifest bytes exactly as signed.
    Manifest { bundle: PathBuf },
    /// Verify signature, compatibility and every payload digest.
    Verify {
        bundle: PathBuf,
        /// Vendor public key files (minisign `.pub`).
        #[arg(long = "pubkey", required = true)]
        pubkeys: Vec<PathBuf>,
        #[arg(long)]
        product: String,
        #[arg(long)]
        hardware: String,
        /// The version the appliance runs, for ordering checks.
        #[arg(long)]
        running: Option<String>,
        #[arg(long)]
        force: bool,
    },
    /// Wrap a bundle as an SWU file (cpio with a `sw-description` naming its version and
    /// hardware), the artifact type DDI update servers such as goosebit accept; the
    /// appliance's fleet client takes the bundle back out as it downloads.
    Swu {
        bundle: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Show what a bundle contains (no key needed).
    Inspect {
        bundle: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

fn open(path: &PathBuf) -> anyhow::Result<BundleReader<BufReader<std::fs::File>>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(BundleReader::open(BufReader::new(f))?)
}

fn password(p: &Option<PathBuf>) -> anyhow::Result<Option<String>> {
    p.as_ref()
        .map(|f| std::fs::read_to_string(f).map(|s| s.trim_end_matches('\n').to_owned()))
        .transpose()
        .context("reading the password file")
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("cairn: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let cmd = match cli.command {
        Top::Bundle(cmd) => cmd,
        Top::Support(cmd) => return support(cmd),
    };
    match cmd {
        BundleCmd::Build {
            template,
            root,
            zfs_full,
            zfs_incremental,
            zfs_snapshot,
            zfs_from,
            config,
            key,
            password_file,
            output,
        } => {
            let text = std::fs::read_to_string(&template)
                .with_context(|| format!("reading {}", template.display()))?;
            let work = std::env::temp_dir().join(format!("cairn-build-{}", std::process::id()));
            std::fs::create_dir_all(&work)?;
            let mut files: Vec<(String, PathBuf, PayloadKind, Option<String>)> = Vec::new();
            let packed = |dir: &PathBuf, name: &str| -> anyhow::Result<PathBuf> {
                let out = work.join(name);
                cairn_bundle::tarsafe::pack_dir(dir, std::fs::File::create(&out)?)?;
                Ok(out)
            };
            // A snapshot on this host is sent into a stream file first.
            let (zfs_full, zfs_incremental) = match zfs_snapshot {
                None => (zfs_full, zfs_incremental),
                Some(snap) => {
                    use cairn_zfs::Zfs;
                    let zfs = cairn_zfs::cli::ZfsCli::new()?;
                    let snap = cairn_zfs::SnapshotName::new(snap)?;
                    let out = work.join("root.zstream");
                    let mut req = cairn_zfs::SendRequest::full(snap);
                    let base = match &zfs_from {
                        Some(spec) => {
                            let (base, from) = spec
                                .split_once('=')
                                .context("--zfs-from takes BASE=pool/ds@snap")?;
                            req.from = Some(cairn_zfs::SnapshotName::new(from)?);
                            Some(base.to_owned())
                        }
                        None => None,
                    };
                    let mut f = std::io::BufWriter::new(std::fs::File::create(&out)?);
                    zfs.send(&req, &mut f)?;
                    f.flush()?;
                    match base {
                        Some(b) => (None, Some(format!("{b}={}", out.display()))),
                        None => (Some(out), None),
                    }
                }
            };
            match (root, zfs_full, zfs_incremental) {
                (Some(r), _, _) if r.is_dir() => files.push((
                    "root".into(),
                    packed(&r, "rootfs.tar.zst")?,
                    PayloadKind::RootfsTarZst,
                    None,
                )),
                (Some(r), _, _) => files.push(("root".into(), r, PayloadKind::RootfsTarZst, None)),
                (None, Some(f), _) => files.push(("root".into(), f, PayloadKind::ZfsFull, None)),
                (None, None, Some(spec)) => {
                    let (base, f) = spec
                        .split_once('=')
                        .context("--zfs-incremental takes BASE=FILE")?;
                    files.push((
                        "root".into(),
                        PathBuf::from(f),
                        PayloadKind::ZfsIncremental,
                        Some(base.to_owned()),
                    ));
                }
                (None, None, None) => {
                    bail!("give the root: --root, --zfs-full or --zfs-incremental")
                }
            }
            if let Some(c) = config {
                files.push((
                    "config".into(),
                    packed(&c, "config.tar.zst")?,
                    PayloadKind::ConfigTarZst,
                    None,
                ));
            }
            // The template is a manifest without payloads.
            let mut m: Manifest = {
                let with_payloads = format!("{}\npayloads: []\n", text.trim_end());
                Manifest::parse(with_payloads.as_bytes())?
            };
            for (name, path, kind, base) in &files {
                let (sha256, size) = digest_file(path)?;
                m.payloads.push(PayloadEntry {
                    name: name.clone(),
                    kind: *kind,
                    size,
                    sha256,
                    base: base.clone(),
                });
            }
            let manifest = m.to_yaml();
            Manifest::parse(manifest.as_bytes())
                .context("the generated manifest does not read back")?;
            let signature = match key {
                Some(k) => Some(sign(
                    manifest.as_bytes(),
                    &std::fs::read_to_string(&k)?,
                    password(&password_file)?,
                )?),
                None => None,
            };
            let mut out = std::io::BufWriter::new(std::fs::File::create(&output)?);
            let payloads: Vec<_> = files
                .iter()
                .map(|(n, p, _, _)| (n.clone(), p.clone()))
                .collect();
            write_bundle(
                &mut out,
                manifest.as_bytes(),
                signature.as_deref(),
                &payloads,
            )?;
            out.flush()?;
            let _ = std::fs::remove_dir_all(&work);
            println!(
                "{} {} -> {}{}",
                m.product,
                m.version,
                output.display(),
                if signature.is_some() {
                    " (signed)"
                } else {
                    " (unsigned)"
                }
            );
            Ok(())
        }
        BundleCmd::Sign {
            bundle,
            key,
            password_file,
            signature,
            output,
        } => {
            let mut r = open(&bundle)?;
            let sig = match (key, signature) {
                (Some(k), _) => sign(
                    &r.manifest_bytes,
                    &std::fs::read_to_string(&k)?,
                    password(&password_file)?,
                )?,
                (None, Some(s)) => std::fs::read_to_string(&s)?,
                (None, None) => bail!("give --key or --signature"),
            };
            // Re-emit with the payloads copied through (each checked on the way).
            let work = std::env::temp_dir().join(format!("cairn-sign-{}", std::process::id()));
            std::fs::create_dir_all(&work)?;
            let manifest = r.manifest_bytes.clone();
            let mut payloads = Vec::new();
            while let Some((entry, mut pr)) = r.next_payload()? {
                let p = work.join(&entry.name);
                std::io::copy(&mut pr, &mut std::fs::File::create(&p)?)
                    .map_err(|e| cairn_bundle::unwrap_payload_error(e, &entry.name))?;
                payloads.push((entry.name, p));
            }
            let mut out = std::io::BufWriter::new(std::fs::File::create(&output)?);
            write_bundle(&mut out, &manifest, Some(&sig), &payloads)?;
            out.flush()?;
            let _ = std::fs::remove_dir_all(&work);
            Ok(())
        }
        BundleCmd::Manifest { bundle } => {
            let r = open(&bundle)?;
            std::io::stdout().write_all(&r.manifest_bytes)?;
            Ok(())
        }
        BundleCmd::Verify {
            bundle,
            pubkeys,
            product,
            hardware,
            running,
            force,
        } => {
            let keys = pubkeys
                .iter()
                .map(|p| {
                    std::fs::read_to_string(p)
                        .map_err(anyhow::Error::from)
                        .and_then(|t| Ok(public_key(&t)?))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut r = open(&bundle)?;
            r.verify(&Acceptance {
                keys,
                product,
                hardware,
                running,
                allow_downgrade: force,
                max_payload: u64::MAX,
            })?;
            let seen = r.check_payloads()?;
            println!(
                "{} {}: signature good, {} payloads verified",
                r.manifest.product,
                r.manifest.version,
                seen.len()
            );
            Ok(())
        }
        BundleCmd::Swu { bundle, output } => {
            let manifest = open(&bundle)?.manifest;
            let mut f = std::fs::File::open(&bundle)
                .with_context(|| format!("opening {}", bundle.display()))?;
            let (sha256, size) = cairn_bundle::swu::sha256_of(&mut f)?;
            let desc = cairn_bundle::swu::Description {
                version: manifest.version.clone(),
                hardware: manifest.hardware.clone(),
                filename: bundle
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                sha256,
            };
            let mut f = std::fs::File::open(&bundle)?;
            let mut out = std::io::BufWriter::new(
                std::fs::File::create(&output)
                    .with_context(|| format!("creating {}", output.display()))?,
            );
            cairn_bundle::swu::write(&mut out, &desc, &mut f, size)?;
            std::io::Write::flush(&mut out)?;
            println!(
                "{} {} -> {} (SWU, {} bytes of bundle)",
                manifest.product,
                manifest.version,
                output.display(),
                size
            );
            Ok(())
        }
        BundleCmd::Inspect { bundle, json } => {
            let r = open(&bundle)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"schema": "cairn/1", "kind": "bundle", "data": {"manifest": r.manifest, "signed": r.signature.is_some()}})
                );
            } else {
                let m = &r.manifest;
                println!(
                    "product:  {}\nversion:  {}\nhardware: {}",
                    m.product,
                    m.version,
                    m.hardware.join(", ")
                );
                if let Some(min) = &m.min_from {
                    println!("upgrades from: {min} or later");
                }
                println!(
                    "signed:   {}",
                    if r.signature.is_some() { "yes" } else { "no" }
                );
                for p in &m.payloads {
                    println!(
                        "payload:  {} ({:?}, {} bytes, sha256 {})",
                        p.name, p.kind, p.size, p.sha256
                    );
                }
                for h in &m.migrations {
                    println!("migration: {h}");
                }
            }
            Ok(())
        }
    }
}

fn support(cmd: SupportCmd) -> anyhow::Result<()> {
    let key = |p: &PathBuf| -> anyhow::Result<_> { Ok(public_key(&std::fs::read_to_string(p)?)?) };
    match cmd {
        SupportCmd::Inspect {
            archive,
            pubkey,
            json,
        } => {
            let f = std::fs::File::open(&archive)
                .with_context(|| format!("opening {}", archive.display()))?;
            let m = cairn_support::inspect(BufReader::new(f), &key(&pubkey)?)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"schema": "cairn/1", "kind": "support-archive", "data": m})
                );
            } else {
                println!(
                    "appliance: {} (pool {}), cairn {}",
                    m.appliance, m.pool, m.cairn_version
                );
                println!(
                    "versions:  {}; config {}; data {}",
                    m.versions.join(", "),
                    m.config,
                    m.data
                );
                for p in &m.parts {
                    println!(
                        "  {:<40} {:<16} {:>12} bytes  {}",
                        p.name,
                        p.kind,
                        p.size,
                        p.from.as_deref().unwrap_or("")
                    );
                }
                println!("signature and all {} parts verified", m.parts.len());
            }
            Ok(())
        }
        SupportCmd::Import {
            archive,
            pubkey,
            into,
        } => {
            let zfs = cairn_zfs::cli::ZfsCli::new()?;
            let lab = cairn_zfs::DatasetName::new(into)?;
            use cairn_zfs::Zfs;
            if zfs
                .get(&(&lab).into(), &[cairn_zfs::PropName::native("type")])
                .is_err()
            {
                zfs.create(
                    &lab,
                    &cairn_zfs::CreateOptions {
                        parents: true,
                        props: vec![],
                    },
                )?;
            }
            let got = cairn_support::import(&zfs, &lab, &archive, &key(&pubkey)?)?;
            for s in got {
                println!("received {s}");
            }
            Ok(())
        }
    }
}
