//! No run loses its work: Ctrl-C saves a checkpoint that resumes to the same metrics as an
//! uninterrupted run, so does a SIGKILL at any moment (no file is ever left truncated),
//! a full disk leaves the previous checkpoint intact, and a NaN stops training cleanly.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

const RESUME: &str = "resume.safetensors";

/// Child-Tuning F with dropout: the run depends on data order, dropout and per-step masks,
/// all of which a resumed run must draw exactly as the uninterrupted one.
fn args(data: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "train",
        "--model",
        &fixture("tiny-bert"),
        "--data-dir",
        data.to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
        "--task",
        "rte",
        "--method",
        "child-f",
        "--reserve",
        "0.5",
        "--lr",
        "1e-3",
        "--batch-size",
        "8",
        "--max-seq-len",
        "32",
        "--epochs",
        "12",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn spawn(args: &[String]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_peft"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn resume(out: &Path) -> Vec<String> {
    vec![
        "train".into(),
        "--resume".into(),
        out.to_string_lossy().into_owned(),
    ]
}

fn wait_for(path: &Path, child: &mut Child) -> bool {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(120) {
        if path.exists() {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("{} never appeared", path.display());
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) takes plain integers; the pid is our own child's, not yet waited
    // for, so it cannot have been reused by another process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

/// Start `args` (a new run into `out`) and send `sig` (SIGINT: Ctrl-C; SIGTERM: how Slurm
/// and Kubernetes stop a job) once its first checkpoint is saved. Returns stderr once the interrupt landed mid-run: exit 130 with the checkpoint
/// in place. A run that ended on its own before the signal proves nothing, so the run is
/// started again in a cleared directory (three tries) rather than the test passing.
fn interrupt_mid_run(args: &[String], out: &Path, sig: i32) -> String {
    for _ in 0..3 {
        let _ = std::fs::remove_dir_all(out);
        let mut child = spawn(args);
        if !wait_for(&out.join(RESUME), &mut child) {
            let o = child.wait_with_output().unwrap();
            panic!(
                "the run ended before its first checkpoint: {:?}\n{}",
                o.status,
                String::from_utf8_lossy(&o.stderr)
            );
        }
        signal(&child, sig);
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        if o.status.success() {
            eprintln!("the run finished before the interrupt landed: trying again");
            continue;
        }
        assert_eq!(o.status.code(), Some(130), "{err}");
        assert!(
            out.join(RESUME).exists(),
            "no checkpoint after the interrupt"
        );
        assert!(
            !out.join("last.safetensors").exists(),
            "the interrupted run wrote its final tensors"
        );
        return err;
    }
    panic!("three runs finished before an interrupt landed mid-run");
}

/// SIGKILL the child now; whether the kill landed mid-run: the process died of it, with
/// a checkpoint in place and the final tensors not yet written. False when the run had
/// ended on its own first (or was past writing its final tensors).
fn kill_mid_run(child: &mut Child, out: &Path) -> bool {
    // An exited child not yet waited for keeps its pid, so this never hits another process.
    signal(child, libc::SIGKILL);
    let status = child.wait().unwrap();
    status.signal() == Some(libc::SIGKILL)
        && out.join(RESUME).exists()
        && !out.join("last.safetensors").exists()
}

/// The uninterrupted run: its metrics and final tensors.
fn reference(data: &Path, root: &Path) -> (PathBuf, Duration) {
    let out = root.join("reference");
    let t = Instant::now();
    let a = args(data, &out, &[]);
    ok(peft(&a.iter().map(String::as_str).collect::<Vec<_>>()));
    (out, t.elapsed())
}

fn assert_same_run(a: &Path, b: &Path) {
    assert_eq!(metrics(a), metrics(b), "metrics differ");
    let (ta, tb) = (
        tensors(&a.join("last.safetensors")),
        tensors(&b.join("last.safetensors")),
    );
    assert_eq!(ta.len(), tb.len());
    for (name, x) in &ta {
        let (x, y) = (x.flatten_all().unwrap(), tb[name].flatten_all().unwrap());
        assert_eq!(
            x.to_vec1::<f32>().unwrap(),
            y.to_vec1::<f32>().unwrap(),
            "{name} differs"
        );
    }
    assert!(
        !b.join(RESUME).exists(),
        "a finished run keeps no resume state"
    );
}

#[test]
fn ctrl_c_saves_a_checkpoint_that_resumes_to_the_same_run() {
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 48, 20);
    let (reference, _) = reference(tmp.path(), tmp.path());

    let out = tmp.path().join("interrupted");
    // The first epoch's checkpoint shows training is under way.
    let err = interrupt_mid_run(&args(tmp.path(), &out, &[]), &out, libc::SIGINT);
    assert!(err.contains("peft train --resume"), "{err}");
    let done = metrics(&out).len();
    assert!(
        done < metrics(&reference).len(),
        "the run was not cut short"
    );

    // Settings come from the run; other flags are refused.
    let mut bad = resume(&out);
    bad.extend(["--lr".into(), "0.1".into()]);
    let o = peft(&bad.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(o.status.code(), Some(2));

    ok(peft(
        &resume(&out).iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    assert_same_run(&reference, &out);
    // The resumed run's model card gives the uninterrupted run's results.
    let card = |d: &Path| crate::card::results(&crate::card::front_matter(d));
    assert_eq!(card(&reference), card(&out));
}

/// A scheduler's SIGTERM (pre-emption, time limit, scancel, eviction) does what Ctrl-C
/// does: the step ends, a checkpoint is saved, exit 130, and the resumed run is the
/// uninterrupted one bit for bit.
#[test]
fn sigterm_saves_a_checkpoint_that_resumes_to_the_same_run() {
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 48, 20);
    let (reference, _) = reference(tmp.path(), tmp.path());
    let out = tmp.path().join("terminated");
    let err = interrupt_mid_run(&args(tmp.path(), &out, &[]), &out, libc::SIGTERM);
    assert!(err.contains("SIGTERM"), "{err}");
    assert!(err.contains("peft train --resume"), "{err}");
    assert!(metrics(&out).len() < metrics(&reference).len());
    ok(peft(
        &resume(&out).iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    assert_same_run(&reference, &out);
}

#[test]
fn sigkill_at_any_step_resumes_to_the_same_run_and_never_truncates_a_file() {
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 48, 20);
    let (reference, took) = reference(tmp.path(), tmp.path());

    // Four kills, each a fraction of the uninterrupted run's time after the process
    // starts (a fixed sequence, so a failure repeats), adding up to well under the whole
    // run. Should one meet a run already over (a machine suddenly faster), the sequence
    // starts again in a new directory with the waits halved: the test never passes on
    // fewer kills than it claims.
    let mut scale = 1.0;
    for attempt in 0..3 {
        let out = tmp.path().join(format!("killed-{attempt}"));
        if !kill_four_times(tmp.path(), &out, took, scale) {
            eprintln!("a kill met a finished run: again with the waits halved");
            scale /= 2.0;
            continue;
        }
        ok(peft(
            &resume(&out).iter().map(String::as_str).collect::<Vec<_>>(),
        ));
        assert_same_run(&reference, &out);
        return;
    }
    panic!("in three tries the run always finished before four kills landed");
}

/// Train into `out` and SIGKILL it four times, resuming after each kill; false as soon as
/// a kill does not land mid-run. After every kill each file in place must be whole.
fn kill_four_times(data: &Path, out: &Path, took: Duration, scale: f64) -> bool {
    let mut next = args(data, out, &["--save-steps", "1"]);
    for frac in [0.2, 0.1, 0.25, 0.15] {
        let mut child = spawn(&next);
        if !wait_for(&out.join(RESUME), &mut child) {
            return false;
        }
        std::thread::sleep(took.mul_f64(frac * scale));
        if !kill_mid_run(&mut child, out) {
            return false;
        }
        // Whatever the moment, every file in place is whole.
        for f in ["trainable.safetensors", RESUME] {
            let path = out.join(f);
            if path.exists() {
                let bytes = std::fs::read(&path).unwrap();
                safetensors::SafeTensors::deserialize(&bytes)
                    .unwrap_or_else(|e| panic!("{f} is damaged after a kill: {e}"));
            }
        }
        for line in std::fs::read_to_string(out.join("metrics.jsonl"))
            .unwrap_or_default()
            .lines()
        {
            serde_json::from_str::<serde_json::Value>(line).expect("a whole metrics line");
        }
        next = resume(out);
    }
    true
}

#[test]
fn a_full_disk_during_a_save_leaves_the_previous_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 48, 20);
    let out = tmp.path().join("run");
    interrupt_mid_run(&args(tmp.path(), &out, &[]), &out, libc::SIGINT);
    let before: Vec<(PathBuf, Vec<u8>)> = [RESUME, "trainable.safetensors"]
        .iter()
        .map(|f| (out.join(f), std::fs::read(out.join(f)).unwrap()))
        .collect();

    // A 64 KiB file-size limit, with SIGXFSZ ignored, makes writes fail as on a full disk.
    let cmd = format!(
        "ulimit -f 64; trap '' XFSZ; exec '{}' train --resume '{}'",
        env!("CARGO_BIN_EXE_peft"),
        out.display()
    );
    let o = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("File too large") && err.contains("left as it was"),
        "{err}"
    );
    for (path, bytes) in before {
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "{} changed",
            path.display()
        );
    }
    for e in std::fs::read_dir(&out).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.ends_with(".tmp"), "{name} left behind");
    }
    // With room again, the same checkpoint resumes.
    ok(peft(
        &resume(&out).iter().map(String::as_str).collect::<Vec<_>>(),
    ));
}

