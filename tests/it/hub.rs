//! Models and GLUE from the Hugging Face hub, through a cache folder the test builds in
//! the hub's layout, with downloads forbidden (HF_HUB_OFFLINE=1): no test touches the
//! network.

use std::path::Path;

use crate::common::*;

const GLUE: &str = "datasets--nyu-mll--glue";
const GLUE_SHA: &str = "fedcba9876543210fedcba9876543210fedcba98";
const MODEL: &str = "test-org/tiny-bert";

/// The data rows (after the header) of a GLUE TSV file, split on tabs.
fn tsv_rows(path: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split('\t').map(String::from).collect())
        .collect()
}

fn features(label_names: Option<&[&str]>) -> String {
    let label = match label_names {
        Some(names) => serde_json::json!({"names": names, "_type": "ClassLabel"}),
        None => serde_json::json!({"dtype": "float32", "_type": "Value"}),
    };
    serde_json::json!({"info": {"features": {"label": label}}}).to_string()
}

/// The GLUE files under `tsv` as nyu-mll/glue's parquet shards in the cache: RTE (train
/// in two shards, dev, test) and STS-B (train, dev).
fn glue_on_hub(cache: &Path, tsv: &Path) {
    let snap = hub_snapshot(cache, GLUE, GLUE_SHA);
    let rte_names = ["entailment", "not_entailment"];
    let rte = |rows: &[Vec<String>], file: &str, labelled: bool| {
        let col = |i: usize| Col::Str(rows.iter().map(|r| r[i].clone()).collect());
        let labels = rows
            .iter()
            .map(|r| match labelled {
                true => rte_names.iter().position(|n| *n == r[3]).unwrap() as i64,
                false => -1,
            })
            .collect();
        write_parquet(
            &snap.join("rte").join(file),
            &[
                ("sentence1", col(1)),
                ("sentence2", col(2)),
                ("label", Col::I64(labels)),
                (
                    "idx",
                    Col::I32(rows.iter().map(|r| r[0].parse().unwrap()).collect()),
                ),
            ],
            Some(features(Some(&rte_names))),
        );
    };
    let train = tsv_rows(&tsv.join("RTE/train.tsv"));
    let (first, second) = train.split_at(train.len() / 2);
    rte(first, "train-00000-of-00002.parquet", true);
    rte(second, "train-00001-of-00002.parquet", true);
    rte(
        &tsv_rows(&tsv.join("RTE/dev.tsv")),
        "validation-00000-of-00001.parquet",
        true,
    );
    rte(
        &tsv_rows(&tsv.join("RTE/test.tsv")),
        "test-00000-of-00001.parquet",
        false,
    );
    for (split, file) in [("train", "train"), ("dev", "validation")] {
        let rows = tsv_rows(&tsv.join(format!("STS-B/{split}.tsv")));
        let col = |i: usize| Col::Str(rows.iter().map(|r| r[i].clone()).collect());
        write_parquet(
            &snap.join(format!("stsb/{file}-00000-of-00001.parquet")),
            &[
                ("sentence1", col(7)),
                ("sentence2", col(8)),
                (
                    "label",
                    Col::F32(rows.iter().map(|r| r[9].parse().unwrap()).collect()),
                ),
                ("idx", Col::I32((0..rows.len() as i32).collect())),
            ],
            Some(features(None)),
        );
    }
}

fn train_args<'a>(out: &'a str, task: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["train", "--task", task, "--output-dir", out];
    a.extend_from_slice(&crate::common::SMALL);
    a.extend_from_slice(&["--max-steps", "4", "--eval-steps", "2"]);
    a.extend_from_slice(extra);
    a
}

