//! The one command runner: every external program cairn runs goes through here.
//!
//! It runs programs by absolute path with a clean environment (`LC_ALL=C`), never through a
//! shell, logs the full command line at debug level, and on failure returns the exit
//! status with the tail of stderr.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;

use crate::error::{Result, ZfsError};

/// How much of stderr goes into an error.
const STDERR_TAIL: usize = 1024;
/// Copy buffer for streams: large enough that `zfs send` is not held up by us.
const STREAM_BUF: usize = 1 << 20;

/// A command line to run: program and arguments.
#[derive(Debug, Clone)]
pub struct Cmd {
    program: PathBuf,
    args: Vec<OsString>,
}

impl Cmd {
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// The command line as a person would type it (for logs and errors).
    pub fn display(&self) -> String {
        let mut s = self.program.display().to_string();
        for a in &self.args {
            let a = a.to_string_lossy();
            s.push(' ');
            if a.is_empty() || a.contains([' ', '\t', '"', '\'']) {
                s.push_str(&format!("{a:?}"));
            } else {
                s.push_str(&a);
            }
        }
        s
    }

    fn command(&self) -> Command {
        #[allow(clippy::disallowed_methods)] // the runner is the one place that may
        let mut c = Command::new(&self.program);
        c.args(&self.args)
            .env_clear()
            .env("LC_ALL", "C")
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        c
    }
}

/// Runs commands. Cheap to clone; holds no state but the search path for programs.
#[derive(Debug, Clone, Default)]
pub struct Runner {
    _private: (),
}

impl Runner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Finds a program in the system directories (`/usr/sbin`, `/sbin`, ...).
    pub fn which(program: &str) -> Option<PathBuf> {
        [
            "/usr/sbin",
            "/usr/bin",
            "/sbin",
            "/bin",
            "/usr/local/sbin",
            "/usr/local/bin",
        ]
        .iter()
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
    }

    /// Runs to completion; returns stdout. Fails with the stderr tail on a non-zero exit.
    pub fn run(&self, cmd: &Cmd) -> Result<String> {
        tracing::debug!(cmd = %cmd.display(), "run");
        let _timed = Timed::start(cmd);
        let out = cmd
            .command()
            .stdin(Stdio::null())
            .output()
            .map_err(|source| spawn_error(cmd, source))?;
        if !out.status.success() {
            return Err(command_error(cmd, out.status, &out.stderr));
        }
        String::from_utf8(out.stdout).map_err(|_| ZfsError::Parse {
            cmd: cmd.display(),
            detail: "output is not UTF-8".into(),
        })
    }

    /// Runs and returns (success, stdout, stderr) without judging the exit status;
    /// for callers that parse refusals themselves.
    pub fn run_unchecked(&self, cmd: &Cmd) -> Result<Finished> {
        tracing::debug!(cmd = %cmd.display(), "run");
        let _timed = Timed::start(cmd);
        let out = cmd
            .command()
            .stdin(Stdio::null())
            .output()
            .map_err(|source| spawn_error(cmd, source))?;
        Ok(Finished {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Runs with stdout copied into `out`; returns bytes copied and how it finished.
    pub fn run_to_writer(&self, cmd: &Cmd, out: &mut dyn Write) -> Result<(u64, Finished)> {
        tracing::debug!(cmd = %cmd.display(), "run, streaming stdout");
        let _timed = Timed::start(cmd);
        let mut child = cmd
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| spawn_error(cmd, source))?;
        let stderr = collect_stderr(&mut child);
        let mut stdout = child.stdout.take().expect("stdout was piped");
        let copied = copy(&mut stdout, out);
        drop(stdout);
        let finished = finish(cmd, child, stderr)?;
        let copied = copied.map_err(|source| ZfsError::Io {
            what: format!("copying the output of `{}`", cmd.display()),
            source,
        })?;
        Ok((copied, finished))
    }

    /// Runs with stdin fed from `input`; returns how it finished.
    pub fn run_from_reader(&self, cmd: &Cmd, input: &mut dyn Read) -> Result<Finished> {
        tracing::debug!(cmd = %cmd.display(), "run, streaming stdin");
        let _timed = Timed::start(cmd);
        let mut child = cmd
            .command()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| spawn_error(cmd, source))?;
        let stderr = collect_stderr(&mut child);
        let mut stdout_pipe = child.stdout.take().expect("stdout was piped");
        let stdout = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = stdout_pipe.read_to_end(&mut s);
            s
        });
        let mut stdin = child.stdin.take().expect("stdin was piped");
        // A broken pipe here means the program stopped reading: its exit status and
        // stderr say why, so they take precedence over the copy error.
        let copied = copy(input, &mut stdin);
        drop(stdin);
        let mut finished = finish(cmd, child, stderr)?;
        finished.stdout = String::from_utf8_lossy(&stdout.join().unwrap_or_default()).into_owned();
        if finished.status.success() {
            copied.map_err(|source| ZfsError::Io {
                what: format!("feeding `{}`", cmd.display()),
                source,
            })?;
        }
        Ok(finished)
    }
}

/// How a command finished.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Turns a failure into the generic command error.
    pub fn into_error(self, cmd: &Cmd) -> ZfsError {
        command_error(cmd, self.status, self.stderr.as_bytes())
    }
}

