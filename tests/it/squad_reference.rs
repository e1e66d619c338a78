//! SQuAD against its references, on fixtures that scripts/squad_reference.py wrote with
//! them (tests/fixtures/squad/README.md): transformers' run_qa.py windows and labels,
//! utils_qa.py answers from given logits, and the official evaluation scripts' figures.

use std::collections::BTreeMap;
use std::path::PathBuf;

use peft::data::squad::{featurize, Answer, Feature, QaData, QaExample, SpanOptions};
use peft::eval::spans::answers;
use peft::metrics::squad::{evaluate_v1, evaluate_v2};
use peft::model::ModelConfig;
use peft::tokenize::TextEncoder;
use serde::Deserialize;
use serde_json::Value;

use crate::common::{data_dir, fixture_dir};

fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/squad")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn examples(v: &Value) -> Vec<QaExample> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| QaExample {
            id: e["id"].as_str().unwrap().into(),
            question: e["question"].as_str().unwrap().into(),
            context: e["context"].as_str().unwrap().into(),
            answers: if e["is_impossible"].as_bool().unwrap_or(false) {
                Vec::new()
            } else {
                e["answers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| Answer {
                        text: a["text"].as_str().unwrap().into(),
                        start: a["answer_start"].as_u64().unwrap() as usize,
                    })
                    .collect()
            },
        })
        .collect()
}

fn offsets(v: &Value) -> Vec<Option<(usize, usize)>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|o| {
            o.as_array().map(|p| {
                (
                    p[0].as_u64().unwrap() as usize,
                    p[1].as_u64().unwrap() as usize,
                )
            })
        })
        .collect()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// run_qa.py's windows, token for token, with their offsets and labels, for a WordPiece
/// and a byte-level BPE tokenizer. One label differs on purpose: where run_qa scans past
/// the context (an answer starting in a window's last context token) and labels the
/// final separator, after the end, we label the token that holds the answer.
#[test]
fn windows_and_labels_match_run_qa() {
    let f = fixture("features.json");
    let max_len = f["max_seq_length"].as_u64().unwrap() as usize;
    let stride = f["doc_stride"].as_u64().unwrap() as usize;
    let mut edge_cases = 0;
    for (name, t) in f["tokenizers"].as_object().unwrap() {
        let dir = fixture_dir(name);
        let cfg = ModelConfig::load(&dir).unwrap();
        let enc = TextEncoder::load(&dir, &cfg, max_len)
            .unwrap()
            .with_doc_stride(stride);
        let ours = featurize(examples(&f["examples"]), &enc.qa().unwrap()).unwrap();
        let theirs = t["features"].as_array().unwrap();
        assert_eq!(ours.inputs.len(), theirs.len(), "{name}: windows");
        for (i, want) in theirs.iter().enumerate() {
            let at = format!("{name} window {i}");
            assert_eq!(
                ours.qa.features[i].example,
                want["example_index"].as_u64().unwrap() as usize,
                "{at}"
            );
            assert_eq!(ours.inputs[i].ids, u32s(&want["input_ids"]), "{at}: ids");
            if let Some(types) = want.get("token_type_ids") {
                assert_eq!(ours.inputs[i].type_ids, u32s(types), "{at}: type ids");
            }
            assert_eq!(
                ours.qa.features[i].offsets,
                offsets(&want["offset_mapping"]),
                "{at}: offsets"
            );
            let hf = (
                want["start_position"].as_u64().unwrap() as u32,
                want["end_position"].as_u64().unwrap() as u32,
            );
            if hf.0 > hf.1 {
                edge_cases += 1;
                assert_eq!(ours.spans[i], (hf.1, hf.1), "{at}: run_qa's edge case");
            } else {
                assert_eq!(ours.spans[i], hf, "{at}: labels");
            }
        }
    }
    assert_eq!(
        edge_cases, 2,
        "the fixture holds run_qa's edge case once per tokenizer"
    );
}

