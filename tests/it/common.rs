//! Helpers shared by the integration tests: running the binary, tiny GLUE-format files.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Tensor};

/// The folder a data-gated test runs on, from the environment variable `var`
/// (`PEFT_MINILM_DIR`, `PEFT_GLUE_DIR`). Unset, the test is skipped: None, with a note on
/// stderr, so that `cargo test` runs on a machine without the data. Under
/// `scripts/test.sh` (and so CI), which sets `PEFT_REQUIRE_DATA=1`, an unset variable
/// fails the test instead: a skipped check there would pass in silence. A variable set
/// to a path that is not a directory fails it either way.
pub fn data_dir(var: &str) -> Option<PathBuf> {
    let required = std::env::var_os("PEFT_REQUIRE_DATA").is_some_and(|v| v == "1");
    let Some(dir) = std::env::var_os(var).map(PathBuf::from) else {
        assert!(
            !required,
            "{var} is not set, and PEFT_REQUIRE_DATA=1 says this test must run on its data \
             (scripts/test.sh sets both; unset PEFT_REQUIRE_DATA to skip the test)"
        );
        eprintln!("{var} is not set: skipping this test (PEFT_REQUIRE_DATA=1 fails it instead)");
        return None;
    };
    assert!(dir.is_dir(), "{var}={} is not a directory", dir.display());
    Some(dir)
}

pub fn peft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_peft"))
        .args(args)
        .output()
        .expect("run peft")
}

/// A fixture directory, as a path.
pub fn fixture_dir(kind: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(kind)
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The largest |a − b| (on the CPU; shapes must agree).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    max_abs(&(a.to_device(&Device::Cpu).unwrap() - b.to_device(&Device::Cpu).unwrap()).unwrap())
}

/// The largest |a| (on the CPU).
pub fn max_abs(a: &Tensor) -> f32 {
    peft::stats::max_abs(a).unwrap()
}

/// A tensor's values as bit patterns, for exact comparisons.
pub fn bits(t: &Tensor) -> Vec<u32> {
    let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v.iter().map(|x| x.to_bits()).collect()
}

pub fn fixture(kind: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(kind)
        .to_string_lossy()
        .into_owned()
}

/// A copy of the tiny-bert fixture in `root/name`, with `edit` applied: a model broken
/// on purpose.
pub fn model_with(root: &Path, name: &str, edit: impl FnOnce(&Path)) -> PathBuf {
    let d = root.join(name);
    std::fs::create_dir_all(&d).unwrap();
    for f in std::fs::read_dir(fixture("tiny-bert")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), d.join(f.file_name())).unwrap();
    }
    edit(&d);
    d
}

pub fn ok(out: Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "peft failed: {err}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub const WORDS: &[&str] = &[
    "the", "cat", "dog", "man", "woman", "sat", "ran", "saw", "house", "car", "city", "river",
    "red", "blue", "big", "small", "happy", "sad", "old", "new",
];

