//! The edges between processes and files: planted symlinks, two writers on one run, a
//! merge onto a run, the job files a scheduler gets, and backtraces in messages.

use std::process::{Child, Stdio};
use std::time::Instant;

use super::*;

/// The temporary names earlier versions used (`NAME.<pid>.tmp`) for the next pids, each
/// a symlink to `target`: a writer that still used them would write through one.
fn plant_links(dir: &Path, names: &[&str], target: &Path) {
    let first = std::process::id();
    for pid in first..first + 2000 {
        for n in names {
            let _ = std::os::unix::fs::symlink(target, dir.join(format!("{n}.{pid}.tmp")));
        }
    }
}

fn victim(root: &Path) -> (PathBuf, Vec<u8>) {
    let path = root.join("victim.txt");
    let bytes = b"another user's file\n".to_vec();
    std::fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

#[test]
fn a_symlink_at_a_temporary_name_leaves_its_target_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let run = tiny_run(root, "run", &[]);
    let (target, bytes) = victim(root);

    // predict --output into a shared folder.
    let shared = root.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    plant_links(&shared, &["out.tsv"], &target);
    let input = root.join("input.txt");
    std::fs::write(&input, "the cat sat\tthe dog ran\n").unwrap();
    let out = shared.join("out.tsv");
    let o = peft_hostile(
        &[
            "predict",
            "--checkpoint",
            s(&run),
            "--input",
            s(&input),
            "--output",
            s(&out),
        ],
        Duration::from_secs(120),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(&target).unwrap(),
        bytes,
        "predict wrote through a link"
    );
    assert!(std::fs::read_to_string(&out).unwrap().lines().count() == 1);

    // A run directory's every save: config, metrics, tensors, checkpoint.
    let names = [
        "config.json",
        "metrics.jsonl",
        "trainable.safetensors",
        "last.safetensors",
        "resume.safetensors",
    ];
    plant_links(&run, &names, &target);
    let data = root.join("glue");
    train(
        &fixture("tiny-bert"),
        &data,
        &run,
        &[
            "--task",
            "rte",
            "--max-steps",
            "2",
            "--save-steps",
            "1",
            "--overwrite",
        ],
    );
    assert_eq!(
        std::fs::read(&target).unwrap(),
        bytes,
        "a run save wrote through a link"
    );
    assert_eq!(metrics(&run).len(), 1);

    // grid.log, written as the cell runs.
    let link = run.join("grid.log");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let plan = root.join("plan.toml");
    std::fs::write(
        &plan,
        format!(
            "output_dir = \"{}\"\n[base]\nmodel = \"{}\"\ndata_dir = \"{}\"\ntask = \"rte\"\n\
             max_steps = 1\nmax_seq_len = 16\nbatch_size = 8\n[grid]\nlr = [0.001]\n",
            s(&root.join("grid-runs")),
            fixture("tiny-bert"),
            s(&data)
        ),
    )
    .unwrap();
    let listed = ok(peft(&["grid", s(&plan), "--list"]));
    let cell_dir = PathBuf::from(listed.lines().next().unwrap().split('\t').nth(2).unwrap());
    std::fs::create_dir_all(&cell_dir).unwrap();
    std::os::unix::fs::symlink(&target, cell_dir.join("grid.log")).unwrap();
    ok(peft(&["grid", s(&plan), "--workers", "1"]));
    assert_eq!(
        std::fs::read(&target).unwrap(),
        bytes,
        "grid.log was written through a link"
    );
    assert!(std::fs::read_to_string(cell_dir.join("grid.log"))
        .unwrap()
        .contains("cell 0"));
}

