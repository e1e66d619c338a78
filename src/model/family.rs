//! A model family as one descriptor: its `model_type`, where transformers puts its
//! encoder's weights, its task classes, whether its classifier reads the pooler, how it
//! names the projections adapters wrap, PEFT's default adapter targets for it, and which
//! tensors are a task head. One place, so that the model (pooler), methods (the head always
//! trains), `merge` (prefixes, the pooler), `diff` (a head is its own component) and the
//! PEFT format (target names, `modules_to_save`) agree.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Bert,
    Roberta,
    /// ELECTRA's discriminator: BERT's encoder, embeddings that may be narrower than it
    /// (with a projection between), and a RoBERTa-like head with GELU.
    Electra,
    /// DeBERTa v1 (microsoft/deberta-base, -large): disentangled attention over relative
    /// positions, query, key and value fused into one `in_proj`.
    Deberta,
    /// DeBERTa v2 and v3 (microsoft/deberta-v3-base): the same attention with separate
    /// `query_proj`, `key_proj`, `value_proj` and log-bucketed relative positions.
    #[serde(rename = "deberta-v2")]
    DebertaV2,
    /// XLNet (xlnet/xlnet-base-cased, -large-cased) as fine-tuning runs it: the content
    /// stream of relative positional attention, the summary of the last token as its
    /// classifier (`model::xlnet`).
    Xlnet,
}

impl Arch {
    /// Its descriptor ([`super::family::FAMILIES`]).
    pub fn family(self) -> &'static Family {
        FAMILIES
            .iter()
            .find(|f| f.arch == self)
            .unwrap_or(&FAMILIES[0])
    }

    /// The prefix transformers puts before encoder weights in task models.
    pub fn prefix(self) -> &'static str {
        self.family().prefix
    }

    pub fn is_deberta(self) -> bool {
        matches!(self, Arch::Deberta | Arch::DebertaV2)
    }

    /// transformers' class-name stem: `{stem}ForSequenceClassification`.
    pub fn class_stem(self) -> &'static str {
        self.family().class_stem
    }

    /// Whether the family's sequence classifier reads the pooler. `Model` loads the pooler
    /// by this, and `merge` keeps it by this.
    pub fn classifier_reads_pooler(self) -> bool {
        self.family().classifier_reads_pooler
    }

    /// The name transformers' task models (`*ForSequenceClassification`,
    /// `*ForQuestionAnswering`) give a canonical tensor: the encoder's under the family's
    /// prefix; the head's as it is, and so a pooler that sits beside the encoder.
    pub fn task_model_name(self, canonical: &str) -> String {
        let beside = is_head(canonical)
            || (self.family().pooler_beside_encoder && canonical.starts_with("pooler."));
        match beside {
            true => canonical.to_string(),
            false => format!("{}.{canonical}", self.prefix()),
        }
    }

    /// The module an adapter target wraps in this family ([`Family::adapter_module`]).
    pub fn adapter_module(self, target: &str) -> Result<String, String> {
        self.family().adapter_module(target)
    }
}

/// How a family names the attention's query, key and value projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Projections {
    /// `attention.self.{query,key,value}` (BERT, RoBERTa, ELECTRA).
    Separate,
    /// `attention.self.{query,key,value}_proj` (DeBERTa v2 and v3).
    Suffixed,
    /// One fused `attention.self.in_proj` (DeBERTa v1): adapters wrap it whole (target
    /// `in_proj`, as PEFT does), never one projection of it.
    Fused,
    /// XLNet's `rel_attn.q`, `k`, `v`, `o`: parameters (d_model, heads, d_head) used in
    /// einsums, not linear layers, so no adapter wraps them.
    Parameters,
}

