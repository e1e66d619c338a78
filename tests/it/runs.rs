//! Sweeps over seeds, reports of run directories, and predictions of a run on new text,
//! through the binary on the tiny fixtures.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `peft train --seeds` on tiny-bert, RTE, layernorm, 4 steps with an evaluation every 2
/// (unless `extra` sets --max-steps).
fn sweep_args<'a>(
    data: &'a Path,
    out: &'a Path,
    seeds: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut a = vec![
        "train",
        "--model",
        Box::leak(fixture("tiny-bert").into_boxed_str()),
        "--data-dir",
        s(data),
        "--output-dir",
        s(out),
        "--task",
        "rte",
        "--method",
        "layernorm",
        "--batch-size",
        "8",
        "--max-seq-len",
        "32",
        "--seeds",
        seeds,
    ];
    if !extra.contains(&"--max-steps") {
        a.extend_from_slice(&["--max-steps", "4", "--eval-steps", "2"]);
    }
    a.extend_from_slice(extra);
    a
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn accuracy(record: &serde_json::Value) -> f64 {
    record["dev"]["dev"]["accuracy"].as_f64().unwrap()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn seeds_train_one_run_each_and_summarise_them() {
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 40, 16);
    let sweep = tmp.path().join("sweep");
    let shown = ok(peft(&sweep_args(tmp.path(), &sweep, "3,1,2", &[])));
    assert!(shown.contains("summary saved to"), "{shown}");
    assert!(shown.contains("median"), "{shown}");

    // Each seed trained into its own directory, with its own seed.
    let mut best = Vec::new();
    let mut last = Vec::new();
    for seed in [3u64, 1, 2] {
        let dir = sweep.join(format!("seed-{seed}"));
        let cfg = json(&dir.join("config.json"));
        assert_eq!(cfg["train"]["optimisation"]["seed"].as_u64(), Some(seed));
        let m = metrics(&dir);
        assert_eq!(m.len(), 2, "evaluations at steps 2 and 4");
        best.push(accuracy(
            m.iter().rev().find(|r| r["best"] == true).unwrap(),
        ));
        last.push(accuracy(m.last().unwrap()));
    }

    let summary = json(&sweep.join("summary.json"));
    assert_eq!(summary["seeds"], serde_json::json!([3, 1, 2]));
    assert_eq!(summary["task"], "rte");
    assert_eq!(summary["method"], "layernorm");
    for (which, values) in [("best", &best), ("final", &last)] {
        let got = &summary[which]["accuracy"];
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        let mean = values.iter().sum::<f64>() / 3.0;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 2.0;
        assert_eq!(got["n"], 3);
        assert!(
            close(got["median"].as_f64().unwrap(), sorted[1]),
            "{which}: {got}"
        );
        assert!(close(got["mean"].as_f64().unwrap(), mean), "{which}: {got}");
        assert!(
            close(got["std"].as_f64().unwrap(), var.sqrt()),
            "{which}: {got}"
        );
        assert!(close(got["min"].as_f64().unwrap(), sorted[0]));
        assert!(close(got["max"].as_f64().unwrap(), sorted[2]));
        for (run, v) in summary["runs"].as_array().unwrap().iter().zip(values) {
            assert!(close(run[which]["accuracy"].as_f64().unwrap(), *v));
        }
    }

    // The same command again keeps the finished runs, untouched.
    let before = std::fs::read(sweep.join("seed-1/last.safetensors")).unwrap();
    let again = ok(peft(&sweep_args(tmp.path(), &sweep, "3,1,2", &[])));
    assert_eq!(
        again
            .matches("already finished with these settings: kept")
            .count(),
        3,
        "{again}"
    );
    assert_eq!(
        std::fs::read(sweep.join("seed-1/last.safetensors")).unwrap(),
        before
    );

    // Other settings over the same folder: refused, naming the seed's directory and the key.
    let o = peft(&sweep_args(tmp.path(), &sweep, "1,2", &["--lr", "0.01"]));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains(s(&sweep.join("seed-1"))) && err.contains("lr"),
        "{err}"
    );
    assert!(err.contains("--overwrite"), "{err}");
    // ... unless --overwrite, which retrains and rewrites the summary for these seeds.
    ok(peft(&sweep_args(
        tmp.path(),
        &sweep,
        "1,2",
        &["--lr", "0.01", "--overwrite"],
    )));
    let summary = json(&sweep.join("summary.json"));
    assert_eq!(summary["seeds"], serde_json::json!([1, 2]));
    assert_eq!(
        json(&sweep.join("seed-1/config.json"))["train"]["optimisation"]["lr"],
        0.01
    );

    // A seed's run that stopped before any checkpoint cannot be continued: refused.
    std::fs::remove_file(sweep.join("seed-2/last.safetensors")).unwrap();
    let o = peft(&sweep_args(tmp.path(), &sweep, "1,2", &["--lr", "0.01"]));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains(s(&sweep.join("seed-2"))) && err.contains("unfinished"),
        "{err}"
    );
}