fn spawn_long_run(root: &Path, out: &Path) -> Child {
    let data = root.join("glue");
    write_rte(&data, 64, 8);
    Command::new(env!("CARGO_BIN_EXE_peft"))
        .args([
            "train",
            "--model",
            &fixture("tiny-bert"),
            "--data-dir",
            s(&data),
            "--task",
            "rte",
            "--output-dir",
            s(out),
            "--epochs",
            "1000",
            "--batch-size",
            "4",
            "--max-seq-len",
            "16",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn a_second_writer_is_refused_naming_the_holder() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let out = root.join("run");
    let mut first = spawn_long_run(root, &out);
    let lock = out.join("run.lock");
    let start = Instant::now();
    // Until the holder has written its line and its config: the run is under way.
    while !(out.join("config.json").exists()
        && std::fs::read_to_string(&lock).is_ok_and(|t| t.contains("pid ")))
    {
        assert!(first.try_wait().unwrap().is_none(), "the first run ended");
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the first run never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let config = std::fs::read(out.join("config.json")).unwrap();
    let holder = format!("pid {}", first.id());
    for extra in [&["--overwrite"][..], &[][..]] {
        let mut args = vec!["train", "--model", &fixture("tiny-bert")]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        args.extend(
            [
                "--data-dir",
                s(&root.join("glue")),
                "--task",
                "rte",
                "--method",
                "bitfit",
                "--output-dir",
                s(&out),
                "--max-steps",
                "1",
            ]
            .iter()
            .map(|x| x.to_string()),
        );
        args.extend(extra.iter().map(|x| x.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = peft_hostile(&refs, Duration::from_secs(60));
        assert_refused(
            "a second train into a live run",
            &o,
            &["being written by another process", &holder, "run.lock"],
        );
        assert_eq!(std::fs::read(out.join("config.json")).unwrap(), config);
    }
    // SAFETY: kill(2) with our own child's pid, not yet waited for.
    assert_eq!(unsafe { libc::kill(first.id() as i32, libc::SIGKILL) }, 0);
    first.wait().unwrap();
    // The lock died with its process, however it ended: the next writer gets in.
    train(
        &fixture("tiny-bert"),
        &root.join("glue"),
        &out,
        &["--task", "rte", "--max-steps", "1", "--overwrite"],
    );
    assert_eq!(metrics(&out).len(), 1);
}

#[test]
fn merge_refuses_to_write_over_a_run() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let run = tiny_run(root, "run", &[]);
    let other = tiny_run(root, "other", &["--method", "bitfit"]);
    for (what, output) in [("its own run", &run), ("another run", &other)] {
        let before = snapshot(output);
        let o = peft_hostile(
            &[
                "merge",
                "--checkpoint",
                s(&run),
                "--output",
                s(output),
                "--overwrite",
            ],
            Duration::from_secs(60),
        );
        assert_refused(what, &o, &["--output", s(output)]);
        assert_unchanged(what, &before, output);
    }
    // Somewhere else it writes a model directory, and leaves no lock file in it.
    let merged = root.join("merged");
    ok(peft(&[
        "merge",
        "--checkpoint",
        s(&run),
        "--output",
        s(&merged),
    ]));
    assert!(merged.join("model.safetensors").is_file());
    assert!(!merged.join("run.lock").exists());
}

#[test]
fn job_files_ask_for_the_signal_and_take_their_resources_from_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let plan = root.join("plan.toml");
    std::fs::write(
        &plan,
        format!(
            "output_dir = \"{}\"\n[base]\nmodel = \"{}\"\ntask = \"rte\"\n[grid]\nlr = [0.001, 0.01]\n",
            s(&root.join("runs")),
            fixture("tiny-bert"),
        ),
    )
    .unwrap();
    let slurm = ok(peft(&["grid", s(&plan), "--emit", "slurm"]));
    assert!(slurm.contains("#SBATCH --signal=B:TERM@120\n"), "{slurm}");
    assert!(slurm.contains("#SBATCH --cpus-per-task=4\n"), "{slurm}");
    assert!(!slurm.contains("--gres"), "{slurm}");
    let slurm = ok(peft(&[
        "grid",
        s(&plan),
        "--emit",
        "slurm",
        "--cpus",
        "8",
        "--mem",
        "64G",
        "--time",
        "1-00:00:00",
        "--gpus",
        "1",
        "--partition",
        "a100",
        "--grace",
        "300",
    ]));
    for line in [
        "#SBATCH --cpus-per-task=8\n",
        "#SBATCH --mem=64G\n",
        "#SBATCH --time=1-00:00:00\n",
        "#SBATCH --gres=gpu:1\n",
        "#SBATCH --partition=a100\n",
        "#SBATCH --signal=B:TERM@300\n",
    ] {
        assert!(slurm.contains(line), "{line} missing: {slurm}");
    }
    let k8s = ok(peft(&[
        "grid",
        s(&plan),
        "--emit",
        "k8s",
        "--image",
        "registry.example/peft:1.0",
        "--gpus",
        "2",
        "--mem",
        "32G",
        "--grace",
        "90",
    ]));
    for line in [
        "terminationGracePeriodSeconds: 90\n",
        "image: registry.example/peft:1.0\n",
        "limits: {memory: 32Gi, nvidia.com/gpu: 2}\n",
    ] {
        assert!(k8s.contains(line), "{line} missing: {k8s}");
    }
    // A value that would end its line in the script is refused, not pasted in.
    for (flag, value) in [
        ("--partition", "gpu\nrm -rf ~"),
        ("--mem", "16G; reboot"),
        ("--time", "forever"),
        ("--grace", "0"),
    ] {
        let o = peft_hostile(
            &["grid", s(&plan), "--emit", "slurm", flag, value],
            Duration::from_secs(30),
        );
        assert_refused(flag, &o, &[flag]);
    }
    // Resource flags mean nothing without --emit.
    let o = peft_hostile(&["grid", s(&plan), "--cpus", "8"], Duration::from_secs(30));
    assert_refused("--cpus without --emit", &o, &["--emit"]);
}

#[test]
fn a_library_error_prints_no_backtrace_under_rust_backtrace() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // Cut short: candle's reader fails, and candle captures a backtrace into the error
    // whenever RUST_BACKTRACE is set.
    let model = model_with(root, "model", |m| {
        let weights = m.join("model.safetensors");
        let bytes = std::fs::read(&weights).unwrap();
        std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    });
    let data = root.join("glue");
    write_rte(&data, 8, 4);
    let o = peft_hostile(
        &[
            "train",
            "--model",
            s(&model),
            "--data-dir",
            s(&data),
            "--task",
            "rte",
            "--output-dir",
            s(&root.join("out")),
        ],
        Duration::from_secs(60),
    );
    assert_refused("a truncated checkpoint", &o, &["model.safetensors"]);
    assert!(
        !root.join("out").exists(),
        "a refused run left its directory"
    );
}
