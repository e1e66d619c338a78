//! `peft grid` through the binary: the plan's cells and their statuses, one process per
//! cell with a lock that a second process respects and a dead one does not keep, a killed
//! cell resumed, a changed plan, all cells with --workers, the job files, and the report.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

fn write_plan(dir: &Path, extra_base: &str, seeds: &str) -> std::path::PathBuf {
    let plan = dir.join("plan.toml");
    std::fs::write(
        &plan,
        format!(
            r#"
output_dir = "{out}"
[base]
model = "{model}"
task = "rte"
data_dir = "{data}"
max_seq_len = 32
batch_size = 8
eval_batch_size = 16
{extra_base}
[grid]
method = ["layernorm", "bitfit"]
seed = [{seeds}]
"#,
            out = dir.join("grid").display(),
            model = fixture("tiny-bert"),
            data = dir.display(),
        ),
    )
    .unwrap();
    plan
}

fn list(plan: &Path) -> Vec<(usize, String, String)> {
    ok(peft(&["grid", plan.to_str().unwrap(), "--list"]))
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[0].parse().unwrap(), f[1].to_string(), f[2].to_string())
        })
        .collect()
}

#[test]
fn cells_run_once_and_follow_plan_changes() {
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 48, 16);
    let plan = write_plan(tmp.path(), "max_steps = 4", "1, 2");
    let cells = list(&plan);
    assert_eq!(cells.len(), 4);
    assert!(cells.iter().all(|c| c.1 == "todo"), "{cells:?}");
    assert!(cells[0].2.contains("rte-layernorm-seed1-"), "{cells:?}");
    assert!(cells[3].2.contains("rte-bitfit-seed2-"), "{cells:?}");

    // One cell, then the same again: skipped.
    let p = plan.to_str().unwrap();
    ok(peft(&["grid", p, "--index", "1"]));
    let again = ok(peft(&["grid", p, "--index", "1"]));
    assert!(again.contains("skipped"), "{again}");
    assert_eq!(list(&plan)[1].1, "done");
    // The index from a Slurm array task.
    let o = Command::new(env!("CARGO_BIN_EXE_peft"))
        .args(["grid", p])
        .env("SLURM_ARRAY_TASK_ID", "2")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(list(&plan)[2].1, "done");
    let o = peft(&["grid", p, "--index", "9"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no cell 9"), "{}", stderr(&o));

    // A plan with one more seed keeps the cells it had; another base setting makes all new.
    let grown = write_plan(tmp.path(), "max_steps = 4", "1, 2, 3");
    let g = list(&grown);
    assert_eq!(g.len(), 6);
    assert_eq!((g[1].1.as_str(), &g[1].2), ("done", &cells[1].2));
    assert_eq!(g[2].1, "todo");
    let changed = write_plan(tmp.path(), "max_steps = 5", "1, 2");
    let c = list(&changed);
    assert!(c.iter().all(|x| x.1 == "todo"), "{c:?}");
    assert_ne!(c[1].2, cells[1].2);
}

#[test]
fn two_processes_race_for_a_cell_and_a_killed_one_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 48, 16);
    // Long enough to be caught running; checkpoints every step to resume from.
    let plan = write_plan(tmp.path(), "max_steps = 4000\nsave_steps = 1", "1");
    let p = plan.to_str().unwrap();
    let dir = list(&plan)[0].2.clone();
    let mut first = Command::new(env!("CARGO_BIN_EXE_peft"))
        .args(["grid", p, "--index", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !Path::new(&dir).join("resume.safetensors").exists() {
        assert!(start.elapsed() < Duration::from_secs(60), "no checkpoint");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(list(&plan)[0].1, "running");
    let second = peft(&["grid", p, "--index", "0"]);
    assert_eq!(second.status.code(), Some(2), "{}", stderr(&second));
    assert!(
        stderr(&second).contains("being written by another process"),
        "{}",
        stderr(&second)
    );
    first.kill().unwrap();
    let status = first.wait().unwrap();
    assert!(
        !status.success(),
        "the first process finished before the kill"
    );
    // The dead process holds no lock: the cell is todo again, and resumes from its
    // checkpoint (watched until it says so, then stopped: it would run 4000 steps).
    assert_eq!(list(&plan)[0].1, "todo");
    let mut resumed = Command::new(env!("CARGO_BIN_EXE_peft"))
        .args(["grid", p, "--index", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = String::new();
    for line in BufReader::new(resumed.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.starts_with("resuming at step") {
            said = line;
            break;
        }
    }
    resumed.kill().unwrap();
    resumed.wait().unwrap();
    let step: usize = said
        .trim_start_matches("resuming at step ")
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("no resume: {said:?}"));
    assert!(step > 0, "{said}");
}

/// Per-method learning rates, every cell with two workers, the best learning rate per
/// method in the report, and the job files for Slurm and Kubernetes.
#[test]
fn workers_run_the_grid_and_report_picks_the_best_learning_rate() {
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 48, 16);
    let plan = tmp.path().join("plan.toml");
    std::fs::write(
        &plan,
        format!(
            r#"
output_dir = "{out}"
[base]
model = "{model}"
task = "rte"
data_dir = "{data}"
max_seq_len = 32
batch_size = 8
max_steps = 4
[grid]
seed = [1, 2]
[grid.method.bitfit]
[grid.method.layernorm]
lr = [1e-3, 3e-2]
"#,
            out = tmp.path().join("grid").display(),
            model = fixture("tiny-bert"),
            data = tmp.path().display(),
        ),
    )
    .unwrap();
    let p = plan.to_str().unwrap();
    let shown = ok(peft(&["grid", p, "--workers", "2"]));
    assert!(shown.contains("all 6 cells done"), "{shown}");
    let cells = ok(peft(&["grid", p, "--list"]));
    assert_eq!(
        cells.lines().filter(|l| l.contains("\tdone\t")).count(),
        6,
        "{cells}"
    );
    // Each worker's output is in its cell's folder.
    let first = cells.lines().next().unwrap().split('\t').nth(2).unwrap();
    let log = std::fs::read_to_string(Path::new(first).join("grid.log")).unwrap();
    assert!(log.contains("# cell 0 of 6"), "{log}");

    let report = ok(peft(&[
        "report",
        tmp.path().join("grid").to_str().unwrap(),
        "--format",
        "markdown",
    ]));
    let table = report
        .split("Best learning rate")
        .nth(1)
        .and_then(|t| t.split("As the papers lay it out").next())
        .unwrap_or_else(|| panic!("{report}"));
    let ln: Vec<&str> = table
        .lines()
        .filter(|l| l.contains("| layernorm |"))
        .collect();
    assert_eq!(ln.len(), 1, "{table}");
    assert!(ln[0].contains("| 2 |"), "two seeds: {}", ln[0]);
    // The pick, computed here from the cells' own files: each layernorm cell's accuracy
    // at its best evaluation, the median over seeds per rate, the best median (a tie to
    // the rate listed first, 1e-3).
    let mut by_lr: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for line in cells.lines() {
        let dir = Path::new(line.split('\t').nth(2).unwrap());
        let info: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        if info["train"]["method"]["name"] != "layernorm" {
            continue;
        }
        let lr = info["train"]["optimisation"]["lr"].as_f64().unwrap();
        let best = metrics(dir)
            .into_iter()
            .find(|r| r["best"].as_bool().unwrap())
            .unwrap()["dev"]["dev"]["accuracy"]
            .as_f64()
            .unwrap();
        by_lr.entry(format!("{lr:e}")).or_default().push(best);
    }
    let median = |v: &[f64]| (v[0] + v[1]) / 2.0;
    let (lo, hi) = (median(&by_lr["1e-3"]), median(&by_lr["3e-2"]));
    let pick = if hi > lo { "3e-2" } else { "1e-3" };
    let cols: Vec<&str> = ln[0].split('|').map(str::trim).collect();
    assert_eq!(cols[5], pick, "medians 1e-3: {lo}, 3e-2: {hi}: {}", ln[0]);
    assert!(
        ln[0].contains("1e-3: ") && ln[0].contains("3e-2: "),
        "{}",
        ln[0]
    );
    assert!(table.lines().any(|l| l.contains("| bitfit |")), "{table}");
    // The papers' layout: a row per method, a column per task.
    let wide = report.split("As the papers lay it out").nth(1).unwrap();
    assert!(wide.contains("| method | rte |"), "{wide}");
    assert!(
        wide.lines()
            .any(|l| l.starts_with("| layernorm | ") && l.contains(" ± ")),
        "{wide}"
    );

    // The per-run CSV carries each run's learning rate, for spreadsheets.
    let csv = ok(peft(&[
        "report",
        tmp.path().join("grid").to_str().unwrap(),
        "--format",
        "csv",
    ]));
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let lr = header.iter().position(|h| *h == "lr").unwrap();
    let mut lrs: Vec<&str> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(lr).unwrap())
        .collect();
    lrs.sort();
    lrs.dedup();
    assert_eq!(lrs, ["0.001", "0.03"], "{csv}");

    // The grid's table alone, as CSV: one row per task and method, the best lr's median.
    let table = ok(peft(&[
        "report",
        tmp.path().join("grid").to_str().unwrap(),
        "--grid",
        "--format",
        "csv",
    ]));
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(
        rows[0],
        "task,method,settings,metric,best_lr,seeds,median,min,max,std"
    );
    assert_eq!(rows.len(), 3, "{table}");
    let ln: Vec<&str> = rows
        .iter()
        .find(|r| r.starts_with("rte,layernorm,"))
        .unwrap()
        .split(',')
        .collect();
    assert_eq!(ln[5], "2");
    assert!(["0.001", "0.03"].contains(&ln[4]), "{table}");

    let slurm = ok(peft(&["grid", p, "--emit", "slurm"]));
    assert!(slurm.starts_with("#!/bin/bash"), "{slurm}");
    assert!(slurm.contains("#SBATCH --array=0-5"), "{slurm}");
    assert!(
        slurm.contains(&format!("grid {}", plan.display())),
        "{slurm}"
    );
    let k8s = ok(peft(&["grid", p, "--emit", "k8s"]));
    assert!(
        k8s.contains("completionMode: Indexed") && k8s.contains("completions: 6"),
        "{k8s}"
    );
    let o = peft(&["grid", p]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("which cell?"), "{}", stderr(&o));
}

/// The seed papers' tables as plans (configs/grids/): each lists its cells and emits a
/// Slurm array job as it stands, with the methods and models its comments promise.
#[test]
fn the_papers_plans_list_and_emit_as_they_are() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/grids");
    // plan, cells, what every listing must hold
    let plans: &[(&str, usize, &[&str])] = &[
        (
            "child-tuning",
            4 * 4 * 3 * 3,
            &[
                "-full-",
                "-child-f-",
                "-child-d-",
                "electra-large",
                "roberta-large",
                "xlnet-large",
            ],
        ),
        (
            "layernorm",
            8 * 3 * (4 * 3 + 3 * 4 * 2),
            &[
                "-bitfit-",
                "-fisher-layernorm-fraction0.5-",
                "-random-layernorm-",
                "mnli-",
            ],
        ),
        (
            "layernorm-global",
            8 * 3 * 4 * 3,
            &["-fisher-layernorm-fraction0.1-"],
        ),
        (
            "ina-glue",
            3 * 8 * 3 * (1 + 2 + 2 * 3),
            &[
                "-ina-ina_inhibition0.9-ina_r4-",
                "-lora-lora_r8-",
                "deberta-large",
            ],
        ),
        (
            "ina-squad",
            3 * 2 * 3 * (1 + 3),
            &["squad_v2-ina-", "deberta-v3-large"],
        ),
        ("minilm-rte-stsb", 2 * 3 * 3, &["stsb-lora-"]),
    ];
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut named: Vec<String> = plans.iter().map(|(p, _, _)| format!("{p}.toml")).collect();
    named.sort();
    assert_eq!(files, named, "every plan in configs/grids is checked here");
    for (name, cells, holds) in plans {
        let plan = dir.join(format!("{name}.toml"));
        let p = plan.to_str().unwrap();
        let list = ok(peft(&["grid", p, "--list"]));
        let rows: Vec<&str> = list.lines().collect();
        assert_eq!(rows.len(), *cells, "{name}");
        assert!(rows.iter().all(|r| r.contains("\ttodo\t")), "{name}");
        for h in *holds {
            assert!(list.contains(h), "{name}: no cell with {h}");
        }
        let slurm = ok(peft(&["grid", p, "--emit", "slurm", "--gpus", "1"]));
        assert!(
            slurm.contains(&format!("#SBATCH --array=0-{}", cells - 1)),
            "{name}: {slurm}"
        );
    }
}