#[test]
fn seeds_refuse_seed_resume_duplicates_and_a_run_directory() {
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 16, 8);
    let out = tmp.path().join("x");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            sweep_args(tmp.path(), &out, "1,2", &["--seed", "3"]),
            "--seed",
        ),
        (
            vec!["train", "--seeds", "1,2", "--resume", s(&out)],
            "--resume",
        ),
        (sweep_args(tmp.path(), &out, "1,2,1", &[]), "seed 1"),
    ];
    for (args, name) in cases {
        let o = peft(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(name), "{args:?}: {err}");
    }
    // A single run's directory is no place for a sweep.
    let single = tmp.path().join("single");
    train(
        &fixture("tiny-bert"),
        tmp.path(),
        &single,
        &["--task", "rte", "--max-steps", "1"],
    );
    let o = peft(&sweep_args(tmp.path(), &single, "1", &[]));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains(s(&single)) && err.contains("single run"),
        "{err}"
    );
}

/// A sweep killed in the middle of a seed continues, with the same command, to the runs an
/// uninterrupted sweep makes.
#[test]
fn the_same_command_resumes_a_killed_sweep() {
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 40, 16);
    let extra = [
        "--max-steps",
        "40",
        "--save-steps",
        "1",
        "--eval-steps",
        "10",
    ];
    let full = tmp.path().join("full");
    let args = sweep_args(tmp.path(), &full, "7", &extra);
    ok(peft(&args));
    // Killed once its first checkpoint is saved. A kill that meets a finished run proves
    // nothing: the sweep then starts again in a new directory (three tries), and the test
    // fails rather than pass without a kill mid-run.
    let killed = (0..3)
        .find_map(|attempt| {
            let killed = tmp.path().join(format!("killed-{attempt}"));
            let args = sweep_args(tmp.path(), &killed, "7", &extra);
            let mut child = Command::new(env!("CARGO_BIN_EXE_peft"))
                .args(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let ckpt = killed.join("seed-7/resume.safetensors");
            let t = Instant::now();
            while !ckpt.exists() && child.try_wait().unwrap().is_none() {
                assert!(
                    t.elapsed() < Duration::from_secs(120),
                    "no checkpoint appeared"
                );
                std::thread::sleep(Duration::from_millis(2));
            }
            child.kill().unwrap();
            let status = child.wait().unwrap();
            let landed = status.signal() == Some(libc::SIGKILL)
                && ckpt.exists()
                && !killed.join("seed-7/last.safetensors").exists();
            if !landed {
                eprintln!("the kill did not land mid-run ({status:?}): again");
            }
            landed.then_some(killed)
        })
        .expect("in three tries the run finished before the kill landed");
    let args = sweep_args(tmp.path(), &killed, "7", &extra);
    let shown = ok(peft(&args));
    assert!(shown.contains("summary saved to"), "{shown}");
    assert_eq!(
        metrics(&full.join("seed-7")),
        metrics(&killed.join("seed-7"))
    );
    // The same tensors, bit for bit.
    let (x, y) = (
        tensors(&full.join("seed-7/last.safetensors")),
        tensors(&killed.join("seed-7/last.safetensors")),
    );
    assert_eq!(x.len(), y.len());
    for (name, t) in &x {
        assert_eq!(bits(t), bits(&y[name]), "{name} differs");
    }
    let (a, b) = (
        json(&full.join("summary.json")),
        json(&killed.join("summary.json")),
    );
    assert_eq!(a["final"], b["final"]);
}

/// Runs for the report tests: a sweep of two seeds and a single STS-B run.
fn report_runs(root: &Path) -> (PathBuf, PathBuf) {
    write_rte(root, 40, 16);
    write_stsb(root, 40, 16);
    let sweep = root.join("runs/rte-ln");
    ok(peft(&sweep_args(root, &sweep, "1,2", &[])));
    let single = root.join("runs/stsb-bitfit");
    train(
        &fixture("tiny-bert"),
        root,
        &single,
        &["--task", "stsb", "--method", "bitfit", "--max-steps", "3"],
    );
    (sweep, single)
}

