//! `--report-to mlflow` against an MLflow-shaped HTTP endpoint this test serves: the
//! experiment created, the run created under it with its tags, the settings as params,
//! every evaluation's metrics at their steps, the run directory's files as artifacts (through
//! the artifact proxy, or into a local store), the run marked finished; and a server that
//! refuses the connection does not fail training: one warning, and what was not sent kept
//! in RUN/mlflow_pending.jsonl, until `peft report --to mlflow RUN` sends the run whole.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use crate::common::*;

type Seen = Arc<Mutex<Vec<(String, serde_json::Value)>>>;

/// Serve MLflow's REST answers on a free port, giving runs `artifact_uri`; every
/// request's path and body (JSON, or the bytes as a string for an artifact) land in the
/// returned log.
fn fake_mlflow(artifact_uri: &str) -> (String, Seen) {
    let created =
        serde_json::json!({"run": {"info": {"run_id": "r1", "artifact_uri": artifact_uri}}})
            .to_string();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen: Seen = Arc::default();
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut first = String::new();
            if reader.read_line(&mut first).is_err() {
                continue;
            }
            let mut len = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            let path = first.split(' ').nth(1).unwrap_or("").to_string();
            let body: serde_json::Value = match path.contains("mlflow-artifacts") {
                true => String::from_utf8_lossy(&body).into_owned().into(),
                false => serde_json::from_slice(&body).unwrap_or_default(),
            };
            log.lock().unwrap().push((path.clone(), body));
            let (status, answer) = if path.contains("experiments/get-by-name") {
                (
                    "404 Not Found",
                    r#"{"error_code":"RESOURCE_DOES_NOT_EXIST"}"#,
                )
            } else if path.contains("experiments/create") {
                ("200 OK", r#"{"experiment_id":"7"}"#)
            } else if path.contains("runs/create") {
                ("200 OK", created.as_str())
            } else {
                ("200 OK", "{}")
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    (url, seen)
}

fn train_to(uri: &str, tmp: &std::path::Path, out: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_peft"))
        .args([
            "train",
            "--model",
            &fixture("tiny-bert"),
            "--data-dir",
            tmp.to_str().unwrap(),
            "--output-dir",
            out.to_str().unwrap(),
            "--task",
            "rte",
            "--max-seq-len",
            "32",
            "--max-steps",
            "4",
            "--eval-steps",
            "2",
            "--logging-steps",
            "1",
            "--report-to",
            "jsonl,mlflow",
            "--mlflow-experiment",
            "peft-test",
        ])
        .env("MLFLOW_TRACKING_URI", uri)
        .output()
        .unwrap()
}

#[test]
fn mlflow_gets_the_run_and_a_refusing_server_does_not_stop_it() {
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 32, 8);
    let (uri, seen) = fake_mlflow("mlflow-artifacts:/7/r1/artifacts");
    let out = tmp.path().join("tracked");
    let o = train_to(&uri, tmp.path(), &out);
    assert!(o.status.success(), "{}", stderr(&o));
    let seen = seen.lock().unwrap().clone();
    let bodies = |p: &str| -> Vec<serde_json::Value> {
        seen.iter()
            .filter(|(path, _)| path.contains(p))
            .map(|(_, b)| b.clone())
            .collect()
    };
    assert_eq!(bodies("experiments/create")[0]["name"], "peft-test");
    let run = &bodies("runs/create")[0];
    assert_eq!(run["experiment_id"], "7");
    assert_eq!(run["run_name"], "tracked");
    let tags = run["tags"].as_array().unwrap();
    assert!(
        tags.iter()
            .any(|t| t["key"] == "method" && t["value"] == "full"),
        "{tags:?}"
    );
    let batches = bodies("runs/log-batch");
    let params: Vec<&serde_json::Value> = batches
        .iter()
        .filter_map(|b| b["params"].as_array())
        .flatten()
        .collect();
    assert!(
        params.iter().any(|p| p["key"] == "optimisation.lr"),
        "{params:?}"
    );
    let metrics: Vec<&serde_json::Value> = batches
        .iter()
        .filter_map(|b| b["metrics"].as_array())
        .flatten()
        .collect();
    for r in metrics_of(&out) {
        let (step, acc) = r;
        assert!(
            metrics.iter().any(|m| m["key"] == "eval/dev/accuracy"
                && m["step"] == step
                && m["value"].as_f64() == Some(acc)),
            "step {step}: {metrics:?}"
        );
    }
    assert!(batches.iter().all(|b| b["run_id"] == "r1"));
    assert_eq!(bodies("runs/update")[0]["status"], "FINISHED");
    // The run's small files, as they are on disk, before the run is marked finished.
    let artifact = |name: &str| {
        seen.iter()
            .position(|(p, _)| {
                p == &format!("/api/2.0/mlflow-artifacts/artifacts/7/r1/artifacts/{name}")
            })
            .unwrap_or_else(|| {
                panic!(
                    "{name} not sent: {:?}",
                    seen.iter().map(|s| &s.0).collect::<Vec<_>>()
                )
            })
    };
    for name in ["config.json", "metrics.jsonl", "README.md"] {
        let on_disk = std::fs::read_to_string(out.join(name)).unwrap();
        assert_eq!(seen[artifact(name)].1, on_disk, "{name}");
    }
    let finished = seen
        .iter()
        .position(|(p, _)| p.contains("runs/update"))
        .unwrap();
    assert!(artifact("metrics.jsonl") < finished);
    assert!(!seen
        .iter()
        .any(|(p, _)| p.contains("resume.safetensors") || p.contains("run.lock")));
    assert!(!out.join("mlflow_pending.jsonl").exists());

    // Nothing listens on a closed port: training goes on, one warning, everything kept.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let out = tmp.path().join("untracked");
    let o = train_to(&dead, tmp.path(), &out);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert_eq!(err.matches("warning: MLflow").count(), 1, "{err}");
    let pending = std::fs::read_to_string(out.join("mlflow_pending.jsonl")).unwrap();
    assert!(
        pending.lines().any(|l| l.contains("runs/create")),
        "{pending}"
    );
    assert!(
        pending.lines().any(|l| l.contains("eval/dev/accuracy")),
        "{pending}"
    );
    assert!(pending.lines().any(|l| l.contains("FINISHED")), "{pending}");
    assert!(
        pending
            .lines()
            .any(|l| l.contains("artifacts") && l.contains("config.json")),
        "{pending}"
    );

    // Sent later, whole, when a server is there: `peft report --to mlflow RUN`; this
    // server keeps artifacts in a local folder, which peft writes as MLflow's client does.
    let store = tmp.path().join("mlruns/7/r1/artifacts");
    let (uri, seen) = fake_mlflow(&format!("file://{}", store.display()));
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_peft"))
        .args(["report", "--to", "mlflow", out.to_str().unwrap()])
        .env("MLFLOW_TRACKING_URI", &uri)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("sent 1 runs"));
    assert!(!out.join("mlflow_pending.jsonl").exists());
    let seen = seen.lock().unwrap().clone();
    let metrics: Vec<serde_json::Value> = seen
        .iter()
        .filter(|(p, _)| p.contains("runs/log-batch"))
        .filter_map(|(_, b)| b["metrics"].as_array().cloned())
        .flatten()
        .collect();
    for (step, acc) in metrics_of(&out) {
        assert!(metrics.iter().any(|m| m["key"] == "eval/dev/accuracy"
            && m["step"] == step
            && m["value"].as_f64() == Some(acc)));
    }
    assert!(seen
        .iter()
        .any(|(p, b)| p.contains("runs/update") && b["status"] == "FINISHED"));
    for name in ["config.json", "metrics.jsonl", "README.md"] {
        assert_eq!(
            std::fs::read(store.join(name)).unwrap(),
            std::fs::read(out.join(name)).unwrap(),
            "{name}"
        );
    }
    assert!(!store.join("mlflow_pending.jsonl").exists());
}

/// (step, dev accuracy) of every evaluation in metrics.jsonl.
fn metrics_of(run: &std::path::Path) -> Vec<(u64, f64)> {
    metrics(run)
        .iter()
        .map(|r| {
            (
                r["step"].as_u64().unwrap(),
                r["dev"]["dev"]["accuracy"].as_f64().unwrap(),
            )
        })
        .collect()
}
