//! Job files for schedulers that run a plan's cells: a Slurm array job and a Kubernetes
//! indexed Job. Each task runs `peft grid PLAN`, which reads its cell's index from the
//! scheduler's environment (`SLURM_ARRAY_TASK_ID`, `JOB_COMPLETION_INDEX`).
//!
//! Both ask for the warning a pre-empted or timed-out job needs: `peft` saves a checkpoint
//! on SIGTERM, so Slurm is told to send it `grace` seconds before the time limit
//! (`--signal=B:TERM@grace`; `B:` because the batch shell `exec`s peft) and Kubernetes to
//! wait `grace` seconds between SIGTERM and SIGKILL (`terminationGracePeriodSeconds`). The
//! resources come from [`Job`], which `peft grid --emit` fills from its flags.

use std::path::Path;

use anyhow::Result;

use super::Plan;
use crate::error::user;

/// What a job asks the scheduler for.
#[derive(Debug, Clone)]
pub struct Job {
    pub cpus: usize,
    /// Memory per task, as Slurm writes it (`16G`, `500M`).
    pub mem: String,
    /// Wall-clock limit per task, `[D-]HH:MM:SS` (Slurm).
    pub time: String,
    pub gpus: usize,
    pub partition: Option<String>,
    /// Seconds between SIGTERM and the end: time to finish a step and save a checkpoint.
    pub grace_s: u64,
    /// Kubernetes: the container image with the `peft` binary.
    pub image: String,
    /// Kubernetes: the persistent volume claim holding the plan, data and runs.
    pub volume_claim: String,
    /// Kubernetes: pods at once.
    pub parallelism: usize,
}

impl Job {
    /// Values go verbatim into a shell script or YAML: refuse anything that could end the
    /// line or the quoting they sit in.
    pub fn check(&self) -> Result<()> {
        let plain = |flag: &str, v: &str| -> Result<()> {
            let ok = !v.is_empty()
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-:/@,+".contains(c));
            if ok {
                Ok(())
            } else {
                Err(user(format!(
                    "{flag} {v:?}: use letters, digits and . _ - : / @ , + only"
                )))
            }
        };
        plain("--mem", &self.mem)?;
        let (digits, unit) = self.mem.split_at(self.mem.len() - 1);
        if !(digits.parse::<u64>().is_ok_and(|n| n > 0) && "KMGT".contains(unit)) {
            crate::user_bail!("--mem {}: a size such as 16G or 500M", self.mem);
        }
        plain("--time", &self.time)?;
        let clock = self.time.rsplit('-').next().unwrap_or_default();
        let parts: Vec<&str> = clock.split(':').collect();
        if parts.len() != 3 || !parts.iter().all(|p| p.parse::<u32>().is_ok()) {
            crate::user_bail!("--time {}: [D-]HH:MM:SS, such as 08:00:00", self.time);
        }
        if let Some(p) = &self.partition {
            plain("--partition", p)?;
        }
        plain("--image", &self.image)?;
        plain("--volume-claim", &self.volume_claim)?;
        if self.cpus == 0 || self.parallelism == 0 {
            crate::user_bail!("--cpus and --parallelism must be at least 1");
        }
        if self.grace_s == 0 || self.grace_s > 24 * 3600 {
            crate::user_bail!(
                "--grace {}: seconds between SIGTERM and the end, 1 to 86400",
                self.grace_s
            );
        }
        Ok(())
    }

    /// Kubernetes' quantity for the same memory (`16G` → `16Gi`).
    fn k8s_mem(&self) -> String {
        format!("{}i", self.mem)
    }
}

/// An sbatch script: one array task per cell.
pub fn slurm(plan: &Plan, job: &Job, peft: &Path, plan_path: &Path, cwd: &Path) -> String {
    let last = plan.cells.len().saturating_sub(1);
    let out = plan.output_dir.display();
    let gres = if job.gpus > 0 {
        format!("#SBATCH --gres=gpu:{}\n", job.gpus)
    } else {
        String::new()
    };
    let partition = job
        .partition
        .as_ref()
        .map(|p| format!("#SBATCH --partition={p}\n"))
        .unwrap_or_default();
    format!(
        "#!/bin/bash
# {n} cells of {plan}: submit with `sbatch THIS_FILE`. Each array task runs one cell;
# a finished cell is skipped at once and an interrupted one resumes from its checkpoint,
# so resubmitting the whole array (or one index: --array=7) is always safe.
# SIGTERM {grace} s before the time limit (and on pre-emption or scancel) makes peft
# finish its step, save a checkpoint and exit; a resubmitted task resumes from it.
#SBATCH --job-name=peft-grid
#SBATCH --array=0-{last}
#SBATCH --cpus-per-task={cpus}
#SBATCH --mem={mem}
#SBATCH --time={time}
#SBATCH --signal=B:TERM@{grace}
{gres}{partition}#SBATCH --output={out}/slurm-%A_%a.out
set -euo pipefail
# Relative paths in the plan (model, data, output_dir) are from here.
cd {cwd}
mkdir -p {out}
# One compute thread per CPU Slurm gave the task.
export RAYON_NUM_THREADS=\"${{SLURM_CPUS_PER_TASK:-1}}\"
exec {peft} grid {plan}
",
        n = plan.cells.len(),
        plan = plan_path.display(),
        peft = peft.display(),
        cwd = cwd.display(),
        cpus = job.cpus,
        mem = job.mem,
        time = job.time,
        grace = job.grace_s,
    )
}

/// An indexed Job: one completion per cell. The plan and the runs must be on a volume
/// every pod mounts at the same path.
pub fn k8s(plan: &Plan, job: &Job, plan_path: &Path) -> String {
    let n = plan.cells.len();
    let gpu = if job.gpus > 0 {
        format!(", nvidia.com/gpu: {}", job.gpus)
    } else {
        String::new()
    };
    format!(
        "# {n} cells of {plan}: `kubectl apply -f THIS_FILE`. Pod i runs cell i\n\
# (JOB_COMPLETION_INDEX); a finished cell is skipped, an interrupted one resumes.\n\
# On eviction peft gets SIGTERM, saves a checkpoint within the grace period and exits.\n\
apiVersion: batch/v1
kind: Job
metadata:
  name: peft-grid
spec:
  completionMode: Indexed
  completions: {n}
  parallelism: {parallelism}
  backoffLimitPerIndex: 2
  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: {grace}
      containers:
        - name: peft
          image: {image}
          command: [\"peft\", \"grid\", \"{plan}\"]
          workingDir: /work
          env:
            - name: RAYON_NUM_THREADS
              value: \"{cpus}\"
          resources:
            requests: {{cpu: \"{cpus}\", memory: {mem}}}
            limits: {{memory: {mem}{gpu}}}
          volumeMounts:
            - {{name: work, mountPath: /work}}
      volumes:
        - name: work
          persistentVolumeClaim: {{claimName: {claim}}}
",
        plan = plan_path.display(),
        parallelism = job.parallelism,
        grace = job.grace_s,
        image = job.image,
        cpus = job.cpus,
        mem = job.k8s_mem(),
        claim = job.volume_claim,
    )
}
