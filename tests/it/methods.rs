//! Every method through the binary on every family's tiny model: what may move moves, what may not is
//! bit-identical to the base, and `peft eval` reproduces the run (PEFT's
//! test_custom_models idea: one table of methods, generic checks over each row).

use std::collections::HashMap;
use std::path::Path;

use crate::common::*;
use candle_core::Tensor;

/// Elements of `trained` that differ from the base tensor of the same canonical name.
fn changed(
    trained: &HashMap<String, Tensor>,
    base: &HashMap<String, Tensor>,
    pick: impl Fn(&str) -> bool,
) -> (usize, usize) {
    let (mut moved, mut total) = (0, 0);
    for (name, t) in trained.iter().filter(|(n, _)| pick(n)) {
        let b = &base[name];
        let a = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let c = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        moved += a
            .iter()
            .zip(&c)
            .filter(|(x, y)| x.to_bits() != y.to_bits())
            .count();
        total += a.len();
    }
    (moved, total)
}

/// BERT's `LayerNorm`, XLNet's `layer_norm`.
fn is_ln(n: &str) -> bool {
    n.contains("LayerNorm.") || n.contains("layer_norm.")
}

/// BERT's `encoder.layer.N.`, XLNet's `layer.N.`.
fn in_layers(n: &str) -> bool {
    n.starts_with("encoder.layer.") || n.starts_with("layer.")
}

/// Four steps on RTE at a learning rate that moves what trains, no warm-up.
const FOUR_STEPS: [&str; 8] = [
    "--task",
    "rte",
    "--max-steps",
    "4",
    "--lr",
    "1e-2",
    "--warmup-ratio",
    "0",
];

/// The same on SQuAD 2.0: windows of 32 tokens.
const FOUR_QA_STEPS: [&str; 8] = [
    "--task",
    "squad_v2",
    "--max-steps",
    "4",
    "--lr",
    "1e-2",
    "--warmup-ratio",
    "0",
];

fn is_head(n: &str) -> bool {
    [
        "classifier.",
        "qa_outputs.",
        "sequence_summary.",
        "logits_proj.",
    ]
    .iter()
    .any(|p| n.starts_with(p))
}

/// (flags, which tensors may change, the largest share of them that may change, whether
/// the method also trains everything outside the layers fully: Child-Tuning's optimizer
/// runs over every parameter, its masks only on the layers).
type Row = (&'static [&'static str], fn(&str) -> bool, f64, bool);

