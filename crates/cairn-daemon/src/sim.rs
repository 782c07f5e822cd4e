//! `org.cairn.Simulator1`: served only by `cairnd --sim`, to drive the simulated machine
//! (reboot through the simulated boot loader) so trials, fallbacks and confirms can be
//! tried from the command line.

use std::sync::Arc;

use cairn_engine::{SimHost, VersionId};
use zbus::interface;

use crate::api::Error;
use crate::service::Shared;

pub const SIM_PATH: &str = "/org/cairn/Simulator1";

pub struct Simulator {
    pub shared: Arc<Shared>,
    pub host: Arc<SimHost>,
    pub baked: VersionId,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("baked", &self.baked)
            .finish_non_exhaustive()
    }
}

#[interface(name = "org.cairn.Simulator1")]
impl Simulator {
    /// Reboots the simulated appliance: the boot loader decides from the boot state, then
    /// cairnd reconciles as it does on start. Returns the version booted and why.
    async fn reboot(&self) -> Result<(String, String), Error> {
        let host = self.host.clone();
        let baked = self.baked.clone();
        let engine = self.shared.engine.clone();
        tokio::task::spawn_blocking(move || {
            let b = host.reboot(&baked)?;
            engine.reconcile("boot")?;
            Ok::<_, cairn_engine::EngineError>((b.version.to_string(), b.kind.as_str().to_owned()))
        })
        .await
        .map_err(|e| Error::Failed(e.to_string()))?
        .map_err(Error::from)
    }
}