/// Deterministic pseudo-random sentences from the tiny vocabulary.
pub fn sentence(i: usize, len: usize) -> String {
    (0..len)
        .map(|k| WORDS[(i * 7 + k * 13 + i * k) % WORDS.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

/// RTE-format train/dev files: the label says whether sentence2's first word occurs in sentence1.
pub fn write_rte(dir: &Path, n_train: usize, n_dev: usize) {
    let rte = dir.join("RTE");
    std::fs::create_dir_all(&rte).unwrap();
    for (split, n, offset) in [("train", n_train, 0), ("dev", n_dev, 1000)] {
        let mut s = String::from("index\tsentence1\tsentence2\tlabel\n");
        for i in 0..n {
            let a = sentence(i + offset, 3 + i % 9);
            let b = sentence(i * 3 + offset + 1, 2 + i % 4);
            let first = b.split(' ').next().unwrap();
            let label = if a.split(' ').any(|w| w == first) {
                "entailment"
            } else {
                "not_entailment"
            };
            s.push_str(&format!("{i}\t{a}\t{b}\t{label}\n"));
        }
        std::fs::write(rte.join(format!("{split}.tsv")), s).unwrap();
    }
    let mut test = String::from("index\tsentence1\tsentence2\n");
    for i in 0..5 {
        test.push_str(&format!(
            "{i}\t{}\t{}\n",
            sentence(i + 77, 4),
            sentence(i + 78, 3)
        ));
    }
    std::fs::write(rte.join("test.tsv"), test).unwrap();
}

pub fn write_stsb(dir: &Path, n_train: usize, n_dev: usize) {
    let d = dir.join("STS-B");
    std::fs::create_dir_all(&d).unwrap();
    for (split, n, offset) in [("train", n_train, 0), ("dev", n_dev, 500)] {
        let mut s = String::from("index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n");
        for i in 0..n {
            let a = sentence(i + offset, 4 + i % 5);
            let b = sentence(i + offset + i % 3, 4 + i % 5);
            let score = 5.0 * (a == b) as u8 as f32 + (i % 5) as f32 * 0.5 * (a != b) as u8 as f32;
            s.push_str(&format!(
                "{i}\tmain\tf\t2012\t{i}\tnone\tnone\t{a}\t{b}\t{score:.3}\n"
            ));
        }
        std::fs::write(d.join(format!("{split}.tsv")), s).unwrap();
    }
}

/// The small batch and sequence shape every test run trains with.
pub const SMALL: [&str; 6] = [
    "--batch-size",
    "8",
    "--eval-batch-size",
    "16",
    "--max-seq-len",
    "32",
];

pub fn train(model: &str, data: &Path, out: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "train",
        "--model",
        model,
        "--data-dir",
        data.to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(&SMALL);
    args.extend_from_slice(extra);
    ok(peft(&args))
}

/// What `peft predict --checkpoint RUN --input FILE` prints.
pub fn predict_lines(run: &Path, input: &Path) -> String {
    ok(peft(&[
        "predict",
        "--checkpoint",
        run.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]))
}

/// `peft eval --checkpoint RUN --json`'s dev accuracy: what the run re-scores to.
pub fn eval_accuracy(run: &Path) -> f64 {
    eval_metric(run, "accuracy")
}

/// The dev metric `peft eval --checkpoint RUN --json` re-scores a run to.
pub fn eval_metric(run: &Path, metric: &str) -> f64 {
    let shown = ok(peft(&[
        "eval",
        "--checkpoint",
        run.to_str().unwrap(),
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(shown.trim()).unwrap();
    v["metrics"][metric].as_f64().unwrap()
}

/// metrics.jsonl without the timing fields, which differ run to run.
pub fn metrics(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            for k in ["elapsed_s", "train_tokens_per_s", "train_examples_per_s"] {
                v.as_object_mut().unwrap().remove(k);
            }
            v
        })
        .collect()
}

pub fn tensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

/// A column of a parquet file the tests write.
pub enum Col {
    Str(Vec<String>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    F32(Vec<f32>),
}

/// Write one row group of `columns` to `path`, snappy-compressed as `datasets` writes
/// them, with `hf_features` (a JSON string) as the file's `huggingface` metadata.
pub fn write_parquet(path: &Path, columns: &[(&str, Col)], hf_features: Option<String>) {
    use parquet::basic::Compression;
    use parquet::data_type::{ByteArray, ByteArrayType, FloatType, Int32Type, Int64Type};
    use parquet::file::metadata::KeyValue;
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use std::sync::Arc;

    let fields: Vec<String> = columns
        .iter()
        .map(|(name, c)| match c {
            Col::Str(_) => format!("REQUIRED BYTE_ARRAY {name} (UTF8);"),
            Col::I64(_) => format!("REQUIRED INT64 {name};"),
            Col::I32(_) => format!("REQUIRED INT32 {name};"),
            Col::F32(_) => format!("REQUIRED FLOAT {name};"),
        })
        .collect();
    let schema = format!("message schema {{ {} }}", fields.join(" "));
    let schema = Arc::new(parquet::schema::parser::parse_message_type(&schema).unwrap());
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_key_value_metadata(hf_features.map(|f| vec![KeyValue::new("huggingface".into(), f)]))
        .build();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut w = SerializedFileWriter::new(file, schema, Arc::new(props)).unwrap();
    let mut rg = w.next_row_group().unwrap();
    for (_, c) in columns {
        let mut cw = rg.next_column().unwrap().unwrap();
        match c {
            Col::Str(v) => {
                let data: Vec<ByteArray> = v.iter().map(|s| ByteArray::from(s.as_str())).collect();
                cw.typed::<ByteArrayType>()
                    .write_batch(&data, None, None)
                    .unwrap();
            }
            Col::I64(v) => {
                cw.typed::<Int64Type>().write_batch(v, None, None).unwrap();
            }
            Col::I32(v) => {
                cw.typed::<Int32Type>().write_batch(v, None, None).unwrap();
            }
            Col::F32(v) => {
                cw.typed::<FloatType>().write_batch(v, None, None).unwrap();
            }
        }
        cw.close().unwrap();
    }
    rg.close().unwrap();
    w.close().unwrap();
}

/// A Hugging Face cache folder holding `files` of one repository at commit `sha`, with
/// `refs/main` pointing at it, as the Python tools leave it. Returns the snapshot folder.
pub fn hub_snapshot(cache: &Path, folder: &str, sha: &str) -> std::path::PathBuf {
    let repo = cache.join(folder);
    let snap = repo.join("snapshots").join(sha);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), sha).unwrap();
    snap
}

/// The tiny BERT fixture as the cached hub model `org/name`, without `skip`.
pub fn hub_model(cache: &Path, id: &str, skip: &[&str]) -> std::path::PathBuf {
    let folder = format!("models--{}", id.replace('/', "--"));
    let snap = hub_snapshot(cache, &folder, "0123456789abcdef0123456789abcdef01234567");
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        if !skip.contains(&f) {
            std::fs::copy(Path::new(&fixture("tiny-bert")).join(f), snap.join(f)).unwrap();
        }
    }
    snap
}

/// `peft` with the Hugging Face cache at `cache`, downloads forbidden and no GLUE folder
/// from the environment.
pub fn peft_offline(cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_peft"))
        .args(args)
        .env("HF_HUB_CACHE", cache)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("HF_HOME")
        .env_remove("PEFT_GLUE_DIR")
        .output()
        .expect("run peft")
}

/// SQuAD-format `train-<version>.json` and `dev-<version>.json` (version v1.1 or v2.0):
/// each context is a long sentence from the tiny vocabulary (several windows at
/// `--max-seq-len 32`); each question asks for the words after its first two, the answer
/// is the next one to three words. In v2.0 every fourth question is unanswerable.
pub fn write_squad(dir: &Path, version: &str, n_train: usize, n_dev: usize) {
    for (split, n, offset) in [("train", n_train, 0), ("dev", n_dev, 700)] {
        let mut paragraphs = Vec::new();
        for i in 0..n {
            let words: Vec<String> = sentence(i + offset, 24 + i % 20)
                .split(' ')
                .map(str::to_string)
                .collect();
            let context = words.join(" ");
            let k = 2 + (i * 5) % (words.len() - 6);
            let question = format!("{} {} ?", words[k - 2], words[k - 1]);
            let answer = words[k..k + 1 + i % 3].join(" ");
            let start = words[..k].iter().map(|w| w.len() + 1).sum::<usize>();
            let impossible = version == "v2.0" && i % 4 == 3;
            let answers = if impossible {
                serde_json::json!([])
            } else {
                serde_json::json!([{ "text": answer, "answer_start": start }])
            };
            paragraphs.push(serde_json::json!({
                "context": context,
                "qas": [{
                    "id": format!("{split}-{i}"),
                    "question": question,
                    "answers": answers,
                    "is_impossible": impossible,
                }],
            }));
        }
        let file = serde_json::json!({
            "version": version,
            "data": [{ "title": "tiny", "paragraphs": paragraphs }],
        });
        std::fs::write(
            dir.join(format!("{split}-{version}.json")),
            serde_json::to_string(&file).unwrap(),
        )
        .unwrap();
    }
}

/// The golden batch of a tiny fixture model (`golden.safetensors`, written with it by
/// tests/golden/make_golden.py) as the model takes it.
pub fn golden_batch(dir: &Path) -> peft::model::Batch {
    let g: HashMap<String, Tensor> =
        candle_core::safetensors::load(dir.join("golden.safetensors"), &Device::Cpu).unwrap();
    peft::model::Batch {
        input_ids: g["input_ids"].to_dtype(candle_core::DType::U32).unwrap(),
        token_type_ids: g["token_type_ids"]
            .to_dtype(candle_core::DType::U32)
            .unwrap(),
        attention_mask: g["attention_mask"]
            .to_dtype(candle_core::DType::F32)
            .unwrap(),
    }
}

/// A PEFT reference's check, on fixture `family` (tests/golden-style `g`: the trained
/// tensors under our names, `labels`, `logits`, `loss`, `grad.<name>`): the tensors
/// `trains` picks from `g` replace the checkpoint's (head dropped) and train; with
/// `adapter`, the model's logits match within 1e-5, the mean cross-entropy within 1e-6 and
/// every trainable tensor's gradient within 1e-4 relative, none missing. Returns the
/// weights it built the model from.
pub fn matches_reference(
    family: &str,
    g: &HashMap<String, Tensor>,
    adapter: &peft::model::AdapterConfig,
    trains: fn(&str) -> bool,
) -> HashMap<String, Tensor> {
    use peft::model::{read_checkpoint, Ctx, Model, ParamStore};
    let dir = fixture_dir(family);
    let (cfg, mut weights) = read_checkpoint(&dir).unwrap();
    peft::model::drop_head(&mut weights);
    for (k, t) in g
        .iter()
        .filter(|(k, _)| !k.starts_with("grad.") && trains(k))
    {
        weights.insert(k.clone(), t.clone());
    }
    let built = weights.clone();
    let store = ParamStore::new(weights, Device::Cpu, 0, Box::new(trains));
    let model = Model::load_with_adapters(&store, &cfg, Some(2.into()), Some(adapter)).unwrap();
    assert!(
        store.created().is_empty(),
        "{family}: {:?}",
        store.created()
    );
    let logits = model.logits(&golden_batch(&dir), &Ctx::eval()).unwrap();
    let d = max_abs_diff(&logits, &g["logits"]);
    assert!(d < 1e-5, "{family}: logits differ by {d}");
    let labels = g["labels"].to_dtype(candle_core::DType::U32).unwrap();
    let loss = peft::loss::cross_entropy(&logits, &labels).unwrap();
    let d = max_abs_diff(&loss.reshape(1).unwrap(), &g["loss"]);
    assert!(d < 1e-6, "{family}: loss differs by {d}");
    let grads = loss.backward().unwrap();
    let vars = store.vars();
    for (name, var) in &vars {
        let want = &g[&format!("grad.{name}")];
        let got = grads.get(var.as_tensor()).unwrap();
        let rel = max_abs_diff(got, want) / max_abs(want).max(1e-6);
        assert!(rel < 1e-4, "{family}: gradient of {name} differs by {rel}");
    }
    let want = g.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(vars.len(), want, "{family}: gradients checked");
    built
}

/// Every dev logit of `eval --predictions` with `args`.
pub fn eval_logits(args: &[&str], file: &Path) -> Vec<f64> {
    let mut all = vec!["eval", "--predictions", file.to_str().unwrap()];
    all.extend_from_slice(args);
    ok(peft(&all));
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .flat_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            serde_json::from_value::<Vec<f64>>(v["logits"].clone()).unwrap()
        })
        .collect()
}