/// Logs how long a command took when dropped (at debug level, field `elapsed_us`), so a
/// profile of an operation can be read from the log: `cargo xtask bench` sums these.
struct Timed {
    program: String,
    verb: String,
    start: std::time::Instant,
}

impl Timed {
    fn start(cmd: &Cmd) -> Self {
        Self {
            program: cmd
                .program
                .file_name()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
            verb: cmd
                .args
                .first()
                .map(|a| a.to_string_lossy().into_owned())
                .unwrap_or_default(),
            start: std::time::Instant::now(),
        }
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        let elapsed_us = self.start.elapsed().as_micros() as u64;
        tracing::debug!(program = %self.program, verb = %self.verb, elapsed_us, "ran");
    }
}

fn copy(from: &mut dyn Read, to: &mut dyn Write) -> std::io::Result<u64> {
    let mut buf = vec![0u8; STREAM_BUF];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
    to.flush()?;
    Ok(total)
}

fn collect_stderr(child: &mut Child) -> JoinHandle<Vec<u8>> {
    let mut pipe: ChildStderr = child.stderr.take().expect("stderr was piped");
    std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = pipe.read_to_end(&mut s);
        s
    })
}

fn finish(cmd: &Cmd, mut child: Child, stderr: JoinHandle<Vec<u8>>) -> Result<Finished> {
    let status = child.wait().map_err(|source| ZfsError::Io {
        what: format!("waiting for `{}`", cmd.display()),
        source,
    })?;
    let stderr = stderr.join().unwrap_or_default();
    Ok(Finished {
        status,
        stdout: String::new(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    })
}

fn spawn_error(cmd: &Cmd, source: std::io::Error) -> ZfsError {
    ZfsError::Spawn {
        cmd: cmd.display(),
        source,
    }
}

fn command_error(cmd: &Cmd, status: ExitStatus, stderr: &[u8]) -> ZfsError {
    ZfsError::Command {
        cmd: cmd.display(),
        status: status.to_string(),
        stderr: stderr_tail(stderr),
    }
}

/// The last [`STDERR_TAIL`] bytes of stderr, trimmed, on one line.
pub fn stderr_tail(stderr: &[u8]) -> String {
    let s = String::from_utf8_lossy(stderr);
    let s = s.trim();
    let start = s.len().saturating_sub(STDERR_TAIL);
    let start = (start..=s.len())
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(s.len());
    let tail = s[start..].replace('\n', " | ");
    if tail.is_empty() {
        "no message on stderr".into()
    } else {
        tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_and_returns_stdout() {
        let out = Runner::new()
            .run(&Cmd::new("/bin/echo").arg("hello"))
            .unwrap();
        assert_eq!(out, "hello\n");
    }

    #[test]
    fn failure_carries_stderr_tail_and_command() {
        let cmd = Cmd::new("/bin/sh").args(["-c", "echo first >&2; echo 'the reason' >&2; exit 3"]);
        let err = Runner::new().run(&cmd).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/bin/sh -c"), "{msg}");
        assert!(msg.contains("the reason"), "{msg}");
        assert!(msg.contains("exit status: 3"), "{msg}");
    }

    #[test]
    fn environment_is_clean() {
        let out = Runner::new().run(&Cmd::new("/usr/bin/env")).unwrap();
        let mut lines: Vec<_> = out.lines().collect();
        lines.sort();
        assert_eq!(lines, ["LC_ALL=C", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"]);
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let err = Runner::new()
            .run(&Cmd::new("/nonexistent/zfs"))
            .unwrap_err();
        assert!(matches!(err, ZfsError::Spawn { .. }), "{err}");
    }

    #[test]
    fn streams_both_ways() {
        let r = Runner::new();
        let data = vec![7u8; 3 << 20];
        let mut out = Vec::new();
        let (n, fin) = r
            .run_to_writer(&Cmd::new("/bin/cat").arg("/dev/stdin"), &mut out)
            .unwrap();
        assert!(fin.success());
        assert_eq!(n, 0); // stdin is /dev/null
        let fin = r
            .run_from_reader(&Cmd::new("/usr/bin/wc").arg("-c"), &mut data.as_slice())
            .unwrap();
        assert!(fin.success());
        assert_eq!(fin.stdout.trim(), (3 << 20).to_string());
        let (n, _) = r
            .run_to_writer(
                &Cmd::new("/usr/bin/head").args(["-c", "5000000", "/dev/zero"]),
                &mut out,
            )
            .unwrap();
        assert_eq!(n, 5_000_000);
        assert_eq!(out.len(), 5_000_000);
    }

    #[test]
    fn reader_into_failing_program_reports_the_program() {
        let data = vec![1u8; 4 << 20];
        let cmd = Cmd::new("/bin/sh").args(["-c", "echo refused >&2; exit 1"]);
        let fin = Runner::new()
            .run_from_reader(&cmd, &mut data.as_slice())
            .unwrap();
        assert!(!fin.success());
        assert!(fin.into_error(&cmd).to_string().contains("refused"));
    }

    #[test]
    fn tail_is_bounded_and_one_line() {
        let long = "x".repeat(5000) + "\nend";
        let t = stderr_tail(long.as_bytes());
        assert!(t.len() <= STDERR_TAIL + 4);
        assert!(t.ends_with("| end"));
        assert_eq!(stderr_tail(b""), "no message on stderr");
    }
}
