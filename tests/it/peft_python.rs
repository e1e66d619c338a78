//! Hugging Face PEFT itself loads what `peft train` exports: for each method with a PEFT
//! format, a short run on the tiny BERT, then `scripts/peft_roundtrip.py predict`, which
//! loads the run directory with `PeftModel.from_pretrained` over the base and checks its
//! probabilities against `peft predict` within 1e-5 (it exits non-zero otherwise).
//!
//! Needs a Python with torch, transformers and peft: `PEFT_REFERENCE_PYTHON`.
//! `scripts/test.sh` sets it, with `PEFT_REQUIRE_REFERENCE=1`, when `../venv` has one (the
//! reference venv of the developers' guide); then a missing or failing interpreter fails
//! the test. Elsewhere (CI keeps venvs out) it is skipped, saying so.

use std::path::PathBuf;
use std::process::Command;

use crate::common::*;

fn reference_python() -> Option<PathBuf> {
    let required = std::env::var_os("PEFT_REQUIRE_REFERENCE").is_some_and(|v| v == "1");
    let Some(python) = std::env::var_os("PEFT_REFERENCE_PYTHON").map(PathBuf::from) else {
        assert!(
            !required,
            "PEFT_REQUIRE_REFERENCE=1 but PEFT_REFERENCE_PYTHON is not set"
        );
        eprintln!("PEFT_REFERENCE_PYTHON is not set: skipping the check by Python PEFT");
        return None;
    };
    assert!(
        python.exists(),
        "PEFT_REFERENCE_PYTHON={} does not exist",
        python.display()
    );
    Some(python)
}

#[test]
fn python_peft_loads_every_export_to_our_probabilities() {
    let Some(python) = reference_python() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    write_rte(tmp.path(), 24, 8);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/peft_roundtrip.py");
    let runs: &[(&str, &[&str])] = &[
        (
            "lora-rslora",
            &["--method", "lora", "--lora-rslora", "--lora-r", "4"],
        ),
        (
            "lora-pissa",
            &["--method", "lora", "--lora-init", "pissa", "--lora-r", "4"],
        ),
        ("dora", &["--method", "dora", "--lora-r", "4"]),
        ("ia3", &["--method", "ia3"]),
        ("layernorm", &["--method", "layernorm"]),
        ("hra", &["--method", "hra", "--hra-r", "4"]),
        ("vera", &["--method", "vera", "--vera-r", "8"]),
        (
            "prompt",
            &["--method", "prompt", "--num-virtual-tokens", "4"],
        ),
        (
            "adalora",
            &[
                "--method",
                "adalora",
                "--adalora-init-r",
                "4",
                "--adalora-target-r",
                "2",
                "--adalora-tinit",
                "1",
            ],
        ),
    ];
    for (name, method) in runs {
        let out = tmp.path().join(name);
        let args = [
            &["--task", "rte", "--max-steps", "4", "--lr", "1e-2"][..],
            method,
        ]
        .concat();
        train(&fixture("tiny-bert"), tmp.path(), &out, &args);
        let o = Command::new(&python)
            .arg(&script)
            .args(["predict", out.to_str().unwrap(), env!("CARGO_BIN_EXE_peft")])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success() && said.contains("max |probability diff|"),
            "{name}: {said}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}