/// A run's PEFT-format export, read back with `eval --adapter` over `base` on the RTE
/// dev rows in `data` (32-token windows), gives the run's own logits (its best state,
/// which the export holds) on every example within 1e-5: a lost tensor or a wrong scale
/// cannot hide behind an unchanged accuracy.
pub fn export_scores_as_run(run: &Path, data: &Path, base: &str) {
    exported_scores_as_run(run, run, data, base)
}

/// As [`export_scores_as_run`], the export in `export` (AdapterHub's `RUN/adapterhub`).
pub fn exported_scores_as_run(run: &Path, export: &Path, data: &Path, base: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let by_run = eval_logits(
        &["--checkpoint", run.to_str().unwrap()],
        &tmp.path().join("run"),
    );
    let adapter = [
        "--adapter",
        export.to_str().unwrap(),
        "--model",
        base,
        "--task",
        "rte",
        "--data-dir",
        data.to_str().unwrap(),
        "--max-seq-len",
        "32",
    ];
    let by_export = eval_logits(&adapter, &tmp.path().join("export"));
    assert!(!by_run.is_empty());
    assert_eq!(by_run.len(), by_export.len());
    for (a, b) in by_run.iter().zip(&by_export) {
        assert!((a - b).abs() < 1e-5, "{}: logits {a} vs {b}", run.display());
    }
}

