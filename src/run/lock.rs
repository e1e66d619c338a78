//! One writer per run directory.
//!
//! Every command that writes a run directory (`train`, a grid cell, each seed of a sweep,
//! `merge --output`) first takes `run.lock` in it with the operating system's advisory
//! file lock (flock on Linux, also over NFS). The lock goes when its process does, however
//! that process ends, so a killed run never blocks the next try. The holder writes its
//! process id, host and command line into the file, so that a second writer is refused
//! with a message that names who holds the run.
//!
//! Within one process the lock is re-entrant: a grid cell claims its run directory and
//! then trains into it through the same code path `peft train` uses, which takes the lock
//! again. flock would refuse that second open of the same file, so the process keeps a
//! table of the directories it holds.

use std::collections::HashMap;
use std::fs::{File, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Result;

use crate::error::{user, PathContext};

pub const LOCK: &str = "run.lock";

/// The directories this process holds, by canonical path, with the open lock file each
/// holds (shared by every guard of that directory).
static HELD: Mutex<Option<HashMap<PathBuf, Arc<File>>>> = Mutex::new(None);

/// The right to write a run directory, held until dropped.
pub struct RunLock {
    _file: Arc<File>,
    key: PathBuf,
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(map) = held.as_mut() {
            // The table's own reference and ours: the last guard lets go of the file (and
            // with it the flock).
            if map
                .get(&self.key)
                .is_some_and(|f| Arc::strong_count(f) <= 2)
            {
                map.remove(&self.key);
            }
        }
    }
}

impl RunLock {
    /// Let go, and remove the directory if nothing but the lock file is in it: a command
    /// refused before it wrote anything leaves no trace.
    pub fn remove_if_empty(self) {
        let dir = self.key.clone();
        let only_the_lock = std::fs::read_dir(&dir).is_ok_and(|entries| {
            entries
                .filter_map(|e| e.ok())
                .all(|e| e.file_name() == LOCK)
        });
        if only_the_lock {
            let _ = std::fs::remove_file(dir.join(LOCK));
            drop(self);
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

/// Lock `dir` (created if missing) for writing; refused, naming the holder, while another
/// live process holds it.
pub fn acquire(dir: &Path) -> Result<RunLock> {
    std::fs::create_dir_all(dir).path_context("cannot create run directory", dir)?;
    let key = dir
        .canonicalize()
        .path_context("cannot resolve run directory", dir)?;
    let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
    let map = held.get_or_insert_with(HashMap::new);
    if let Some(file) = map.get(&key) {
        return Ok(RunLock {
            _file: file.clone(),
            key,
        });
    }
    let path = dir.join(LOCK);
    // No O_TRUNC: the holder's line must survive our open until we hold the lock.
    let mut file = File::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .path_context("cannot open", &path)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(user(format!(
                "{} is being written by another process{} (it holds {}); wait for it to \
                 end, or write elsewhere",
                dir.display(),
                if holder.is_empty() {
                    String::new()
                } else {
                    format!(": {holder}")
                },
                path.display()
            )));
        }
        Err(TryLockError::Error(e)) => return Err(e).path_context("cannot lock", &path),
    }
    let line = holder_line();
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(line.as_bytes()))
        .path_context("cannot write", &path)?;
    let file = Arc::new(file);
    map.insert(key.clone(), file.clone());
    Ok(RunLock { _file: file, key })
}

/// Whether another process holds `dir`'s lock (trying it, and letting go at once).
pub fn held_elsewhere(dir: &Path) -> Result<bool> {
    if let Ok(key) = dir.canonicalize() {
        let held = HELD.lock().unwrap_or_else(|p| p.into_inner());
        if held.as_ref().is_some_and(|m| m.contains_key(&key)) {
            return Ok(false);
        }
    }
    let path = dir.join(LOCK);
    let Ok(f) = File::open(&path) else {
        return Ok(false);
    };
    match f.try_lock() {
        Ok(()) => Ok(false),
        Err(TryLockError::WouldBlock) => Ok(true),
        Err(TryLockError::Error(e)) => Err(e).path_context("cannot lock", &path),
    }
}

/// `pid 4242 on node17: peft train --task rte ...`, the command line cut to a screen line.
fn holder_line() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let mut cmd: String = std::env::args().collect::<Vec<_>>().join(" ");
    if cmd.chars().count() > 200 {
        cmd = cmd.chars().take(200).collect::<String>() + "…";
    }
    let on = if host.is_empty() {
        String::new()
    } else {
        format!(" on {host}")
    };
    format!("pid {}{on}: {cmd}\n", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_takes_its_own_lock_again_and_lets_go_with_the_last_guard() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let a = acquire(&dir).unwrap();
        let b = acquire(&dir).unwrap();
        let text = std::fs::read_to_string(dir.join(LOCK)).unwrap();
        assert!(
            text.starts_with(&format!("pid {}", std::process::id())),
            "{text}"
        );
        drop(a);
        // Still held by `b`: another open file description is refused.
        let other = File::open(dir.join(LOCK)).unwrap();
        assert!(matches!(other.try_lock(), Err(TryLockError::WouldBlock)));
        drop(b);
        other.try_lock().unwrap();
    }
}
