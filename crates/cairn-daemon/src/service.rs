//! The objects on the bus: the manager (`/org/cairn/Updater1`) and one object per job
//! (`/org/cairn/Updater1/jobs/<n>`). Methods are thin adapters over engine calls, which run
//! on blocking threads; authorization uses the caller's credentials from the bus.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_engine::{Activation, Engine, Part, Payload, StageRequest, VersionId};
use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::{Connection, OwnedObjectPath, fdo, interface};

use crate::api::{Error, JOBS_PATH, JSON_SCHEMA, MANAGER_PATH};

/// Who may call mutating methods: root, the daemon's own user when configured (the
/// simulator), and members of the admin group.
#[derive(Debug, Clone, Default)]
pub struct AuthPolicy {
    pub admin_gid: Option<u32>,
    pub extra_uid: Option<u32>,
    /// Whether uid 0 is an admin (always, except in tests of the refusal path).
    pub root_is_admin: bool,
}

/// Runs after every change (regenerates the GRUB menu on a real box).
pub type AfterChange = Arc<dyn Fn(&Engine) + Send + Sync>;

/// What the manager and its jobs share.
pub struct Shared {
    pub engine: Arc<Engine>,
    /// This appliance's name and minisign secret key for support archives.
    pub support: Option<(String, String)>,
    /// Where bundles are accepted from (vendor keys, product, hardware); none: refused.
    pub bundles: Option<cairn_bundle::install::Appliance>,
    pub policy: AuthPolicy,
    /// The retention policy (`/etc/cairn/retention.yaml`).
    pub retention: cairn_engine::retention::Policy,
    /// The operation holding the single mutating slot.
    busy: Mutex<Option<String>>,
    next_job: AtomicU64,
    /// Called after every change (regenerates the GRUB menu on a real box).
    pub after_change: Option<AfterChange>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("policy", &self.policy)
            .field("busy", &self.busy)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub fn new(engine: Arc<Engine>, policy: AuthPolicy) -> Arc<Self> {
        Arc::new(Self {
            engine,
            support: None,
            bundles: None,
            policy,
            retention: cairn_engine::retention::Policy::default(),
            busy: Mutex::new(None),
            next_job: AtomicU64::new(1),
            after_change: None,
        })
    }

    pub fn with_support_key(self: Arc<Self>, appliance: String, secret_key: String) -> Arc<Self> {
        let mut s = Arc::into_inner(self).expect("configure before serving");
        s.support = Some((appliance, secret_key));
        Arc::new(s)
    }

    pub fn with_bundles(self: Arc<Self>, app: cairn_bundle::install::Appliance) -> Arc<Self> {
        let mut s = Arc::into_inner(self).expect("configure before serving");
        s.bundles = Some(app);
        Arc::new(s)
    }

    pub fn with_retention(self: Arc<Self>, p: cairn_engine::retention::Policy) -> Arc<Self> {
        let mut s = Arc::into_inner(self).expect("configure before serving");
        s.retention = p;
        Arc::new(s)
    }

    pub fn with_after_change(self: Arc<Self>, f: AfterChange) -> Arc<Self> {
        let mut s = Arc::into_inner(self).expect("configure before serving");
        s.after_change = Some(f);
        Arc::new(s)
    }
}