#[test]
fn report_lists_runs_in_three_formats_and_plots_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (sweep, single) = report_runs(tmp.path());
    let m1 = metrics(&sweep.join("seed-1"));
    let best1 = accuracy(m1.iter().rev().find(|r| r["best"] == true).unwrap());
    let final1 = accuracy(m1.last().unwrap());
    let stsb = metrics(&single);
    let pearson = stsb.last().unwrap()["dev"]["dev"]["pearson"]
        .as_f64()
        .unwrap();
    let cfg = json(&single.join("config.json"));
    let trainable = cfg["trainable_params"].as_u64().unwrap();
    let total = cfg["total_params"].as_u64().unwrap();

    // Text: a folder of runs (the sweep) and a run directory.
    let text = ok(peft(&["report", s(&sweep), s(&single)]));
    let rows: Vec<&str> = text.lines().collect();
    assert!(
        rows[0].starts_with("run ") && rows[0].contains("train tok/s"),
        "{text}"
    );
    let seed1 = rows
        .iter()
        .find(|l| l.starts_with("rte-ln/seed-1 "))
        .expect("seed-1 row");
    assert!(
        seed1.contains("layernorm") && seed1.contains("accuracy"),
        "{seed1}"
    );
    assert!(seed1.contains(&format!("{:.2}", 100.0 * best1)), "{seed1}");
    assert!(seed1.contains(&format!("{:.2}", 100.0 * final1)), "{seed1}");
    assert!(seed1.contains("done"), "{seed1}");
    let st = rows
        .iter()
        .find(|l| l.starts_with("stsb-bitfit "))
        .expect("stsb row");
    assert!(
        st.contains("pearson/spearman") && st.contains("bitfit"),
        "{st}"
    );
    assert!(st.contains(&format!("{:.2}/", 100.0 * pearson)), "{st}");
    let share = format!("{:.2}%", 100.0 * trainable as f64 / total as f64);
    assert!(st.contains(&share), "{st} lacks {share}");
    // Two seeds of one task and method: their median too.
    assert!(
        text.contains("across finished runs of the same task and method"),
        "{text}"
    );

    // A run with a resume checkpoint left is unfinished: listed, but no final value yet.
    let partial = tmp.path().join("partial");
    std::fs::create_dir_all(&partial).unwrap();
    for f in ["config.json", "metrics.jsonl", "trainable.safetensors"] {
        std::fs::copy(single.join(f), partial.join(f)).unwrap();
    }
    std::fs::write(partial.join("resume.safetensors"), b"").unwrap();
    let text = ok(peft(&["report", s(&partial), s(&single)]));
    let row = text.lines().find(|l| l.starts_with("partial ")).unwrap();
    assert!(row.contains("unfinished"), "{text}");
    assert!(!text.contains("across finished runs"), "{text}");

    // A folder holding both, looked into one level deep, gives the same runs.
    let all = ok(peft(&["report", s(&tmp.path().join("runs"))]));
    assert!(
        all.contains("stsb-bitfit") && !all.contains("rte-ln/seed-1"),
        "{all}"
    );

    let md = ok(peft(&[
        "report",
        "--format",
        "markdown",
        s(&sweep),
        s(&single),
    ]));
    let lines: Vec<&str> = md.lines().collect();
    assert!(lines[0].starts_with("| run | task | method |"), "{md}");
    assert!(lines[1].starts_with("|---|---|---|---:|"), "{md}");
    assert!(
        md.contains("| rte-ln/seed-2 | rte | layernorm | 2 |"),
        "{md}"
    );

    let csv = ok(peft(&["report", "--format", "csv", s(&sweep), s(&single)]));
    let lines: Vec<&str> = csv.lines().collect();
    let header: Vec<&str> = lines[0].split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    // Long form: one row per run and metric, two for STS-B.
    assert_eq!(lines.len(), 1 + 2 + 2, "{csv}");
    let row: Vec<&str> = lines
        .iter()
        .find(|l| l.starts_with("rte-ln/seed-1,"))
        .unwrap()
        .split(',')
        .collect();
    assert_eq!(row[col("metric")], "accuracy");
    assert_eq!(row[col("best")].parse::<f64>().unwrap(), best1);
    assert_eq!(row[col("final")].parse::<f64>().unwrap(), final1);
    assert_eq!(row[col("seed")], "1");
    assert_eq!(row[col("finished")], "true");
    let row: Vec<&str> = lines
        .iter()
        .find(|l| l.starts_with("stsb-bitfit,") && l.contains(",pearson,"))
        .unwrap()
        .split(',')
        .collect();
    assert_eq!(row[col("final")].parse::<f64>().unwrap(), pearson);
    assert_eq!(row[col("trainable_params")], trainable.to_string());

    // Plots: a PNG by its signature, an SVG by its root element.
    let png = tmp.path().join("plot.png");
    let svg = tmp.path().join("plot.svg");
    ok(peft(&["report", s(&sweep), s(&single), "--plot", s(&png)]));
    ok(peft(&["report", s(&sweep), s(&single), "--plot", s(&svg)]));
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(&bytes[12..16], b"IHDR");
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    assert!(width >= 800, "{width}");
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("<svg") && text.trim_end().ends_with("</svg>"));
    for name in [
        "training loss",
        "rte-ln/seed-1",
        "stsb-bitfit",
        "layernorm",
        "bitfit",
    ] {
        assert!(text.contains(name), "the SVG lacks {name}");
    }
}

