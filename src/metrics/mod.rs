//! GLUE dev metrics, as fractions (not percent).
//!
//! Degenerate inputs (a constant prediction, an empty slice) score 0 rather than NaN:
//! the trainer compares epochs by these numbers and writes them to JSON, and NaN
//! would break both. NaN inputs still give NaN.

use std::collections::BTreeMap;

use anyhow::{bail, ensure, Result};

use crate::data::{Label, Metric, Problem, TaskSpec};

pub mod squad;

/// A model's outputs on a split, before scoring.
#[derive(Debug, Clone, PartialEq)]
pub enum Predictions {
    Classes(Vec<u32>),
    Scores(Vec<f32>),
}

impl Predictions {
    pub fn len(&self) -> usize {
        match self {
            Predictions::Classes(v) => v.len(),
            Predictions::Scores(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Fraction of exact matches; 0 for no examples.
pub fn accuracy(pred: &[u32], gold: &[u32]) -> f64 {
    assert_eq!(pred.len(), gold.len(), "accuracy: length mismatch");
    if gold.is_empty() {
        return 0.0;
    }
    let hits = pred.iter().zip(gold).filter(|(p, g)| p == g).count();
    hits as f64 / gold.len() as f64
}

/// Binary confusion counts with class 1 positive and every other class negative.
struct Confusion {
    tp: f64,
    fp: f64,
    tn: f64,
    fn_: f64,
}

fn confusion(pred: &[u32], gold: &[u32]) -> Confusion {
    assert_eq!(pred.len(), gold.len(), "binary metric: length mismatch");
    let mut c = Confusion {
        tp: 0.0,
        fp: 0.0,
        tn: 0.0,
        fn_: 0.0,
    };
    for (&p, &g) in pred.iter().zip(gold) {
        match (p == 1, g == 1) {
            (true, true) => c.tp += 1.0,
            (true, false) => c.fp += 1.0,
            (false, false) => c.tn += 1.0,
            (false, true) => c.fn_ += 1.0,
        }
    }
    c
}

/// F1 of class 1: `2tp / (2tp + fp + fn)`. With no positives predicted and none gold
/// precision and recall are both 0/0; we score 0, like sklearn's `zero_division` default.
pub fn f1(pred: &[u32], gold: &[u32]) -> f64 {
    let c = confusion(pred, gold);
    let denom = 2.0 * c.tp + c.fp + c.fn_;
    if denom == 0.0 {
        0.0
    } else {
        2.0 * c.tp / denom
    }
}

/// Unweighted mean over classes of each class's F1 against the rest, over the classes
/// that occur in `gold` or `pred` (sklearn's `average="macro"`).
pub fn macro_f1(pred: &[u32], gold: &[u32]) -> f64 {
    assert_eq!(pred.len(), gold.len(), "macro F1: length mismatch");
    let mut classes: Vec<u32> = pred.iter().chain(gold).copied().collect();
    classes.sort_unstable();
    classes.dedup();
    if classes.is_empty() {
        return 0.0;
    }
    let one = |c: u32| {
        let (mut tp, mut wrong) = (0.0, 0.0);
        for (&p, &g) in pred.iter().zip(gold) {
            match (p == c, g == c) {
                (true, true) => tp += 1.0,
                (true, false) | (false, true) => wrong += 1.0,
                _ => {}
            }
        }
        2.0 * tp / (2.0 * tp + wrong)
    };
    classes.iter().map(|&c| one(c)).sum::<f64>() / classes.len() as f64
}

/// Matthews correlation of a binary task (class 1 positive); 0 when any marginal is
/// empty, e.g. constant predictions, as sklearn does.
pub fn matthews_corrcoef(pred: &[u32], gold: &[u32]) -> f64 {
    let Confusion { tp, fp, tn, fn_ } = confusion(pred, gold);
    let denom = ((tp + fp) * (tp + fn_) * (tn + fp) * (tn + fn_)).sqrt();
    if denom == 0.0 {
        0.0
    } else {
        (tp * tn - fp * fn_) / denom
    }
}

/// Pearson correlation; 0 when either side is constant (or there are fewer than two
/// points), where scipy would return NaN.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    assert_eq!(x.len(), y.len(), "pearson: length mismatch");
    if x.is_empty() {
        return 0.0;
    }
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        let (dx, dy) = (a - mx, b - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx == 0.0 || syy == 0.0 {
        return 0.0;
    }
    (sxy / (sxx * syy).sqrt()).clamp(-1.0, 1.0)
}

/// Spearman correlation: Pearson of ranks, ties sharing their mean rank (as scipy).
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&ranks(x), &ranks(y))
}

/// 1-based ranks; a run of equal values gets the mean of the ranks it spans.
fn ranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut ranks = vec![0.0; x.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && x[order[end]] == x[order[start]] {
            end += 1;
        }
        // Positions start..end hold ranks start+1 ..= end.
        let mean = (start + 1 + end) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = mean;
        }
        start = end;
    }
    ranks
}

