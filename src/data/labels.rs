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

/// `--label-map from=to,...` as pairs, each side non-empty.
pub fn parse_label_map(items: &[String]) -> Result<Vec<(String, String)>> {
    items
        .iter()
        .map(|item| match item.split_once('=') {
            Some((from, to)) if !from.trim().is_empty() && !to.trim().is_empty() => {
                Ok((from.trim().to_string(), to.trim().to_string()))
            }
            _ => Err(user(format!(
                "--label-map: `{item}` is not FROM=TO (e.g. neutral=not_entailment)"
            ))),
        })
        .collect()
}

/// For each label of a run's task (`from`, in its order), the label of another task
/// (`to`) it is scored as: by `map` where it names it, else the label of the same name
/// (names compared as [`output_order`] compares them). A label with neither is refused,
/// and so is a mapping that names a label neither task has.
pub fn transfer_map(from: &TaskSpec, to: &TaskSpec, map: &[(String, String)]) -> Result<Vec<u32>> {
    let labels = |spec: &TaskSpec| match spec.problem {
        Problem::Classification { labels } => Ok(labels),
        _ => Err(user(format!(
            "task {} is not classification: a label map applies to classifiers",
            spec.name
        ))),
    };
    let (src, dst) = (labels(from)?, labels(to)?);
    let find = |names: &[&str], n: &str| names.iter().position(|l| normal(l) == normal(n));
    for (a, b) in map {
        if find(src, a).is_none() {
            return Err(user(format!(
                "--label-map {a}={b}: task {} has no label `{a}` (its labels: {})",
                from.name,
                src.join(", ")
            )));
        }
        if find(dst, b).is_none() {
            return Err(user(format!(
                "--label-map {a}={b}: task {} has no label `{b}` (its labels: {})",
                to.name,
                dst.join(", ")
            )));
        }
    }
    src.iter()
        .map(|l| {
            let target = map
                .iter()
                .find(|(a, _)| normal(a) == normal(l))
                .map_or(*l, |(_, b)| b.as_str());
            find(dst, target).map(|i| i as u32).ok_or_else(|| {
                user(format!(
                    "label `{l}` of task {} is not a label of task {} ({}): map it with \
                     --label-map {l}=LABEL",
                    from.name,
                    to.name,
                    dst.join(", ")
                ))
            })
        })
        .collect()
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

    #[test]
    fn a_transfer_maps_by_name_and_by_the_map() {
        let (rte, qnli, cola) = (
            task("rte").unwrap(),
            task("qnli").unwrap(),
            task("cola").unwrap(),
        );
        // The same names: identity.
        assert_eq!(transfer_map(rte, qnli, &[]).unwrap(), vec![0, 1]);
        let swap = parse_label_map(&[
            "entailment=not_entailment".into(),
            "not_entailment=entailment".into(),
        ])
        .unwrap();
        assert_eq!(transfer_map(rte, qnli, &swap).unwrap(), vec![1, 0]);
        let err = transfer_map(rte, cola, &[]).unwrap_err().to_string();
        assert!(
            err.contains("entailment") && err.contains("--label-map"),
            "{err}"
        );
        let bad = parse_label_map(&["neutral=entailment".into()]).unwrap();
        let err = transfer_map(rte, qnli, &bad).unwrap_err().to_string();
        assert!(err.contains("has no label `neutral`"), "{err}");
        assert!(parse_label_map(&["neutral".into()]).is_err());
        let err = transfer_map(task("stsb").unwrap(), rte, &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not classification"), "{err}");
    }
}