/// A task head's tensor (and BERT's pooler, which a classifier reads): what trains
/// beside any method's own tensors.
pub fn is_task_head(name: &str) -> bool {
    ["classifier.", "qa_outputs.", "pooler."]
        .iter()
        .any(|p| name.starts_with(p))
}

/// `peft eval --checkpoint RUN` re-scores the run to its best evaluation's `metric`.
pub fn assert_rescores(run: &Path, metric: &str) {
    let best = metrics(run)
        .into_iter()
        .rev()
        .find(|r| r["best"].as_bool().unwrap())
        .unwrap()["dev"]["dev"][metric]
        .as_f64()
        .unwrap();
    assert_eq!(eval_metric(run, metric), best, "{}", run.display());
}

/// A model of `cfg` over `weights` with `adapter` (read from a PEFT-saved folder `fx`)
/// gives, on `dir`'s golden batch, the probabilities Python recorded in `fx/expected.json`,
/// within 1e-5.
pub fn assert_scores_as_saved(
    cfg: &peft::model::ModelConfig,
    weights: HashMap<String, Tensor>,
    adapter: &peft::model::AdapterConfig,
    dir: &Path,
    fx: &Path,
) {
    use peft::model::{Ctx, Model, ParamStore};
    let store = ParamStore::frozen(weights, Device::Cpu);
    let model = Model::load_with_adapters(&store, cfg, Some(2.into()), Some(adapter)).unwrap();
    let logits = model.logits(&golden_batch(dir), &Ctx::eval()).unwrap();
    let probs = candle_nn::ops::softmax(&logits, 1).unwrap();
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fx.join("expected.json")).unwrap()).unwrap();
    let want: Vec<Vec<f32>> = serde_json::from_value(expected["probabilities"].clone()).unwrap();
    let d = max_abs_diff(&probs, &Tensor::new(want, &Device::Cpu).unwrap());
    assert!(d < 1e-5, "{}: probabilities differ by {d}", fx.display());
}