/// The texts of a split's TSV, as `peft predict` reads them: one line each.
fn texts(path: &Path, columns: &[&str]) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split('\t').collect();
    let idx: Vec<usize> = columns
        .iter()
        .map(|c| header.iter().position(|h| h == c).unwrap())
        .collect();
    lines
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            idx.iter().map(|&i| f[i]).collect::<Vec<_>>().join("\t") + "\n"
        })
        .collect()
}

fn predict(run: &Path, input: &Path) -> Vec<Vec<String>> {
    ok(peft(&[
        "predict",
        "--checkpoint",
        s(run),
        "--input",
        s(input),
    ]))
    .lines()
    .map(|l| l.split('\t').map(String::from).collect())
    .collect()
}

/// `peft eval --split test` writes its predictions as a GLUE submission: predict must give
/// the same for the same texts.
fn submission(run: &Path, file: &str) -> Vec<String> {
    ok(peft(&["eval", "--checkpoint", s(run), "--split", "test"]));
    std::fs::read_to_string(run.join(file))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split('\t').nth(1).unwrap().to_string())
        .collect()
}

#[test]
fn predict_labels_pairs_and_single_sentences_as_eval_does() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write_rte(root, 40, 16);
    // SST-2: single sentences.
    let sst = root.join("SST-2");
    std::fs::create_dir_all(&sst).unwrap();
    for (split, n, off) in [("train", 40, 0), ("dev", 12, 300)] {
        let mut t = String::from("sentence\tlabel\n");
        for i in 0..n {
            let x = sentence(i + off, 3 + i % 6);
            t.push_str(&format!(
                "{x}\t{}\n",
                (x.contains("happy") || x.contains("red")) as u8
            ));
        }
        std::fs::write(sst.join(format!("{split}.tsv")), t).unwrap();
    }
    let mut t = String::from("index\tsentence\n");
    for i in 0..9 {
        t.push_str(&format!("{i}\t{}\n", sentence(i + 700, 2 + i % 7)));
    }
    std::fs::write(sst.join("test.tsv"), t).unwrap();
    // STS-B: regression, pairs.
    write_stsb(root, 40, 12);
    let mut t = String::from(
        "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\n",
    );
    for i in 0..7 {
        t.push_str(&format!(
            "{i}\tmain\tf\t2012\t{i}\tnone\tnone\t{}\t{}\n",
            sentence(i + 900, 4),
            sentence(i + 901, 3 + i % 3)
        ));
    }
    std::fs::write(root.join("STS-B/test.tsv"), t).unwrap();

    for (task, dir, columns, file) in [
        ("rte", "RTE", &["sentence1", "sentence2"][..], "RTE.tsv"),
        ("sst2", "SST-2", &["sentence"][..], "SST-2.tsv"),
        (
            "stsb",
            "STS-B",
            &["sentence1", "sentence2"][..],
            "STS-B.tsv",
        ),
    ] {
        let run = root.join(format!("run-{task}"));
        train(
            &fixture("tiny-bert"),
            root,
            &run,
            &[
                "--task",
                task,
                "--method",
                "full",
                "--max-steps",
                "6",
                "--lr",
                "1e-3",
            ],
        );
        let input = root.join(format!("{task}.txt"));
        std::fs::write(&input, texts(&root.join(dir).join("test.tsv"), columns)).unwrap();
        let got = predict(&run, &input);
        let want = submission(&run, file);
        assert_eq!(got.len(), want.len(), "{task}");
        for (g, w) in got.iter().zip(&want) {
            if task == "stsb" {
                assert_eq!(g.len(), 1, "{task}: {g:?}");
                let score: f64 = g[0].parse().unwrap();
                assert_eq!(format!("{:.3}", score.clamp(0.0, 5.0)), *w, "{task}");
            } else {
                assert_eq!(g.len(), 2, "{task}: {g:?}");
                assert_eq!(&g[0], w, "{task}: label");
                let p: f64 = g[1].parse().unwrap();
                // The predicted label is the most probable: at least 1/classes.
                assert!((0.5..=1.0).contains(&p), "{task}: probability {p}");
            }
        }
        // Deterministic, and --output writes what stdout shows.
        assert_eq!(predict(&run, &input), got);
        let out = root.join(format!("{task}.tsv"));
        ok(peft(&[
            "predict",
            "--checkpoint",
            s(&run),
            "--input",
            s(&input),
            "--output",
            s(&out),
        ]));
        let written: Vec<Vec<String>> = std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .map(|l| l.split('\t').map(String::from).collect())
            .collect();
        assert_eq!(written, got, "{task}");
    }
}

