//! Job files for schedulers that run a plan's cells: a Slurm array job and a Kubernetes
//! indexed Job. Each task runs `peft grid PLAN`, which reads its cell's index from the
//! scheduler's environment (`SLURM_ARRAY_TASK_ID`, `JOB_COMPLETION_INDEX`). The resource
//! lines are guesses for the user to edit.

use std::path::Path;

use super::Plan;

/// An sbatch script: one array task per cell.
pub fn slurm(plan: &Plan, peft: &Path, plan_path: &Path, cwd: &Path) -> String {
    let last = plan.cells.len().saturating_sub(1);
    let out = plan.output_dir.display();
    format!(
        "#!/bin/bash
# {n} cells of {plan}: submit with `sbatch THIS_FILE`. Each array task runs one cell;
# a finished cell is skipped at once and an interrupted one resumes from its checkpoint,
# so resubmitting the whole array (or one index: --array=7) is always safe.
#SBATCH --job-name=peft-grid
#SBATCH --array=0-{last}
#SBATCH --cpus-per-task=4
#SBATCH --mem=16G
#SBATCH --time=08:00:00
##SBATCH --gres=gpu:1
##SBATCH --partition=gpu
#SBATCH --output={out}/slurm-%A_%a.out
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
    )
}

/// An indexed Job: one completion per cell. The plan and the runs must be on a volume
/// every pod mounts at the same path.
pub fn k8s(plan: &Plan, plan_path: &Path) -> String {
    let n = plan.cells.len();
    format!(
        "# {n} cells of {plan}: `kubectl apply -f THIS_FILE`. Pod i runs cell i\n\
# (JOB_COMPLETION_INDEX); a finished cell is skipped, an interrupted one resumes.\n\
# Edit the image (one with the peft binary), the volume and the resources.\n\
apiVersion: batch/v1
kind: Job
metadata:
  name: peft-grid
spec:
  completionMode: Indexed
  completions: {n}
  parallelism: 4
  backoffLimitPerIndex: 2
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: peft
          image: ghcr.io/YOUR-ORG/peft:latest
          command: [\"peft\", \"grid\", \"{plan}\"]
          workingDir: /work
          env:
            - name: RAYON_NUM_THREADS
              value: \"4\"
          resources:
            requests: {{cpu: \"4\", memory: 16Gi}}
            limits: {{memory: 16Gi}}
            # limits: {{nvidia.com/gpu: 1}}
          volumeMounts:
            - {{name: work, mountPath: /work}}
      volumes:
        - name: work
          persistentVolumeClaim: {{claimName: peft-work}}
",
        plan = plan_path.display(),
    )
}
