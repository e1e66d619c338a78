//! Hostile input, tried as an attacker would: files a command reads back (run files,
//! plans, checkpoints, adapters), small inputs with unbounded cost, planted symlinks, two
//! writers on one run, the signals a scheduler sends, and messages that must name the
//! right culprit. Every case asserts the exit code, the message, and that the files that
//! were there before are left as they were.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::common::*;

mod bounds;
mod edges;
mod messages;
pub(crate) mod run_files;

/// Run the binary with `RUST_BACKTRACE=1` set, as on many developer machines and CI
/// runners: an ordinary error must still be one message, never a backtrace. Killed after
/// `limit` (a hang is a failure, not a stuck suite).
pub fn peft_hostile(args: &[&str], limit: Duration) -> Output {
    hostile(Command::new(env!("CARGO_BIN_EXE_peft")), args, limit)
}

/// [`peft_hostile`] as `peft_offline` runs it: the Hugging Face cache at `cache`, downloads
/// forbidden, no GLUE folder from the environment.
pub fn peft_hostile_offline(cache: &Path, args: &[&str], limit: Duration) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_peft"));
    cmd.env("HF_HUB_CACHE", cache)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("HF_HOME")
        .env_remove("PEFT_GLUE_DIR");
    hostile(cmd, args, limit)
}

fn hostile(mut cmd: Command, args: &[&str], limit: Duration) -> Output {
    let mut child = cmd
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run peft");
    let start = std::time::Instant::now();
    loop {
        if child.try_wait().expect("wait for peft").is_some() {
            return child.wait_with_output().expect("peft output");
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("peft output");
            panic!(
                "peft {args:?} still ran after {limit:?} (a hang); stderr: {}",
                stderr(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The command was refused as bad input: exit 2, every one of `names` in its message, no
/// panic and no backtrace.
#[track_caller]
pub fn assert_refused(what: &str, out: &Output, names: &[&str]) {
    let err = stderr(out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{what}: expected exit 2, got {:?}; stderr: {err}",
        out.status
    );
    assert_clean_message(what, &err);
    for n in names {
        assert!(
            err.contains(n),
            "{what}: the message does not name `{n}`: {err}"
        );
    }
}

/// No panic, no backtrace, no Rust debug dump: one human message.
#[track_caller]
pub fn assert_clean_message(what: &str, err: &str) {
    for bad in [
        "panicked",
        "stack backtrace",
        "Stack backtrace",
        "RUST_BACKTRACE",
        "  0: ",
    ] {
        assert!(!err.contains(bad), "{what}: `{bad}` in stderr: {err}");
    }
    assert!(
        err.lines().count() <= 12,
        "{what}: {} lines of stderr for one error: {err}",
        err.lines().count()
    );
}

/// Every file under `dir` (recursively) with its bytes: what must survive a refused
/// command unchanged.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.insert(e.path(), std::fs::read(e.path()).unwrap());
            }
        }
    }
    out
}

#[track_caller]
pub fn assert_unchanged(what: &str, before: &BTreeMap<PathBuf, Vec<u8>>, dir: &Path) {
    let after = snapshot(dir);
    let names = |m: &BTreeMap<PathBuf, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(before),
        names(&after),
        "{what}: files appeared or went"
    );
    for (path, bytes) in before {
        assert!(&after[path] == bytes, "{what}: {} changed", path.display());
    }
}

/// A finished one-step tiny-bert RTE run with `extra` flags, in `root/name`.
pub fn tiny_run(root: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let data = root.join("glue");
    if !data.join("RTE").exists() {
        write_rte(&data, 16, 8);
        write_stsb(&data, 16, 8);
    }
    let out = root.join(name);
    let mut args = vec!["--task", "rte", "--max-steps", "1"];
    args.extend_from_slice(extra);
    train(&fixture("tiny-bert"), &data, &out, &args);
    out
}

/// `peft train --task custom` on `model` with a `text` and a `label` column, `extra`
/// flags after.
pub fn custom_train_args<'a>(
    model: &'a str,
    train: &'a Path,
    dev: &'a Path,
    out: &'a Path,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "train",
        "--model",
        model,
        "--task",
        "custom",
        "--train",
        s(train),
        "--dev",
        s(dev),
        "--text-columns",
        "text",
        "--label-column",
        "label",
        "--output-dir",
        s(out),
    ];
    args.extend_from_slice(extra);
    args
}

/// Edit a JSON file in place.
pub fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
