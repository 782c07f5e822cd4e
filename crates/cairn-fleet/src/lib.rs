//! cairn as a client of an existing fleet update server through Eclipse hawkBit's Direct
//! Device Integration (DDI) API, as rauc-hawkbit-updater and SWUpdate's suricatta are.
//! cairn grows no server of its own.
//!
//! What is here so far (the transport and the service come next):
//! - [`ddi`]: the DDI documents (controller base, deployment, cancel action, feedback,
//!   config data), the polling interval, and [`ddi::decide`], the pure rule for what to do
//!   with a deployment (handling types `skip`/`attempt`/`forced`, maintenance windows).
//! - [`swu`]: cairn bundles wrapped as SWU files (a `newc` cpio archive with a
//!   `sw-description` first), the artifact type servers such as goosebit accept, and the
//!   streaming reader that takes the bundle back out while it downloads.
//! - [`config`]: the client's YAML configuration; the token never reaches a log.

pub mod config;
pub mod ddi;

