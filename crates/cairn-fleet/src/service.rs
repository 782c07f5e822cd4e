//! The fleet client's cycle: poll, act on what the server asks, report what happened.
//!
//! One cycle does at most one step of a deployment, and what is under way is written to a
//! small state file first, so a reboot (the trial boot itself) or a crash between cycles
//! loses nothing: the next cycle, in this process or after the reboot, reads the file and
//! the appliance's own status and reports the outcome. The steps of a deployment:
//!
//! 1. download + verify + stage (streamed into cairnd's normal install path);
//!    feedback `proceeding`, then `downloaded`;
//! 2. next cycle: the deployment still stands (not cancelled, not withdrawn, window
//!    open) -> start the trial and reboot; otherwise the staged version is marked failed
//!    and never booted;
//! 3. after the reboot: the trial's outcome (confirmed by its health checks, or failed
//!    and fallen back) -> feedback `closed` with `success` or `failure` and the reason.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::Fleet;
use crate::ddi::{self, Decision, Execution, Feedback, Finished};
use crate::http::{NetError, Server};

/// One version as the appliance's status shows it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct VersionView {
    pub id: String,
    pub version: String,
    pub stored: String,
    #[serde(default)]
    pub failed_reason: Option<String>,
    #[serde(default)]
    pub is_default: bool,
    #[serde(default)]
    pub is_booted: bool,
    #[serde(default)]
    pub is_trial: bool,
}

/// What the fleet client needs of the appliance's status (`GetStatus`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Status {
    #[serde(default)]
    pub versions: Vec<VersionView>,
}

impl Status {
    pub fn version(&self, id: &str) -> Option<&VersionView> {
        self.versions.iter().find(|v| v.id == id)
    }

    /// The version string of what runs.
    pub fn running(&self) -> Option<&str> {
        self.versions
            .iter()
            .find(|v| v.is_booted)
            .map(|v| v.version.as_str())
    }
}

/// How often a download asks the server whether its deployment still stands.
const CANCEL_CHECK: Duration = Duration::from_secs(5);

/// A download that reports each quarter it passes and stops when the deployment is
/// cancelled or withdrawn.
struct Counting {
    inner: Box<dyn Read + Send>,
    total: Option<u64>,
    done: u64,
    next: u32,
    report: Box<dyn FnMut(u32) + Send>,
    watch: Watch,
}

struct Watch {
    server: Server,
    action: String,
    last: Instant,
    /// Why the download was stopped, once it was.
    stopped: Arc<Mutex<Option<String>>>,
}

impl Watch {
    /// `Some(why)` when the server no longer wants this deployment. A server that cannot
    /// be asked right now does not stop a download.
    fn cancelled(&self) -> Option<String> {
        let base = self.server.poll().ok()?;
        if base.links.cancel_action.is_some() {
            return Some("the server cancelled the deployment".into());
        }
        let ours = format!("/deploymentBase/{}", self.action);
        match &base.links.deployment_base {
            Some(l) if l.href.split('?').next().unwrap_or("").ends_with(&ours) => None,
            _ => Some("the server withdrew the deployment".into()),
        }
    }
}

impl Read for Counting {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.watch.last.elapsed() >= CANCEL_CHECK {
            self.watch.last = Instant::now();
            if let Some(why) = self.watch.cancelled() {
                tracing::info!(action = %self.watch.action, why, "download stopped");
                *self.watch.stopped.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.clone());
                return Err(std::io::Error::other(why));
            }
        }
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        if let Some(total) = self.total {
            while self.next <= 100 && self.done * 100 >= total * u64::from(self.next) {
                (self.report)(self.next);
                self.next += 25;
            }
        }
        Ok(n)
    }
}

/// The appliance, as the fleet client drives it (cairnd over D-Bus; a fake in tests).
pub trait Appliance {
    fn status(&self) -> Result<Status, String>;
    /// Installs a bundle from a stream; returns the new version's id.
    fn install(&self, bundle: Box<dyn Read + Send>) -> Result<String, String>;
    fn activate_trial(&self, id: &str) -> Result<(), String>;
    fn mark_failed(&self, id: &str, reason: &str) -> Result<(), String>;
    /// Reboots into the trial. On a real appliance this does not return.
    fn reboot(&self) -> Result<(), String>;
}