/// Everything about a family that is not the arithmetic of its layers.
#[derive(Debug)]
pub struct Family {
    pub arch: Arch,
    /// As people write it, for messages.
    pub name: &'static str,
    /// config.json's `model_type`.
    pub model_type: &'static str,
    /// The prefix transformers puts before encoder weights in task models.
    pub prefix: &'static str,
    /// transformers' class-name stem: `{stem}ForSequenceClassification`.
    pub class_stem: &'static str,
    /// Its sequence classifier reads the pooler (BERT's and DeBERTa's do; RoBERTa's and
    /// ELECTRA's classify the first token themselves). No question-answering head does.
    pub classifier_reads_pooler: bool,
    /// Its pooler sits beside the encoder in task models (`pooler.dense`, where BERT has
    /// `bert.pooler.dense`).
    pub pooler_beside_encoder: bool,
    pub projections: Projections,
    /// PEFT's default `target_modules` for LoRA and IA3 (its
    /// `TRANSFORMERS_MODELS_TO_*_TARGET_MODULES_MAPPING`), as PEFT names them; empty where
    /// PEFT has none.
    pub peft_lora_targets: &'static [&'static str],
    pub peft_ia3_targets: &'static [&'static str],
    /// Its sequence classifier reads the last token (XLNet's `<sep> <cls>` close a
    /// sequence), not the first; so does a question's "no answer" (the `<cls>` token).
    pub cls_last: bool,
    /// What its LayerNorm modules are called (PEFT's LN tuning targets them by it).
    pub layer_norm: &'static str,
}

/// Every family this crate reads.
pub static FAMILIES: [Family; 6] = [
    Family {
        arch: Arch::Bert,
        name: "BERT",
        model_type: "bert",
        prefix: "bert",
        class_stem: "Bert",
        classifier_reads_pooler: true,
        pooler_beside_encoder: false,
        projections: Projections::Separate,
        peft_lora_targets: &["query", "value"],
        peft_ia3_targets: &["key", "value", "output.dense"],
        cls_last: false,
        layer_norm: "LayerNorm",
    },
    Family {
        arch: Arch::Roberta,
        name: "RoBERTa",
        model_type: "roberta",
        prefix: "roberta",
        class_stem: "Roberta",
        classifier_reads_pooler: false,
        pooler_beside_encoder: false,
        projections: Projections::Separate,
        peft_lora_targets: &["query", "value"],
        peft_ia3_targets: &["key", "value", "output.dense"],
        cls_last: false,
        layer_norm: "LayerNorm",
    },
    Family {
        arch: Arch::Electra,
        name: "ELECTRA",
        model_type: "electra",
        prefix: "electra",
        class_stem: "Electra",
        classifier_reads_pooler: false,
        pooler_beside_encoder: false,
        projections: Projections::Separate,
        peft_lora_targets: &["query", "value"],
        peft_ia3_targets: &[],
        cls_last: false,
        layer_norm: "LayerNorm",
    },
    Family {
        arch: Arch::Deberta,
        name: "DeBERTa v1",
        model_type: "deberta",
        prefix: "deberta",
        class_stem: "Deberta",
        classifier_reads_pooler: true,
        pooler_beside_encoder: true,
        projections: Projections::Fused,
        peft_lora_targets: &["in_proj"],
        peft_ia3_targets: &["in_proj", "output.dense"],
        cls_last: false,
        layer_norm: "LayerNorm",
    },
    Family {
        arch: Arch::DebertaV2,
        name: "DeBERTa v2",
        model_type: "deberta-v2",
        prefix: "deberta",
        class_stem: "DebertaV2",
        classifier_reads_pooler: true,
        pooler_beside_encoder: true,
        projections: Projections::Suffixed,
        peft_lora_targets: &["query_proj", "value_proj"],
        peft_ia3_targets: &["key_proj", "value_proj", "output.dense"],
        cls_last: false,
        layer_norm: "LayerNorm",
    },
    Family {
        arch: Arch::Xlnet,
        name: "XLNet",
        model_type: "xlnet",
        prefix: "transformer",
        class_stem: "XLNet",
        classifier_reads_pooler: false,
        pooler_beside_encoder: false,
        projections: Projections::Parameters,
        // PEFT has no XLNet entry in its default-target tables.
        peft_lora_targets: &[],
        peft_ia3_targets: &[],
        cls_last: true,
        layer_norm: "layer_norm",
    },
];

