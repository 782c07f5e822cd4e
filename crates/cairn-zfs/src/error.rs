//! The errors of the ZFS layer: ZFS's refusals as named variants, and command failures.

use crate::name::NameError;

/// What went wrong, named so callers can act on it. The real backend maps `zfs`'s
/// messages onto these variants; the model produces the same ones, and the conformance
/// suite checks that both agree.
#[derive(Debug, thiserror::Error)]
pub enum ZfsError {
    #[error(transparent)]
    InvalidName(#[from] NameError),
    #[error("'{name}' was refused by ZFS as an invalid name: {detail}")]
    RefusedName { name: String, detail: String },
    #[error("'{name}' does not exist")]
    NotFound { name: String },
    #[error("'{name}' already exists")]
    AlreadyExists { name: String },
    #[error(
        "'{name}' has children (datasets or snapshots); destroy them first or destroy recursively"
    )]
    HasChildren { name: String },
    #[error("'{name}' has dependent clones; promote or destroy the clones first")]
    HasDependentClones { name: String },
    #[error("'{name}' is busy (held, mounted and in use, or being received)")]
    Busy { name: String },
    #[error(
        "cannot roll back '{name}': newer snapshots exist; roll back with destroy_newer to remove them"
    )]
    NewerSnapshots { name: String },
    #[error("'{name}' is not a clone, so it cannot be promoted")]
    NotAClone { name: String },
    #[error("out of space on pool '{name}'")]
    NoSpace { name: String },
    #[error("hold '{tag}' already exists on '{name}'")]
    HoldExists { name: String, tag: String },
    #[error("no hold '{tag}' on '{name}'")]
    NoSuchHold { name: String, tag: String },
    #[error("stream does not apply to '{name}': {detail}")]
    StreamMismatch { name: String, detail: String },
    #[error("'{name}' is not mounted")]
    NotMounted { name: String },
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error("could not start `{cmd}`: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("unexpected output from `{cmd}`: {detail}")]
    Parse { cmd: String, detail: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// The kind of a [`ZfsError`], for matching in tests and in callers that only care
/// about the category.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidName,
    NotFound,
    AlreadyExists,
    HasChildren,
    HasDependentClones,
    Busy,
    NewerSnapshots,
    NotAClone,
    NoSpace,
    HoldExists,
    NoSuchHold,
    StreamMismatch,
    NotMounted,
    Other,
}

impl ZfsError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidName(_) | Self::RefusedName { .. } => ErrorKind::InvalidName,
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            Self::HasChildren { .. } => ErrorKind::HasChildren,
            Self::HasDependentClones { .. } => ErrorKind::HasDependentClones,
            Self::Busy { .. } => ErrorKind::Busy,
            Self::NewerSnapshots { .. } => ErrorKind::NewerSnapshots,
            Self::NotAClone { .. } => ErrorKind::NotAClone,
            Self::NoSpace { .. } => ErrorKind::NoSpace,
            Self::HoldExists { .. } => ErrorKind::HoldExists,
            Self::NoSuchHold { .. } => ErrorKind::NoSuchHold,
            Self::StreamMismatch { .. } => ErrorKind::StreamMismatch,
            Self::NotMounted { .. } => ErrorKind::NotMounted,
            Self::Command { .. } | Self::Spawn { .. } | Self::Parse { .. } | Self::Io { .. } => {
                ErrorKind::Other
            }
        }
    }
}

pub type Result<T, E = ZfsError> = std::result::Result<T, E>;