/// A deployment under way, kept across reboots.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", tag = "phase")]
pub enum Pending {
    /// Staged; the trial starts when the deployment still stands on the next cycle.
    Staged { action: String, id: String },
    /// The trial was started; its outcome is reported once known.
    Trial { action: String, id: String },
}

/// What one cycle did, for the log and the tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Idle,
    Waiting(String),
    Staged {
        action: String,
        id: String,
    },
    TrialStarted {
        action: String,
        id: String,
    },
    TrialPending {
        action: String,
        id: String,
    },
    Reported {
        action: String,
        finished: Finished,
        detail: String,
    },
    Cancelled {
        action: String,
        detail: String,
    },
    Rejected {
        action: String,
        detail: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("cairnd: {0}")]
    Appliance(String),
    #[error("the state file {file}: {detail}")]
    State { file: String, detail: String },
}

/// The client: configuration, server, where the pending deployment is kept.
#[derive(Debug)]
pub struct Client {
    pub cfg: Fleet,
    pub server: Server,
    pub state_file: PathBuf,
    /// The polling interval the server last asked for.
    pub sleep: std::cell::Cell<std::time::Duration>,
}

/// The wait after `failures` failed cycles in a row: 10 s doubling up to `cap`, so a
/// fleet does not hammer a server that is down, and finds it again soon after.
pub fn backoff(failures: u32, cap: std::time::Duration) -> std::time::Duration {
    let secs = 10u64.saturating_mul(1 << failures.saturating_sub(1).min(16));
    std::time::Duration::from_secs(secs).min(cap.max(std::time::Duration::from_secs(10)))
}

impl Client {
    pub fn new(cfg: Fleet, state_file: PathBuf) -> Result<Self, NetError> {
        let server = Server::new(&cfg)?;
        let sleep = std::cell::Cell::new(cfg.poll_default);
        Ok(Self {
            cfg,
            server,
            state_file,
            sleep,
        })
    }

    fn state_err(&self, detail: String) -> CycleError {
        CycleError::State {
            file: self.state_file.display().to_string(),
            detail,
        }
    }