#[test]
fn a_nan_stops_training_with_the_step_and_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 48, 20);
    let out = tmp.path().join("nan");
    let finite = |t: &candle_core::Tensor| {
        t.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .all(|x| x.is_finite())
    };
    // At 1e15 the weights stay finite and the activations overflow: a non-finite
    // gradient. At 1e30 a finite gradient's update itself overflows a weight. Either
    // way training stops, and the checkpoint on disk (one after every step) is the
    // step before the bad one, every tensor and moment finite.
    let mut a = Vec::new();
    for (lr, says) in [
        ("1e15", "gradient not finite (largest: "),
        ("1e30", "the update made `"),
    ] {
        a = args(tmp.path(), &out, &[]);
        for (flag, value) in [("--lr", lr), ("--epochs", "2")] {
            let i = a.iter().position(|x| x == flag).unwrap();
            a[i + 1] = value.into();
        }
        a.extend(["--save-steps".into(), "1".into(), "--overwrite".into()]);
        let o = peft(&a.iter().map(String::as_str).collect::<Vec<_>>());
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{lr}: {err}");
        assert!(err.contains(says), "{lr}: {err}");
        assert!(
            err.contains("--skip-nonfinite") || err.contains("--lr"),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        let bad: usize = err
            .split("step ")
            .nth(1)
            .and_then(|s| s.split(':').next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no step number in {err}"));
        assert!(bad > 1, "{lr}: the first step already failed: {err}");
        let saved = peft::run::checkpoint::load(&out.join(RESUME)).unwrap();
        assert_eq!(saved.progress.step, bad - 1, "{lr}: {err}");
        for (name, t) in &saved.params {
            assert!(finite(t), "{lr}: {name} in the checkpoint is not finite");
        }
        for (name, (m, v)) in &saved.optimizer.moments {
            assert!(
                finite(m) && finite(v),
                "{lr}: {name}'s moments are not finite"
            );
        }
        // No evaluation may have happened before the bad step: then no metrics.jsonl.
        let evaluated = out.join("metrics.jsonl").exists();
        let lines = if evaluated { metrics(&out) } else { Vec::new() };
        for line in lines {
            assert!(line["step"].as_u64().unwrap() < bad as u64, "{line}");
            assert!(
                line["train_loss"].as_f64().is_none_or(f64::is_finite),
                "{line}"
            );
        }
    }
    let i = a.iter().position(|x| x == "--lr").unwrap();
    a[i + 1] = "1e15".into();

    // Skipping: the run ends; every tensor it keeps is finite, it trained before the bad
    // steps (the tensors moved from the base), and it says how many it skipped.
    let mut a = a.clone();
    a.extend(["--skip-nonfinite".into(), "1000".into()]);
    let o = peft(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let skipped = err.matches("step skipped").count();
    assert!(skipped > 0, "{err}");
    let (_, base) = peft::model::read_checkpoint(Path::new(&fixture("tiny-bert"))).unwrap();
    let last = tensors(&out.join("last.safetensors"));
    let mut moved = 0;
    for (name, t) in &last {
        assert!(finite(t), "{name} is not finite after a skipping run");
        if let Some(b) = base.get(name).filter(|b| b.dims() == t.dims()) {
            moved += (max_abs_diff(t, b) > 0.0) as usize;
        }
    }
    assert!(moved > 0, "nothing trained before the bad steps");
    for line in metrics(&out) {
        assert!(
            line["train_loss"].as_f64().is_none_or(f64::is_finite),
            "{line}"
        );
    }
}

/// AdaLoRA's allocator keeps state between steps (smoothed importance, the rank pattern):
/// a run interrupted while its budget falls resumes to the uninterrupted run bit for bit,
/// rank pattern included.
#[test]
fn an_adalora_run_resumes_with_its_rank_budget() {
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 48, 20);
    let adalora = |out: &Path| -> Vec<String> {
        let mut a = args(tmp.path(), out, &[]);
        let at = a.iter().position(|s| s == "child-f").unwrap();
        a.splice(
            at..at + 3,
            [
                "adalora",
                "--adalora-init-r",
                "4",
                "--adalora-target-r",
                "2",
                "--adalora-tinit",
                "5",
                "--adalora-tfinal",
                "10",
            ]
            .map(String::from),
        );
        a
    };
    let reference = tmp.path().join("reference");
    let a = adalora(&reference);
    ok(peft(&a.iter().map(String::as_str).collect::<Vec<_>>()));
    let out = tmp.path().join("terminated");
    interrupt_mid_run(&adalora(&out), &out, libc::SIGTERM);
    // The allocator's smoothed importance of every adapter tensor is in the checkpoint.
    let saved = tensors(&out.join(RESUME));
    for name in saved.keys().filter_map(|k| k.strip_prefix("param/")) {
        if name.contains(".lora_") {
            for what in ["ipt", "unc"] {
                let key = format!("regime/{what}/{name}");
                assert!(saved.contains_key(&key), "no {key} in the checkpoint");
            }
        }
    }
    ok(peft(
        &resume(&out).iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    assert_same_run(&reference, &out);
    let read = |d: &Path| std::fs::read_to_string(d.join("rank_pattern.json")).unwrap();
    assert_eq!(read(&reference), read(&out));
}

/// A second Ctrl-C quits at once: sent while the first one's step is still running (here
/// during a long evaluation after every step), the process exits 130 from the signal
/// handler, without finishing the step or saving ("interrupted after step" never printed).
#[test]
fn a_second_ctrl_c_quits_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    // 8,000 dev rows: each evaluation takes long enough for two signals to land in it.
    write_rte(tmp.path(), 48, 8000);
    for attempt in 0..3 {
        let out = tmp.path().join(format!("twice-{attempt}"));
        let mut a = args(tmp.path(), &out, &["--eval-steps", "1"]);
        let i = a.iter().position(|x| x == "--epochs").unwrap();
        a[i + 1] = "100".into();
        let child = spawn(&a);
        // Wait for the run to be under way (its config written), then a little longer,
        // into the steps and their evaluations.
        let t = Instant::now();
        while !out.join("config.json").exists() && t.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(300));
        signal(&child, libc::SIGINT);
        std::thread::sleep(Duration::from_millis(50));
        let sent = Instant::now();
        signal(&child, libc::SIGINT);
        let o = child.wait_with_output().unwrap();
        let quit_in = sent.elapsed();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(130), "{err}");
        assert!(err.contains("Ctrl-C again to quit now"), "{err}");
        if err.contains("interrupted after step") {
            eprintln!("the first interrupt's step ended before the second landed: again");
            continue;
        }
        assert!(quit_in < Duration::from_secs(2), "quit after {quit_in:?}");
        assert!(!out.join("last.safetensors").exists());
        return;
    }
    panic!("in three tries the first interrupt's step ended before the second landed");
}

/// Training is independent of the thread count: the same run on 1, 2 and 3 threads
/// (RAYON_NUM_THREADS) gives the same tensors bit for bit and the same metrics, with
/// dropout on and Child-Tuning F's per-step masks drawn.
#[test]
fn the_thread_count_changes_no_bit() {
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 48, 20);
    let mut runs = Vec::new();
    for threads in ["1", "2", "3"] {
        let out = tmp.path().join(format!("threads-{threads}"));
        let mut a = args(tmp.path(), &out, &[]);
        let i = a.iter().position(|x| x == "--epochs").unwrap();
        a[i + 1] = "2".into();
        let o = Command::new(env!("CARGO_BIN_EXE_peft"))
            .args(&a)
            .env("RAYON_NUM_THREADS", threads)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        runs.push(out);
    }
    let want = tensors(&runs[0].join("last.safetensors"));
    for run in &runs[1..] {
        let got = tensors(&run.join("last.safetensors"));
        assert_eq!(got.len(), want.len());
        for (name, t) in &want {
            assert_eq!(bits(t), bits(&got[name]), "{}: {name}", run.display());
        }
        assert_eq!(metrics(run), metrics(&runs[0]), "{}", run.display());
    }
}
