//! The method registry is the one list: every method it holds shows in `peft train
//! --help`, runs under `peft bench --method`, has its row in the README's table and is
//! named by an unknown method's error. And the two methods added through it alone: `head`
//! (a linear probe) and `top-layers` (layer freezing) move exactly the tensors they say.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use peft::methods::{Method, REGISTRY};

use crate::common::*;

const BEGIN: &str = "<!-- methods: generated";
const END: &str = "<!-- methods: end -->";

#[test]
fn the_readme_method_table_is_the_registry() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let begin = readme
        .find(BEGIN)
        .expect("README: the methods table's begin marker");
    let body = readme[begin..].find('\n').unwrap() + begin + 1;
    let end = readme
        .find(END)
        .expect("README: the methods table's end marker");
    let want = peft::methods::table();
    if std::env::var_os("PEFT_BLESS").is_some() {
        let text = format!("{}{want}{}", &readme[..body], &readme[end..]);
        std::fs::write(&path, text).unwrap();
        return;
    }
    assert_eq!(
        &readme[body..end],
        want,
        "README's method table is not the registry's; PEFT_BLESS=1 rewrites it"
    );
    for m in REGISTRY {
        assert!(
            readme[body..end].contains(&format!("| `{}` |", m.name())),
            "{m} has no row"
        );
    }
}

#[test]
fn every_registered_method_is_in_help_bench_and_errors() {
    let help = ok(peft(&["train", "--help"]));
    let bench_help = ok(peft(&["bench", "--help"]));
    let o = peft(&["train", "--method", "lora+nope", "--task", "rte"]);
    assert_eq!(o.status.code(), Some(2));
    let unknown = stderr(&o);
    assert!(unknown.contains("unknown method `nope`"), "{unknown}");
    for m in REGISTRY {
        assert!(help.contains(m.name()), "train --help lacks {m}");
        assert!(bench_help.contains(m.name()), "bench --help lacks {m}");
        assert!(
            unknown.contains(m.name()),
            "the unknown-method error lacks {m}"
        );
        let o = peft(&[
            "bench",
            "--model",
            &fixture("tiny-bert"),
            "--method",
            m.name(),
            "--batch",
            "2",
            "--seq",
            "8",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--no-inference",
        ]);
        if m.needs_fisher() {
            assert!(
                stderr(&o).contains("needs Fisher information"),
                "bench {m}: {}",
                stderr(&o)
            );
        } else {
            let out = ok(o);
            assert!(
                out.lines().any(|l| l.starts_with(m.name())),
                "bench {m}: {out}"
            );
        }
    }
}

/// The checkpoint's tensors by canonical name.
fn base_of(model: &Path) -> HashMap<String, Tensor> {
    peft::model::read_checkpoint(model).unwrap().1
}

/// `peft merge` of `run`, read back: every tensor of the model after training.
fn merged(run: &Path, root: &Path, name: &str) -> (PathBuf, HashMap<String, Tensor>) {
    let out = root.join(name);
    ok(peft(&[
        "merge",
        "--checkpoint",
        run.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]));
    let w = base_of(&out);
    (out, w)
}

/// The names of the base's tensors that differ in `after`, and those equal bit for bit.
fn moved(base: &HashMap<String, Tensor>, after: &HashMap<String, Tensor>) -> Vec<String> {
    let mut names: Vec<String> = base
        .iter()
        .filter(|(n, t)| after.get(*n).is_some_and(|a| bits(a) != bits(t)))
        .map(|(n, _)| n.clone())
        .collect();
    names.sort();
    names
}

fn saved(run: &Path) -> Vec<String> {
    let mut names: Vec<String> = tensors(&run.join("trainable.safetensors"))
        .into_keys()
        .collect();
    names.sort();
    names
}