#[test]
fn hub_model_and_hub_glue_train_like_the_local_files() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let tsv = tmp.path().join("glue");
    write_rte(&tsv, 40, 16);
    write_stsb(&tsv, 40, 16);
    glue_on_hub(&cache, &tsv);
    let snapshot = hub_model(&cache, MODEL, &[]);
    let tiny = fixture("tiny-bert");
    let tsv_s = tsv.to_str().unwrap();

    for task in ["rte", "stsb"] {
        let hub_out = tmp.path().join(format!("hub-{task}"));
        let local_out = tmp.path().join(format!("local-{task}"));
        let (h, l) = (hub_out.to_str().unwrap(), local_out.to_str().unwrap());
        ok(peft_offline(
            &cache,
            &train_args(h, task, &["--model", MODEL]),
        ));
        ok(peft_offline(
            &cache,
            &train_args(l, task, &["--model", &tiny, "--data-dir", tsv_s]),
        ));
        // Same rows, same label ids, same order: the same run, loss for loss.
        assert_eq!(metrics(&hub_out), metrics(&local_out), "{task}");

        let info: serde_json::Value =
            serde_json::from_slice(&std::fs::read(hub_out.join("config.json")).unwrap()).unwrap();
        assert_eq!(info["train"]["model"]["model"], MODEL);
        assert!(info["train"]["data"]["data_dir"].is_null(), "{info}");
        assert_eq!(
            Path::new(info["base"]["path"].as_str().unwrap()),
            snapshot.as_path()
        );
    }

    // `peft eval` rebuilds the run from the recorded snapshot and the hub's dev split.
    let run = tmp.path().join("hub-rte");
    let run_s = run.to_str().unwrap();
    let out = ok(peft_offline(
        &cache,
        &["eval", "--checkpoint", run_s, "--json"],
    ));
    let scored: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let best = metrics(&run)
        .into_iter()
        .find(|m| m["best"] == true)
        .unwrap();
    assert_eq!(scored["metrics"], best["dev"]["dev"]);
    // The test split's ids are the hub's idx column.
    ok(peft_offline(
        &cache,
        &["eval", "--checkpoint", run_s, "--split", "test"],
    ));
    let submission = std::fs::read_to_string(run.join("RTE.tsv")).unwrap();
    let ids: Vec<&str> = submission
        .lines()
        .skip(1)
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    assert_eq!(ids, ["0", "1", "2", "3", "4"]);
    // The hub id also works where a base model is overridden.
    ok(peft_offline(
        &cache,
        &["eval", "--checkpoint", run_s, "--model", MODEL],
    ));
}

#[test]
fn offline_cache_misses_exit_2_naming_what_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let tsv = tmp.path().join("glue");
    write_rte(&tsv, 16, 8);
    write_stsb(&tsv, 16, 8);
    glue_on_hub(&cache, &tsv);
    hub_model(&cache, "test-org/no-tokenizer", &["tokenizer.json"]);
    hub_model(&cache, MODEL, &[]);
    let out = tmp.path().join("run");
    let out = out.to_str().unwrap();
    let tsv_s = tsv.to_str().unwrap();
    let cases: Vec<(Vec<&str>, Vec<String>)> = vec![
        (
            train_args(out, "rte", &["--model", "test-org/no-tokenizer"]),
            vec![
                "test-org/no-tokenizer at revision main".into(),
                "tokenizer.json (or vocab.txt, or vocab.json with merges.txt, or spm.model)".into(),
                "HF_HUB_OFFLINE=1".into(),
                cache
                    .join("models--test-org--no-tokenizer")
                    .display()
                    .to_string(),
            ],
        ),
        (
            train_args(
                out,
                "rte",
                &["--model", MODEL, "--revision", "v2", "--data-dir", tsv_s],
            ),
            vec![
                "test-org/tiny-bert at revision v2".into(),
                "config.json".into(),
                "model.safetensors (or pytorch_model.bin)".into(),
            ],
        ),
        (
            train_args(out, "mrpc", &["--model", MODEL]),
            vec![
                "nyu-mll/glue (dataset) at revision main".into(),
                "mrpc/train-*.parquet".into(),
                cache.join(GLUE).display().to_string(),
            ],
        ),
    ];
    for (args, names) in cases {
        let o = peft_offline(&cache, &args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        for n in names {
            assert!(err.contains(&n), "{args:?}: `{n}` not in: {err}");
        }
        assert!(!err.contains("panicked"), "{err}");
    }

    // A shard gone from the cache is named, not silently skipped.
    std::fs::remove_file(
        cache
            .join(GLUE)
            .join("snapshots")
            .join(GLUE_SHA)
            .join("rte/train-00001-of-00002.parquet"),
    )
    .unwrap();
    let o = peft_offline(&cache, &train_args(out, "rte", &["--model", MODEL]));
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("rte/train-00001-of-00002.parquet"),
        "{}",
        stderr(&o)
    );
}

/// A stand-in for huggingface.co on localhost, answering what hf-hub asks: a
/// repository's file list, and each file's metadata and bytes by range. Returns its
/// address and the log of request paths.
fn fake_hub(
    files: std::collections::HashMap<String, Vec<u8>>,
    listings: std::collections::HashMap<String, String>,
    sha: &'static str,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split(' ').nth(1).unwrap_or("").to_string();
            let mut start = 0usize;
            let mut end = None;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                    break;
                }
                if let Some(r) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    let (a, b) = r.trim().split_once('-').unwrap();
                    start = a.parse().unwrap();
                    end = b.parse::<usize>().ok();
                }
            }
            seen.lock().unwrap().push(path.clone());
            let (status, headers, body) = if let Some(json) = listings.get(&path) {
                ("200 OK", String::new(), json.clone().into_bytes())
            } else if let Some(bytes) = files.get(&path) {
                let last = end.unwrap_or(bytes.len() - 1).min(bytes.len() - 1);
                let headers = format!(
                    "ETag: \"etag-{}\"\r\nX-Repo-Commit: {sha}\r\nContent-Range: bytes {start}-{last}/{}\r\n",
                    path.replace('/', "-"),
                    bytes.len()
                );
                ("206 Partial Content", headers, bytes[start..=last].to_vec())
            } else {
                ("404 Not Found", String::new(), b"{}".to_vec())
            };
            let head = format!(
                "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    (addr, log)
}

