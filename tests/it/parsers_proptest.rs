//! Property tests for what reads user files: the GLUE TSV reader and the TOML config
//! parser. Whatever the bytes, they return a value or a user error (exit 2), never panic;
//! and well-formed rows come back exactly as written. The case count is kept small for
//! the normal suite; PROPTEST_CASES raises it for a longer fuzzing run. Also the real GLUE
//! files, where PEFT_GLUE_DIR points at them.

use std::path::Path;

use peft::data::read_split;
use peft::data::tasks::{all, task, Label, Problem};
use peft::error::is_user_error;
use peft::settings::Overrides;
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(128),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn write(dir: &Path, task_dir: &str, split: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir.join(task_dir)).unwrap();
    std::fs::write(dir.join(task_dir).join(format!("{split}.tsv")), bytes).unwrap();
}

/// Rows biased towards the shapes of real files: tabs, newlines, quotes, a BOM, bad UTF-8.
fn tsv_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"\t".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\"".to_vec()),
        Just(b"\xef\xbb\xbf".to_vec()),
        Just(b"\xff".to_vec()),
        Just(b"entailment".to_vec()),
        Just(b"not_entailment".to_vec()),
        Just(b"index\tsentence1\tsentence2\tlabel\n".to_vec()),
        Just(b"3.5".to_vec()),
        Just(b"1".to_vec()),
        "[a-z ]{0,8}".prop_map(|s| s.into_bytes()),
        proptest::collection::vec(any::<u8>(), 0..6),
    ];
    proptest::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_bytes_give_rows_or_a_user_error(bytes in tsv_bytes(), which in 0usize..4) {
        let (name, dir) = [("rte", "RTE"), ("cola", "CoLA"), ("stsb", "STS-B"), ("qqp", "QQP")][which];
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), dir, "train", &bytes);
        match read_split(task(name).unwrap(), tmp.path(), "train") {
            Ok(rows) => prop_assert!(rows.len() <= bytes.len()),
            Err(e) => prop_assert!(is_user_error(&e), "not a user error: {e:#}"),
        }
    }

    #[test]
    fn well_formed_rte_rows_come_back_as_written(
        rows in proptest::collection::vec(("[a-zA-Z\"' .,]{1,20}", "[a-zA-Z\"' .,]{1,20}", any::<bool>()), 1..20)
    ) {
        let mut text = String::from("index\tsentence1\tsentence2\tlabel\n");
        for (i, (a, b, yes)) in rows.iter().enumerate() {
            let label = if *yes { "entailment" } else { "not_entailment" };
            text.push_str(&format!("{i}\t{a}\t{b}\t{label}\n"));
        }
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "RTE", "train", text.as_bytes());
        let got = read_split(task("rte").unwrap(), tmp.path(), "train").unwrap();
        prop_assert_eq!(got.len(), rows.len());
        for (e, (a, b, yes)) in got.iter().zip(&rows) {
            prop_assert_eq!(&e.text_a, a);
            prop_assert_eq!(e.text_b.as_deref(), Some(b.as_str()));
            // GLUE's label ids: entailment 0, not_entailment 1.
            prop_assert!(matches!(e.label, Label::Class(c) if c == u32::from(!*yes)));
        }
    }

    #[test]
    fn any_config_text_parses_or_names_the_problem(
        lines in proptest::collection::vec(prop_oneof![
            Just("lr = 1e-3".to_string()),
            Just("epochs = 3".to_string()),
            Just("method = \"layernorm\"".to_string()),
            Just("method = \"nope\"".to_string()),
            Just("lora_targets = [\"query\", \"value\"]".to_string()),
            Just("[table]".to_string()),
            "[a-z_]{1,12} = [0-9]{1,3}",
            "[ -~]{0,30}",
        ], 0..8)
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("c.toml");
        std::fs::write(&path, lines.join("\n")).unwrap();
        match Overrides::from_toml_file(&path) {
            Ok(o) => {
                // What parses round-trips through the resolved config's own TOML.
                let again: Overrides = toml::from_str(&toml::to_string(&o).unwrap()).unwrap();
                prop_assert_eq!(format!("{again:?}"), format!("{o:?}"));
            }
            Err(e) => {
                prop_assert!(is_user_error(&e));
                prop_assert!(e.to_string().contains("c.toml"), "{e}");
            }
        }
    }
}

