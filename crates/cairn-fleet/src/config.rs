//! The fleet client's configuration (`/etc/cairn/fleet.yaml`):
//!
//! ```yaml
//! server: https://updates.example.com   # the DDI server's base URL
//! tenant: DEFAULT
//! controller_id: box-0042               # this appliance's id on the server
//! token_file: /etc/cairn/fleet.token    # the token, alone in a file (mode 0600)
//! token_kind: target                    # target (TargetToken) or gateway (GatewayToken)
//! ca_file: /etc/cairn/fleet-ca.pem      # optional: the server's CA, PEM
//! poll_default: 300                     # seconds, until the server says otherwise
//! attempt: install                      # or stage-only: how `attempt` deployments go
//! ```
//!
//! The token is read from its file and kept out of every `Debug` and log line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::ddi::AttemptPolicy;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {detail}")]
    Invalid { file: String, detail: String },
    #[error("reading {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    #[default]
    Target,
    Gateway,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct FleetFile {
    server: String,
    #[serde(default = "default_tenant")]
    tenant: String,
    controller_id: String,
    token_file: PathBuf,
    #[serde(default)]
    token_kind: TokenKind,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default = "default_poll")]
    poll_default: u64,
    #[serde(default)]
    attempt: AttemptPolicy,
    #[serde(default = "default_hardware")]
    hardware_id: String,
    #[serde(default = "default_reboot")]
    reboot_command: Vec<String>,
}

fn default_hardware() -> String {
    "demo-x86".into()
}

fn default_reboot() -> Vec<String> {
    vec!["/usr/bin/systemctl".into(), "reboot".into()]
}

fn default_tenant() -> String {
    "DEFAULT".into()
}

fn default_poll() -> u64 {
    300
}

/// A secret that prints as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(***)")
    }
}

/// The configuration, checked, with the token read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fleet {
    pub server: String,
    pub tenant: String,
    pub controller_id: String,
    pub token_kind: TokenKind,
    token: Token,
    pub ca_file: Option<PathBuf>,
    pub poll_default: Duration,
    pub attempt: AttemptPolicy,
    /// This appliance's hardware id (as bundles list it), sent as an attribute.
    pub hardware_id: String,
    /// How to reboot into a trial (argv).
    pub reboot_command: Vec<String>,
}

impl Fleet {
    /// Reads `file` and the token file it names.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Io {
            what: file.display().to_string(),
            source,
        })?;
        Self::from_yaml(&text, &file.display().to_string(), &|p| {
            std::fs::read_to_string(p)
        })
    }

    /// Parses and checks the YAML; `read` fetches the token file.
    pub fn from_yaml(
        text: &str,
        name: &str,
        read: &dyn Fn(&Path) -> std::io::Result<String>,
    ) -> Result<Self, ConfigError> {
        let bad = |detail: String| ConfigError::Invalid {
            file: name.to_owned(),
            detail,
        };
        let f: FleetFile = serde_saphyr::from_str(text).map_err(|e| bad(e.to_string()))?;
        let server = f.server.trim_end_matches('/').to_owned();
        if !(server.starts_with("https://") || server.starts_with("http://")) {
            return Err(bad(format!("server '{server}' is not an http(s) URL")));
        }
        let safe = |what: &str, v: &str| {
            if v.is_empty()
                || !v
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                Err(bad(format!(
                    "{what} '{v}' must be letters, digits, '-', '_' or '.' (it goes into URLs)"
                )))
            } else {
                Ok(())
            }
        };
        safe("tenant", &f.tenant)?;
        safe("controller_id", &f.controller_id)?;
        let token = read(&f.token_file).map_err(|source| ConfigError::Io {
            what: format!("the token file {}", f.token_file.display()),
            source,
        })?;
        let token = token.trim().to_owned();
        if token.is_empty() || token.contains(char::is_whitespace) {
            return Err(bad(format!(
                "the token file {} must hold one token",
                f.token_file.display()
            )));
        }
        if f.reboot_command.is_empty() {
            return Err(bad("reboot_command is empty".into()));
        }
        Ok(Self {
            server,
            tenant: f.tenant,
            controller_id: f.controller_id,
            token_kind: f.token_kind,
            token: Token(token),
            ca_file: f.ca_file,
            poll_default: Duration::from_secs(f.poll_default.max(10)),
            attempt: f.attempt,
            hardware_id: f.hardware_id,
            reboot_command: f.reboot_command,
        })
    }

    /// The controller's base resource.
    pub fn base_url(&self) -> String {
        format!(
            "{}/{}/controller/v1/{}",
            self.server, self.tenant, self.controller_id
        )
    }

    /// The `Authorization` header's value. The only way the token leaves this struct.
    pub fn authorization(&self) -> String {
        match self.token_kind {
            TokenKind::Target => format!("TargetToken {}", self.token.0),
            TokenKind::Gateway => format!("GatewayToken {}", self.token.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "s3cr3t-t0ken";

    fn read(_: &Path) -> std::io::Result<String> {
        Ok(format!("{SECRET}\n"))
    }

    #[test]
    fn a_config_loads_with_defaults_and_never_shows_its_token() {
        let f = Fleet::from_yaml(
            "server: http://127.0.0.1:60053/\ncontroller_id: box-1\ntoken_file: /etc/cairn/fleet.token\n",
            "fleet.yaml",
            &read,
        )
        .unwrap();
        assert_eq!(
            f.base_url(),
            "http://127.0.0.1:60053/DEFAULT/controller/v1/box-1"
        );
        assert_eq!(f.authorization(), format!("TargetToken {SECRET}"));
        assert_eq!(f.poll_default, Duration::from_secs(300));
        assert_eq!(f.attempt, AttemptPolicy::Install);
        let shown = format!("{f:?}");
        assert!(!shown.contains(SECRET) && shown.contains("***"), "{shown}");
    }

    #[test]
    fn bad_configs_are_refused_with_the_reason() {
        let cases = [
            (
                "server: ftp://x\ncontroller_id: a\ntoken_file: /t\n",
                "not an http(s) URL",
            ),
            (
                "server: http://x\ncontroller_id: a/../b\ntoken_file: /t\n",
                "controller_id",
            ),
            (
                "server: http://x\ncontroller_id: a\ntoken_file: /t\ncolour: red\n",
                "colour",
            ),
            ("server: http://x\ntoken_file: /t\n", "controller_id"),
        ];
        for (yaml, want) in cases {
            let e = Fleet::from_yaml(yaml, "fleet.yaml", &read)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(want) && e.starts_with("fleet.yaml"),
                "{yaml}: {e}"
            );
        }
        let two = |_: &Path| Ok("one two".to_string());
        let e = Fleet::from_yaml(
            "server: http://x\ncontroller_id: a\ntoken_file: /t\n",
            "f",
            &two,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("one token") && !e.contains("one two"), "{e}");
        let gw = Fleet::from_yaml(
            "server: https://x\ncontroller_id: a\ntoken_file: /t\ntoken_kind: gateway\nattempt: stage-only\n",
            "f",
            &read,
        )
        .unwrap();
        assert!(gw.authorization().starts_with("GatewayToken "));
        assert_eq!(gw.attempt, AttemptPolicy::StageOnly);
    }
}
