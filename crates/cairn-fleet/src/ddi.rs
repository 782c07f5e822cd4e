//! The hawkBit DDI documents cairn reads and writes, and what it does with a deployment.
//! Field names follow the DDI API (`/{tenant}/controller/v1/{controllerId}`...).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DdiError {
    #[error("the server's answer is not a DDI document: {0}")]
    Garbage(String),
    #[error("the polling interval '{0}' is not HH:MM:SS")]
    BadSleep(String),
}

/// A link in a DDI document.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Link {
    pub href: String,
}

/// `GET /{tenant}/controller/v1/{controllerId}`: when to poll again and what is waiting.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ControllerBase {
    #[serde(default)]
    pub config: Option<BaseConfig>,
    #[serde(rename = "_links", default)]
    pub links: BaseLinks,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct BaseConfig {
    pub polling: Polling,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Polling {
    pub sleep: String,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct BaseLinks {
    #[serde(rename = "deploymentBase")]
    pub deployment_base: Option<Link>,
    #[serde(rename = "cancelAction")]
    pub cancel_action: Option<Link>,
    #[serde(rename = "configData")]
    pub config_data: Option<Link>,
}

impl ControllerBase {
    pub fn parse(body: &str) -> Result<Self, DdiError> {
        serde_json::from_str(body).map_err(|e| DdiError::Garbage(e.to_string()))
    }

    /// The interval the server asks for, bounded to [10 s, 1 day] (a server that says
    /// `00:00:00` must not make a fleet hammer it).
    pub fn sleep(&self, default: Duration) -> Duration {
        self.config
            .as_ref()
            .and_then(|c| parse_sleep(&c.polling.sleep).ok())
            .unwrap_or(default)
            .clamp(Duration::from_secs(10), Duration::from_secs(86_400))
    }
}

/// `HH:MM:SS` as DDI writes polling intervals.
pub fn parse_sleep(s: &str) -> Result<Duration, DdiError> {
    let bad = || DdiError::BadSleep(s.to_owned());
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 3 {
        return Err(bad());
    }
    let mut secs = 0u64;
    for (p, max) in parts.iter().zip([u64::MAX, 59, 59]) {
        let v: u64 = p.parse().map_err(|_| bad())?;
        if v > max || p.is_empty() {
            return Err(bad());
        }
        secs = secs
            .checked_mul(60)
            .and_then(|s| s.checked_add(v))
            .ok_or_else(bad)?;
    }
    Ok(Duration::from_secs(secs))
}

/// `skip`, `attempt` or `forced`, for the download and for the update.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Handling {
    Skip,
    Attempt,
    Forced,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Window {
    Available,
    Unavailable,
}

/// `GET .../deploymentBase/{actionId}`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct DeploymentBase {
    pub id: String,
    pub deployment: Deployment,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Deployment {
    pub download: Handling,
    pub update: Handling,
    #[serde(rename = "maintenanceWindow", default)]
    pub maintenance_window: Option<Window>,
    #[serde(default)]
    pub chunks: Vec<Chunk>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Chunk {
    #[serde(default)]
    pub part: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub artifacts: Vec<Artifact>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Artifact {
    pub filename: String,
    #[serde(default)]
    pub hashes: BTreeMap<String, String>,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(rename = "_links", default)]
    pub links: BTreeMap<String, Link>,
}

impl Artifact {
    /// Where to download it: the plain HTTP(S) link DDI offers (`download-http` or
    /// `download`).
    pub fn download_url(&self) -> Option<&str> {
        ["download-http", "download"]
            .iter()
            .find_map(|k| self.links.get(*k))
            .map(|l| l.href.as_str())
    }

    /// A cairn bundle, bare or wrapped as an SWU file.
    pub fn kind(&self) -> Option<ArtifactKind> {
        let f = self.filename.to_ascii_lowercase();
        if f.ends_with(".cairn") {
            Some(ArtifactKind::Bundle)
        } else if f.ends_with(".swu") {
            Some(ArtifactKind::Swu)
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArtifactKind {
    Bundle,
    Swu,
}

impl DeploymentBase {
    pub fn parse(body: &str) -> Result<Self, DdiError> {
        serde_json::from_str(body).map_err(|e| DdiError::Garbage(e.to_string()))
    }
}

/// `GET .../cancelAction/{actionId}`: the action to stop.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct CancelAction {
    pub id: String,
    #[serde(rename = "cancelAction")]
    pub cancel_action: StopId,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct StopId {
    #[serde(rename = "stopId")]
    pub stop_id: String,
}

impl CancelAction {
    pub fn parse(body: &str) -> Result<Self, DdiError> {
        serde_json::from_str(body).map_err(|e| DdiError::Garbage(e.to_string()))
    }
}

/// How the client's policy treats `attempt` (the server leaves it to the device).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum AttemptPolicy {
    /// Install and try it, as for `forced`.
    #[default]
    Install,
    /// Download and stage it; the operator activates it (`cairnctl activate --try`).
    StageOnly,
}

/// What to do with a deployment, given what is done already.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing now (`skip`); poll again.
    Wait { why: String },
    /// Download, verify and stage only; no trial yet (maintenance window closed, or the
    /// policy for `attempt`). Reported as `downloaded`.
    Stage { artifact: Artifact },
    /// Download, verify, stage (unless staged already) and start the trial boot.
    Install { artifact: Artifact, staged: bool },
    /// Nothing here cairn can install: closed with failure, saying why.
    Reject { why: String },
}

/// The rule, in one place: handling types, maintenance window, artifact choice.
pub fn decide(d: &DeploymentBase, staged: bool, attempt: AttemptPolicy) -> Decision {
    let dep = &d.deployment;
    if dep.download == Handling::Skip {
        return Decision::Wait {
            why: "the server says skip".into(),
        };
    }
    let all: Vec<&Artifact> = dep.chunks.iter().flat_map(|c| &c.artifacts).collect();
    let ours: Vec<&Artifact> = all.iter().copied().filter(|a| a.kind().is_some()).collect();
    let artifact = match ours.as_slice() {
        [] => {
            let names: Vec<&str> = all.iter().map(|a| a.filename.as_str()).collect();
            return Decision::Reject {
                why: format!(
                    "no cairn bundle (.cairn, or .swu holding one) among the artifacts [{}]",
                    names.join(", ")
                ),
            };
        }
        [one] => (*one).clone(),
        many => {
            return Decision::Reject {
                why: format!(
                    "{} bundles in one deployment; cairn installs one version at a time",
                    many.len()
                ),
            };
        }
    };
    if artifact.download_url().is_none() {
        return Decision::Reject {
            why: format!("the artifact {} has no download link", artifact.filename),
        };
    }
    let window_closed = dep.maintenance_window == Some(Window::Unavailable);
    let install_now = match dep.update {
        Handling::Skip => false,
        Handling::Attempt => attempt == AttemptPolicy::Install,
        Handling::Forced => true,
    };
    if install_now && !window_closed {
        Decision::Install { artifact, staged }
    } else if staged {
        Decision::Wait {
            why: if window_closed {
                "staged; waiting for the maintenance window".into()
            } else {
                "staged; waiting for the update to be allowed".into()
            },
        }
    } else {
        Decision::Stage { artifact }
    }
}

/// `execution` in feedback.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Execution {
    Proceeding,
    Downloaded,
    Closed,
    Canceled,
    Rejected,
}

/// `result.finished` in feedback.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Finished {
    None,
    Success,
    Failure,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Progress {
    pub cnt: u32,
    pub of: u32,
}

/// A feedback document for `.../deploymentBase/{id}/feedback` or
/// `.../cancelAction/{id}/feedback`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Feedback {
    pub id: String,
    pub status: FeedbackStatus,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FeedbackStatus {
    pub execution: Execution,
    pub result: FeedbackResult,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FeedbackResult {
    pub finished: Finished,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
}

impl Feedback {
    pub fn new(id: &str, execution: Execution, finished: Finished, details: &[&str]) -> Self {
        Self {
            id: id.to_owned(),
            status: FeedbackStatus {
                execution,
                result: FeedbackResult {
                    finished,
                    progress: None,
                },
                details: details.iter().map(|d| d.to_string()).collect(),
            },
        }
    }

    pub fn with_progress(mut self, cnt: u32, of: u32) -> Self {
        self.status.result.progress = Some(Progress { cnt, of });
        self
    }

    pub fn json(&self) -> String {
        serde_json::to_string(self).expect("feedback serializes")
    }
}

/// `PUT .../configData`: the appliance's attributes, merged into what the server has.
pub fn config_data(attributes: &BTreeMap<String, String>) -> String {
    serde_json::json!({ "mode": "merge", "data": attributes }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deployment as hawkBit's DDI documentation shows one (trimmed).
    const DEPLOYMENT: &str = r#"{
      "id": "8",
      "deployment": {
        "download": "forced",
        "update": "forced",
        "maintenanceWindow": "available",
        "chunks": [{
          "part": "os", "version": "2.0", "name": "demo",
          "artifacts": [{
            "filename": "demo-2.swu",
            "hashes": {"sha1": "aa", "md5": "bb", "sha256": "cc"},
            "size": 1234,
            "_links": {
              "download-http": {"href": "http://127.0.0.1:60053/DEFAULT/controller/v1/box-1/softwaremodules/1/artifacts/demo-2.swu"},
              "md5sum-http": {"href": "http://127.0.0.1:60053/x.MD5SUM"}
            }
          }]
        }]
      },
      "actionHistory": {"status": "RUNNING", "messages": []}
    }"#;

    fn deployment(download: &str, update: &str, window: Option<&str>) -> DeploymentBase {
        let mut v: serde_json::Value = serde_json::from_str(DEPLOYMENT).unwrap();
        v["deployment"]["download"] = download.into();
        v["deployment"]["update"] = update.into();
        match window {
            Some(w) => v["deployment"]["maintenanceWindow"] = w.into(),
            None => {
                v["deployment"]
                    .as_object_mut()
                    .unwrap()
                    .remove("maintenanceWindow");
            }
        }
        DeploymentBase::parse(&v.to_string()).unwrap()
    }

    #[test]
    fn the_controller_base_gives_the_interval_and_the_links() {
        let b = ControllerBase::parse(
            r#"{"config":{"polling":{"sleep":"00:05:00"}},"_links":{"deploymentBase":{"href":"http://s/d/8?c=-1"},"configData":{"href":"http://s/c"}}}"#,
        )
        .unwrap();
        assert_eq!(b.sleep(Duration::from_secs(60)), Duration::from_secs(300));
        assert_eq!(b.links.deployment_base.unwrap().href, "http://s/d/8?c=-1");
        assert!(b.links.cancel_action.is_none());
        let bare = ControllerBase::parse(r#"{"_links":{}}"#).unwrap();
        assert_eq!(bare.sleep(Duration::from_secs(60)), Duration::from_secs(60));
        let eager =
            ControllerBase::parse(r#"{"config":{"polling":{"sleep":"00:00:00"}}}"#).unwrap();
        assert_eq!(
            eager.sleep(Duration::from_secs(60)),
            Duration::from_secs(10),
            "bounded below"
        );
    }

    #[test]
    fn polling_intervals_parse_strictly() {
        assert_eq!(parse_sleep("01:02:03").unwrap(), Duration::from_secs(3723));
        assert_eq!(
            parse_sleep("48:00:00").unwrap(),
            Duration::from_secs(172_800)
        );
        for bad in [
            "", "5", "00:60:00", "00:00:61", "a:b:c", "00::00", "-1:00:00",
        ] {
            assert_eq!(
                parse_sleep(bad),
                Err(DdiError::BadSleep(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn garbage_is_a_named_error() {
        for body in ["", "<html>502</html>", "{\"id\": 3}", "null"] {
            assert!(
                matches!(DeploymentBase::parse(body), Err(DdiError::Garbage(_))),
                "{body}"
            );
        }
        assert!(matches!(
            ControllerBase::parse("[1,2]"),
            Err(DdiError::Garbage(_))
        ));
    }

    #[test]
    fn handling_types_and_the_maintenance_window_decide() {
        use AttemptPolicy::*;
        let install = |d: &DeploymentBase, staged, p| {
            matches!(decide(d, staged, p), Decision::Install { .. })
        };
        let stage =
            |d: &DeploymentBase, staged, p| matches!(decide(d, staged, p), Decision::Stage { .. });
        let wait =
            |d: &DeploymentBase, staged, p| matches!(decide(d, staged, p), Decision::Wait { .. });
        let forced = deployment("forced", "forced", Some("available"));
        assert!(install(&forced, false, Install));
        assert!(
            install(&forced, false, StageOnly),
            "forced ignores the attempt policy"
        );
        let attempt = deployment("attempt", "attempt", None);
        assert!(install(&attempt, false, Install));
        assert!(stage(&attempt, false, StageOnly));
        assert!(
            wait(&attempt, true, StageOnly),
            "staged already: nothing more to do"
        );
        let closed = deployment("forced", "forced", Some("unavailable"));
        assert!(
            stage(&closed, false, Install),
            "window closed: download and stage only"
        );
        assert!(wait(&closed, true, Install));
        assert!(install(
            &deployment("forced", "forced", Some("available")),
            true,
            Install
        ));
        assert!(wait(&deployment("skip", "forced", None), false, Install));
        assert!(stage(&deployment("attempt", "skip", None), false, Install));
    }

    #[test]
    fn a_deployment_without_exactly_one_bundle_is_rejected_with_the_reason() {
        let mut v: serde_json::Value = serde_json::from_str(DEPLOYMENT).unwrap();
        v["deployment"]["chunks"][0]["artifacts"][0]["filename"] = "rootfs.raucb".into();
        let d = DeploymentBase::parse(&v.to_string()).unwrap();
        match decide(&d, false, AttemptPolicy::Install) {
            Decision::Reject { why } => assert!(why.contains("rootfs.raucb"), "{why}"),
            other => panic!("{other:?}"),
        }
        let mut v: serde_json::Value = serde_json::from_str(DEPLOYMENT).unwrap();
        let a = v["deployment"]["chunks"][0]["artifacts"][0].clone();
        v["deployment"]["chunks"][0]["artifacts"] = serde_json::json!([a.clone(), a]);
        let d = DeploymentBase::parse(&v.to_string()).unwrap();
        assert!(matches!(
            decide(&d, false, AttemptPolicy::Install),
            Decision::Reject { .. }
        ));
    }

    #[test]
    fn feedback_and_config_data_are_what_ddi_expects() {
        let f = Feedback::new(
            "8",
            Execution::Closed,
            Finished::Failure,
            &["trial of 2 failed its health check: demo-app"],
        )
        .with_progress(3, 3);
        let v: serde_json::Value = serde_json::from_str(&f.json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "id": "8",
                "status": {
                    "execution": "closed",
                    "result": {"finished": "failure", "progress": {"cnt": 3, "of": 3}},
                    "details": ["trial of 2 failed its health check: demo-app"]
                }
            })
        );
        let ok = Feedback::new("8", Execution::Proceeding, Finished::None, &[]);
        assert!(!ok.json().contains("details"), "{}", ok.json());
        let attrs: BTreeMap<String, String> = [("hardware".into(), "demo-x86".into())].into();
        assert_eq!(
            config_data(&attrs),
            r#"{"data":{"hardware":"demo-x86"},"mode":"merge"}"#
        );
    }

    #[test]
    fn a_cancel_action_names_the_action_to_stop() {
        let c = CancelAction::parse(r#"{"id":"11","cancelAction":{"stopId":"8"}}"#).unwrap();
        assert_eq!(
            (c.id.as_str(), c.cancel_action.stop_id.as_str()),
            ("11", "8")
        );
    }
}