/// Row and label counts of the real files, from `shared/data/glue/SOURCES.md`
/// (official row counts only where no copy was available to count labels).
type LabelCounts = &'static [(&'static str, usize)];
const EXPECTED: &[(&str, &str, usize, LabelCounts)] = &[
    ("cola", "train", 8551, &[("1", 6023), ("0", 2528)]),
    ("cola", "dev", 1043, &[("1", 721), ("0", 322)]),
    ("sst2", "train", 67349, &[("1", 37569), ("0", 29780)]),
    ("sst2", "dev", 872, &[("1", 444), ("0", 428)]),
    ("mrpc", "train", 3668, &[("1", 2474), ("0", 1194)]),
    ("mrpc", "dev", 408, &[("1", 279), ("0", 129)]),
    ("stsb", "train", 5749, &[]),
    ("stsb", "dev", 1500, &[]),
    ("qqp", "train", 363846, &[]),
    ("qqp", "dev", 40430, &[]),
    ("mnli", "train", 392702, &[]),
    ("mnli", "dev_matched", 9815, &[]),
    ("mnli", "dev_mismatched", 9832, &[]),
    ("qnli", "train", 104743, &[]),
    (
        "qnli",
        "dev",
        5463,
        &[("entailment", 2702), ("not_entailment", 2761)],
    ),
    (
        "rte",
        "train",
        2490,
        &[("entailment", 1249), ("not_entailment", 1241)],
    ),
    (
        "rte",
        "dev",
        277,
        &[("entailment", 146), ("not_entailment", 131)],
    ),
    ("wnli", "train", 635, &[("0", 323), ("1", 312)]),
    ("wnli", "dev", 71, &[("0", 40), ("1", 31)]),
];

/// Gated on PEFT_GLUE_DIR (`crate::common::data_dir`): the real GLUE files read to the official
/// row and label counts.
#[test]
fn real_glue_files_when_available() {
    let Some(root) = crate::common::data_dir("PEFT_GLUE_DIR") else {
        return;
    };
    let root = root.as_path();
    let required = std::env::var_os("PEFT_REQUIRE_DATA").is_some_and(|v| v == "1");
    let mut checked = 0;
    let mut counted = Vec::new();
    for spec in all() {
        for split in spec.splits() {
            if !spec.split_path(root, split).exists() {
                continue;
            }
            let examples = read_split(spec, root, split).unwrap();
            checked += 1;
            counted.push((spec.name, split));
            let Some((.., rows, labels)) = EXPECTED
                .iter()
                .find(|(t, s, ..)| *t == spec.name && *s == split)
            else {
                continue;
            };
            assert_eq!(examples.len(), *rows, "{} {split}", spec.name);
            let Problem::Classification { labels: names } = spec.problem else {
                assert!(examples.iter().all(|e| matches!(e.label, Label::Score(_))));
                continue;
            };
            for (name, count) in labels.iter() {
                let id = names.iter().position(|n| n == name).unwrap() as u32;
                let n = examples
                    .iter()
                    .filter(|e| e.label == Label::Class(id))
                    .count();
                assert_eq!(n, *count, "{} {split} label {name}", spec.name);
            }
        }
    }
    // The files the shared GLUE copy carries (its SOURCES.md: QQP, MNLI and QNLI's train
    // split are not in it) must be there under PEFT_REQUIRE_DATA: a missing one is a
    // skipped check, which there fails instead of passing in silence. The others are
    // checked where present and named where not.
    const SHARED: &[&str] = &["cola", "sst2", "mrpc", "stsb", "rte", "wnli"];
    for (t, split, ..) in EXPECTED {
        let found = counted.iter().any(|(n, s)| n == t && s == split);
        let carried = SHARED.contains(t) || (*t == "qnli" && *split == "dev");
        if !found {
            assert!(
                !(required && carried),
                "{t} {split}: not under {}",
                root.display()
            );
            eprintln!("{t} {split}: not under {}, not checked", root.display());
        }
    }
    eprintln!("checked {checked} GLUE files under {}", root.display());
    assert!(checked > 0, "no GLUE files found under {}", root.display());

    // CoLA dev ends without a newline: its last row must still be whole.
    if let Ok(cola) = read_split(task("cola").unwrap(), root, "dev") {
        let first = &cola[0];
        assert_eq!(
            first.text_a,
            "The sailors rode the breeze clear of the rocks."
        );
        let last = &cola[1042];
        assert_eq!(
            (last.id.as_str(), last.text_a.as_str()),
            ("1042", "John talked to Bill about himself.")
        );
    }
}