/// A task type: its data, its four steps, the dev metric `peft eval` must reproduce.
struct Task {
    write: fn(&Path),
    steps: [&'static str; 8],
    metric: &'static str,
}

const RTE: Task = Task {
    write: |d| write_rte(d, 48, 16),
    steps: FOUR_STEPS,
    metric: "accuracy",
};

const SQUAD_V2: Task = Task {
    write: |d| write_squad(d, "v2.0", 24, 12),
    steps: FOUR_QA_STEPS,
    metric: "f1",
};

/// Every model family the methods run on: BERT, RoBERTa, ELECTRA, DeBERTa v3 and v1,
/// XLNet.
const FAMILIES: [&str; 6] = [
    "tiny-bert",
    "tiny-roberta",
    "tiny-electra",
    "tiny-deberta-v2",
    "tiny-deberta",
    "tiny-xlnet",
];

/// Every method on every model family and task type (classification, question
/// answering).
#[test]
fn every_method_trains_only_what_it_selects() {
    for family in FAMILIES {
        every_method_on(family, &RTE);
    }
}

#[test]
fn every_method_trains_only_what_it_selects_on_squad() {
    for family in FAMILIES {
        every_method_on(family, &SQUAD_V2);
    }
}

/// Outside the encoder's layers, not the head: embeddings (XLNet's `word_embedding`),
/// ELECTRA's projection after them, the pooler, DeBERTa's relative embeddings and their
/// LayerNorm.
fn beside_layers(n: &str) -> bool {
    [
        "embeddings.",
        "word_embedding.",
        "embeddings_project.",
        "pooler.",
        "encoder.rel_embeddings.",
        "encoder.LayerNorm.",
    ]
    .iter()
    .any(|p| n.starts_with(p))
}

fn every_method_on(family: &str, task: &Task) {
    let tmp = tempfile::tempdir().unwrap();
    (task.write)(tmp.path());
    let model = fixture(family);
    // By canonical name (no bert./roberta./electra. prefix), as runs save them.
    let (_, base) = peft::model::read_checkpoint(Path::new(&model)).unwrap();
    let table: &[Row] = &[
        (&["--method", "layernorm"], is_ln, 1.0, false),
        (
            &["--method", "fisher-layernorm", "--fraction", "0.2"],
            is_ln,
            0.2,
            false,
        ),
        (
            &[
                "--method",
                "fisher-layernorm",
                "--fraction",
                "0.2",
                "--fisher-batch-mean",
                "8",
            ],
            is_ln,
            0.2,
            false,
        ),
        (
            &["--method", "random-layernorm", "--fraction", "0.2"],
            is_ln,
            0.2,
            false,
        ),
        (
            &["--method", "random", "--fraction", "0.1"],
            |n| !is_head(n),
            0.1,
            false,
        ),
        // Without weight decay Child-Tuning D's masked-out elements never move (their
        // moments stay zero); with it they decay (next test).
        (
            &[
                "--method",
                "child-d",
                "--reserve",
                "0.3",
                "--weight-decay",
                "0",
            ],
            in_layers,
            0.3,
            true,
        ),
        (
            &["--method", "child-f", "--reserve", "0.3"],
            in_layers,
            1.0,
            true,
        ),
    ];
    for (i, (flags, pick, share, beside)) in table.iter().enumerate() {
        let out = tmp.path().join(format!("run{i}"));
        let mut args = task.steps.to_vec();
        args.extend_from_slice(flags);
        train(&model, tmp.path(), &out, &args);
        let trained = tensors(&out.join("last.safetensors"));
        let (moved, total) = changed(&trained, &base, pick);
        assert!(moved > 0, "{family} {flags:?}: nothing moved");
        let limit = (share * total as f64).round() as usize;
        assert!(
            moved <= limit,
            "{family} {flags:?}: {moved} of {total} elements moved, at most {limit} may"
        );
        // Nothing outside the selection moved (frozen tensors are not even saved): the
        // embeddings, pooler and relative embeddings only under Child-Tuning.
        for name in trained.keys() {
            assert!(
                pick(name) || is_head(name) || (*beside && beside_layers(name)),
                "{family} {flags:?}: {name} was trained"
            );
        }
        let info: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        let counted = info["trainable_params"].as_u64().unwrap() as usize;
        if *share < 1.0 && !flags.contains(&"child-f") {
            let head: usize = trained
                .iter()
                .filter(|(n, _)| !pick(n))
                .map(|(_, t)| t.elem_count())
                .sum();
            assert_eq!(counted, limit + head, "{flags:?}: trainable count");
        }
        let m = metrics(&out);
        let best = m.iter().find(|r| r["best"].as_bool().unwrap()).unwrap()["dev"]["dev"]
            [task.metric]
            .as_f64()
            .unwrap();
        assert_eq!(
            eval_metric(&out, task.metric),
            best,
            "{family} {flags:?}: eval differs"
        );
    }
}

/// Child-Tuning D as its reference optimizer runs it: an encoder-layer element outside
/// the Fisher mask gets no gradient, but weight decay still shrinks it, by the same factor
/// for every such decayed weight; biases and LayerNorm (no decay) outside it never move.
#[test]
fn child_d_decays_masked_out_weights_as_its_reference() {
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 48, 16);
    let model = fixture("tiny-bert");
    let base = tensors(&Path::new(&model).join("model.safetensors"));
    let out = tmp.path().join("run");
    let mut args = FOUR_STEPS.to_vec();
    args.extend_from_slice(&[
        "--method",
        "child-d",
        "--reserve",
        "0.3",
        "--weight-decay",
        "0.1",
    ]);
    train(&model, tmp.path(), &out, &args);
    let trained = tensors(&out.join("last.safetensors"));
    let (mut ratios, mut still, mut moved_no_decay) = (Vec::new(), 0, 0);
    for (name, t) in trained.iter().filter(|(n, _)| in_layers(n)) {
        let b = base[&format!("bert.{name}")]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let a = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let decayed = !(name.ends_with(".bias") || is_ln(name));
        for (x, y) in a.iter().zip(&b) {
            if x.to_bits() == y.to_bits() {
                still += 1;
            } else if decayed && y.abs() > 1e-3 {
                ratios.push(x / y);
            } else if !decayed {
                moved_no_decay += 1;
            }
        }
    }
    // Most decayed weights are outside the mask: they all shrank by one factor.
    ratios.sort_by(f32::total_cmp);
    let mode = ratios[ratios.len() / 2];
    let same = ratios.iter().filter(|r| (**r - mode).abs() < 1e-6).count();
    assert!(mode < 1.0 && mode > 0.99, "decay factor {mode}");
    assert!(
        same as f64 > 0.5 * ratios.len() as f64,
        "{same} of {} weights shrank by {mode}",
        ratios.len()
    );
    assert!(moved_no_decay > 0 && still > 0, "{moved_no_decay} {still}");
}