/// Holds the mutating slot; frees it when dropped.
struct BusyGuard(Arc<Shared>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        *self.0.busy.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

fn take_slot(shared: &Arc<Shared>, what: &str) -> Result<BusyGuard, Error> {
    let mut b = shared.busy.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(current) = b.as_ref() {
        return Err(Error::Busy(format!(
            "{current} is running; try again when it has finished"
        )));
    }
    *b = Some(what.to_owned());
    Ok(BusyGuard(shared.clone()))
}

/// The caller's uid and groups, from the bus (never from anything the caller says).
pub async fn caller(hdr: &Header<'_>, conn: &Connection) -> Result<(u32, Vec<u32>), Error> {
    let ids = |c: &fdo::ConnectionCredentials| {
        (
            c.unix_user_id(),
            c.unix_group_ids().map(|g| g.to_vec()).unwrap_or_default(),
        )
    };
    let (uid, gids) = match hdr.sender() {
        Some(sender) => ids(&fdo::DBusProxy::new(conn)
            .await?
            .get_connection_credentials(sender.clone().into())
            .await
            .map_err(|e| {
                Error::NotAuthorized(format!("the bus would not say who is calling: {e}"))
            })?),
        None => ids(conn
            .peer_creds()
            .await
            .map_err(|e| Error::NotAuthorized(format!("no peer credentials: {e}")))?),
    };
    let uid = uid.ok_or_else(|| Error::NotAuthorized("caller uid unknown".into()))?;
    Ok((uid, gids))
}

async fn authorize(
    shared: &Shared,
    hdr: &Header<'_>,
    conn: &Connection,
    what: &str,
) -> Result<u32, Error> {
    let (uid, gids) = caller(hdr, conn).await?;
    let p = &shared.policy;
    let ok = (uid == 0 && p.root_is_admin)
        || p.extra_uid == Some(uid)
        || p.admin_gid.is_some_and(|g| gids.contains(&g));
    if ok {
        return Ok(uid);
    }
    match polkit_allows(hdr, conn, what).await {
        Ok(true) => {
            tracing::info!(uid, what, "allowed by polkit");
            Ok(uid)
        }
        Ok(false) => {
            tracing::warn!(uid, what, "refused by polkit");
            Err(Error::NotAuthorized(format!(
                "uid {uid} may not {what}: polkit refused action {POLKIT_ACTION}; it needs \
                 root, membership in the cairn admin group or a polkit rule"
            )))
        }
        Err(why) => {
            tracing::warn!(uid, what, %why, "refused: not an administrator");
            Err(Error::NotAuthorized(format!(
                "uid {uid} may not {what}: it needs root or membership in the cairn admin group"
            )))
        }
    }
}

/// The polkit action that covers every mutating call (`packaging/polkit/`).
pub const POLKIT_ACTION: &str = "org.cairn.updater1.manage";

#[zbus::proxy(
    interface = "org.freedesktop.PolicyKit1.Authority",
    default_service = "org.freedesktop.PolicyKit1",
    default_path = "/org/freedesktop/PolicyKit1/Authority"
)]
trait Authority {
    #[allow(clippy::type_complexity)]
    fn check_authorization(
        &self,
        subject: &(&str, std::collections::HashMap<&str, zbus::Variant<'_>>),
        action_id: &str,
        details: std::collections::HashMap<&str, &str>,
        flags: u32,
        cancellation_id: &str,
    ) -> zbus::Result<(bool, bool, std::collections::HashMap<String, String>)>;
}

/// Asks polkit, where it is installed, whether the calling bus name may do `what`. `Err`
/// when polkit cannot be asked (not installed, no sender): the caller is then refused.
/// No interactive authentication: cairnctl registers no agent.
async fn polkit_allows(hdr: &Header<'_>, conn: &Connection, what: &str) -> Result<bool, String> {
    let sender = hdr
        .sender()
        .ok_or("a peer-to-peer caller has no bus name")?;
    let authority = AuthorityProxy::builder(conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .map_err(|e| e.to_string())?;
    let subject = (
        "system-bus-name",
        [("name", zbus::Variant::from(sender.as_str()))].into(),
    );
    let details = [("cairn.operation", what)].into();
    let (allowed, _challenge, _) = authority
        .check_authorization(&subject, POLKIT_ACTION, details, 0, "")
        .await
        .map_err(|e| format!("polkit could not be asked: {e}"))?;
    Ok(allowed)
}

async fn blocking<T: Send + 'static>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&Engine) -> Result<T, cairn_engine::EngineError> + Send + 'static,
) -> Result<T, Error> {
    let engine = shared.engine.clone();
    tokio::task::spawn_blocking(move || f(&engine))
        .await
        .map_err(|e| Error::Failed(format!("internal error: {e}")))?
        .map_err(Error::from)
}

fn id(s: &str) -> Result<VersionId, Error> {
    VersionId::new(s).map_err(|e| Error::InvalidArgument(e.to_string()))
}

fn json<T: serde::Serialize>(kind: &str, value: &T) -> String {
    serde_json::json!({ "schema": JSON_SCHEMA, "kind": kind, "data": value }).to_string()
}

/// The manager object.
pub struct Updater {
    pub shared: Arc<Shared>,
    current_job: OwnedObjectPath,
}

impl std::fmt::Debug for Updater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Updater")
            .field("current_job", &self.current_job)
            .finish_non_exhaustive()
    }
}

