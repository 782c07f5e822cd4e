//! The D-Bus contract: names, named errors, and client proxies (shared with `cairnctl`).

use cairn_engine::EngineError;

pub const BUS_NAME: &str = "org.cairn.Updater1";
pub const MANAGER_PATH: &str = "/org/cairn/Updater1";
pub const JOBS_PATH: &str = "/org/cairn/Updater1/jobs";
/// Version of the JSON documents the read calls return (`"schema": "cairn/1"`).
pub const JSON_SCHEMA: &str = "cairn/1";

/// Errors on the wire: `org.cairn.Updater1.Error.<Name>` with a message a person can act on.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.cairn.Updater1.Error")]
pub enum Error {
    #[zbus(error)]
    ZBus(zbus::Error),
    NotAuthorized(String),
    Busy(String),
    UnknownVersion(String),
    VersionExists(String),
    VersionFailed(String),
    NotBootable(String),
    Downgrade(String),
    NotEnoughSpace(String),
    MigrationFailed(String),
    NoTrial(String),
    NothingToRollTo(String),
    NotBooted(String),
    Foreign(String),
    Cancelled(String),
    BadBundle(String),
    ConfirmationRequired(String),
    InvalidArgument(String),
    Failed(String),
}

impl From<EngineError> for Error {
    fn from(e: EngineError) -> Self {
        let m = e.to_string();
        match e {
            EngineError::UnknownVersion { .. } => Self::UnknownVersion(m),
            EngineError::VersionExists { .. } => Self::VersionExists(m),
            EngineError::VersionFailed { .. } => Self::VersionFailed(m),
            EngineError::NotBootable { .. } => Self::NotBootable(m),
            EngineError::Downgrade { .. } => Self::Downgrade(m),
            EngineError::NotEnoughSpace { .. } => Self::NotEnoughSpace(m),
            EngineError::MigrationFailed { .. }
            | EngineError::MigrationTimedOut { .. }
            | EngineError::StagingCommandFailed { .. } => Self::MigrationFailed(m),
            EngineError::NoTrial { .. } => Self::NoTrial(m),
            EngineError::NothingToRollTo { .. } => Self::NothingToRollTo(m),
            EngineError::NotBooted => Self::NotBooted(m),
            EngineError::Foreign { .. } => Self::Foreign(m),
            EngineError::Cancelled { .. } => Self::Cancelled(m),
            EngineError::ConfirmationRequired { .. } => Self::ConfirmationRequired(m),
            EngineError::BadVersionId { .. } | EngineError::Layout { .. } => {
                Self::InvalidArgument(m)
            }
            _ => Self::Failed(m),
        }
    }
}

impl From<cairn_bundle::install::InstallError> for Error {
    fn from(e: cairn_bundle::install::InstallError) -> Self {
        use cairn_bundle::BundleError as B;
        match e {
            cairn_bundle::install::InstallError::Engine(e) => e.into(),
            cairn_bundle::install::InstallError::Bundle(b) => {
                let m = b.to_string();
                match b {
                    B::Downgrade { .. } => Self::Downgrade(m),
                    _ => Self::BadBundle(m),
                }
            }
        }
    }
}

impl Error {
    /// The error's D-Bus name, for the job's `Finished` signal.
    pub fn dbus_name(&self) -> String {
        use zbus::DBusError;
        self.name().to_string()
    }

    pub fn message(&self) -> String {
        use zbus::DBusError;
        self.description().unwrap_or_default().to_owned()
    }
}

/// The manager, as a client sees it.
#[zbus::proxy(
    interface = "org.cairn.Updater1",
    default_service = "org.cairn.Updater1",
    default_path = "/org/cairn/Updater1"
)]
pub trait Updater {
    fn get_status(&self) -> zbus::Result<String>;
    fn list_versions(&self) -> zbus::Result<String>;
    fn get_journal(&self) -> zbus::Result<String>;
    fn diff(&self, from: &str, to: &str) -> zbus::Result<String>;
    fn install(&self, bundle: zbus::Fd<'_>, force: bool) -> zbus::Result<zbus::OwnedObjectPath>;
    fn stage_stream(
        &self,
        version: &str,
        stream: zbus::Fd<'_>,
        base: &str,
        size: u64,
    ) -> zbus::Result<zbus::OwnedObjectPath>;
    fn activate(&self, id: &str, mode: &str, attempts: u8, force: bool) -> zbus::Result<()>;
    fn confirm(&self, health: &str) -> zbus::Result<String>;
    fn mark_failed(&self, id: &str, reason: &str) -> zbus::Result<()>;
    fn rollback(&self, steps: u32) -> zbus::Result<String>;
    fn roll_forward(&self) -> zbus::Result<String>;
    fn pin(&self, id: &str, pinned: bool) -> zbus::Result<()>;
    fn mount(&self, id: &str, part: &str, at: &str) -> zbus::Result<String>;
    fn unmount(&self, at: &str) -> zbus::Result<()>;
    fn cleanup(&self, dry_run: bool) -> zbus::Result<String>;
    fn support_export(
        &self,
        out: zbus::Fd<'_>,
        versions: &[&str],
        config: bool,
        data: bool,
    ) -> zbus::Result<zbus::OwnedObjectPath>;
    fn factory_reset(&self, mode: &str, token: &str, dry_run: bool) -> zbus::Result<String>;
    #[zbus(signal)]
    fn expiry_notice(&self, id: &str, at: u64) -> zbus::Result<()>;
    #[zbus(property)]
    fn default_version(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn booted_version(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn current_job(&self) -> zbus::Result<zbus::OwnedObjectPath>;
}

/// A long operation, as a client sees it.
#[zbus::proxy(
    interface = "org.cairn.Updater1.Job",
    default_service = "org.cairn.Updater1"
)]
pub trait Job {
    fn cancel(&self) -> zbus::Result<()>;
    #[zbus(property)]
    fn operation(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn progress(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn stage(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn result(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn error_name(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn error_message(&self) -> zbus::Result<String>;
    #[zbus(signal)]
    fn finished(&self, result: &str, error_name: &str, error_message: &str) -> zbus::Result<()>;
}

/// The simulator's control object (`cairnd --sim` only).
#[zbus::proxy(
    interface = "org.cairn.Simulator1",
    default_service = "org.cairn.Updater1",
    default_path = "/org/cairn/Simulator1"
)]
pub trait Simulator {
    fn reboot(&self) -> zbus::Result<(String, String)>;
}
