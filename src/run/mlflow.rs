//! Reporting to an MLflow tracking server through its REST API (`MLFLOW_TRACKING_URI`):
//! the experiment (`--mlflow-experiment`, else the task) found or created, a run named
//! after the run directory with the method, task and model as tags and the resolved
//! settings as params, then metrics with their steps as training goes, the run
//! directory's small files as artifacts (`artifacts`), and the run marked finished.
//! Requests go from a thread of their own, so a slow or absent server never
//! holds training up; on the first failure one warning is printed and everything not
//! sent is kept, one JSON request a line (`path`, `body`), in `RUN/mlflow_pending.jsonl`,
//! which `peft report --to mlflow RUN` replaces by sending the run whole.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Value};

/// Requests the thread sends: (path under `/api/2.0/mlflow/`, body). The run id is filled
/// in when the run exists.
enum Msg {
    Post(&'static str, Value),
    Finish,
}

pub struct Mlflow {
    tx: Sender<Msg>,
    /// Says, when it ends, whether everything was sent.
    thread: Option<JoinHandle<bool>>,
}

/// The file a run keeps unsent requests in.
pub const PENDING: &str = "mlflow_pending.jsonl";

fn millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Mlflow {
    /// Start reporting the run `name` to `uri` under `experiment`, with `params` (the
    /// resolved settings) and `tags`; unsent requests go to `dir/mlflow_pending.jsonl`.
    pub fn start(
        uri: String,
        experiment: String,
        name: String,
        params: Vec<(String, String)>,
        tags: Vec<(String, String)>,
        dir: PathBuf,
    ) -> Self {
        let (tx, rx) = channel();
        let start = json!({
            "experiment": experiment,
            "run_name": name,
            "start_time": millis(),
            "tags": tags.iter().map(|(k, v)| json!({"key": k, "value": v})).collect::<Vec<_>>(),
            "params": params.iter().map(|(k, v)| json!({"key": k, "value": v})).collect::<Vec<_>>(),
        });
        let thread = std::thread::spawn(move || Sender_::new(uri, dir).run(start, rx));
        Self {
            tx,
            thread: Some(thread),
        }
    }

    /// Metrics at `step`, by key.
    pub fn metrics(&self, step: usize, values: &[(String, f64)]) {
        let ts = millis();
        let metrics: Vec<Value> = values
            .iter()
            .filter(|(_, v)| v.is_finite())
            .map(|(k, v)| json!({"key": k, "value": v, "timestamp": ts, "step": step}))
            .collect();
        let _ = self
            .tx
            .send(Msg::Post("runs/log-batch", json!({"metrics": metrics})));
    }

    /// Mark the run finished and wait (at most half a minute) for the thread to send what
    /// it holds; whether the server took everything.
    pub fn finish(mut self) -> bool {
        let _ = self.tx.send(Msg::Finish);
        let Some(t) = self.thread.take() else {
            return false;
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !t.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        t.is_finished() && t.join().unwrap_or(false)
    }
}

/// The thread's side: an HTTP agent, the run id once created, and whether it has failed.
struct Sender_ {
    uri: String,
    agent: ureq::Agent,
    run_id: Option<String>,
    /// Where the server keeps the run's files (`run.info.artifact_uri`).
    artifact_uri: Option<String>,
    failed: bool,
    dir: PathBuf,
    pending: PathBuf,
}

impl Sender_ {
    fn new(uri: String, dir: PathBuf) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout(Duration::from_secs(20))
            .build();
        Self {
            uri: uri.trim_end_matches('/').to_string(),
            agent,
            run_id: None,
            artifact_uri: None,
            failed: false,
            pending: dir.join(PENDING),
            dir,
        }
    }

    fn run(mut self, start: Value, rx: Receiver<Msg>) -> bool {
        if let Err(e) = self.create(&start) {
            self.fail(&e);
            self.keep("runs/create", &start);
        }
        for msg in rx {
            let last = matches!(msg, Msg::Finish);
            let (path, mut body) = match msg {
                Msg::Post(path, body) => (path, body),
                Msg::Finish => (
                    "runs/update",
                    json!({"status": "FINISHED", "end_time": millis()}),
                ),
            };
            if let Some(id) = &self.run_id {
                body["run_id"] = json!(id);
            }
            if last {
                self.send_artifacts();
            }
            if self.failed {
                self.keep(path, &body);
            } else if let Err(e) = self.post(path, &body) {
                self.fail(&e);
                self.keep(path, &body);
            }
            if last {
                break;
            }
        }
        !self.failed
    }

    fn post(&self, path: &str, body: &Value) -> Result<Value, String> {
        let url = format!("{}/api/2.0/mlflow/{path}", self.uri);
        let resp = self
            .agent
            .post(&url)
            .send_json(body.clone())
            .map_err(|e| e.to_string())?;
        resp.into_json::<Value>().map_err(|e| e.to_string())
    }

    /// The experiment found or created, then the run, its params and tags.
    fn create(&mut self, start: &Value) -> Result<(), String> {
        let name = start["experiment"].as_str().unwrap_or("peft");
        let url = format!("{}/api/2.0/mlflow/experiments/get-by-name", self.uri);
        let found = self.agent.get(&url).query("experiment_name", name).call();
        let id = match found {
            Ok(r) => {
                let v: Value = r.into_json().map_err(|e| e.to_string())?;
                v["experiment"]["experiment_id"]
                    .as_str()
                    .map(str::to_string)
            }
            Err(ureq::Error::Status(404, _)) => None,
            Err(e) => return Err(e.to_string()),
        };
        let id = match id {
            Some(id) => id,
            None => self.post("experiments/create", &json!({"name": name}))?["experiment_id"]
                .as_str()
                .ok_or("experiments/create gave no experiment_id")?
                .to_string(),
        };
        let run = self.post(
            "runs/create",
            &json!({"experiment_id": id, "run_name": start["run_name"], "start_time": start["start_time"], "tags": start["tags"]}),
        )?;
        let run_id = run["run"]["info"]["run_id"]
            .as_str()
            .ok_or("runs/create gave no run_id")?
            .to_string();
        self.run_id = Some(run_id.clone());
        self.artifact_uri = run["run"]["info"]["artifact_uri"]
            .as_str()
            .map(str::to_string);
        // MLflow takes at most 100 params a batch.
        for chunk in start["params"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .chunks(100)
        {
            self.post(
                "runs/log-batch",
                &json!({"run_id": run_id, "params": chunk}),
            )?;
        }
        Ok(())
    }

    /// The run directory's small files to the run's artifacts: through the server's
    /// artifact proxy (`mlflow-artifacts:`, what `mlflow server` gives by default), or
    /// copied when the store is a local folder (`file:` or a path, as MLflow's own client
    /// does). Files are not metrics: a store peft cannot reach is one warning, and the
    /// run is still marked finished; `peft report --to mlflow` sends them again.
    fn send_artifacts(&mut self) {
        let files = artifact_files(&self.dir);
        if self.failed {
            let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
            self.keep("artifacts", &json!({ "files": names }));
            return;
        }
        let Some(uri) = self.artifact_uri.clone() else {
            return;
        };
        let sent = files
            .iter()
            .try_for_each(|(name, path)| self.send_artifact(&uri, name, path));
        if let Err(e) = sent {
            eprintln!(
                "warning: MLflow did not take the run's files as artifacts ({e}); the run's \
                 settings and metrics are there, its files stay in {}",
                self.dir.display()
            );
        }
    }

    fn send_artifact(&self, uri: &str, name: &str, path: &Path) -> Result<(), String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        match artifact_store(uri) {
            Store::Proxied(root) => {
                let url = format!(
                    "{}/api/2.0/mlflow-artifacts/artifacts/{root}/{name}",
                    self.uri
                );
                self.agent
                    .put(&url)
                    .set("Content-Type", "application/octet-stream")
                    .send_bytes(&bytes)
                    .map_err(|e| format!("{name}: {e}"))?;
                Ok(())
            }
            Store::Local(dir) => std::fs::create_dir_all(&dir)
                .and_then(|()| std::fs::write(dir.join(name), &bytes))
                .map_err(|e| format!("{}: {e}", dir.display())),
            Store::Other => Err(format!(
                "the server keeps artifacts at {uri}, which only its own client can write"
            )),
        }
    }

    fn fail(&mut self, e: &str) {
        if !self.failed {
            eprintln!(
                "warning: MLflow at {} did not take the run ({e}); training goes on, and what \
                 was not sent is kept in {} (`peft report --to mlflow RUN` sends the run later)",
                self.uri,
                self.pending.display()
            );
        }
        self.failed = true;
    }

    fn keep(&self, path: &str, body: &Value) {
        let line = json!({"path": path, "body": body}).to_string() + "\n";
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.pending);
        if let Ok(mut f) = file {
            let _ = f.write_all(line.as_bytes());
        }
    }
}