impl Updater {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            current_job: OwnedObjectPath::try_from("/").expect("valid path"),
        }
    }

    /// Takes the mutating slot, publishes a job object and runs `work` in it.
    async fn start_job(
        &mut self,
        conn: &Connection,
        emitter: &SignalEmitter<'_>,
        uid: u32,
        operation: &str,
        what: &str,
        work: JobWork,
    ) -> Result<OwnedObjectPath, Error> {
        let slot = take_slot(&self.shared, what)?;
        let n = self.shared.next_job.fetch_add(1, Ordering::SeqCst);
        let path = OwnedObjectPath::try_from(format!("{JOBS_PATH}/{n}"))
            .map_err(|e| Error::Failed(e.to_string()))?;
        let cancel = Arc::new(AtomicBool::new(false));
        conn.object_server()
            .at(
                &path,
                Job::new(operation, cancel.clone(), self.shared.clone()),
            )
            .await?;
        self.current_job = path.clone();
        let _ = self.current_job_changed(emitter).await;
        let (shared, conn, job_path) = (self.shared.clone(), conn.clone(), path.clone());
        tokio::spawn(async move { run_job(shared, conn, job_path, cancel, uid, slot, work).await });
        Ok(path)
    }

    /// A short mutating call: authorized, in the single slot, journaled as `uid:<n>`.
    async fn mutate<T: Send + 'static>(
        &self,
        hdr: &Header<'_>,
        conn: &Connection,
        emitter: &SignalEmitter<'_>,
        what: &str,
        f: impl FnOnce(&Engine, &str) -> Result<T, cairn_engine::EngineError> + Send + 'static,
    ) -> Result<T, Error> {
        let uid = authorize(&self.shared, hdr, conn, what).await?;
        let _slot = take_slot(&self.shared, what)?;
        let by = format!("uid:{uid}");
        let after = self.shared.after_change.clone();
        let r = blocking(&self.shared, move |e| {
            let r = f(e, &by);
            if let Some(a) = after {
                a(e);
            }
            r
        })
        .await;
        let _ = self.default_version_changed(emitter).await;
        r
    }
}

// D-Bus methods take their header, connection and emitter as arguments.
#[allow(clippy::too_many_arguments)]
#[interface(name = "org.cairn.Updater1")]
impl Updater {
    /// Everything `cairnctl status` shows, as JSON (`schema: cairn/1`).
    async fn get_status(&self) -> Result<String, Error> {
        let busy = self
            .shared
            .busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let status = blocking(&self.shared, |e| {
            let versions = e.versions()?;
            let boot = e.boot().read()?;
            let booted = e.host().booted();
            Ok(serde_json::json!({
                "booted": booted,
                "boot": boot,
                "versions": versions,
            }))
        })
        .await?;
        let mut v = status;
        v["job"] = serde_json::json!(busy);
        Ok(json("status", &v))
    }

    async fn list_versions(&self) -> Result<String, Error> {
        let v = blocking(&self.shared, |e| e.versions()).await?;
        Ok(json("versions", &v))
    }

    async fn get_journal(&self) -> Result<String, Error> {
        let v = blocking(&self.shared, |e| e.journal_entries()).await?;
        Ok(json("journal", &v))
    }

    /// Files that changed in `to` since `from` was installed.
    async fn diff(&self, from: &str, to: &str) -> Result<String, Error> {
        let (a, b) = (id(from)?, id(to)?);
        let v = blocking(&self.shared, move |e| e.diff(&a, &b)).await?;
        Ok(json("diff", &v))
    }

