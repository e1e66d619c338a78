//! `peft grid PLAN`: list a plan's cells, run one (`--index`, or the scheduler's array
//! index), run them all here (`--workers N`), or write a Slurm or Kubernetes job for them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Result;
use clap::{Args, ValueEnum};

use super::single::{catch_ctrl_c, train_one};
use crate::error::{user, PathContext};
use crate::grid::cell::{self, Work};
use crate::grid::{emit, index_json, Plan};
use crate::run::dir as run_dir;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Emit {
    /// An sbatch script with one array task per cell.
    Slurm,
    /// A Kubernetes indexed Job with one completion per cell.
    K8s,
}

#[derive(Args, Debug)]
pub struct GridArgs {
    /// The plan: a TOML file with output_dir, [base] settings and [grid] lists.
    pub plan: PathBuf,
    /// One line per cell: index, status (todo, running, done, failed), run directory.
    #[arg(long, conflicts_with_all = ["index", "workers", "emit"])]
    pub list: bool,
    /// Run this cell [default: $SLURM_ARRAY_TASK_ID or $JOB_COMPLETION_INDEX].
    #[arg(long, conflicts_with_all = ["workers", "emit"])]
    pub index: Option<usize>,
    /// Run every cell here, N at a time, the cores shared between them.
    #[arg(long, conflicts_with = "emit")]
    pub workers: Option<usize>,
    /// Print a job file that runs every cell on a scheduler.
    #[arg(long, value_enum)]
    pub emit: Option<Emit>,
    #[command(flatten)]
    pub job: JobArgs,
}

/// What `--emit` asks the scheduler for, per cell.
#[derive(Args, Debug)]
#[command(next_help_heading = "Job file (--emit)")]
pub struct JobArgs {
    /// CPUs per cell (also its compute threads).
    #[arg(long, default_value_t = 4, requires = "emit")]
    pub cpus: usize,
    /// Memory per cell, as Slurm writes it (Kubernetes gets the same in Gi/Mi).
    #[arg(long, default_value = "16G", requires = "emit")]
    pub mem: String,
    /// Wall-clock limit per cell, [D-]HH:MM:SS (Slurm).
    #[arg(long, default_value = "08:00:00", requires = "emit")]
    pub time: String,
    /// GPUs per cell (Slurm --gres=gpu:N, Kubernetes nvidia.com/gpu).
    #[arg(long, default_value_t = 0, requires = "emit")]
    pub gpus: usize,
    /// Slurm partition [default: the cluster's].
    #[arg(long, requires = "emit")]
    pub partition: Option<String>,
    /// Seconds between SIGTERM and the end of a cell (time limit, pre-emption, eviction):
    /// enough to finish a step and save a checkpoint.
    #[arg(long, default_value_t = 120, requires = "emit")]
    pub grace: u64,
    /// Kubernetes: the container image with the peft binary.
    #[arg(
        long,
        default_value = "ghcr.io/YOUR-ORG/peft:latest",
        requires = "emit"
    )]
    pub image: String,
    /// Kubernetes: the persistent volume claim with the plan, data and runs, mounted at /work.
    #[arg(long, default_value = "peft-work", requires = "emit")]
    pub volume_claim: String,
    /// Kubernetes: cells (pods) at once.
    #[arg(long, default_value_t = 4, requires = "emit")]
    pub parallelism: usize,
}

impl JobArgs {
    fn job(&self) -> Result<emit::Job> {
        let job = emit::Job {
            cpus: self.cpus,
            mem: self.mem.clone(),
            time: self.time.clone(),
            gpus: self.gpus,
            partition: self.partition.clone(),
            grace_s: self.grace,
            image: self.image.clone(),
            volume_claim: self.volume_claim.clone(),
            parallelism: self.parallelism,
        };
        job.check()?;
        Ok(job)
    }
}

pub fn run(args: GridArgs) -> Result<()> {
    let job = args.emit.map(|_| args.job.job()).transpose()?;
    let plan = Plan::load(&args.plan)?;
    if plan.cells.is_empty() {
        crate::user_bail!("{}: the plan has no cells", args.plan.display());
    }
    // The cells' index, for people and scripts; written by one process only (many run
    // cells at once, and would race for its temporary file).
    if args.list || args.workers.is_some() || args.emit.is_some() {
        std::fs::create_dir_all(&plan.output_dir)
            .path_context("cannot create output_dir", &plan.output_dir)?;
        run_dir::write_atomic(
            &plan.output_dir.join("grid.json"),
            serde_json::to_string_pretty(&index_json(&plan))?.as_bytes(),
        )?;
    }
    if args.list {
        return list(&plan);
    }
    if let (Some(kind), Some(job)) = (args.emit, job) {
        let plan_path = absolute(&args.plan)?;
        let mut plan = plan;
        plan.output_dir = absolute(&plan.output_dir)?;
        let text = match kind {
            Emit::Slurm => emit::slurm(
                &plan,
                &job,
                &std::env::current_exe()?,
                &plan_path,
                &std::env::current_dir()?,
            ),
            Emit::K8s => emit::k8s(&plan, &job, &args.plan),
        };
        print!("{text}");
        return Ok(());
    }
    if let Some(n) = args.workers {
        return workers(&plan, &args.plan, n);
    }
    let index = match args.index {
        Some(i) => i,
        None => scheduler_index()?,
    };
    run_cell(&plan, index)
}

