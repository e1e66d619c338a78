//! Matching a checkpoint's label names (`id2label` in its config.json) to a task's labels,
//! so a classifier fine-tuned elsewhere scores with its outputs in the task's order.

use std::collections::BTreeMap;

use anyhow::Result;

use super::tasks::{Problem, TaskSpec};
use crate::error::user;

/// For each of the task's labels, in the task's order, the checkpoint output that means
/// it. Names match ignoring case, spaces, dashes and underscores, and through the common
/// names of GLUE's numbered labels (CoLA 0 = unacceptable, SST-2 0 = negative, MRPC 0 =
/// not_equivalent, QQP 0 = not_duplicate). Generic names (`LABEL_0`, `LABEL_1`, ...: what
/// transformers writes when nobody named them) are taken in order. `origin` names the
/// config.json for messages.
pub fn output_order(
    spec: &TaskSpec,
    id2label: &BTreeMap<usize, String>,
    outputs: usize,
    origin: &str,
) -> Result<Vec<usize>> {
    let labels: &[&str] = match spec.problem {
        // Start and end: the order every question-answering head has.
        Problem::Span { .. } if outputs == 2 => return Ok(vec![0, 1]),
        Problem::Span { .. } => {
            return Err(user(format!(
                "{origin}: the question-answering head has {outputs} outputs, not 2 (start, end)"
            )))
        }
        Problem::Regression { .. } => {
            if outputs != 1 {
                return Err(user(format!(
                    "{origin}: the classifier has {outputs} outputs; {} is a regression task \
                     and needs one",
                    spec.name
                )));
            }
            return Ok(vec![0]);
        }
        Problem::Classification { labels } => labels,
    };
    let shown = || {
        let names: Vec<String> = id2label.iter().map(|(i, n)| format!("{i}: {n}")).collect();
        format!("{{{}}}", names.join(", "))
    };
    if outputs != labels.len() {
        return Err(user(format!(
            "{origin}: the classifier has {outputs} outputs (id2label {}); task {} has {} \
             labels ({})",
            shown(),
            spec.name,
            labels.len(),
            labels.join(", ")
        )));
    }
    let generic = (0..outputs).all(|i| {
        id2label
            .get(&i)
            .is_none_or(|n| normal(n) == format!("label{i}"))
    });
    if generic {
        return Ok((0..outputs).collect());
    }
    let names = |label: &str| -> Vec<String> {
        let mut v = vec![normal(label)];
        v.extend(alias(spec.name, label).map(normal));
        v
    };
    let mut order = Vec::with_capacity(labels.len());
    for label in labels {
        let wanted = names(label);
        let found: Vec<usize> = id2label
            .iter()
            .filter(|(_, n)| wanted.contains(&normal(n)))
            .map(|(i, _)| *i)
            .collect();
        match found.as_slice() {
            [i] if *i < outputs && !order.contains(i) => order.push(*i),
            _ => {
                return Err(user(format!(
                    "{origin}: cannot match the checkpoint's labels (id2label {}) to task {}'s \
                     labels ({}): `{label}` has {} matches",
                    shown(),
                    spec.name,
                    labels.join(", "),
                    found.len()
                )))
            }
        }
    }
    Ok(order)
}

fn normal(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, ' ' | '-' | '_'))
        .flat_map(char::to_lowercase)
        .collect()
}

/// What hub checkpoints call GLUE's numbered labels.
fn alias(task: &str, label: &str) -> Option<&'static str> {
    Some(match (task, label) {
        ("cola", "0") => "unacceptable",
        ("cola", "1") => "acceptable",
        ("sst2", "0") => "negative",
        ("sst2", "1") => "positive",
        ("mrpc", "0") => "not_equivalent",
        ("mrpc", "1") => "equivalent",
        ("qqp", "0") => "not_duplicate",
        ("qqp", "1") => "duplicate",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::task;

    fn ids(names: &[&str]) -> BTreeMap<usize, String> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| (i, n.to_string()))
            .collect()
    }

    #[test]
    fn names_match_in_any_order_and_case() {
        let mnli = task("mnli").unwrap();
        // roberta-large-mnli's order.
        let order = output_order(
            mnli,
            &ids(&["CONTRADICTION", "NEUTRAL", "ENTAILMENT"]),
            3,
            "c",
        )
        .unwrap();
        assert_eq!(order, vec![2, 1, 0]);
        let rte = task("rte").unwrap();
        let order = output_order(rte, &ids(&["not entailment", "Entailment"]), 2, "c").unwrap();
        assert_eq!(order, vec![1, 0]);
        let sst2 = task("sst2").unwrap();
        let order = output_order(sst2, &ids(&["POSITIVE", "NEGATIVE"]), 2, "c").unwrap();
        assert_eq!(order, vec![1, 0]);
    }

    #[test]
    fn generic_names_keep_their_order() {
        let rte = task("rte").unwrap();
        assert_eq!(
            output_order(rte, &ids(&["LABEL_0", "LABEL_1"]), 2, "c").unwrap(),
            vec![0, 1]
        );
        assert_eq!(
            output_order(rte, &BTreeMap::new(), 2, "c").unwrap(),
            vec![0, 1]
        );
    }

    #[test]
    fn unmatched_labels_are_refused_with_both_sides_named() {
        let rte = task("rte").unwrap();
        let err = output_order(rte, &ids(&["yes", "no"]), 2, "m/config.json")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("m/config.json") && err.contains("yes") && err.contains("not_entailment"),
            "{err}"
        );
        let err = output_order(rte, &ids(&["a", "b", "c"]), 3, "c")
            .unwrap_err()
            .to_string();
        assert!(err.contains("3 outputs"), "{err}");
        let stsb = task("stsb").unwrap();
        assert_eq!(
            output_order(stsb, &ids(&["LABEL_0"]), 1, "c").unwrap(),
            vec![0]
        );
        assert!(output_order(stsb, &ids(&["a", "b"]), 2, "c").is_err());
    }
}