    pub fn pending(&self) -> Result<Option<Pending>, CycleError> {
        match std::fs::read_to_string(&self.state_file) {
            Ok(t) => serde_json::from_str(&t)
                .map(Some)
                .map_err(|e| self.state_err(e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.state_err(e.to_string())),
        }
    }

    /// Written to a temporary file and renamed, so a power cut leaves the old or the new.
    fn set_pending(&self, p: Option<&Pending>) -> Result<(), CycleError> {
        let r = match p {
            None => match std::fs::remove_file(&self.state_file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
            Some(p) => {
                let tmp = self.state_file.with_extension("tmp");
                let text = serde_json::to_string(p).expect("pending serializes");
                std::fs::write(&tmp, text).and_then(|()| {
                    std::fs::File::open(&tmp)?.sync_all()?;
                    std::fs::rename(&tmp, &self.state_file)
                })
            }
        };
        r.map_err(|e| self.state_err(e.to_string()))
    }

    fn feedback(
        &self,
        action: &str,
        execution: Execution,
        finished: Finished,
        detail: &str,
    ) -> Result<(), CycleError> {
        tracing::info!(action, ?execution, ?finished, detail, "feedback");
        let fb = Feedback::new(action, execution, finished, &[detail]);
        Ok(self.server.feedback(false, &fb)?)
    }

    /// The attributes the server keeps for this appliance.
    pub fn attributes(&self, status: &Status) -> BTreeMap<String, String> {
        let mut a = BTreeMap::new();
        let running = status.running().unwrap_or("unknown").to_owned();
        a.insert("cairn_version".into(), env!("CARGO_PKG_VERSION").into());
        a.insert("hardware_id".into(), self.cfg.hardware_id.clone());
        a.insert("running_version".into(), running.clone());
        // The names goosebit (and SWUpdate's suricatta) match software against.
        a.insert("sw_version".into(), running);
        a.insert("hw_boardname".into(), "default".into());
        a.insert("hw_revision".into(), self.cfg.hardware_id.clone());
        a
    }

    /// One cycle. `Err` means the server or cairnd could not be used: back off, retry.
    pub fn cycle(&self, app: &dyn Appliance) -> Result<Outcome, CycleError> {
        let pending = self.pending()?;
        if let Some(Pending::Trial { action, id }) = &pending {
            return self.trial_outcome(app, action, id);
        }
        let base = self.server.poll()?;
        self.sleep.set(base.sleep(self.cfg.poll_default));
        if base.links.config_data.is_some() {
            let status = app.status().map_err(CycleError::Appliance)?;
            self.server
                .config_data(ddi::config_data(&self.attributes(&status)))?;
        }
        if let Some(link) = &base.links.cancel_action
            && let Some(c) = self.server.cancel_action(&link.href)?
        {
            return self.cancel(app, &c.id, &c.cancel_action.stop_id, pending.as_ref());
        }
        let deployment = match &base.links.deployment_base {
            Some(l) => self.server.deployment(&l.href)?,
            None => None,
        };
        let Some(d) = deployment else {
            if let Some(Pending::Staged { action, id }) = &pending {
                // Withdrawn (goosebit's way to cancel: the rollout paused or the device
                // reassigned): the staged version is never booted.
                return self.discard(
                    app,
                    action,
                    id,
                    "the server withdrew the deployment before its trial",
                );
            }
            return Ok(Outcome::Idle);
        };
        let staged_here = match &pending {
            Some(Pending::Staged { action, id }) if *action == d.id => Some(id.clone()),
            Some(Pending::Staged { action, id }) => {
                // A new deployment replaces the one staged for another action.
                self.discard(app, action, id, "replaced by a newer deployment")?;
                None
            }
            _ => None,
        };
        // What the appliance has of this version already: staged before a crash lost the
        // state file, or installed by other means.
        let staged_here = match staged_here {
            Some(id) => Some(id),
            None => {
                let status = app.status().map_err(CycleError::Appliance)?;
                let wanted: Vec<&str> = d
                    .deployment
                    .chunks
                    .iter()
                    .map(|c| c.version.as_str())
                    .collect();
                let have = match wanted.as_slice() {
                    [one] if !one.is_empty() => status.versions.iter().find(|v| v.version == *one),
                    _ => None,
                };
                match have {
                    Some(v) if v.is_booted && v.stored == "confirmed" => {
                        let detail = format!("{} already runs here, confirmed", v.version);
                        self.feedback(&d.id, Execution::Closed, Finished::Success, &detail)?;
                        return Ok(Outcome::Reported {
                            action: d.id,
                            finished: Finished::Success,
                            detail,
                        });
                    }
                    Some(v) if v.stored == "staged" => {
                        self.set_pending(Some(&Pending::Staged {
                            action: d.id.clone(),
                            id: v.id.clone(),
                        }))?;
                        Some(v.id.clone())
                    }
                    _ => None,
                }
            }
        };
        match ddi::decide(&d, staged_here.is_some(), self.cfg.attempt) {
            Decision::Wait { why } => Ok(Outcome::Waiting(why)),
            Decision::Reject { why } => {
                self.feedback(&d.id, Execution::Closed, Finished::Failure, &why)?;
                Ok(Outcome::Rejected {
                    action: d.id,
                    detail: why,
                })
            }
            Decision::Stage { artifact }
            | Decision::Install {
                artifact,
                staged: false,
            } => self.stage(app, &d.id, &artifact),
            Decision::Install { staged: true, .. } => {
                let id = staged_here.expect("staged");
                self.start_trial(app, &d.id, &id)
            }
        }
    }

    fn stage(
        &self,
        app: &dyn Appliance,
        action: &str,
        artifact: &ddi::Artifact,
    ) -> Result<Outcome, CycleError> {
        let url = artifact.download_url().expect("decide checked the link");
        self.feedback(
            action,
            Execution::Proceeding,
            Finished::None,
            &format!("downloading and staging {}", artifact.filename),
        )?;
        let body = self.server.download(url)?;
        let (bundle, size): (Box<dyn Read + Send>, Option<u64>) = match artifact.kind() {
            Some(ddi::ArtifactKind::Swu) => {
                let mut body = body;
                match cairn_bundle::swu::open_bundle(&mut body) {
                    Ok((_, _, size)) => (Box::new(body.take(size)), Some(size)),
                    Err(e) => {
                        let why = format!("{}: {e}", artifact.filename);
                        self.feedback(action, Execution::Closed, Finished::Failure, &why)?;
                        return Ok(Outcome::Rejected {
                            action: action.into(),
                            detail: why,
                        });
                    }
                }
            }
            _ => (body, artifact.size),
        };
        // Progress as SWUpdate words it ("Downloaded N%"), which goosebit shows.
        let server = self.server.clone();
        let id = action.to_owned();
        let report = move |pct: u32| {
            let fb = Feedback::new(
                &id,
                Execution::Proceeding,
                Finished::None,
                &[&format!("Downloaded {pct}%")],
            )
            .with_progress(pct, 100);
            if let Err(e) = server.feedback(false, &fb) {
                tracing::warn!(error = %e, "progress feedback");
            }
        };
        // While the download runs, the server is asked every CANCEL_CHECK whether the
        // deployment still stands; a cancel stops it (cairnd then stages nothing).
        let stopped = Arc::new(Mutex::new(None));
        let bundle: Box<dyn Read + Send> = Box::new(Counting {
            inner: bundle,
            total: size.filter(|t| *t > 0),
            done: 0,
            next: 25,
            report: Box::new(report),
            watch: Watch {
                server: self.server.clone(),
                action: action.to_owned(),
                last: Instant::now(),
                stopped: stopped.clone(),
            },
        });
        match app.install(bundle) {
            Ok(id) => {
                self.set_pending(Some(&Pending::Staged {
                    action: action.into(),
                    id: id.clone(),
                }))?;
                self.feedback(
                    action,
                    Execution::Downloaded,
                    Finished::None,
                    &format!("verified and staged as {id}"),
                )?;
                Ok(Outcome::Staged {
                    action: action.into(),
                    id,
                })
            }
            Err(_) if stopped.lock().unwrap_or_else(|e| e.into_inner()).is_some() => {
                let base = self.server.poll()?;
                if let Some(link) = &base.links.cancel_action
                    && let Some(c) = self.server.cancel_action(&link.href)?
                {
                    return self.cancel(app, &c.id, &c.cancel_action.stop_id, None);
                }
                let detail =
                    "the server withdrew the deployment during the download; nothing was staged"
                        .to_owned();
                if let Err(e) = self.feedback(action, Execution::Canceled, Finished::None, &detail)
                {
                    tracing::warn!(error = %e, "feedback on a withdrawn deployment");
                }
                Ok(Outcome::Cancelled {
                    action: action.into(),
                    detail,
                })
            }
            Err(why) => {
                let detail = format!("not installed: {why}");
                self.feedback(action, Execution::Closed, Finished::Failure, &detail)?;
                Ok(Outcome::Rejected {
                    action: action.into(),
                    detail,
                })
            }
        }
    }

    fn start_trial(
        &self,
        app: &dyn Appliance,
        action: &str,
        id: &str,
    ) -> Result<Outcome, CycleError> {
        app.activate_trial(id).map_err(CycleError::Appliance)?;
        self.set_pending(Some(&Pending::Trial {
            action: action.into(),
            id: id.into(),
        }))?;
        self.feedback(
            action,
            Execution::Proceeding,
            Finished::None,
            &format!("rebooting into {id} on trial"),
        )?;
        app.reboot().map_err(CycleError::Appliance)?;
        Ok(Outcome::TrialStarted {
            action: action.into(),
            id: id.into(),
        })
    }

    /// The trial's outcome, read from the appliance after the reboot.
    fn trial_outcome(
        &self,
        app: &dyn Appliance,
        action: &str,
        id: &str,
    ) -> Result<Outcome, CycleError> {
        let status = app.status().map_err(CycleError::Appliance)?;
        let running = status.running().unwrap_or("unknown").to_owned();
        let (finished, detail) = match status.version(id) {
            Some(v) if v.stored == "confirmed" => (
                Finished::Success,
                format!("{id} passed its health checks and was confirmed; running {running}"),
            ),
            Some(v) if v.stored == "failed" => (
                Finished::Failure,
                format!(
                    "{id} failed its trial ({}); fell back, running {running}",
                    v.failed_reason.as_deref().unwrap_or("no reason recorded")
                ),
            ),
            // The reboot did not happen (a crash right before it): ask again.
            Some(v) if v.is_trial && !v.is_booted && v.stored == "staged" => {
                tracing::warn!(id, "the trial is set but was not booted; rebooting");
                app.reboot().map_err(CycleError::Appliance)?;
                return Ok(Outcome::TrialStarted {
                    action: action.into(),
                    id: id.into(),
                });
            }
            Some(v) if !v.is_trial && !v.is_booted => (
                Finished::Failure,
                format!("{id} is no longer on trial and was not booted; running {running}"),
            ),
            Some(_) => {
                return Ok(Outcome::TrialPending {
                    action: action.into(),
                    id: id.into(),
                });
            }
            None => (
                Finished::Failure,
                format!("{id} is gone from the appliance; running {running}"),
            ),
        };
        self.feedback(action, Execution::Closed, finished, &detail)?;
        self.set_pending(None)?;
        // The server learns the running version at once.
        let _ = self
            .server
            .config_data(ddi::config_data(&self.attributes(&status)));
        Ok(Outcome::Reported {
            action: action.into(),
            finished,
            detail,
        })
    }

    /// A staged version whose deployment ended: marked failed so it is never booted
    /// (retention removes it first).
    fn discard(
        &self,
        app: &dyn Appliance,
        action: &str,
        id: &str,
        why: &str,
    ) -> Result<Outcome, CycleError> {
        app.mark_failed(id, &format!("deployment {action}: {why}"))
            .map_err(CycleError::Appliance)?;
        self.set_pending(None)?;
        let detail = format!("{why}; {id} was staged and is not booted");
        // Best effort: a withdrawn action may no longer take feedback.
        if let Err(e) = self.feedback(action, Execution::Canceled, Finished::None, &detail) {
            tracing::warn!(error = %e, "feedback on a withdrawn deployment");
        }
        Ok(Outcome::Cancelled {
            action: action.into(),
            detail,
        })
    }

    /// A `cancelAction`: what is staged is dropped; a trial already started is not
    /// undone (its outcome is reported), so that cancel is rejected.
    fn cancel(
        &self,
        app: &dyn Appliance,
        cancel_id: &str,
        stop_id: &str,
        pending: Option<&Pending>,
    ) -> Result<Outcome, CycleError> {
        let (execution, finished, detail) = match pending {
            Some(Pending::Trial { action, .. }) if action == stop_id => (
                Execution::Rejected,
                Finished::Failure,
                "the trial boot has started; its outcome will be reported".to_owned(),
            ),
            Some(Pending::Staged { action, id }) if action == stop_id => {
                app.mark_failed(id, &format!("deployment {action} cancelled by the server"))
                    .map_err(CycleError::Appliance)?;
                self.set_pending(None)?;
                (
                    Execution::Closed,
                    Finished::Success,
                    format!("cancelled; {id} was staged and is not booted"),
                )
            }
            _ => (
                Execution::Closed,
                Finished::Success,
                "cancelled; nothing had been staged".to_owned(),
            ),
        };
        let fb = Feedback::new(cancel_id, execution, finished, &[&detail]);
        self.server.feedback(true, &fb)?;
        Ok(Outcome::Cancelled {
            action: stop_id.into(),
            detail,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_from_ten_seconds_up_to_the_poll_interval() {
        let cap = Duration::from_secs(300);
        let waits: Vec<u64> = (1..=7).map(|n| backoff(n, cap).as_secs()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(backoff(u32::MAX, cap), cap);
        // A tiny poll interval does not make the client hammer a broken server.
        assert_eq!(backoff(1, Duration::from_secs(1)), Duration::from_secs(10));
    }

    #[test]
    fn pending_survives_as_json_with_its_phase() {
        let p = Pending::Trial {
            action: "7".into(),
            id: "2.0".into(),
        };
        let text = serde_json::to_string(&p).unwrap();
        assert_eq!(text, r#"{"phase":"trial","action":"7","id":"2.0"}"#);
        assert_eq!(serde_json::from_str::<Pending>(&text).unwrap(), p);
    }
}
