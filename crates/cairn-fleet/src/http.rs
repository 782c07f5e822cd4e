//! The DDI transport: one HTTP(S) agent, the controller's token on every request, the
//! server's CA when the configuration names one. Every failure is a [`NetError`] the
//! service backs off on; nothing here panics on what a server sends.

use std::io::Read;
use std::time::Duration;

use crate::config::Fleet;
use crate::ddi::{CancelAction, ControllerBase, DdiError, DeploymentBase, Feedback};

/// JSON documents larger than this are not DDI documents.
const DOCUMENT_LIMIT: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("the server cannot be reached: {0}")]
    Unreachable(String),
    #[error(
        "the server refused this controller's token ({status} to {what}): check token_file and token_kind in the configuration"
    )]
    Refused { what: String, status: u16 },
    #[error("the server answered {status} to {what}")]
    Status { what: String, status: u16 },
    #[error(transparent)]
    Garbage(#[from] DdiError),
    #[error("the CA file {file}: {detail}")]
    Ca { file: String, detail: String },
}

/// A DDI server, as one controller sees it.
#[derive(Debug, Clone)]
pub struct Server {
    agent: ureq::Agent,
    base: String,
    authorization: String,
}

impl Server {
    pub fn new(cfg: &Fleet) -> Result<Self, NetError> {
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .user_agent(concat!("cairn-fleet/", env!("CARGO_PKG_VERSION")));
        if let Some(file) = &cfg.ca_file {
            let ca = |detail: String| NetError::Ca {
                file: file.display().to_string(),
                detail,
            };
            let pem = std::fs::read(file).map_err(|e| ca(e.to_string()))?;
            let mut certs = Vec::new();
            for item in ureq::tls::parse_pem(&pem) {
                if let ureq::tls::PemItem::Certificate(c) = item.map_err(|e| ca(e.to_string()))? {
                    certs.push(c);
                }
            }
            if certs.is_empty() {
                return Err(ca("holds no PEM certificate".into()));
            }
            config = config.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                    .build(),
            );
        }
        Ok(Self {
            agent: config.build().into(),
            base: cfg.base_url(),
            authorization: cfg.authorization(),
        })
    }

    /// Links the server hands out must stay on the server (a token is sent with them).
    fn on_server(&self, href: &str) -> Result<(), NetError> {
        let origin = |u: &str| -> String { u.splitn(4, '/').take(3).collect::<Vec<_>>().join("/") };
        if origin(href) == origin(&self.base) {
            Ok(())
        } else {
            Err(DdiError::Garbage(format!("a link off the server: {href}")).into())
        }
    }

    fn get_text(&self, url: &str, what: &str) -> Result<Option<String>, NetError> {
        let mut r = self
            .agent
            .get(url)
            .header("Authorization", &self.authorization)
            .header("Accept", "application/hal+json, application/json")
            .call()
            .map_err(|e| NetError::Unreachable(e.to_string()))?;
        match r.status().as_u16() {
            200 => {}
            404 | 410 => return Ok(None),
            status @ (401 | 403) => {
                return Err(NetError::Refused {
                    what: what.into(),
                    status,
                });
            }
            status => {
                return Err(NetError::Status {
                    what: what.into(),
                    status,
                });
            }
        }
        let text = r
            .body_mut()
            .with_config()
            .limit(DOCUMENT_LIMIT)
            .read_to_string()
            .map_err(|e| DdiError::Garbage(e.to_string()))?;
        Ok(Some(text))
    }

    fn send_json(&self, put: bool, url: &str, body: String, what: &str) -> Result<(), NetError> {
        let req = if put {
            self.agent.put(url)
        } else {
            self.agent.post(url)
        };
        let r = req
            .header("Authorization", &self.authorization)
            .header("Content-Type", "application/json")
            .send(body)
            .map_err(|e| NetError::Unreachable(e.to_string()))?;
        match r.status().as_u16() {
            200..=204 => Ok(()),
            status @ (401 | 403) => Err(NetError::Refused {
                what: what.into(),
                status,
            }),
            status => Err(NetError::Status {
                what: what.into(),
                status,
            }),
        }
    }

    /// The controller base: when to poll again and what waits.
    pub fn poll(&self) -> Result<ControllerBase, NetError> {
        let text = self
            .get_text(&self.base, "the poll")?
            .ok_or(NetError::Status {
                what: "the poll (is the controller id known to the server?)".into(),
                status: 404,
            })?;
        Ok(ControllerBase::parse(&text)?)
    }

    /// The deployment behind a `deploymentBase` link; `None` when the server has
    /// withdrawn it (404, or goosebit's `null`).
    pub fn deployment(&self, href: &str) -> Result<Option<DeploymentBase>, NetError> {
        self.on_server(href)?;
        match self.get_text(href, "the deployment")? {
            None => Ok(None),
            Some(t) if t.trim() == "null" => Ok(None),
            Some(t) => Ok(Some(DeploymentBase::parse(&t)?)),
        }
    }

    pub fn cancel_action(&self, href: &str) -> Result<Option<CancelAction>, NetError> {
        self.on_server(href)?;
        match self.get_text(href, "the cancel action")? {
            None => Ok(None),
            Some(t) => Ok(Some(CancelAction::parse(&t)?)),
        }
    }

    /// Feedback on a deployment (`cancel: false`) or on a cancel action.
    pub fn feedback(&self, cancel: bool, fb: &Feedback) -> Result<(), NetError> {
        let kind = if cancel {
            "cancelAction"
        } else {
            "deploymentBase"
        };
        let url = format!("{}/{kind}/{}/feedback", self.base, fb.id);
        self.send_json(false, &url, fb.json(), "feedback")
    }

    pub fn config_data(&self, body: String) -> Result<(), NetError> {
        let url = format!("{}/configData", self.base);
        self.send_json(true, &url, body, "the attributes")
    }

    /// The artifact as a stream.
    pub fn download(&self, href: &str) -> Result<Box<dyn Read + Send>, NetError> {
        self.on_server(href)?;
        let r = self
            .agent
            .get(href)
            .header("Authorization", &self.authorization)
            .call()
            .map_err(|e| NetError::Unreachable(e.to_string()))?;
        match r.status().as_u16() {
            200 => Ok(Box::new(r.into_body().into_reader())),
            status @ (401 | 403) => Err(NetError::Refused {
                what: "the download".into(),
                status,
            }),
            status => Err(NetError::Status {
                what: "the download".into(),
                status,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(url: &str) -> Server {
        let cfg = Fleet::from_yaml(
            &format!("server: {url}\ncontroller_id: box-1\ntoken_file: /t\n"),
            "fleet.yaml",
            &|_| Ok("tok".into()),
        )
        .unwrap();
        Server::new(&cfg).unwrap()
    }

    #[test]
    fn links_off_the_server_are_refused_before_any_request() {
        let s = server("http://127.0.0.1:1");
        for href in [
            "http://evil.example/DEFAULT/controller/v1/box-1/deploymentBase/1",
            "https://127.0.0.1:1/x",
            "http://127.0.0.1:2/x",
        ] {
            assert!(
                matches!(s.deployment(href), Err(NetError::Garbage(_))),
                "{href}"
            );
            assert!(matches!(s.download(href), Err(NetError::Garbage(_))));
        }
    }

    #[test]
    fn a_server_that_is_down_is_unreachable() {
        // Port 1 on loopback: nothing listens there.
        let s = server("http://127.0.0.1:1");
        assert!(matches!(s.poll(), Err(NetError::Unreachable(_))));
    }

    #[test]
    fn a_ca_file_without_certificates_is_named() {
        let dir = std::env::temp_dir().join(format!("cairn-fleet-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, "not a certificate\n").unwrap();
        let cfg = Fleet::from_yaml(
            &format!(
                "server: https://h\ncontroller_id: b\ntoken_file: /t\nca_file: {}\n",
                ca.display()
            ),
            "fleet.yaml",
            &|_| Ok("tok".into()),
        )
        .unwrap();
        let e = Server::new(&cfg).unwrap_err().to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