#[test]
fn fisher_command_writes_ranked_components_and_a_global_fisher() {
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 12, 4);
    write_stsb(tmp.path(), 12, 4);
    let data = tmp.path().to_str().unwrap();
    let model = fixture("tiny-bert");
    let one = tmp.path().join("f-rte");
    let text = ok(peft(&[
        "fisher",
        "--model",
        &model,
        "--data-dir",
        data,
        "--task",
        "rte",
        // tiny-bert holds 64 positions; the default is 128.
        "--max-seq-len",
        "32",
        "--output",
        one.to_str().unwrap(),
    ]));
    assert!(
        text.contains("output LayerNorm") && text.contains("rank"),
        "{text}"
    );
    let f = tensors(&one.join("fisher.safetensors"));
    assert_eq!(f["encoder.layer.1.output.LayerNorm.weight"].dims(), &[32]);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(one.join("components.json")).unwrap())
            .unwrap();
    assert!(json["components"].as_array().unwrap().len() > 20);

    let glob = tmp.path().join("f-global");
    ok(peft(&[
        "fisher",
        "--model",
        &model,
        "--data-dir",
        data,
        "--tasks",
        "rte,stsb",
        "--global",
        "--samples",
        "6",
        "--max-seq-len",
        "32",
        "--output",
        glob.to_str().unwrap(),
    ]));
    let g = tensors(&glob.join("fisher.safetensors"));
    let total: f32 = g
        .values()
        .map(|t| t.sum_all().unwrap().to_scalar::<f32>().unwrap())
        .sum();
    assert!(
        (total - 1.0).abs() < 1e-3,
        "normalised tasks average to total 1, got {total}"
    );

    // A global Fisher file drives fisher-layernorm for any task.
    let out = tmp.path().join("run");
    train(
        &model,
        tmp.path(),
        &out,
        &[
            "--task",
            "stsb",
            "--method",
            "fisher-layernorm",
            "--fraction",
            "0.5",
            "--fisher",
            glob.join("fisher.safetensors").to_str().unwrap(),
            "--max-steps",
            "2",
        ],
    );
    assert!(out.join("trainable.safetensors").is_file());
}

#[test]
fn diff_ranks_what_training_moved() {
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 16, 4);
    let model = fixture("tiny-bert");
    let out = tmp.path().join("run");
    train(
        &model,
        tmp.path(),
        &out,
        &[
            "--task",
            "rte",
            "--method",
            "layernorm",
            "--max-steps",
            "3",
            "--lr",
            "1e-2",
            "--warmup-ratio",
            "0",
        ],
    );
    let text = ok(peft(&[
        "diff",
        "--checkpoint",
        out.to_str().unwrap(),
        "--json",
    ]));
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!rows.is_empty());
    for r in &rows {
        let c = r["component"].as_str().unwrap();
        assert!(c.contains("LayerNorm"), "layernorm run moved {c}");
        assert!(r["relative_change"].as_f64().unwrap() > 0.0, "{r}");
    }
    // Sorted by relative change, largest first.
    let rel: Vec<f64> = rows
        .iter()
        .map(|r| r["relative_change"].as_f64().unwrap())
        .collect();
    assert!(rel.windows(2).all(|w| w[0] >= w[1]));
}

