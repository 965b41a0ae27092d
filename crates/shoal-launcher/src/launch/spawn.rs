//! Starting a worker and waiting for its `UNIX:<path>` announcement.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::config::{WorkerStderr, idle_timeout_arg};
use super::error::LaunchError;

/// Most bytes a worker may write to stdout before its announcement (as the C++ launcher allows).
pub const MAX_PRE_ANNOUNCEMENT_OUTPUT: usize = 1 << 20;
/// How much of a failed worker's stderr file an error quotes.
const STDERR_TAIL_BYTES: u64 = 4096;
/// How long to wait for a killed worker to be reaped.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) struct SpawnRequest<'a> {
    pub(crate) argv: &'a [String],
    pub(crate) socket: &'a Path,
    pub(crate) cwd: &'a Path,
    pub(crate) idle_timeout: Duration,
    pub(crate) startup_timeout: Duration,
    pub(crate) stderr: &'a WorkerStderr,
}

/// Where the worker's stderr went, to quote it on failure.
struct StderrLog {
    path: PathBuf,
    start: u64,
}

impl StderrLog {
    fn tail(log: Option<&Self>) -> Option<String> {
        let log = log?;
        let bytes = std::fs::read(&log.path).unwrap_or_default();
        let start = usize::try_from(log.start)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let from = bytes
            .len()
            .saturating_sub(usize::try_from(STDERR_TAIL_BYTES).unwrap_or(usize::MAX))
            .max(start);
        Some(
            String::from_utf8_lossy(&bytes[from..])
                .trim_end()
                .to_owned(),
        )
    }
}

/// Spawns the worker detached (its own process group, stdin `/dev/null`, stderr discarded or
/// appended to a file) and waits for its announcement. Returns the worker's PID.
pub(crate) async fn spawn_worker(request: SpawnRequest<'_>) -> Result<u32, LaunchError> {
    let program = request.argv.first().cloned().unwrap_or_default();
    let (stderr, stderr_log) = open_stderr(request.stderr)?;

    let mut command = Command::new(&program);
    command
        .args(request.argv.get(1..).unwrap_or_default())
        .arg("--unix")
        .arg(request.socket)
        .arg("--idle-timeout")
        .arg(idle_timeout_arg(request.idle_timeout))
        .current_dir(request.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        // A process group of its own: the worker outlives us and a Ctrl-C aimed at the
        // launcher's terminal does not reach it.
        .process_group(0)
        .kill_on_drop(false);
    let mut child = command.spawn().map_err(|source| LaunchError::Spawn {
        program: program.clone(),
        source,
    })?;
    let pid = child.id().unwrap_or_default();
    tracing::debug!(pid, %program, "spawned worker");

    let mut expected = b"UNIX:".to_vec();
    expected.extend_from_slice(request.socket.as_os_str().as_bytes());
    let deadline = Instant::now() + request.startup_timeout;

    let outcome = await_announcement(&mut child, &expected, deadline).await;
    let failure = match outcome {
        Announcement::Announced => {
            // Dropping `child` neither kills nor waits: the worker lives on. Our end of its stdout
            // pipe closes here, as the worker contract expects.
            return Ok(pid);
        }
        Announcement::Exited(status) => LaunchError::WorkerExited {
            program,
            status,
            stderr_tail: StderrLog::tail(stderr_log.as_ref()),
        },
        Announcement::TimedOut => {
            kill_and_reap(&mut child).await;
            LaunchError::StartupTimeout {
                program,
                timeout: request.startup_timeout,
                stderr_tail: StderrLog::tail(stderr_log.as_ref()),
            }
        }
        Announcement::Unexpected(line) => {
            kill_and_reap(&mut child).await;
            LaunchError::UnexpectedAnnouncement {
                program,
                line: String::from_utf8_lossy(&line).into_owned(),
                expected: String::from_utf8_lossy(&expected).into_owned(),
            }
        }
        Announcement::TooMuchOutput => {
            kill_and_reap(&mut child).await;
            LaunchError::TooMuchOutput {
                program,
                limit: MAX_PRE_ANNOUNCEMENT_OUTPUT,
            }
        }
        Announcement::ReadFailed(source) => {
            kill_and_reap(&mut child).await;
            LaunchError::ReadStdout { program, source }
        }
    };
    Err(failure)
}

enum Announcement {
    Announced,
    Exited(std::process::ExitStatus),
    TimedOut,
    Unexpected(Vec<u8>),
    TooMuchOutput,
    ReadFailed(std::io::Error),
}

async fn await_announcement(child: &mut Child, expected: &[u8], deadline: Instant) -> Announcement {
    let Some(stdout) = child.stdout.take() else {
        return Announcement::ReadFailed(std::io::Error::other("worker stdout was not piped"));
    };
    let mut reader = BufReader::new(stdout);
    let mut seen = 0usize;
    let mut stdout_open = true;
    loop {
        let mut line = Vec::new();
        let budget = (MAX_PRE_ANNOUNCEMENT_OUTPUT - seen) as u64;
        let mut limited = (&mut reader).take(budget);
        tokio::select! {
            read = limited.read_until(b'\n', &mut line), if stdout_open => {
                match read {
                    Ok(0) if seen >= MAX_PRE_ANNOUNCEMENT_OUTPUT => return Announcement::TooMuchOutput,
                    // Stdout closed: the worker is exiting (or misbehaving); wait for its exit.
                    Ok(0) => stdout_open = false,
                    Ok(n) => {
                        seen += n;
                        let text = line.strip_suffix(b"\n").unwrap_or(&line);
                        let text = text.strip_suffix(b"\r").unwrap_or(text);
                        if text.starts_with(b"UNIX:") {
                            if text == expected {
                                return Announcement::Announced;
                            }
                            return Announcement::Unexpected(text.to_vec());
                        }
                        tracing::debug!(line = %String::from_utf8_lossy(text), "worker output before its announcement");
                    }
                    Err(error) => return Announcement::ReadFailed(error),
                }
            }
            status = child.wait() => {
                return match status {
                    Ok(status) => Announcement::Exited(status),
                    Err(error) => Announcement::ReadFailed(error),
                };
            }
            () = tokio::time::sleep_until(deadline) => return Announcement::TimedOut,
        }
    }
}

/// Kills the worker's whole process group and reaps the worker, so no zombie is left.
async fn kill_and_reap(child: &mut Child) {
    if let Some(pid) = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
    let _ = child.start_kill();
    if tokio::time::timeout(REAP_TIMEOUT, child.wait())
        .await
        .is_err()
    {
        tracing::warn!("killed worker was not reaped within {REAP_TIMEOUT:?}");
    }
}

fn open_stderr(stderr: &WorkerStderr) -> Result<(Stdio, Option<StderrLog>), LaunchError> {
    match stderr {
        WorkerStderr::Discard => Ok((Stdio::null(), None)),
        WorkerStderr::Append(path) => {
            let file = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .open(path)
                .map_err(|source| LaunchError::Io {
                    op: "opening worker stderr file",
                    path: path.clone(),
                    source,
                })?;
            let start = file.metadata().map(|m| m.len()).unwrap_or(0);
            Ok((
                Stdio::from(file),
                Some(StderrLog {
                    path: path.clone(),
                    start,
                }),
            ))
        }
    }
}