/// How `peft` ended with its stdout a pipe whose reader went away: after reading the first
/// line (`peft ... | head -1`), or before the command started, so that its first write
/// meets a closed pipe whatever the scheduling. Returns the exit status and stderr.
fn with_closed_stdout(args: &[&str], read_first_line: bool) -> (std::process::ExitStatus, String) {
    use std::io::{BufRead, BufReader, Read};
    let (reader, writer) = std::io::pipe().unwrap();
    let reader = read_first_line.then_some(reader);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_peft"));
    cmd.args(args).stdout(writer).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    drop(cmd); // the parent's copy of the write end
    if let Some(reader) = reader {
        let mut line = String::new();
        BufReader::new(reader).read_line(&mut line).unwrap();
        assert!(line.ends_with('\n'), "no first line: {line:?}");
    }
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (child.wait().unwrap(), err)
}

/// Ended as Unix tools end on a closed pipe: by SIGPIPE (141 in a shell) and silently.
/// Every output here is larger than a pipe holds, or written after the reader went, so a
/// write did meet the closed pipe: exit 0 would mean the test missed it.
fn assert_quiet_sigpipe(what: &str, (status, err): (std::process::ExitStatus, String)) {
    assert!(
        status.signal() == Some(libc::SIGPIPE) || status.code() == Some(141),
        "{what}: {status:?}, stderr:\n{err}"
    );
    assert!(err.is_empty(), "{what} wrote to stderr:\n{err}");
}

#[test]
fn a_closed_stdout_ends_every_command_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write_rte(root, 40, 16);
    let run = root.join("run");
    train(
        &fixture("tiny-bert"),
        root,
        &run,
        &["--task", "rte", "--method", "layernorm", "--max-steps", "2"],
    );
    // 20,000 predictions (some 400 KB) and 2,000 embeddings (some 700 KB): more than a
    // pipe's 64 KB, so the command is still writing when the reader goes.
    let pairs: String = (0..20_000)
        .map(|i| {
            format!(
                "{}\t{}\n",
                sentence(i, 3 + i % 5),
                sentence(i + 1, 2 + i % 3)
            )
        })
        .collect();
    let input = root.join("pairs.txt");
    std::fs::write(&input, &pairs).unwrap();
    let texts: String = (0..2_000).map(|i| sentence(i, 2 + i % 7) + "\n").collect();
    let single = root.join("texts.txt");
    std::fs::write(&single, texts).unwrap();

    let predict = ["predict", "--checkpoint", s(&run), "--input", s(&input)];
    let embed = [
        "embed",
        "--model",
        Box::leak(fixture("tiny-bert").into_boxed_str()),
        "--input",
        s(&single),
        "--max-seq-len",
        "32",
    ];
    for read_first_line in [true, false] {
        assert_quiet_sigpipe("predict", with_closed_stdout(&predict, read_first_line));
        assert_quiet_sigpipe("embed", with_closed_stdout(&embed, read_first_line));
    }
    let report = ["report", s(&run), "--format", "markdown"];
    assert_quiet_sigpipe("report", with_closed_stdout(&report, false));
    // The seeds sweep prints a line per seed and the table of the seeds.
    let sweep = root.join("sweep");
    let args = sweep_args(root, &sweep, "1", &["--max-steps", "1"]);
    assert_quiet_sigpipe("train --seeds", with_closed_stdout(&args, false));
}