/// utils_qa.py's answers and null score differences from the same logits, for SQuAD 1.1
/// and 2.0, two null thresholds and a short max_answer_length. The rows are 48 long, as
/// run_qa pads windows; positions past a window compete for the n-best and are dropped.
#[test]
fn answers_match_utils_qa() {
    let f = fixture("features.json");
    let p = fixture("postprocess.json");
    let features: Vec<Feature> = f["tokenizers"]["tiny-bert"]["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| Feature {
            example: w["example_index"].as_u64().unwrap() as usize,
            offsets: offsets(&w["offset_mapping"]),
            cls: 0,
        })
        .collect();
    let qa = QaData {
        examples: examples(&f["examples"]),
        features,
    };
    let rows = |key: &str| -> Vec<Vec<f32>> {
        p[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect()
            })
            .collect()
    };
    let logits: Vec<(Vec<f32>, Vec<f32>)> = rows("start_logits")
        .into_iter()
        .zip(rows("end_logits"))
        .collect();
    let mut settings = 0;
    for (name, s) in p["settings"].as_object().unwrap() {
        let args = &s["args"];
        let v2 = args["version_2_with_negative"].as_bool().unwrap();
        let opts = SpanOptions {
            n_best: args["n_best_size"].as_u64().unwrap() as usize,
            max_answer_length: args["max_answer_length"].as_u64().unwrap() as usize,
            null_threshold: args["null_score_diff_threshold"].as_f64().unwrap_or(0.0),
            v2,
        };
        let a = answers(&qa, &logits, opts);
        let want: BTreeMap<String, String> =
            serde_json::from_value(s["predictions"].clone()).unwrap();
        assert_eq!(a.map(), want, "{name}: answers");
        if v2 {
            let diffs: BTreeMap<String, f64> =
                serde_json::from_value(s["scores_diff"].clone()).unwrap();
            let ours: BTreeMap<String, f64> = a.null_diff.iter().cloned().collect();
            assert_eq!(ours, diffs, "{name}: null score differences");
        }
        settings += 1;
    }
    assert_eq!(settings, 4);
}

/// A JSON object's entries in file order (the official script sorts na_probs stably, so
/// ties keep the file's order).
struct Ordered(Vec<(String, f64)>);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of numbers")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Ordered, A::Error> {
                let mut v = Vec::new();
                while let Some(e) = m.next_entry::<String, f64>()? {
                    v.push(e);
                }
                Ok(Ordered(v))
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Deserialize)]
struct Official {
    article: String,
    predictions: BTreeMap<String, String>,
    na_probs: Ordered,
    v2: BTreeMap<String, f64>,
    v2_no_na_probs: BTreeMap<String, f64>,
    #[serde(rename = "v2_na_prob_thresh_0.5")]
    v2_thresh_half: BTreeMap<String, f64>,
    v2_all_na_probs_tied: BTreeMap<String, f64>,
    v1: BTreeMap<String, f64>,
}

fn close(ours: &BTreeMap<String, f64>, theirs: &BTreeMap<String, f64>, what: &str) {
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>(),
        "{what}: keys"
    );
    for (k, v) in theirs {
        assert!(
            (ours[k] - v).abs() < 1e-9,
            "{what} {k}: ours {}, official {v}",
            ours[k]
        );
    }
}

/// Our scores equal what the official evaluate-v2.0.py and evaluate-v1.1.py printed for
/// the committed predictions on the shared slice's first article: normalisation,
/// best-over-gold, HasAns/NoAns, the no-answer threshold and the best-threshold search
/// with its tie order.
#[test]
fn scores_match_the_official_scripts() {
    let Some(dir) = data_dir("PEFT_SQUAD_DIR") else {
        return;
    };
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/squad/official.json"),
    )
    .unwrap();
    let o: Official = serde_json::from_str(&text).unwrap();
    let all = peft::data::squad::read_json(&dir.join("dev-v2.0-5articles.json"), true).unwrap();
    // The article's questions: those the predictions answer.
    let article: Vec<QaExample> = all
        .into_iter()
        .filter(|e| o.predictions.contains_key(&e.id))
        .collect();
    assert_eq!(article.len(), o.predictions.len(), "{}", o.article);
    let na = &o.na_probs.0;
    close(
        &evaluate_v2(&article, &o.predictions, Some(na), 1.0),
        &o.v2,
        "v2",
    );
    close(
        &evaluate_v2(&article, &o.predictions, None, 1.0),
        &o.v2_no_na_probs,
        "v2 without na_probs",
    );
    close(
        &evaluate_v2(&article, &o.predictions, Some(na), 0.5),
        &o.v2_thresh_half,
        "v2 at 0.5",
    );
    let tied: Vec<(String, f64)> = article.iter().map(|e| (e.id.clone(), 0.5)).collect();
    close(
        &evaluate_v2(&article, &o.predictions, Some(&tied), 1.0),
        &o.v2_all_na_probs_tied,
        "v2 tied",
    );
    let answerable: Vec<QaExample> = article.into_iter().filter(|e| e.answerable()).collect();
    close(&evaluate_v1(&answerable, &o.predictions), &o.v1, "v1");
}
