//! cairn as a client of an existing fleet update server through Eclipse hawkBit's Direct
//! Device Integration (DDI) API, as rauc-hawkbit-updater and SWUpdate's suricatta are.
//! cairn grows no server of its own.
//!
//! - [`ddi`]: the DDI documents (controller base, deployment, cancel action, feedback,
//!   config data), the polling interval, and [`ddi::decide`], the pure rule for what to do
//!   with a deployment (handling types `skip`/`attempt`/`forced`, maintenance windows).
//! - [`http`]: the transport (token on every request, the server's CA, links must stay
//!   on the server).
//! - [`service`]: one cycle of the client (poll, stage, trial, report), with what is under
//!   way kept in a state file across the trial's reboot; [`dbus`]: cairnd as the
//!   appliance it drives. Bundles travel bare or wrapped as SWU files
//!   ([`cairn_bundle::swu`]).
//! - [`config`]: the client's YAML configuration; the token never reaches a log.

pub mod config;
pub mod dbus;
pub mod ddi;
pub mod http;
pub mod service;