/// The largest run file sent as an artifact: settings, metrics, the card, the adapter and
/// its export fit; a fully fine-tuned model's weights are left to the run directory.
pub const MAX_ARTIFACT_BYTES: u64 = 64 << 20;

/// Files a run keeps only for itself: the resume state, the lock, the unsent requests.
const NOT_ARTIFACTS: [&str; 3] = [super::dir::RESUME, super::lock::LOCK, PENDING];

/// The run directory's plain files (not links, not folders) of at most
/// `MAX_ARTIFACT_BYTES`, by name, with names safe in a URL path.
pub fn artifact_files(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut files: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let meta = e.path().symlink_metadata().ok()?;
            let safe = name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            (meta.is_file()
                && meta.len() <= MAX_ARTIFACT_BYTES
                && safe
                && !name.starts_with('.')
                && !NOT_ARTIFACTS.contains(&name.as_str()))
            .then(|| (name, e.path()))
        })
        .collect();
    files.sort();
    files
}

enum Store {
    /// The path below the server's `mlflow-artifacts` API.
    Proxied(String),
    Local(PathBuf),
    Other,
}

/// Where a run's `artifact_uri` points: `mlflow-artifacts:/1/ID/artifacts` (or with a
/// `//host` the tracking URI already names), `file:///…` or a plain absolute path.
fn artifact_store(uri: &str) -> Store {
    if let Some(rest) = uri.strip_prefix("mlflow-artifacts:") {
        let path = match rest.strip_prefix("//") {
            Some(host_path) => host_path.split_once('/').map_or("", |(_, p)| p),
            None => rest,
        };
        return Store::Proxied(path.trim_matches('/').to_string());
    }
    if let Some(path) = uri.strip_prefix("file://") {
        return Store::Local(PathBuf::from(path));
    }
    match Path::new(uri).is_absolute() {
        true => Store::Local(PathBuf::from(uri)),
        false => Store::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_stores_are_read_as_mlflow_writes_them() {
        let proxied = |u| match artifact_store(u) {
            Store::Proxied(p) => p,
            _ => panic!("{u}"),
        };
        assert_eq!(
            proxied("mlflow-artifacts:/1/abc/artifacts"),
            "1/abc/artifacts"
        );
        assert_eq!(
            proxied("mlflow-artifacts://host:5000/1/abc/artifacts"),
            "1/abc/artifacts"
        );
        assert!(
            matches!(artifact_store("file:///tmp/a/1"), Store::Local(p) if p == Path::new("/tmp/a/1"))
        );
        assert!(matches!(artifact_store("/srv/mlruns/1"), Store::Local(_)));
        assert!(matches!(artifact_store("s3://bucket/1/abc"), Store::Other));
    }

    #[test]
    fn only_the_run_directorys_small_plain_files_are_artifacts() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "config.json",
            "metrics.jsonl",
            super::super::dir::RESUME,
            PENDING,
            ".hidden",
        ] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        std::fs::create_dir(dir.path().join("tensorboard")).unwrap();
        let big = std::fs::File::create(dir.path().join("last.safetensors")).unwrap();
        big.set_len(MAX_ARTIFACT_BYTES + 1).unwrap();
        let names: Vec<String> = artifact_files(dir.path())
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["config.json", "metrics.jsonl"]);
    }
}