/// LoRA, DoRA, InA, IA3 and LoReFT on RoBERTa, ELECTRA and DeBERTa as on BERT, and on
/// SQuAD on all: only the adapters and the head train, B leaves zero (IA3's vectors leave
/// one), and `peft eval` reproduces the run. The
/// default targets (query, value; InA's query, key, value) are DeBERTa v2's `query_proj`
/// and so on; DeBERTa v1 fuses those into `in_proj`, so it takes the dense layers.
#[test]
fn adapters_train_on_every_family() {
    const DENSE: &str = "attention.output.dense,intermediate.dense,output.dense";
    let families: [(&str, &Task, Option<&str>); 9] = [
        ("tiny-roberta", &RTE, None),
        ("tiny-electra", &RTE, None),
        ("tiny-deberta-v2", &RTE, None),
        ("tiny-deberta", &RTE, Some(DENSE)),
        ("tiny-bert", &SQUAD_V2, None),
        ("tiny-roberta", &SQUAD_V2, None),
        ("tiny-electra", &SQUAD_V2, None),
        ("tiny-deberta-v2", &SQUAD_V2, None),
        ("tiny-deberta", &SQUAD_V2, Some(DENSE)),
    ];
    for (family, task, targets) in families {
        let tmp = tempfile::tempdir().unwrap();
        (task.write)(tmp.path());
        let model = fixture(family);
        for method in ["lora", "dora", "ina", "ia3", "loreft"] {
            let out = tmp.path().join(method);
            let (mark, moves) = match method {
                "ia3" => (".ia3_l", "ia3_l"),
                // LoReFT's tensors start random: its check is that the run scores as eval.
                "loreft" => (".loreft.", ""),
                _ => (".lora_", "lora_B.weight"),
            };
            let mut args = task.steps.to_vec();
            args.extend_from_slice(&["--method", method]);
            let flag = format!("--{}-targets", method.replace("dora", "lora"));
            if let (Some(t), false) = (targets, method == "loreft") {
                args.extend_from_slice(&[&flag, t]);
            }
            if method == "loreft" {
                args.extend_from_slice(&["--loreft-positions", "f1+l1"]);
            }
            train(&model, tmp.path(), &out, &args);
            let trained = tensors(&out.join("last.safetensors"));
            for name in trained.keys() {
                assert!(
                    name.contains(mark) || is_head(name),
                    "{family} {method}: {name} was trained"
                );
            }
            // LoRA's B starts at zero, IA3's vectors at one: both must have left.
            let start = if method == "ia3" { 1.0 } else { 0.0 };
            let moved = trained
                .iter()
                .filter(|(n, _)| n.ends_with(moves))
                .filter(|(_, t)| crate::common::max_abs(&(*t - start).unwrap()) > 0.0)
                .count();
            assert!(
                moved > 0 || method == "loreft",
                "{family} {method}: nothing left its start"
            );
            assert!(
                trained.keys().any(|n| n.contains(mark)),
                "{family} {method}: no adapter tensors"
            );
            let m = metrics(&out);
            let best = m.iter().find(|r| r["best"].as_bool().unwrap()).unwrap();
            let score = best["dev"]["dev"][task.metric].as_f64().unwrap();
            assert_eq!(
                eval_metric(&out, task.metric),
                score,
                "{family} {method}: eval differs"
            );
        }
    }
}

/// DeBERTa v1 fuses query, key and value into one `in_proj`: the adapters' default
/// targets become PEFT's defaults there (LoRA `in_proj`, IA3 `in_proj` and
/// `output.dense`), recorded so; a projection named alone is refused by name, as is
/// `in_proj` on a family without it, before anything trains.
#[test]
fn adapters_on_deberta_v1_take_peft_defaults_and_refuse_single_projections() {
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 16, 8);
    let train = |model: &str, dir: &str, extra: &[&str]| {
        let out = tmp.path().join(dir);
        let mut args = vec![
            "train",
            "--model",
            model,
            "--data-dir",
            tmp.path().to_str().unwrap(),
            "--output-dir",
            out.to_str().unwrap(),
            "--task",
            "rte",
            "--max-steps",
            "1",
            "--max-seq-len",
            "16",
        ];
        args.extend_from_slice(extra);
        (peft(&args), out)
    };
    let v1 = fixture("tiny-deberta");
    for (method, key, want) in [
        ("lora", "lora", vec!["in_proj"]),
        ("ia3", "ia3", vec!["in_proj", "output.dense"]),
    ] {
        let (run, out) = train(&v1, method, &["--method", method]);
        assert!(run.status.success(), "{method}: {}", stderr(&run));
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(
            config["train"]["method"][key]["targets"],
            serde_json::json!(want)
        );
        let names = tensors(&out.join("last.safetensors"));
        assert!(
            names.keys().any(|n| n.contains("attention.self.in_proj.")),
            "{method}: {:?}",
            names.keys()
        );
        // A sweep run again finds its finished seed under the same (fitted) settings.
        let sweep = format!("{method}-sweep");
        for second in [false, true] {
            let (run, _) = train(&v1, &sweep, &["--method", method, "--seeds", "1"]);
            assert!(run.status.success(), "{method}: {}", stderr(&run));
            let shown = String::from_utf8_lossy(&run.stdout);
            assert_eq!(
                shown.contains("with these settings: kept"),
                second,
                "{shown}"
            );
        }
    }
    let (run, _) = train(&v1, "q", &["--method", "lora", "--lora-targets", "query"]);
    assert_eq!(run.status.code(), Some(2), "{}", stderr(&run));
    let err = stderr(&run);
    assert!(
        err.contains("adapter target `query`") && err.contains("in_proj"),
        "{err}"
    );
    let (run, _) = train(
        &fixture("tiny-bert"),
        "b",
        &["--method", "lora", "--lora-targets", "in_proj"],
    );
    assert_eq!(run.status.code(), Some(2), "{}", stderr(&run));
    assert!(stderr(&run).contains("only DeBERTa v1"), "{}", stderr(&run));
}