/// On all-MiniLM-L6-v2 (6 layers, with a pooler), a probe trains the head alone: the
/// run saves only the head, and the merged model equals the base in every encoder tensor.
/// Then Child-Tuning's task transfer: a probe over that fine-tuned encoder on another task.
#[test]
fn head_trains_the_head_alone_and_probes_a_fine_tuned_encoder() {
    let Some(minilm) = data_dir("PEFT_MINILM_DIR") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write_rte(root, 32, 16);
    write_stsb(root, 32, 16);
    let base = base_of(&minilm);
    let model = minilm.to_str().unwrap();
    let probe = root.join("probe");
    train(
        model,
        root,
        &probe,
        &["--task", "rte", "--method", "head", "--max-steps", "3"],
    );
    assert_eq!(saved(&probe), ["classifier.bias", "classifier.weight"]);
    let (_, after) = merged(&probe, root, "probe-merged");
    assert!(
        moved(&base, &after).is_empty(),
        "{:?}",
        moved(&base, &after)
    );

    // Fine-tune the whole encoder on RTE, merge it, and probe it on STS-B: the probe's
    // encoder is the fine-tuned one, unchanged.
    let full = root.join("full");
    train(
        model,
        root,
        &full,
        &["--task", "rte", "--method", "full", "--max-steps", "3"],
    );
    let (tuned_dir, tuned) = merged(&full, root, "full-merged");
    assert!(!moved(&base, &tuned).is_empty());
    let transfer = root.join("transfer");
    let shown = train(
        tuned_dir.to_str().unwrap(),
        root,
        &transfer,
        &["--task", "stsb", "--method", "head", "--max-steps", "3"],
    );
    assert!(shown.contains("best:"), "{shown}");
    assert_eq!(saved(&transfer), ["classifier.bias", "classifier.weight"]);
    let (_, probed) = merged(&transfer, root, "transfer-merged");
    let encoder =
        |w: &HashMap<String, Tensor>| w.keys().filter(|n| !n.starts_with("classifier.")).count();
    assert_eq!(encoder(&probed), encoder(&tuned));
    assert!(moved(&tuned, &probed)
        .iter()
        .all(|n| n.starts_with("classifier.")));
}

/// top-layers 2 of MiniLM's 6: layers 4 and 5 (every tensor), the pooler and the head
/// train; the merged model differs from the base in exactly those tensors. With
/// layernorm in a union, every LayerNorm trains too.
#[test]
fn top_layers_trains_exactly_the_top_layers_pooler_and_head() {
    let Some(minilm) = data_dir("PEFT_MINILM_DIR") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write_rte(root, 32, 16);
    let base = base_of(&minilm);
    let model = minilm.to_str().unwrap();
    let top = |n: &str| {
        n.starts_with("encoder.layer.4.")
            || n.starts_with("encoder.layer.5.")
            || n.starts_with("pooler.")
    };
    let run = root.join("top");
    train(
        model,
        root,
        &run,
        &[
            "--task",
            "rte",
            "--method",
            "top-layers",
            "--layers",
            "2",
            "--max-steps",
            "3",
            "--lr",
            "1e-3",
        ],
    );
    let mut want: Vec<String> = base.keys().filter(|n| top(n)).cloned().collect();
    want.extend([
        "classifier.bias".to_string(),
        "classifier.weight".to_string(),
    ]);
    want.sort();
    assert_eq!(saved(&run), want);
    let (_, after) = merged(&run, root, "top-merged");
    let mut in_base: Vec<String> = base.keys().filter(|n| top(n)).cloned().collect();
    in_base.sort();
    assert_eq!(moved(&base, &after), in_base, "the base tensors that moved");

    let union = root.join("union");
    train(
        model,
        root,
        &union,
        &[
            "--task",
            "rte",
            "--method",
            "top-layers+layernorm",
            "--layers",
            "1",
            "--max-steps",
            "2",
        ],
    );
    for n in saved(&union) {
        assert!(
            n.starts_with("encoder.layer.5.")
                || n.starts_with("pooler.")
                || n.starts_with("classifier.")
                || n.contains("LayerNorm."),
            "{n}"
        );
    }
    assert!(saved(&union).contains(&"embeddings.LayerNorm.weight".to_string()));

    for (layers, why) in [("0", "--layers 0"), ("7", "--layers 7")] {
        let o = peft(&[
            "train",
            "--model",
            model,
            "--data-dir",
            root.to_str().unwrap(),
            "--task",
            "rte",
            "--method",
            "top-layers",
            "--layers",
            layers,
            "--output-dir",
            root.join("bad").to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(
            stderr(&o).contains(why) && stderr(&o).contains("1 to 6"),
            "{}",
            stderr(&o)
        );
    }
    let o = peft(&[
        "train",
        "--model",
        model,
        "--data-dir",
        root.to_str().unwrap(),
        "--task",
        "rte",
        "--method",
        "top-layers",
        "--output-dir",
        root.join("bad").to_str().unwrap(),
    ]);
    assert!(stderr(&o).contains("needs --layers"), "{}", stderr(&o));
    assert!(Method::named("top-layers").is_some());
}
