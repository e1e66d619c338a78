//! Every finished run carries a model card, `RUN/README.md`, in the hub's format: its
//! YAML front matter (read here by a YAML parser) names the base model, `library_name:
//! peft` where the run exports PEFT's files, the task's dataset and metrics, and the
//! best evaluation's results as in metrics.jsonl; `peft merge` writes one for the merged
//! model, with the merged state's results, none for a WiSE-FT mix.

use std::path::Path;

use yaml_rust2::{Yaml, YamlLoader};

use crate::common::*;

/// The card's front matter, parsed.
pub(crate) fn front_matter(dir: &Path) -> Yaml {
    let text = std::fs::read_to_string(dir.join("README.md")).unwrap();
    let rest = text.strip_prefix("---\n").expect("front matter first");
    let (yaml, body) = rest.split_once("\n---\n").expect("front matter closed");
    assert!(body.contains("## Settings"), "{body}");
    YamlLoader::load_from_str(yaml).unwrap().remove(0)
}

/// The results the card gives: (split, metric, value).
pub(crate) fn results(card: &Yaml) -> Vec<(String, String, f64)> {
    let mut out = Vec::new();
    for r in card["model-index"][0]["results"].as_vec().unwrap() {
        let split = r["dataset"]["split"].as_str().unwrap().to_string();
        for m in r["metrics"].as_vec().unwrap() {
            let v = m["value"].as_f64().unwrap();
            out.push((split.clone(), m["type"].as_str().unwrap().to_string(), v));
        }
    }
    out
}

fn best_accuracy(run: &Path) -> f64 {
    metrics(run)
        .into_iter()
        .rev()
        .find(|r| r["best"].as_bool().unwrap())
        .unwrap()["dev"]["dev"]["accuracy"]
        .as_f64()
        .unwrap()
}

#[test]
fn every_run_and_merge_has_a_model_card() {
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 32, 8);
    let model = fixture("tiny-bert");
    let lora = tmp.path().join("lora");
    train(
        &model,
        tmp.path(),
        &lora,
        &[
            "--task",
            "rte",
            "--method",
            "lora",
            "--max-steps",
            "4",
            "--eval-steps",
            "2",
        ],
    );
    let card = front_matter(&lora);
    assert_eq!(card["base_model"].as_str(), Some(model.as_str()));
    assert_eq!(card["library_name"].as_str(), Some("peft"));
    assert_eq!(card["datasets"][0].as_str(), Some("nyu-mll/glue"));
    assert_eq!(card["metrics"][0].as_str(), Some("accuracy"));
    let tags: Vec<&str> = card["tags"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(tags.contains(&"lora") && tags.contains(&"rte"), "{tags:?}");
    assert_eq!(
        results(&card),
        vec![(
            "dev".to_string(),
            "accuracy".to_string(),
            best_accuracy(&lora)
        )]
    );

    // A method PEFT has no format for: no `library_name: peft`.
    let head = tmp.path().join("head");
    train(
        &model,
        tmp.path(),
        &head,
        &["--task", "rte", "--method", "head", "--max-steps", "2"],
    );
    assert_eq!(
        front_matter(&head)["library_name"].as_str(),
        Some("transformers")
    );

    // The merged model's card: the run's best evaluation, transformers to load it.
    let merged = tmp.path().join("merged");
    ok(peft(&[
        "merge",
        "--checkpoint",
        lora.to_str().unwrap(),
        "--output",
        merged.to_str().unwrap(),
    ]));
    let card = front_matter(&merged);
    assert_eq!(card["library_name"].as_str(), Some("transformers"));
    assert_eq!(results(&card)[0].2, best_accuracy(&lora));
    // A WiSE-FT mix was never scored: no results claimed.
    let mixed = tmp.path().join("mixed");
    ok(peft(&[
        "merge",
        "--checkpoint",
        lora.to_str().unwrap(),
        "--output",
        mixed.to_str().unwrap(),
        "--alpha",
        "0.5",
    ]));
    assert!(front_matter(&mixed)["model-index"].is_badvalue());
}
