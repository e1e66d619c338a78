//! One cell on disk: where it stands, and the lock that lets one process run it.
//!
//! The lock is the run directory's own (`run.lock`, `run::lock`), which every command
//! that writes a run takes: it goes when its process does, however that process ends, so a
//! killed cell never blocks the next try. A cell whose run failed leaves `grid-failed.txt` with the error, removed when it is tried again.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::Cell;
use crate::error::PathContext;
use crate::run::checkpoint::RESUME;
use crate::run::dir::{self as run_dir, RunInfo};
use crate::run::lock::{self, RunLock};

pub const FAILED: &str = "grid-failed.txt";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Not started, or stopped with a checkpoint to resume from.
    Todo,
    /// A live process holds its lock.
    Running,
    Done,
    Failed,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Todo => "todo",
            Status::Running => "running",
            Status::Done => "done",
            Status::Failed => "failed",
        })
    }
}

/// What running the cell now means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Finished with these settings: nothing to do.
    Skip,
    /// Continue from its checkpoint.
    Resume,
    /// Start (again) from the pre-trained weights.
    Train,
}

fn dir(cell: &Cell) -> &Path {
    &cell.cfg.output.output_dir
}

/// A finished run: its final tensors written, no checkpoint left.
fn finished(dir: &Path) -> bool {
    dir.join(run_dir::LAST).is_file() && !dir.join(RESUME).exists()
}

pub fn status(cell: &Cell) -> Result<Status> {
    let d = dir(cell);
    if !d.exists() {
        return Ok(Status::Todo);
    }
    if lock::held_elsewhere(d)? {
        return Ok(Status::Running);
    }
    if finished(d) {
        return Ok(Status::Done);
    }
    Ok(if d.join(FAILED).exists() {
        Status::Failed
    } else {
        Status::Todo
    })
}

/// The right to run a cell, held until dropped.
pub struct Claim {
    _lock: RunLock,
    dir: PathBuf,
    pub work: Work,
}

/// Lock the cell and say what it needs; refused (a user error) while another live
/// process runs it.
pub fn claim(cell: &Cell) -> Result<Claim> {
    let d = dir(cell);
    let lock = lock::acquire(d).with_context(|| format!("cell {}", cell.index))?;
    let work = if !d.join(run_dir::CONFIG).exists() {
        Work::Train
    } else {
        // Named by the hash of its settings, the directory holds this cell's run; a
        // differing config would be a hand-edited one, not to be trained over silently.
        let saved = RunInfo::load(d)?;
        if saved.train != crate::run::setup::fit_like(&cell.cfg, &saved) {
            crate::user_bail!(
                "{} holds a run with other settings than cell {}; move it away",
                d.display(),
                cell.index
            );
        }
        if finished(d) {
            Work::Skip
        } else if d.join(RESUME).exists() {
            Work::Resume
        } else {
            // Stopped before its first checkpoint: nothing to continue from.
            Work::Train
        }
    };
    if work != Work::Skip {
        let failed = d.join(FAILED);
        if failed.exists() {
            std::fs::remove_file(&failed).path_context("cannot remove", &failed)?;
        }
    }
    Ok(Claim {
        _lock: lock,
        dir: d.to_path_buf(),
        work,
    })
}

impl Claim {
    /// Record why the run failed, for `--list` and the next try.
    pub fn failed(&self, error: &anyhow::Error) -> Result<()> {
        run_dir::write_atomic(&self.dir.join(FAILED), format!("{error:#}\n").as_bytes())
    }
}
