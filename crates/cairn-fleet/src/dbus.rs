//! The appliance through cairnd's D-Bus API, the same path `cairnctl` takes: installs go
//! through cairnd's verification and staging, never around them.

use std::io::Read;
use std::time::Duration;

use cairn_daemon::api::{JobProxy, UpdaterProxy};
use cairn_zfs::cmd::{Cmd, Runner};

use crate::service::{Appliance, Status};

/// cairnd on a bus, and how this appliance reboots.
#[derive(Debug)]
pub struct Cairnd {
    rt: tokio::runtime::Runtime,
    conn: zbus::Connection,
    reboot: Vec<String>,
}

fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl Cairnd {
    /// Connects to `address`, or to the system bus.
    pub fn connect(address: Option<&str>, reboot: Vec<String>) -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let conn = rt.block_on(async {
            match address {
                Some(a) => zbus::connection::Builder::address(a).build().await,
                None => zbus::Connection::system().await,
            }
        })?;
        Ok(Self { rt, conn, reboot })
    }

    fn updater(&self) -> Result<UpdaterProxy<'static>, String> {
        self.rt
            .block_on(UpdaterProxy::new(&self.conn))
            .map_err(text)
    }

    /// Waits for a job to end; its result, or why it failed.
    fn wait_job(&self, path: zbus::OwnedObjectPath) -> Result<String, String> {
        self.rt.block_on(async {
            let job = JobProxy::builder(&self.conn)
                .path(path)
                .cache_properties(zbus::proxy::CacheProperties::No)
                .build()
                .await
                .map_err(text)?;
            while job.state().await.map_err(text)? == "running" {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            match job.state().await.map_err(text)?.as_str() {
                "done" => job.result().await.map_err(text),
                state => {
                    let name = job.error_name().await.map_err(text)?;
                    let msg = job.error_message().await.map_err(text)?;
                    Err(format!("{state}: {name}: {msg}"))
                }
            }
        })
    }
}

impl Appliance for Cairnd {
    fn status(&self) -> Result<Status, String> {
        let p = self.updater()?;
        let json = self.rt.block_on(p.get_status()).map_err(text)?;
        #[derive(serde::Deserialize)]
        struct Envelope {
            data: Status,
        }
        serde_json::from_str::<Envelope>(&json)
            .map(|e| e.data)
            .map_err(|e| format!("cairnd's status: {e}"))
    }

    fn install(&self, mut bundle: Box<dyn Read + Send>) -> Result<String, String> {
        let p = self.updater()?;
        let (rd, mut wr) = std::io::pipe().map_err(text)?;
        // The download is copied into the pipe while cairnd verifies and stages from it;
        // if cairnd stops reading (a bad bundle), the copy ends with a broken pipe.
        let feeder = std::thread::spawn(move || std::io::copy(&mut bundle, &mut wr));
        let fd = std::os::fd::OwnedFd::from(rd);
        let started = self
            .rt
            .block_on(p.install(zbus::Fd::from(&fd), false))
            .map_err(text);
        drop(fd);
        let result = started.and_then(|job| self.wait_job(job));
        let copied = feeder
            .join()
            .map_err(|_| "the download thread panicked".to_owned())?;
        match (result, copied) {
            (Ok(id), Ok(_)) => Ok(id),
            (Ok(_), Err(e)) => Err(format!("the download broke off: {e}")),
            (Err(e), Err(d)) if d.kind() != std::io::ErrorKind::BrokenPipe => {
                Err(format!("{e} (the download broke off: {d})"))
            }
            (Err(e), _) => Err(e),
        }
    }

    fn activate_trial(&self, id: &str) -> Result<(), String> {
        let p = self.updater()?;
        self.rt
            .block_on(p.activate(id, "trial", 1, false))
            .map_err(text)
    }

    fn mark_failed(&self, id: &str, reason: &str) -> Result<(), String> {
        let p = self.updater()?;
        self.rt.block_on(p.mark_failed(id, reason)).map_err(text)
    }

    fn reboot(&self) -> Result<(), String> {
        let (prog, args) = self.reboot.split_first().ok_or("no reboot command")?;
        tracing::info!(command = ?self.reboot, "rebooting into the trial");
        Runner::new()
            .run(&Cmd::new(prog).args(args))
            .map(|_| ())
            .map_err(text)
    }
}
