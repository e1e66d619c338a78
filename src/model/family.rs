//! What the names of a checkpoint say about its parts, for every family: which tensors
//! are a task head. One place, so that methods (the head always trains), `merge` (heads
//! sit beside the encoder's prefix), `diff` (a head is its own component) and the PEFT
//! format (heads go to `modules_to_save`) agree.

/// The task heads' prefixes: a classifier (BERT's `classifier`, RoBERTa's and ELECTRA's
/// `classifier.dense`/`classifier.out_proj`, DeBERTa's `classifier`) and the span head of
/// question answering.
pub const HEAD_PREFIXES: [&str; 2] = ["classifier.", "qa_outputs."];

/// Whether a canonical tensor name belongs to a task head.
pub fn is_head(name: &str) -> bool {
    HEAD_PREFIXES.iter().any(|p| name.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_of_every_family() {
        for n in [
            "classifier.weight",
            "classifier.out_proj.bias",
            "classifier.dense.weight",
            "qa_outputs.weight",
        ] {
            assert!(is_head(n), "{n}");
        }
        for n in ["pooler.dense.weight", "encoder.layer.0.output.dense.weight"] {
            assert!(!is_head(n), "{n}");
        }
    }
}