fn list(plan: &Plan) -> Result<()> {
    let mut out = String::new();
    for c in &plan.cells {
        out.push_str(&format!(
            "{}\t{}\t{}\n",
            c.index,
            cell::status(c)?,
            c.cfg.output.output_dir.display()
        ));
    }
    print!("{out}");
    Ok(())
}

/// The array index a scheduler gave this task.
fn scheduler_index() -> Result<usize> {
    for var in ["SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"] {
        if let Ok(v) = std::env::var(var) {
            return v
                .trim()
                .parse()
                .map_err(|_| user(format!("{var}={v} is not a cell index")));
        }
    }
    Err(user(
        "which cell? pass --index I (or run under a Slurm array or a Kubernetes indexed Job, \
         which set SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX), --workers N for all, or \
         --list",
    ))
}

fn run_cell(plan: &Plan, index: usize) -> Result<()> {
    let cell = plan.cell(index)?;
    let claim = cell::claim(cell)?;
    let values: Vec<String> = cell
        .values
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!(
        "# cell {index} of {}: {} ({})",
        plan.cells.len(),
        cell.cfg.output.output_dir.display(),
        values.join(" ")
    );
    let done = match claim.work {
        Work::Skip => {
            println!("already done with these settings: skipped");
            return Ok(());
        }
        Work::Resume => {
            catch_ctrl_c();
            train_one(&cell.cfg, false, true)
        }
        Work::Train => {
            catch_ctrl_c();
            train_one(&cell.cfg, true, false)
        }
    };
    if let Err(e) = &done {
        if e.downcast_ref::<crate::train::fit::Interrupted>().is_none() {
            claim.failed(e)?;
        }
    }
    done
}

/// Every cell, `n` processes at a time (this binary with --index), each with its share
/// of the cores; their output goes to `grid.log` in each cell's run directory.
fn workers(plan: &Plan, plan_path: &Path, n: usize) -> Result<()> {
    if n == 0 {
        crate::user_bail!("--workers must be at least 1");
    }
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let threads = (cores / n).max(1);
    let exe = std::env::current_exe()?;
    let mut todo: Vec<usize> = (0..plan.cells.len()).collect();
    todo.reverse();
    let mut running: Vec<(usize, Child)> = Vec::new();
    let mut failed = Vec::new();
    println!(
        "{} cells, {n} at a time with {threads} threads each",
        plan.cells.len()
    );
    while !todo.is_empty() || !running.is_empty() {
        while running.len() < n {
            let Some(i) = todo.pop() else { break };
            let cell = &plan.cells[i];
            if cell::status(cell)? == cell::Status::Done {
                println!("cell {i}: done already");
                continue;
            }
            let dir = &cell.cfg.output.output_dir;
            std::fs::create_dir_all(dir).path_context("cannot create", dir)?;
            let log = run_dir::create_fresh(&dir.join("grid.log"))?;
            let child = Command::new(&exe)
                .arg("grid")
                .arg(plan_path)
                .arg("--index")
                .arg(i.to_string())
                .env("RAYON_NUM_THREADS", threads.to_string())
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", exe.display()))?;
            println!("cell {i}: started ({})", dir.display());
            running.push((i, child));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        let mut still = Vec::new();
        for (i, mut child) in running {
            match child.try_wait()? {
                None => still.push((i, child)),
                Some(s) if s.success() => println!("cell {i}: done"),
                Some(s) => {
                    println!(
                        "cell {i}: failed ({s}); see {}",
                        plan.cells[i]
                            .cfg
                            .output
                            .output_dir
                            .join("grid.log")
                            .display()
                    );
                    failed.push(i);
                }
            }
        }
        running = still;
    }
    if !failed.is_empty() {
        anyhow::bail!(
            "{} of {} cells failed: {:?}",
            failed.len(),
            plan.cells.len(),
            failed
        );
    }
    println!(
        "all {} cells done: `peft report {}`",
        plan.cells.len(),
        plan.output_dir.display()
    );
    Ok(())
}

fn absolute(p: &Path) -> Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    })
}
