//! `peft serve` over real HTTP on a free port: answers equal `peft predict`'s for every
//! method family with requests to many adapters batched together; the error statuses
//! (401, 404, 413, 415, 422, 429); adapters loaded and unloaded at run time, only below
//! `--adapter-root`; SIGTERM finishing the request in flight.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use serde_json::{json, Value};

use crate::common::*;

/// A server process, killed when dropped; `url` is where it listens.
struct Server {
    child: Child,
    url: String,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(args: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_peft"))
        .args(["serve", "--port", "0"])
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut url = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        log.lock().unwrap().push_str(&(line.clone() + "\n"));
        if let Some(u) = line.strip_prefix("listening on ") {
            url = Some(u.to_string());
            break;
        }
    }
    let url = url.unwrap_or_else(|| panic!("the server did not start: {}", log.lock().unwrap()));
    // Keep reading, so the server never blocks on a full pipe.
    let rest = log.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            rest.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    Server { child, url, log }
}

/// (status, JSON body or the text as a string).
fn call(method: &str, url: &str, body: Option<&Value>, key: Option<&str>) -> (u16, Value) {
    let mut req = ureq::request(method, url);
    if let Some(k) = key {
        req = req.set("Authorization", &format!("Bearer {k}"));
    }
    let resp = match body {
        Some(b) => req.send_json(b.clone()),
        None => req.call(),
    };
    let resp = match resp {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let status = resp.status();
    let text = resp.into_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Send `request` as it is and read the answer's first line.
fn raw(s: &Server, request: &str) -> String {
    use std::io::Write;
    let mut tcp = std::net::TcpStream::connect(s.url.trim_start_matches("http://")).unwrap();
    tcp.write_all(request.as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(tcp).read_line(&mut line).unwrap();
    line
}

fn post(s: &Server, route: &str, body: Value) -> (u16, Value) {
    call("POST", &format!("{}{route}", s.url), Some(&body), None)
}

/// (adapter name, run directory, task).
type Run = (String, PathBuf, &'static str);

/// Every method family, trained a few steps on tiny RTE (IA3 on SST-2-shaped single
/// texts), once for the module: (adapter name, run directory, task).
fn runs() -> &'static (PathBuf, Vec<Run>) {
    static RUNS: OnceLock<(PathBuf, Vec<Run>)> = OnceLock::new();
    RUNS.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-runs");
        let _ = std::fs::remove_dir_all(&root);
        write_rte(&root, 32, 8);
        write_sst2(&root, 32, 8);
        let model = fixture("tiny-bert");
        let methods = [
            "full",
            "bitfit",
            "layernorm",
            "lora",
            "dora",
            "adalora",
            "ina",
            "hra",
            "vera",
            "prompt",
            "prefix",
            "loreft",
            "adapter",
            "lora+layernorm",
        ];
        let mut runs = Vec::new();
        for m in methods {
            let name = m.replace('+', "-");
            let out = root.join("runs").join(&name);
            train(
                &model,
                &root,
                &out,
                &[
                    "--task",
                    "rte",
                    "--method",
                    m,
                    "--max-steps",
                    "3",
                    "--lr",
                    "1e-2",
                ],
            );
            runs.push((name, out, "rte"));
        }
        let out = root.join("runs").join("ia3-sst2");
        train(
            &model,
            &root,
            &out,
            &[
                "--task",
                "sst2",
                "--method",
                "ia3",
                "--max-steps",
                "3",
                "--lr",
                "1e-2",
            ],
        );
        runs.push(("ia3-sst2".into(), out, "sst2"));
        (root, runs)
    })
}

/// The LoRA run, and its `--adapter lora=DIR` value.
fn lora() -> (&'static Run, String) {
    let lora = runs().1.iter().find(|r| r.0 == "lora").unwrap();
    (lora, format!("lora={}", lora.1.display()))
}

/// A server over tiny-bert with the LoRA run as `lora`, and `flags`.
fn serve_lora(flags: &[&str]) -> Server {
    let (model, lora) = (fixture("tiny-bert"), lora().1);
    let mut args = vec!["--model", model.as_str(), "--adapter", lora.as_str()];
    args.extend_from_slice(flags);
    start(&args)
}

fn write_sst2(dir: &Path, n_train: usize, n_dev: usize) {
    let d = dir.join("SST-2");
    std::fs::create_dir_all(&d).unwrap();
    for (split, n, offset) in [("train", n_train, 0), ("dev", n_dev, 700)] {
        let mut s = String::from("sentence\tlabel\n");
        for i in 0..n {
            s.push_str(&format!("{}\t{}\n", sentence(i + offset, 3 + i % 7), i % 2));
        }
        std::fs::write(d.join(format!("{split}.tsv")), s).unwrap();
    }
}

/// Inputs of several lengths for a task: pairs for RTE, single texts for SST-2.
fn inputs(task: &str, k: usize) -> Vec<Vec<String>> {
    (0..3)
        .map(|i| match task {
            "rte" => vec![sentence(k * 5 + i, 3 + 4 * i), sentence(k + i + 40, 2 + i)],
            _ => vec![sentence(k * 5 + i, 2 + 6 * i)],
        })
        .collect()
}

/// `peft predict`'s (label, probability) for each input.
fn predicted(run: &Path, rows: &[Vec<String>]) -> Vec<(String, f64)> {
    let file = run.with_extension("input.txt");
    let text: String = rows.iter().map(|r| r.join("\t") + "\n").collect();
    std::fs::write(&file, text).unwrap();
    predict_lines(run, &file)
        .lines()
        .map(|l| {
            let (label, p) = l.split_once('\t').unwrap();
            (label.to_string(), p.parse().unwrap())
        })
        .collect()
}

fn adapter_flags(runs: &[(String, PathBuf, &str)]) -> Vec<String> {
    runs.iter()
        .flat_map(|(n, d, _)| ["--adapter".to_string(), format!("{n}={}", d.display())])
        .collect()
}

#[test]
fn requests_to_many_adapters_batched_together_answer_as_predict_does() {
    let (_, runs) = runs();
    let mut args: Vec<String> = vec![
        "--model".into(),
        fixture("tiny-bert"),
        "--max-wait-ms".into(),
        "200".into(),
    ];
    args.extend(adapter_flags(runs));
    let server = start(&args.iter().map(String::as_str).collect::<Vec<_>>());

    // Every adapter's requests at once, from threads: one input, and a batch of the rest.
    let url = server.url.clone();
    let answers: Vec<(usize, Value, Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = runs
            .iter()
            .enumerate()
            .flat_map(|(k, (name, _, task))| {
                let rows = inputs(task, k);
                let one = json!({"inputs": rows[0], "adapter": name});
                let many = json!({"inputs": rows[1..], "adapter": name});
                let url = url.clone();
                [(k, one), (k, many)].map(|(k, body)| {
                    let url = url.clone();
                    scope.spawn(move || {
                        let (status, answer) =
                            call("POST", &format!("{url}/predict"), Some(&body), None);
                        assert_eq!(status, 200, "{body}: {answer}");
                        (k, body, answer)
                    })
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (k, (name, run, task)) in runs.iter().enumerate() {
        let want = predicted(run, &inputs(task, k));
        let mine: Vec<&(usize, Value, Value)> = answers.iter().filter(|a| a.0 == k).collect();
        // The single input answers with one list of labels; the batch with one per input.
        let mut got: Vec<&Value> = vec![&mine[0].2];
        got.extend(mine[1].2.as_array().unwrap());
        assert_eq!(got.len(), want.len());
        for (g, (label, p)) in got.iter().zip(&want) {
            let top = &g[0];
            assert_eq!(top["label"], json!(label), "{name}: {g}");
            let diff = (top["score"].as_f64().unwrap() - p).abs();
            assert!(
                diff < 1e-5,
                "{name}: served {} vs predict {p}",
                top["score"]
            );
            let total: f64 = g
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["score"].as_f64().unwrap())
                .sum();
            assert!(
                (total - 1.0).abs() < 1e-9,
                "{name}: probabilities sum to {total}"
            );
        }
    }
    // The requests were batched: some batch held several, of several adapters.
    let (_, text) = call("GET", &format!("{}/metrics", server.url), None, None);
    let text = text.as_str().unwrap().to_string();
    let value = |key: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("{key} not in {text}"))
    };
    let batches = value("peft_batch_requests_count ");
    assert!(value("peft_batch_requests_sum ") > batches, "{text}");
    assert!(value("peft_batch_adapters_sum ") > batches, "{text}");
    // Adapters that stack shared forwards: fewer forwards than adapters over all batches.
    assert!(
        value("peft_batch_forwards_sum ") < value("peft_batch_adapters_sum "),
        "{text}"
    );
    assert!(
        text.contains("peft_requests_total{adapter=\"lora\",route=\"predict\",status=\"200\"} 2"),
        "{text}"
    );

    // /info says which adapters are models of their own.
    let (_, info) = call("GET", &format!("{}/info", server.url), None, None);
    let own = |n: &str| {
        info["adapters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == n)
            .unwrap()["own_model"]
            .clone()
    };
    assert_eq!(own("full"), json!(true));
    assert_eq!(own("lora"), json!(false));
}

#[test]
fn bad_requests_get_their_status_and_name_the_field() {
    let s = serve_lora(&["--max-client-batch-size", "4"]);
    let pair = json!(["a b c", "d e"]);

    // Every route the OpenAPI description names answers as a route of ours: a GET with
    // 200, a POST of an empty object with 422 (its missing fields), the DELETE of an
    // unknown adapter with our 404.
    let (st, doc) = call("GET", &format!("{}/openapi.json", s.url), None, None);
    assert_eq!(st, 200);
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let url = format!("{}{}", s.url, path.replace("{name}", "nope"));
            let body = (method == "post").then(|| json!({}));
            let (st, answer) = call(&method.to_uppercase(), &url, body.as_ref(), None);
            let want = match method.as_str() {
                "get" => 200,
                "post" => 422,
                _ => 404,
            };
            assert_eq!(st, want, "{method} {path}: {answer}");
            if st != 200 {
                assert!(
                    answer["error_type"].is_string(),
                    "{method} {path}: {answer}"
                );
            }
        }
    }

    let (st, e) = post(&s, "/predict", json!({"inputs": pair, "adapter": "nope"}));
    assert_eq!(
        (st, e["error_type"].as_str()),
        (404, Some("NotFound")),
        "{e}"
    );
    let (st, e) = post(&s, "/predict", json!({"inputs": pair}));
    assert_eq!(st, 422);
    assert!(e["error"].as_str().unwrap().contains("adapter"), "{e}");
    let (st, e) = post(
        &s,
        "/predict",
        json!({"inputs": pair, "adapter": "lora", "raw_scores": "yes"}),
    );
    assert_eq!(st, 422);
    assert!(
        e["error"].as_str().unwrap().starts_with("raw_scores"),
        "{e}"
    );
    // RTE takes pairs: a single text is refused by position.
    let (st, e) = post(
        &s,
        "/predict",
        json!({"inputs": [["a b"], ["c d", "e"]], "adapter": "lora"}),
    );
    assert_eq!(st, 422);
    assert!(e["error"].as_str().unwrap().starts_with("inputs[0]"), "{e}");

    // Longer than the run's 32-token window: 413 naming the limit, unless truncated.
    let long = json!([sentence(1, 60), "short"]);
    let (st, e) = post(&s, "/predict", json!({"inputs": long, "adapter": "lora"}));
    assert_eq!(st, 413, "{e}");
    assert!(e["error"].as_str().unwrap().contains("32 tokens"), "{e}");
    let (st, _) = post(
        &s,
        "/predict",
        json!({"inputs": long, "adapter": "lora", "truncate": true}),
    );
    assert_eq!(st, 200);
    let (st, e) = post(
        &s,
        "/predict",
        json!({"inputs": vec![pair.clone(); 5], "adapter": "lora"}),
    );
    assert_eq!(st, 413, "{e}");

    // Not JSON: 415; a body over the limit: 413.
    let r = ureq::post(&format!("{}/predict", s.url)).send_string("inputs=1");
    assert!(matches!(r, Err(ureq::Error::Status(415, _))), "{r:?}");
    // A body announced over --max-body-bytes is refused before it is read.
    assert!(raw(&s, "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 3145728\r\n\r\n").starts_with("HTTP/1.1 413"));

    // Embeddings from the base and through an adapter differ; each has the model's width.
    let (st, base) = post(&s, "/embed", json!({"inputs": "a b c"}));
    assert_eq!(st, 200);
    let (_, tuned) = post(&s, "/embed", json!({"inputs": "a b c", "adapter": "lora"}));
    assert_eq!(
        base[0].as_array().unwrap().len(),
        tuned[0].as_array().unwrap().len()
    );
    assert_ne!(base, tuned);
}

#[test]
fn a_full_queue_answers_429_and_the_rest_are_answered() {
    let s = serve_lora(&["--max-concurrent-requests", "2", "--max-wait-ms", "300"]);
    let url = format!("{}/predict", s.url);
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let hs: Vec<_> = (0..12)
            .map(|i| {
                let url = url.clone();
                scope.spawn(move || {
                    call(
                        "POST",
                        &url,
                        Some(&json!({"inputs": [sentence(i, 4), "a b"], "adapter": "lora"})),
                        None,
                    )
                    .0
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        statuses.iter().all(|s| [200, 429].contains(s)),
        "{statuses:?}"
    );
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");

    // A client that goes away frees its slot: with room for one request, the next is
    // answered while the first one's batch is still waiting.
    let one = serve_lora(&["--max-concurrent-requests", "1", "--max-wait-ms", "1500"]);
    let body = json!({"inputs": ["a b", "c"], "adapter": "lora"}).to_string();
    {
        use std::io::Write;
        let mut tcp = std::net::TcpStream::connect(one.url.trim_start_matches("http://")).unwrap();
        let head = format!(
            "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        tcp.write_all((head + &body).as_bytes()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let (st, e) = call(
        "POST",
        &format!("{}/predict", one.url),
        Some(&json!({"inputs": ["a b", "c"], "adapter": "lora"})),
        None,
    );
    assert_eq!(st, 200, "{e}");
}

#[test]
fn adapters_load_and_unload_at_run_time_only_below_the_root() {
    let (root, _) = runs();
    let (lora, flag) = lora();
    let runs_dir = root.join("runs");
    let s = start(&[
        "--model",
        &fixture("tiny-bert"),
        "--adapter",
        &flag,
        "--adapter-root",
        runs_dir.to_str().unwrap(),
    ]);
    let pair = json!(["a b c", "d e"]);

    let (st, a) = post(&s, "/adapters", json!({"name": "ln", "path": "layernorm"}));
    assert_eq!(st, 201, "{a}");
    assert_eq!(a["method"], "layernorm");
    assert_eq!(
        post(&s, "/predict", json!({"inputs": pair, "adapter": "ln"})).0,
        200
    );
    let (_, listed) = call("GET", &format!("{}/adapters", s.url), None, None);
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert_eq!(
        call("DELETE", &format!("{}/adapters/ln", s.url), None, None).0,
        204
    );
    assert_eq!(
        post(&s, "/predict", json!({"inputs": pair, "adapter": "ln"})).0,
        404
    );
    assert_eq!(
        call("DELETE", &format!("{}/adapters/ln", s.url), None, None).0,
        404
    );

    // Out of the root: by `..`, by an absolute path, through a link.
    let link = runs_dir.join("escape");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(fixture_dir("tiny-bert"), &link).unwrap();
    for path in ["../runs/lora", "/etc", "escape"] {
        let (st, e) = post(&s, "/adapters", json!({"name": "x", "path": path}));
        assert_eq!(st, 422, "{path}: {e}");
    }
    // A failing load under a loaded name leaves that adapter as it was.
    std::fs::create_dir_all(runs_dir.join("empty")).unwrap();
    let (st, e) = post(&s, "/adapters", json!({"name": "lora", "path": "empty"}));
    assert_eq!(st, 422, "{e}");
    assert_eq!(
        post(&s, "/predict", json!({"inputs": pair, "adapter": "lora"})).0,
        200
    );
    let (st, e) = post(&s, "/adapters", json!({"name": "../x", "path": "lora"}));
    assert_eq!(st, 422, "{e}");

    // An adapter as Hugging Face PEFT saves it (here the run's own export, alone in its
    // folder) with its task: the run's answers, at start and at run time.
    let saved = runs_dir.join("lora-peft");
    std::fs::create_dir_all(&saved).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(lora.1.join(f), saved.join(f)).unwrap();
    }
    let (st, a) = post(
        &s,
        "/adapters",
        json!({"name": "p", "path": "lora-peft", "task": "rte"}),
    );
    assert_eq!(st, 201, "{a}");
    let peft_flag = format!("q={},task=rte", saved.display());
    let t = start(&[
        "--model",
        &fixture("tiny-bert"),
        "--adapter",
        &flag,
        "--adapter",
        &peft_flag,
    ]);
    let score = |s: &Server, name: &str| {
        post(s, "/predict", json!({"inputs": pair, "adapter": name})).1[0]["score"]
            .as_f64()
            .unwrap()
    };
    let run = score(&s, "lora");
    assert!((score(&s, "p") - run).abs() < 1e-5);
    assert!((score(&t, "q") - run).abs() < 1e-5);

    // Without --adapter-root, nothing loads at run time.
    assert_eq!(
        post(&t, "/adapters", json!({"name": "ln", "path": "layernorm"})).0,
        403
    );
}

#[test]
fn sigterm_answers_the_request_in_flight_and_a_key_guards_the_rest() {
    let mut s = serve_lora(&["--api-key", "k3y", "--max-wait-ms", "1500"]);
    let body = json!({"inputs": ["a b c", "d e"], "adapter": "lora"});
    let url = format!("{}/predict", s.url);
    assert_eq!(call("POST", &url, Some(&body), None).0, 401);
    assert_eq!(call("POST", &url, Some(&body), Some("k3x")).0, 401);
    assert_eq!(call("GET", &format!("{}/health", s.url), None, None).0, 200);

    // The request waits 1.5 s for company; SIGTERM comes meanwhile.
    let in_flight = std::thread::spawn({
        let (url, body) = (url.clone(), body.clone());
        move || call("POST", &url, Some(&body), Some("k3y"))
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) };
    let (st, answer) = in_flight.join().unwrap();
    assert_eq!(st, 200, "{answer}");
    let status = s.child.wait().unwrap();
    assert!(status.success(), "{status:?}: {}", s.log.lock().unwrap());
    assert!(s.log.lock().unwrap().contains("stopped"));

    // Listening beyond loopback without a key is refused at start.
    let o = peft(&[
        "serve",
        "--model",
        &fixture("tiny-bert"),
        "--host",
        "0.0.0.0",
        "--port",
        "0",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--api-key"));
}

/// SQuAD 1.1 and 2.0 runs answer at /qa as `peft predict` answers the same question and
/// context, with where the answer is in the context and its probability.
#[test]
fn question_answering_runs_answer_as_predict_does() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("tiny-bert");
    let questions: Vec<(String, String)> = (0..6)
        .map(|i| (sentence(i, 3) + " ?", sentence(i + 50, 20 + 9 * i)))
        .collect();
    let file = tmp.path().join("questions.txt");
    let lines: String = questions
        .iter()
        .map(|(q, c)| format!("{q}\t{c}\n"))
        .collect();
    std::fs::write(&file, lines).unwrap();
    let mut flags = Vec::new();
    let mut want = Vec::new();
    for (task, version) in [("squad", "v1.1"), ("squad_v2", "v2.0")] {
        write_squad(tmp.path(), version, 16, 4);
        let run = tmp.path().join(task);
        let steps = [
            "--task",
            task,
            "--doc-stride",
            "8",
            "--max-steps",
            "4",
            "--lr",
            "1e-2",
        ];
        train(&model, tmp.path(), &run, &steps);
        want.push((task, predict_lines(&run, &file)));
        flags.extend(["--adapter".to_string(), format!("{task}={}", run.display())]);
    }
    flags.extend(["--adapter".to_string(), lora().1]);
    let mut args = vec!["--model".to_string(), model.clone()];
    args.extend(flags);
    let s = start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    for (task, shown) in &want {
        for ((q, c), line) in questions.iter().zip(shown.lines()) {
            let (st, got) = post(
                &s,
                "/qa",
                json!({"question": q, "context": c, "adapter": task}),
            );
            assert_eq!(st, 200, "{got}");
            let (text, diff) = match line.split_once('\t') {
                Some((t, d)) => (t, Some(d.parse::<f64>().unwrap())),
                None => (line, None),
            };
            assert_eq!(got["answer"], json!(text), "{task}: {q}");
            match diff {
                Some(d) => assert!(
                    (got["null_score_diff"].as_f64().unwrap() - d).abs() < 1e-5,
                    "{got} vs {d}"
                ),
                None => assert!(got.get("null_score_diff").is_none()),
            }
            let p = got["score"].as_f64().unwrap();
            assert!(p > 0.0 && p <= 1.0, "{got}");
            if text.is_empty() {
                assert!(got["start"].is_null(), "{got}");
            } else {
                let (a, b) = (
                    got["start"].as_u64().unwrap() as usize,
                    got["end"].as_u64().unwrap() as usize,
                );
                let at: String = c.chars().skip(a).take(b - a).collect();
                assert_eq!(at, text, "{task}: {got}");
            }
        }
    }
    // A classifier is not a question answerer, and the other way round.
    assert_eq!(
        post(
            &s,
            "/qa",
            json!({"question": "a", "context": "b", "adapter": "lora"})
        )
        .0,
        422
    );
    assert_eq!(
        post(&s, "/predict", json!({"inputs": "a", "adapter": "squad"})).0,
        422
    );
}