/// (method, what its non-adapter part trains, the adapter tensors' mark)
type UnionRow = (&'static str, fn(&str) -> bool, &'static str);

/// A union of methods trains what each part trains, on two families: LoRA with every
/// LayerNorm (what the InA authors do for RoBERTa and SQuAD), InA with the biases. Only
/// those tensors (and the head) move; no PEFT export claims to hold the run; `peft eval`
/// reproduces it.
#[test]
fn unions_of_methods_train_what_each_part_trains() {
    for family in ["tiny-bert", "tiny-roberta"] {
        let tmp = tempfile::tempdir().unwrap();
        write_rte(tmp.path(), 48, 16);
        let model = fixture(family);
        let (_, base) = peft::model::read_checkpoint(Path::new(&model)).unwrap();
        let rows: [UnionRow; 2] = [
            ("lora+layernorm", is_ln, ".lora_"),
            ("ina+bitfit", |n: &str| n.ends_with(".bias"), ".lora_"),
        ];
        for (method, part, adapter) in rows {
            let out = tmp.path().join(method);
            let mut args = FOUR_STEPS.to_vec();
            args.extend_from_slice(&["--method", method]);
            train(&model, tmp.path(), &out, &args);
            let trained = tensors(&out.join("last.safetensors"));
            for name in trained.keys() {
                assert!(
                    name.contains(adapter) || part(name) || is_head(name),
                    "{family} {method}: {name} was trained"
                );
            }
            assert!(
                trained.keys().any(|n| n.contains(adapter)),
                "{method}: no adapter"
            );
            let (moved, total) = changed(&trained, &base, part);
            assert!(
                moved > total / 2,
                "{family} {method}: {moved} of {total} moved"
            );
            assert!(
                !out.join("adapter_config.json").exists(),
                "{method}: exported"
            );
            let best = metrics(&out)
                .into_iter()
                .find(|r| r["best"].as_bool().unwrap())
                .unwrap()["dev"]["dev"]["accuracy"]
                .as_f64()
                .unwrap();
            assert_eq!(eval_accuracy(&out), best, "{family} {method}");
        }
        let o = peft(&[
            "train", "--model", &model, "--task", "rte", "--method", "lora+ina",
        ]);
        assert_eq!(o.status.code(), Some(2));
        assert!(stderr(&o).contains("one adapter kind"), "{}", stderr(&o));
    }
}

/// LoRA+ through the binary: one step from Adam's zero moments moves each element by
/// about the learning rate, so with `--lora-plus-ratio 16` the B matrices and the head's
/// bias (one-dimensional, PEFT's group B) move 16 times as far as without, A and the
/// head's weight as far; the ratio is recorded with the run.
#[test]
fn lora_plus_steps_b_at_its_ratio() {
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 16, 8);
    let model = fixture("tiny-bert");
    let step = |name: &str, extra: &[&str]| {
        let out = tmp.path().join(name);
        let mut args = vec!["--task", "rte", "--method", "lora", "--max-steps", "1"];
        args.extend(["--lr", "1e-3", "--warmup-ratio", "0", "--weight-decay", "0"]);
        args.extend_from_slice(extra);
        train(&model, tmp.path(), &out, &args);
        (tensors(&out.join("last.safetensors")), out)
    };
    let (plain, _) = step("plain", &[]);
    let (plus, out) = step("plus", &["--lora-plus-ratio", "16"]);
    // How far a step moved them: from the checkpoint's values, or from zero for a new B
    // and a new head's bias.
    let (_, base) = peft::model::read_checkpoint(Path::new(&model)).unwrap();
    let moved = |t: &HashMap<String, Tensor>, part: &str| -> f32 {
        let mut most = 0f32;
        for (k, v) in t.iter().filter(|(k, _)| k.contains(part)) {
            let d = match base.get(k).filter(|b| b.dims() == v.dims()) {
                Some(b) => max_abs_diff(v, b),
                None => max_abs(v),
            };
            most = most.max(d);
        }
        assert!(most > 0.0, "{part} did not move");
        most
    };
    for (part, ratio) in [("lora_B", 16.0), ("classifier.bias", 16.0)] {
        let (a, b) = (moved(&plain, part), moved(&plus, part));
        assert!((b / a - ratio).abs() < 1e-2, "{part}: {b} / {a}");
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["train"]["method"]["lora"]["plus_ratio"], 16.0);
}
