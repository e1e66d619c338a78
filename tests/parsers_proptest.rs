//! Property tests for what reads user files: the GLUE TSV reader and the TOML config
//! parser. Whatever the bytes, they return a value or a user error (exit 2), never panic;
//! and well-formed rows come back exactly as written. The case count is kept small for
//! the normal suite; PROPTEST_CASES raises it for a longer fuzzing run.

use std::path::Path;

use peft::data::tasks::{read_split, task, Label};
use peft::error::is_user_error;
use peft::train::config::Overrides;
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