#[test]
fn online_downloads_fill_the_cache_that_offline_runs_then_use() {
    const SHA: &str = "1111111111111111111111111111111111111111";
    let tmp = tempfile::tempdir().unwrap();
    let tsv = tmp.path().join("glue");
    write_rte(&tsv, 24, 8);
    write_stsb(&tsv, 8, 8);
    // Build the dataset's files in a scratch cache, then serve them.
    let scratch = tmp.path().join("scratch");
    glue_on_hub(&scratch, &tsv);
    let glue_snap = scratch.join(GLUE).join("snapshots").join(GLUE_SHA);
    let mut files = std::collections::HashMap::new();
    let mut glue_files = Vec::new();
    for split in [
        "train-00000-of-00002",
        "train-00001-of-00002",
        "validation-00000-of-00001",
    ] {
        let name = format!("rte/{split}.parquet");
        files.insert(
            format!("/datasets/nyu-mll/glue/resolve/{SHA}/{name}"),
            std::fs::read(glue_snap.join(&name)).unwrap(),
        );
        glue_files.push(name);
    }
    let model_files = ["config.json", "model.safetensors", "tokenizer.json"];
    for f in model_files {
        files.insert(
            format!("/{MODEL}/resolve/{SHA}/{f}"),
            std::fs::read(Path::new(&fixture("tiny-bert")).join(f)).unwrap(),
        );
    }
    let listing = |names: Vec<String>| {
        let siblings: Vec<_> = names
            .iter()
            .map(|n| serde_json::json!({ "rfilename": n }))
            .collect();
        serde_json::json!({ "sha": SHA, "siblings": siblings }).to_string()
    };
    let mut model_listing: Vec<String> = model_files.iter().map(|f| f.to_string()).collect();
    model_listing.push("README.md".into());
    glue_files.push("README.md".into());
    let listings = [
        (
            format!("/api/models/{MODEL}/revision/main"),
            listing(model_listing),
        ),
        (
            "/api/datasets/nyu-mll/glue/revision/main".to_string(),
            listing(glue_files),
        ),
    ]
    .into_iter()
    .collect();
    let (endpoint, log) = fake_hub(files, listings, SHA);

    let cache = tmp.path().join("hub");
    let out = tmp.path().join("online");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_peft"))
        .args(train_args(
            out.to_str().unwrap(),
            "rte",
            &["--model", MODEL],
        ))
        .env("HF_ENDPOINT", &endpoint)
        .env("HF_HUB_CACHE", &cache)
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_HOME")
        .env_remove("HF_TOKEN")
        .env_remove("PEFT_GLUE_DIR")
        .output()
        .unwrap();
    ok(o);
    let requests = log.lock().unwrap().clone();
    assert!(
        requests.iter().any(|r| r.contains("/api/models/")),
        "{requests:?}"
    );
    assert!(
        requests.iter().any(|r| r.contains("/api/datasets/")),
        "{requests:?}"
    );
    // The hub layout Python tools read: refs/main names the commit, files in its snapshot.
    for (folder, names) in [
        ("models--test-org--tiny-bert", &model_files[..]),
        (GLUE, &["rte/validation-00000-of-00001.parquet"][..]),
    ] {
        let repo = cache.join(folder);
        assert_eq!(
            std::fs::read_to_string(repo.join("refs/main")).unwrap(),
            SHA
        );
        for n in names {
            assert!(
                repo.join("snapshots").join(SHA).join(n).is_file(),
                "{folder}/{n}"
            );
        }
    }
    // Offline, the same command runs from the cache alone, to the same result.
    let before = log.lock().unwrap().len();
    let again = tmp.path().join("offline");
    ok(peft_offline(
        &cache,
        &train_args(again.to_str().unwrap(), "rte", &["--model", MODEL]),
    ));
    assert_eq!(
        log.lock().unwrap().len(),
        before,
        "the offline run made requests"
    );
    assert_eq!(metrics(&out), metrics(&again));
}