    /// Stages a version from a `zfs send` stream passed as a file descriptor (a delta on
    /// `base` when not empty). Returns the job.
    async fn stage_stream(
        &mut self,
        version: String,
        stream: zbus::OwnedFd,
        base: String,
        size: u64,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<OwnedObjectPath, Error> {
        let uid = authorize(&self.shared, &hdr, conn, "install a version").await?;
        let base = if base.is_empty() {
            None
        } else {
            Some(id(&base)?)
        };
        let what = format!("installing {version}");
        let file = std::fs::File::from(std::os::fd::OwnedFd::from(stream));
        let policy = self.shared.retention.clone();
        let work: JobWork = Box::new(move |engine: &Engine, by: &str| {
            let mut file = file;
            let attempt = |file: &mut std::fs::File| {
                let payload = match &base {
                    Some(b) => Payload::IncrementalStream {
                        base: b.clone(),
                        stream: file,
                    },
                    None => Payload::FullStream(file),
                };
                engine.stage(
                    StageRequest {
                        version: version.clone(),
                        payload,
                        size_hint: size,
                        migrations: Vec::new(),
                        migration_timeout: Duration::from_secs(300),
                        bundle: None,
                        allow_downgrade: false,
                        defaults: None,
                    },
                    by,
                )
            };
            // Space is checked before the stream is read, so it can be tried again.
            let r = match attempt(&mut file) {
                Err(cairn_engine::EngineError::NotEnoughSpace { .. }) => {
                    make_room(engine, &policy, by);
                    attempt(&mut file)
                }
                other => other,
            };
            r.map(|v| v.to_string()).map_err(Error::from)
        });
        self.start_job(conn, &emitter, uid, "install", &what, work)
            .await
    }

    /// Installs a signed bundle passed as a file descriptor: verified against the vendor
    /// keys, product and hardware configured here, then staged. Returns the job.
    async fn install(
        &mut self,
        bundle: zbus::OwnedFd,
        force: bool,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<OwnedObjectPath, Error> {
        let uid = authorize(&self.shared, &hdr, conn, "install a bundle").await?;
        let app = self.shared.bundles.clone().ok_or_else(|| {
            Error::BadBundle(
                "no vendor keys are configured here (minisign .pub files in /etc/cairn/keys)"
                    .into(),
            )
        })?;
        let file = std::fs::File::from(std::os::fd::OwnedFd::from(bundle));
        let policy = self.shared.retention.clone();
        let work: JobWork = Box::new(move |engine: &Engine, by: &str| {
            use cairn_bundle::install::{InstallError, install};
            // A bundle file can be read again after making room; a pipe cannot.
            let again = file
                .try_clone()
                .ok()
                .filter(|f| f.metadata().map(|m| m.is_file()).unwrap_or(false));
            let r = match install(engine, file, &app, force, by) {
                Err(InstallError::Engine(cairn_engine::EngineError::NotEnoughSpace { .. }))
                    if again.is_some() =>
                {
                    make_room(engine, &policy, by);
                    let mut f = again.expect("checked");
                    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(0))
                        .map_err(|e| Error::Failed(format!("rewinding the bundle: {e}")))?;
                    install(engine, f, &app, force, by)
                }
                other => other,
            };
            r.map(|v| v.to_string()).map_err(Error::from)
        });
        self.start_job(conn, &emitter, uid, "install", "installing a bundle", work)
            .await
    }

    /// `mode`: `permanent`, `trial` (with `attempts`) or `once`.
    async fn activate(
        &self,
        id: &str,
        mode: &str,
        attempts: u8,
        force: bool,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<(), Error> {
        let v = self::id(id)?;
        let how = match mode {
            "permanent" => Activation::Permanent,
            "trial" => Activation::Trial(attempts.clamp(1, cairn_grub::menu::MAX_ATTEMPTS)),
            "once" => Activation::Once,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "mode '{other}': use permanent, trial or once"
                )));
            }
        };
        self.mutate(&hdr, conn, &emitter, "activate", move |e, by| {
            e.activate(&v, how, force, by)
        })
        .await
    }

    async fn confirm(
        &self,
        health: String,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<String, Error> {
        self.mutate(&hdr, conn, &emitter, "confirm", move |e, by| {
            e.confirm(&health, by).map(|v| v.to_string())
        })
        .await
    }

    async fn mark_failed(
        &self,
        id: &str,
        reason: String,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<(), Error> {
        let v = self::id(id)?;
        self.mutate(
            &hdr,
            conn,
            &emitter,
            "mark a version failed",
            move |e, by| e.mark_failed(&v, &reason, by),
        )
        .await
    }

    async fn rollback(
        &self,
        steps: u32,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<String, Error> {
        self.mutate(&hdr, conn, &emitter, "roll back", move |e, by| {
            e.rollback(steps as usize, by).map(|v| v.to_string())
        })
        .await
    }

    async fn roll_forward(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<String, Error> {
        self.mutate(&hdr, conn, &emitter, "roll forward", |e, by| {
            e.roll_forward(by).map(|v| v.to_string())
        })
        .await
    }

    async fn pin(
        &self,
        id: &str,
        pinned: bool,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<(), Error> {
        let v = self::id(id)?;
        self.mutate(&hdr, conn, &emitter, "pin", move |e, by| {
            e.pin(&v, pinned, by)
        })
        .await
    }

    /// Factory reset: `mode` is `config`, `system` or `full` (which needs the token
    /// `ERASE-ALL-DATA`). Returns the actions as JSON; with `dry_run` nothing changes.
    async fn factory_reset(
        &self,
        mode: &str,
        token: String,
        dry_run: bool,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<String, Error> {
        let m = cairn_engine::factory::ResetMode::parse(mode).ok_or_else(|| {
            Error::InvalidArgument(format!("mode '{mode}': use config, system or full"))
        })?;
        let actions = self
            .mutate(
                &hdr,
                conn,
                &emitter,
                "reset to factory defaults",
                move |e, by| e.factory_reset(m, &token, dry_run, by),
            )
            .await?;
        Ok(json(
            "factory-reset",
            &serde_json::json!({"mode": mode, "dry_run": dry_run, "actions": actions}),
        ))
    }

    /// Writes a signed support archive of `versions` (root; config and data only when
    /// asked) into the file descriptor `out`, as a job with progress per part.
    async fn support_export(
        &mut self,
        out: zbus::OwnedFd,
        versions: Vec<String>,
        config: bool,
        data: bool,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<OwnedObjectPath, Error> {
        let uid = authorize(&self.shared, &hdr, conn, "export for support").await?;
        let (appliance, key) = self
            .shared
            .support
            .clone()
            .ok_or_else(|| Error::Failed("no support key is configured here".into()))?;
        let ids = versions
            .iter()
            .map(|v| id(v))
            .collect::<Result<Vec<_>, _>>()?;
        let mut file = std::fs::File::from(std::os::fd::OwnedFd::from(out));
        let work: JobWork = Box::new(move |engine: &Engine, by: &str| {
            let req = cairn_support::ExportRequest {
                versions: ids,
                config,
                data,
            };
            let mut w = std::io::BufWriter::with_capacity(1 << 20, &mut file);
            match cairn_support::export(engine, &req, &appliance, &key, &mut w, by) {
                Ok(m) => Ok(format!(
                    "{} parts, {} bytes",
                    m.parts.len(),
                    m.parts.iter().map(|p| p.size).sum::<u64>()
                )),
                Err(cairn_support::SupportError::Engine(e)) => Err(e.into()),
                Err(other) => Err(Error::Failed(other.to_string())),
            }
        });
        self.start_job(
            conn,
            &emitter,
            uid,
            "support-export",
            "exporting for support",
            work,
        )
        .await
    }

    /// Runs retention: the plan as JSON; with `dry_run` nothing changes. Versions in
    /// their grace period are announced with `ExpiryNotice`.
    async fn cleanup(
        &self,
        dry_run: bool,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<String, Error> {
        let policy = self.shared.retention.clone();
        let done = if dry_run {
            // A dry run changes nothing, so anyone may look.
            blocking(&self.shared, move |e| e.cleanup(&policy, true, "dry-run")).await?
        } else {
            self.mutate(&hdr, conn, &emitter, "clean up", move |e, by| {
                e.cleanup(&policy, false, by)
            })
            .await?
        };
        for (id, at) in &done.plan.notices {
            let _ = Self::expiry_notice(&emitter, id.as_str(), *at).await;
        }
        Ok(json("cleanup", &done))
    }

    /// A version will be removed by retention at `at` (seconds since the epoch) unless it
    /// is booted or pinned before then.
    #[zbus(signal)]
    async fn expiry_notice(emitter: &SignalEmitter<'_>, id: &str, at: u64) -> zbus::Result<()>;

    /// Mounts a version's `root` or `config` read-only at `at`.
    async fn mount(
        &self,
        id: &str,
        part: &str,
        at: String,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<String, Error> {
        let v = self::id(id)?;
        let part = match part {
            "root" => Part::Root,
            "config" => Part::Config,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "part '{other}': use root or config"
                )));
            }
        };
        if !at.starts_with('/') {
            return Err(Error::InvalidArgument(format!(
                "'{at}' is not an absolute path"
            )));
        }
        self.mutate(&hdr, conn, &emitter, "mount", move |e, _| {
            e.mount(&v, part, None, std::path::Path::new(&at))
                .map(|p| p.display().to_string())
        })
        .await
    }

    async fn unmount(
        &self,
        at: String,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<(), Error> {
        self.mutate(&hdr, conn, &emitter, "unmount", move |e, _| {
            e.unmount(std::path::Path::new(&at))
        })
        .await
    }

    #[zbus(property)]
    async fn default_version(&self) -> String {
        let e = self.shared.engine.clone();
        tokio::task::spawn_blocking(move || {
            e.boot()
                .read()
                .ok()
                .and_then(|b| b.default)
                .map(|d| d.to_string())
        })
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
    }

    #[zbus(property)]
    async fn booted_version(&self) -> String {
        self.shared
            .engine
            .host()
            .booted()
            .map(|b| b.version.to_string())
            .unwrap_or_default()
    }

    /// The running or last job, `/` when there has been none.
    #[zbus(property)]
    async fn current_job(&self) -> OwnedObjectPath {
        self.current_job.clone()
    }
}

/// Staging found the pool short of space: retention runs once (it never removes a
/// protected version), and staging is tried again; if it is still short, it refuses.
fn make_room(engine: &Engine, policy: &cairn_engine::retention::Policy, by: &str) {
    match engine.cleanup(policy, false, by) {
        Ok(c) => tracing::warn!(
            removed = c.plan.remove.len(),
            "space was short: retention ran before staging"
        ),
        Err(e) => tracing::warn!(error = %e, "space was short and retention could not run"),
    }
}

/// What a job does, on a blocking thread: the engine and who asked; returns the result.
pub type JobWork = Box<dyn FnOnce(&Engine, &str) -> Result<String, Error> + Send>;

async fn run_job(
    shared: Arc<Shared>,
    conn: Connection,
    path: OwnedObjectPath,
    cancel: Arc<AtomicBool>,
    uid: u32,
    slot: BusyGuard,
    work: JobWork,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, u32)>();
    let c2 = cancel.clone();
    shared
        .engine
        .set_observer(Some(Arc::new(move |_op, step, pct| {
            let _ = tx.send((step.to_owned(), pct));
            !c2.load(Ordering::SeqCst)
        })));
    let engine = shared.engine.clone();
    let after = shared.after_change.clone();
    let work = tokio::task::spawn_blocking(move || {
        let r = work(&engine, &format!("uid:{uid}"));
        if let Some(a) = after {
            a(&engine);
        }
        r
    });
    let iface = match conn.object_server().interface::<_, Job>(&path).await {
        Ok(i) => i,
        Err(e) => {
            tracing::error!(error = %e, "job object vanished");
            return;
        }
    };
    let emitter = iface.signal_emitter().clone();
    tokio::pin!(work);
    let outcome = loop {
        tokio::select! {
            Some((step, pct)) = rx.recv() => {
                let mut j = iface.get_mut().await;
                j.progress = pct;
                j.stage = step;
                let _ = j.progress_changed(&emitter).await;
                let _ = j.stage_changed(&emitter).await;
            }
            r = &mut work => break r,
        }
    };
    shared.engine.set_observer(None);
    // Progress reports still queued belong before the end.
    while let Ok((step, pct)) = rx.try_recv() {
        let mut j = iface.get_mut().await;
        j.progress = pct;
        j.stage = step;
        let _ = j.progress_changed(&emitter).await;
    }
    let (state, result, name, message) = match outcome {
        Ok(Ok(v)) => ("done", v, String::new(), String::new()),
        Ok(Err(err)) => {
            let cancelled = matches!(err, Error::Cancelled(_));
            (
                if cancelled { "cancelled" } else { "failed" },
                String::new(),
                err.dbus_name(),
                err.message(),
            )
        }
        Err(e) => (
            "failed",
            String::new(),
            "org.cairn.Updater1.Error.Failed".into(),
            e.to_string(),
        ),
    };
    {
        let mut j = iface.get_mut().await;
        if state == "done" {
            j.progress = 100;
            j.stage = "done".into();
            let _ = j.progress_changed(&emitter).await;
            let _ = j.stage_changed(&emitter).await;
        }
        // Result and error first: a client that sees the state change reads them next.
        j.result = result.clone();
        j.error_name = name.clone();
        j.error_message = message.clone();
        let _ = j.result_changed(&emitter).await;
        let _ = j.error_name_changed(&emitter).await;
        let _ = j.error_message_changed(&emitter).await;
        j.state = state.into();
        let _ = j.state_changed(&emitter).await;
    }
    drop(slot);
    tracing::info!(job = %path, state, result = %result, error = %name, "job finished");
    let _ = Job::finished(&emitter, &result, &name, &message).await;
    if let Ok(m) = conn
        .object_server()
        .interface::<_, Updater>(MANAGER_PATH)
        .await
    {
        let _ = m
            .get()
            .await
            .default_version_changed(m.signal_emitter())
            .await;
    }
}

/// A long operation on the bus.
pub struct Job {
    operation: String,
    progress: u32,
    stage: String,
    state: String,
    result: String,
    error_name: String,
    error_message: String,
    cancel: Arc<AtomicBool>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("operation", &self.operation)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Job {
    fn new(operation: &str, cancel: Arc<AtomicBool>, shared: Arc<Shared>) -> Self {
        Self {
            operation: operation.to_owned(),
            progress: 0,
            stage: "queued".into(),
            state: "running".into(),
            result: String::new(),
            error_name: String::new(),
            error_message: String::new(),
            cancel,
            shared,
        }
    }
}

#[interface(name = "org.cairn.Updater1.Job")]
impl Job {
    /// Asks the job to stop at its next step; what it did is undone.
    async fn cancel(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), Error> {
        authorize(&self.shared, &hdr, conn, "cancel a job").await?;
        if self.state != "running" {
            return Err(Error::InvalidArgument(format!(
                "the job is already {}",
                self.state
            )));
        }
        self.cancel.store(true, Ordering::SeqCst);
        Ok(())
    }

    #[zbus(property)]
    fn operation(&self) -> String {
        self.operation.clone()
    }

    /// 0–100.
    #[zbus(property)]
    fn progress(&self) -> u32 {
        self.progress
    }

    /// The engine step running now.
    #[zbus(property)]
    fn stage(&self) -> String {
        self.stage.clone()
    }

    /// `running`, `done`, `failed` or `cancelled`.
    #[zbus(property)]
    fn state(&self) -> String {
        self.state.clone()
    }

    /// What the job produced (the new version id).
    #[zbus(property)]
    fn result(&self) -> String {
        self.result.clone()
    }

    /// The named error when the job failed.
    #[zbus(property)]
    fn error_name(&self) -> String {
        self.error_name.clone()
    }

    /// What went wrong, for a person, when the job failed.
    #[zbus(property)]
    fn error_message(&self) -> String {
        self.error_message.clone()
    }

    #[zbus(signal)]
    async fn finished(
        emitter: &SignalEmitter<'_>,
        result: &str,
        error_name: &str,
        error_message: &str,
    ) -> zbus::Result<()>;
}
