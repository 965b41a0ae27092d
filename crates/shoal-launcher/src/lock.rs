//! The slot lock: `flock(2)` on `<hash>.lock`, plus the TypeScript launcher's PID stamp.
//!
//! Three lock styles exist among vgi-rpc launchers and they do not exclude each other on their own:
//! Python and C++ take `flock(LOCK_EX)` on the file; the TypeScript launcher writes its PID into
//! the file and treats a file naming a live process as held. We do both, so Shoal excludes all of
//! them:
//!
//! 1. open the file (`O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW`, mode 0600, never truncating on
//!    open) and take `flock(LOCK_EX | LOCK_NB)`;
//! 2. check that the file we locked is still the one at the path (Python's filelock unlinks the
//!    file on release, and our GC removes it; locking an unlinked inode would exclude nobody);
//! 3. read the body: a PID of another live process means a TypeScript launcher holds the slot —
//!    let go and report it held;
//! 4. write our own PID, so TypeScript launchers wait for us.
//!
//! Releasing truncates the file (it stays as a slot marker) and closes it, which drops the flock.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{FlockOperation, Mode, OFlags};

/// How often an `inode replaced under us` race is retried before reporting the lock as busy.
const INODE_RETRIES: usize = 5;
/// Longest pause between two attempts of [`acquire`].
const MAX_POLL: Duration = Duration::from_millis(50);

/// A held slot lock. Dropping it releases the lock (truncating the file first).
#[derive(Debug)]
pub struct LockGuard {
    file: Option<File>,
    path: PathBuf,
}

impl LockGuard {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Releases the lock now, reporting a failure to clear the PID stamp.
    pub fn release(mut self) -> std::io::Result<()> {
        self.release_inner()
    }

    fn release_inner(&mut self) -> std::io::Result<()> {
        match self.file.take() {
            // Closing the file drops the flock; truncate first so no stamp outlives the hold.
            Some(file) => file.set_len(0),
            None => Ok(()),
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Err(error) = self.release_inner() {
            tracing::debug!(path = ?self.path, %error, "clearing the lock file's PID stamp failed");
        }
    }
}

/// Why a lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Opening, locking or stamping the file failed.
    #[error("lock file {path:?}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Another launcher held the lock for the whole timeout.
    #[error(
        "timed out after {timeout:?} waiting for lock {path:?}{}; another launcher is starting \
         this worker (or hung doing so)",
        holder.map(|pid| format!(" (stamped by pid {pid})")).unwrap_or_default()
    )]
    Timeout {
        /// The lock file.
        path: PathBuf,
        /// How long we waited.
        timeout: Duration,
        /// The PID stamped in the file when we gave up, if any.
        holder: Option<u32>,
    },
}

/// Takes the lock at `path` if it is free right now; `Ok(None)` when someone holds it.
pub fn try_acquire(path: &Path) -> Result<Option<LockGuard>, LockError> {
    let io = |source: std::io::Error| LockError::Io {
        path: path.to_path_buf(),
        source,
    };
    for _ in 0..INODE_RETRIES {
        let fd = rustix::fs::open(
            path,
            OFlags::RDWR | OFlags::CREATE | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| io(e.into()))?;
        match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK | rustix::io::Errno::INTR) => return Ok(None),
            Err(e) => return Err(io(e.into())),
        }
        let locked = rustix::fs::fstat(&fd).map_err(|e| io(e.into()))?;
        // `lstat`: a link put at the path, even to the file we locked, is not our lock file.
        match rustix::fs::lstat(path) {
            Ok(current) if current.st_dev == locked.st_dev && current.st_ino == locked.st_ino => {}
            // Unlinked or replaced between our open and our flock: lock the new file instead.
            _ => continue,
        }
        let file = File::from(fd);
        let ours = std::process::id();
        if let Some(pid) = read_stamp(&file)
            && pid != ours
            && pid_alive(pid)
        {
            tracing::debug!(?path, pid, "lock file stamped by a live process");
            return Ok(None);
        }
        let stamp = ours.to_string();
        file.set_len(0).map_err(io)?;
        file.write_all_at(stamp.as_bytes(), 0).map_err(io)?;
        return Ok(Some(LockGuard {
            file: Some(file),
            path: path.to_path_buf(),
        }));
    }
    Ok(None)
}

/// Takes the lock at `path`, polling until `timeout` has passed.
pub async fn acquire(path: &Path, timeout: Duration) -> Result<LockGuard, LockError> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(guard) = try_acquire(path)? {
            return Ok(guard);
        }
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(LockError::Timeout {
                path: path.to_path_buf(),
                timeout,
                holder: read_stamp_at(path),
            });
        }
        tokio::time::sleep(pause.min(timeout - waited)).await;
        pause = (pause * 2).min(MAX_POLL);
    }
}

/// The PID stamped in an open lock file (the TypeScript launcher's format: ASCII decimal).
fn read_stamp(file: &File) -> Option<u32> {
    let mut buf = [0u8; 64];
    let n = file.read_at(&mut buf, 0).ok()?;
    parse_stamp(&buf[..n])
}

/// The PID stamped in the lock file at `path`, if any. A symbolic link at `path` is not followed
/// (it has no stamp), and a FIFO planted there does not block.
pub fn read_stamp_at(path: &Path) -> Option<u32> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .ok()?;
    read_stamp(&File::from(fd))
}

fn parse_stamp(bytes: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(bytes).ok()?.trim();
    text.parse::<u32>().ok().filter(|pid| *pid > 0)
}

/// Whether a process with this PID exists (`kill(pid, 0)` succeeds or is refused with `EPERM`).
pub fn pid_alive(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    match rustix::process::test_kill_process(pid) {
        Ok(()) => true,
        Err(e) => e == rustix::io::Errno::PERM,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps() {
        assert_eq!(parse_stamp(b"19976"), Some(19976));
        assert_eq!(parse_stamp(b" 123\n"), Some(123));
        assert_eq!(parse_stamp(b""), None);
        assert_eq!(parse_stamp(b"0"), None);
        assert_eq!(parse_stamp(b"12x"), None);
        assert_eq!(parse_stamp(b"abc"), None);
    }

    #[test]
    fn our_own_process_is_alive_and_a_reaped_child_is_not() {
        assert!(pid_alive(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!pid_alive(pid));
        assert!(!pid_alive(u32::MAX));
    }
}