/// The task's official metrics, keyed by [`Metric::key`].
///
/// Errors here are the caller's bug (mismatched lengths, unlabelled gold, regression
/// scores for a classification task), not the user's.
pub fn evaluate(
    spec: &TaskSpec,
    preds: &Predictions,
    gold: &[Label],
) -> Result<BTreeMap<String, f64>> {
    ensure!(
        preds.len() == gold.len(),
        "{}: {} predictions for {} examples",
        spec.name,
        preds.len(),
        gold.len()
    );
    ensure!(!gold.is_empty(), "{}: nothing to evaluate", spec.name);
    let mut out = BTreeMap::new();
    match (spec.problem, preds) {
        (Problem::Classification { .. }, Predictions::Classes(pred)) => {
            let gold = gold
                .iter()
                .map(|l| match l {
                    Label::Class(c) => Ok(*c),
                    other => bail!("{}: gold label {other:?} is not a class", spec.name),
                })
                .collect::<Result<Vec<u32>>>()?;
            for &m in spec.metrics {
                let value = match m {
                    Metric::Accuracy => accuracy(pred, &gold),
                    Metric::F1 => f1(pred, &gold),
                    Metric::MacroF1 => macro_f1(pred, &gold),
                    Metric::Mcc => matthews_corrcoef(pred, &gold),
                    Metric::Pearson | Metric::Spearman => {
                        bail!("{}: {m} needs regression scores", spec.name)
                    }
                    Metric::ExactMatch | Metric::Exact | Metric::SpanF1 => {
                        bail!("{}: {m} scores answers (eval::spans)", spec.name)
                    }
                };
                out.insert(m.key().to_string(), value);
            }
        }
        (Problem::Regression { .. }, Predictions::Scores(pred)) => {
            let gold = gold
                .iter()
                .map(|l| match l {
                    Label::Score(s) => Ok(f64::from(*s)),
                    other => bail!("{}: gold label {other:?} is not a score", spec.name),
                })
                .collect::<Result<Vec<f64>>>()?;
            let pred: Vec<f64> = pred.iter().map(|&p| f64::from(p)).collect();
            for &m in spec.metrics {
                let value = match m {
                    Metric::Pearson => pearson(&pred, &gold),
                    Metric::Spearman => spearman(&pred, &gold),
                    Metric::Accuracy | Metric::F1 | Metric::MacroF1 | Metric::Mcc => {
                        bail!("{}: {m} needs class predictions", spec.name)
                    }
                    Metric::ExactMatch | Metric::Exact | Metric::SpanF1 => {
                        bail!("{}: {m} scores answers (eval::spans)", spec.name)
                    }
                };
                out.insert(m.key().to_string(), value);
            }
        }
        (problem, _) => bail!("{}: predictions do not fit a {problem:?} task", spec.name),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::task;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    // Hand-worked confusion matrix: tp=3 (0..3), fn=2 (3..5), fp=1 (5), tn=2 (6..8).
    const GOLD: [u32; 8] = [1, 1, 1, 1, 1, 0, 0, 0];
    const PRED: [u32; 8] = [1, 1, 1, 0, 0, 1, 0, 0];

    #[test]
    fn classification_metrics_by_hand() {
        close(accuracy(&PRED, &GOLD), 5.0 / 8.0);
        // precision 3/4, recall 3/5: F1 = 2·tp / (2·tp + fp + fn) = 6/9
        close(f1(&PRED, &GOLD), 2.0 / 3.0);
        // (tp·tn − fp·fn) / √((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (6 − 2) / √(4·5·3·4)
        close(matthews_corrcoef(&PRED, &GOLD), 4.0 / 240f64.sqrt());
        close(matthews_corrcoef(&GOLD, &GOLD), 1.0);
        let flipped: Vec<u32> = GOLD.iter().map(|g| 1 - g).collect();
        close(matthews_corrcoef(&flipped, &GOLD), -1.0);
    }

    #[test]
    fn classification_degenerate_cases() {
        close(matthews_corrcoef(&[1; 8], &GOLD), 0.0);
        close(matthews_corrcoef(&[0; 8], &GOLD), 0.0);
        close(matthews_corrcoef(&[0, 0], &[0, 0]), 0.0);
        close(f1(&[0, 0, 0], &[0, 0, 0]), 0.0);
        close(f1(&[0, 0, 0], &[0, 1, 0]), 0.0);
        close(f1(&[1, 1, 1], &[0, 1, 0]), 0.5);
        close(accuracy(&[], &[]), 0.0);
    }

    #[test]
    fn correlations_by_hand() {
        // deviations x: ±1.5, ±0.5; y: −3, −1, 0, 4 → 11 / √(5 · 26)
        close(
            pearson(&[1.0, 2.0, 3.0, 4.0], &[2.0, 4.0, 5.0, 9.0]),
            11.0 / 130f64.sqrt(),
        );
        close(pearson(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), -1.0);
        // ranks x = [1, 2.5, 2.5, 4], y = [1, 3, 2, 4]; deviations from 2.5:
        // x: −1.5, 0, 0, 1.5; y: −1.5, 0.5, −0.5, 1.5 → 4.5 / √(4.5 · 5) = √0.9
        assert_eq!(ranks(&[1.0, 2.0, 2.0, 3.0]), [1.0, 2.5, 2.5, 4.0]);
        close(
            spearman(&[1.0, 2.0, 2.0, 3.0], &[1.0, 3.0, 2.0, 4.0]),
            0.9f64.sqrt(),
        );
        // monotone but not linear
        close(
            spearman(&[1.0, 2.0, 3.0, 4.0], &[1.0, 8.0, 27.0, 64.0]),
            1.0,
        );
        assert_eq!(ranks(&[3.0, 1.0, 3.0, 3.0, 0.5]), [4.0, 2.0, 4.0, 4.0, 1.0]);
    }

    #[test]
    fn correlation_degenerate_cases() {
        close(pearson(&[2.0, 2.0, 2.0], &[1.0, 2.0, 3.0]), 0.0);
        close(spearman(&[1.0, 2.0, 3.0], &[5.0, 5.0, 5.0]), 0.0);
        close(pearson(&[1.0], &[1.0]), 0.0);
        close(pearson(&[], &[]), 0.0);
        assert!(pearson(&[1.0, f64::NAN], &[1.0, 2.0]).is_nan());
    }

    #[test]
    fn evaluate_reports_each_task_metric() {
        let gold: Vec<Label> = GOLD.iter().map(|&g| Label::Class(g)).collect();
        let preds = Predictions::Classes(PRED.to_vec());

        let mrpc = evaluate(task("mrpc").unwrap(), &preds, &gold).unwrap();
        assert_eq!(mrpc.keys().collect::<Vec<_>>(), ["accuracy", "f1"]);
        close(mrpc["accuracy"], 0.625);
        close(mrpc["f1"], 2.0 / 3.0);
        let cola = evaluate(task("cola").unwrap(), &preds, &gold).unwrap();
        assert_eq!(cola.keys().collect::<Vec<_>>(), ["mcc"]);
        close(cola["mcc"], 4.0 / 240f64.sqrt());
        let rte = evaluate(task("rte").unwrap(), &preds, &gold).unwrap();
        assert_eq!(rte.keys().collect::<Vec<_>>(), ["accuracy"]);

        let sts_gold: Vec<Label> = [1.0, 3.0, 2.0, 4.0].map(Label::Score).to_vec();
        let scores = Predictions::Scores(vec![1.0, 2.0, 2.0, 3.0]);
        let stsb = evaluate(task("stsb").unwrap(), &scores, &sts_gold).unwrap();
        assert_eq!(stsb.keys().collect::<Vec<_>>(), ["pearson", "spearman"]);
        close(stsb["spearman"], 0.9f64.sqrt());
        // deviations x: −1, 0, 0, 1; y: −1.5, 0.5, −0.5, 1.5 → 3 / √(2 · 5)
        close(stsb["pearson"], 3.0 / 10f64.sqrt());
        let constant = Predictions::Scores(vec![2.5; 4]);
        let flat = evaluate(task("stsb").unwrap(), &constant, &sts_gold).unwrap();
        close(flat["pearson"], 0.0);
        close(flat["spearman"], 0.0);
    }

    #[test]
    fn macro_f1_averages_the_classes() {
        // class 0: tp 1, fp 1, fn 1 → 0.5; class 1: tp 1, fp 0, fn 1 → 2/3; class 2: tp 1,
        // fp 1, fn 0 → 2/3.
        let (pred, gold) = ([0, 0, 1, 2, 2], [0, 1, 1, 0, 2]);
        close(macro_f1(&pred, &gold), (0.5 + 2.0 / 3.0 + 2.0 / 3.0) / 3.0);
        close(macro_f1(&[1, 1], &[1, 1]), 1.0);
        close(macro_f1(&[], &[]), 0.0);
    }

    #[test]
    fn evaluate_rejects_mismatched_inputs() {
        let gold = [Label::Class(1), Label::Class(0)];
        let rte = task("rte").unwrap();
        assert!(evaluate(rte, &Predictions::Classes(vec![1]), &gold).is_err());
        assert!(evaluate(rte, &Predictions::Scores(vec![1.0, 0.0]), &gold).is_err());
        assert!(evaluate(rte, &Predictions::Classes(vec![]), &[]).is_err());
        let unlabelled = [Label::None, Label::None];
        assert!(evaluate(rte, &Predictions::Classes(vec![1, 0]), &unlabelled).is_err());
        let stsb = task("stsb").unwrap();
        assert!(evaluate(stsb, &Predictions::Scores(vec![1.0, 0.0]), &gold).is_err());
    }
}