impl Family {
    /// The family of a config.json `model_type`.
    pub fn of_model_type(model_type: &str) -> Option<&'static Family> {
        FAMILIES.iter().find(|f| f.model_type == model_type)
    }

    /// The module inside an encoder layer that an adapter target (one of
    /// [`super::adapter::TARGETS`], the names users pass: `query`, `output.dense`) wraps.
    pub fn adapter_module(&self, target: &str) -> Result<String, String> {
        if self.projections == Projections::Parameters {
            return Err(format!(
                "adapter target `{target}`: {}'s attention projections q, k, v and o are \
                 parameters of shape (d_model, heads, d_head) read by einsums, not linear \
                 layers, and PEFT has no default targets for it; LoRA, DoRA, InA and IA3 \
                 do not apply to it (full, bitfit, layernorm, the Fisher and random \
                 subsets, top-layers, head and Child-Tuning do)",
                self.name
            ));
        }
        let projection = matches!(target, "query" | "key" | "value");
        match self.projections {
            Projections::Fused if projection => Err(format!(
                "adapter target `{target}`: {} computes query, key and value with one fused \
                 `attention.self.in_proj`, which a {target}-only adapter cannot wrap; target \
                 in_proj (all three, PEFT's default there), attention.output.dense, \
                 intermediate.dense or output.dense",
                self.name
            )),
            Projections::Fused if target == "in_proj" => Ok("attention.self.in_proj".into()),
            _ if target == "in_proj" => Err(format!(
                "adapter target `in_proj`: only DeBERTa v1 fuses its projections into one \
                 in_proj; {} has query, key and value: target those",
                self.name
            )),
            Projections::Suffixed if projection => Ok(format!("attention.self.{target}_proj")),
            _ if projection => Ok(format!("attention.self.{target}")),
            _ => Ok(target.to_string()),
        }
    }
}

/// A sequence classifier's tensors: BERT's and DeBERTa's `classifier`, RoBERTa's and
/// ELECTRA's `classifier.dense`/`classifier.out_proj`.
pub const CLASSIFIER: &str = "classifier.";
/// The span head of question answering, in every family.
pub const SPAN_HEAD: &str = "qa_outputs.";
/// XLNet's classifier: the last token's summary (a d_model → d_model projection, tanh),
/// then `logits_proj`.
pub const SUMMARY: &str = "sequence_summary.";
pub const LOGITS: &str = "logits_proj.";

/// Every family's sequence classifiers' prefixes.
pub const CLASSIFIERS: [&str; 3] = [CLASSIFIER, SUMMARY, LOGITS];

/// The task heads' prefixes.
pub const HEAD_PREFIXES: [&str; 4] = [CLASSIFIER, SPAN_HEAD, SUMMARY, LOGITS];

/// The layers whose rows are a head's outputs (one per label): BERT's and DeBERTa's
/// `classifier`, RoBERTa's and ELECTRA's `classifier.out_proj`, XLNet's `logits_proj`,
/// `qa_outputs`.
pub const HEAD_OUTPUTS: [&str; 4] = [
    "classifier",
    "classifier.out_proj",
    "logits_proj",
    "qa_outputs",
];

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
            "sequence_summary.summary.weight",
            "logits_proj.bias",
        ] {
            assert!(is_head(n), "{n}");
        }
        for n in [
            "pooler.dense.weight",
            "encoder.layer.0.output.dense.weight",
            "layer.0.ff.layer_1.weight",
        ] {
            assert!(!is_head(n), "{n}");
        }
    }
}
