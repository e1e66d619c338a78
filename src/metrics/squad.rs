//! SQuAD scores exactly as the official evaluation scripts compute them
//! (`evaluate-v1.1.py` and `evaluate-v2.0.py` of rajpurkar/SQuAD-explorer): answers are
//! compared after normalisation (lower case; ASCII punctuation, the articles a/an/the and
//! extra whitespace removed), F1 over whitespace tokens, the best over the gold answers.
//!
//! Unlike the GLUE metrics these are percentages, as the scripts print them, so that a
//! figure here can be checked against theirs digit for digit; thresholds are in the
//! units of the no-answer scores they were chosen from.

use std::collections::{BTreeMap, HashMap};

use crate::data::squad::QaExample;

/// The official `normalize_answer`.
pub fn normalize(s: &str) -> String {
    let lower: String = s
        .to_lowercase()
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    // `\b(a|an|the)\b` → " ": a run of word characters that is exactly an article.
    let mut out = String::with_capacity(lower.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if matches!(word.as_str(), "a" | "an" | "the") {
            out.push(' ');
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in lower.chars() {
        if c.is_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    words(&out).collect::<Vec<_>>().join(" ")
}

/// Python's `str.split()`: Unicode whitespace and the ASCII separators U+001C..U+001F,
/// which Python counts as whitespace and Rust does not.
fn words(s: &str) -> impl Iterator<Item = &str> {
    s.split(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
        .filter(|w| !w.is_empty())
}

fn tokens(s: &str) -> Vec<String> {
    words(&normalize(s)).map(str::to_string).collect()
}

/// Tokens the two share, counted with multiplicity (`Counter & Counter`).
fn common(gold: &[String], pred: &[String]) -> usize {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for g in gold {
        *counts.entry(g).or_default() += 1;
    }
    pred.iter()
        .filter(|p| {
            counts
                .get_mut(p.as_str())
                .filter(|n| **n > 0)
                .map(|n| *n -= 1)
                .is_some()
        })
        .count()
}

fn f1_of(num_same: usize, pred: usize, gold: usize) -> f64 {
    if num_same == 0 {
        return 0.0;
    }
    let precision = num_same as f64 / pred as f64;
    let recall = num_same as f64 / gold as f64;
    2.0 * precision * recall / (precision + recall)
}

/// v2.0's `compute_f1`: an empty answer on either side scores 1 only against another.
pub fn f1_v2(gold: &str, pred: &str) -> f64 {
    let (g, p) = (tokens(gold), tokens(pred));
    if g.is_empty() || p.is_empty() {
        return f64::from(u8::from(g == p));
    }
    f1_of(common(&g, &p), p.len(), g.len())
}

/// v1.1's `f1_score`: no special case for empty answers.
pub fn f1_v1(gold: &str, pred: &str) -> f64 {
    let (g, p) = (tokens(gold), tokens(pred));
    f1_of(common(&g, &p), p.len(), g.len())
}

pub fn exact(gold: &str, pred: &str) -> f64 {
    f64::from(u8::from(normalize(gold) == normalize(pred)))
}

fn best(golds: &[&str], pred: &str, score: fn(&str, &str) -> f64) -> f64 {
    golds
        .iter()
        .map(|g| score(g, pred))
        .fold(f64::NEG_INFINITY, f64::max)
}

/// `evaluate-v1.1.py`: `exact_match` and `f1` over every question (a question without a
/// prediction scores 0, as the script counts it in the total).
pub fn evaluate_v1(
    examples: &[QaExample],
    predictions: &BTreeMap<String, String>,
) -> BTreeMap<String, f64> {
    let (mut em, mut f1) = (0.0, 0.0);
    for e in examples {
        let Some(pred) = predictions.get(&e.id) else {
            continue;
        };
        let golds: Vec<&str> = e.answers.iter().map(|a| a.text.as_str()).collect();
        em += best(&golds, pred, exact);
        f1 += best(&golds, pred, f1_v1);
    }
    let n = examples.len().max(1) as f64;
    BTreeMap::from([
        ("exact_match".to_string(), 100.0 * em / n),
        ("f1".to_string(), 100.0 * f1 / n),
    ])
}

/// `evaluate-v2.0.py`: `exact`, `f1` and `total`, the same for the HasAns and NoAns
/// questions, and with `na_probs` the best threshold on them and the scores it gives.
/// A question whose no-answer score is above `na_prob_thresh` counts as answered empty
/// (the script's `--na-prob-thresh`, 1.0 by default); without `na_probs` every score is 0.
/// `na_probs` is in the file's order, which breaks ties in the threshold search.
/// Questions without a prediction are left out, as the script leaves them out.
pub fn evaluate_v2(
    examples: &[QaExample],
    predictions: &BTreeMap<String, String>,
    na_probs: Option<&[(String, f64)]>,
    na_prob_thresh: f64,
) -> BTreeMap<String, f64> {
    let na_map: HashMap<&str, f64> = na_probs
        .unwrap_or_default()
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    let has_ans: BTreeMap<&str, bool> = examples
        .iter()
        .map(|e| (e.id.as_str(), e.answerable()))
        .collect();
    let na = |id: &str| na_map.get(id).copied().unwrap_or(0.0);
    // Raw scores, in the file's order, of the questions that have a prediction.
    let mut raw: Vec<(&str, f64, f64)> = Vec::new();
    for e in examples {
        let Some(pred) = predictions.get(&e.id) else {
            continue;
        };
        let mut golds: Vec<&str> = e
            .answers
            .iter()
            .map(|a| a.text.as_str())
            .filter(|t| !normalize(t).is_empty())
            .collect();
        if golds.is_empty() {
            golds.push("");
        }
        raw.push((&e.id, best(&golds, pred, exact), best(&golds, pred, f1_v2)));
    }
    let thresholded: Vec<(&str, f64, f64)> = raw
        .iter()
        .map(|&(id, em, f1)| {
            if na(id) > na_prob_thresh {
                let s = f64::from(u8::from(!has_ans[id]));
                (id, s, s)
            } else {
                (id, em, f1)
            }
        })
        .collect();
    let mut out = BTreeMap::new();
    let mut put = |prefix: &str, rows: &[&(&str, f64, f64)]| {
        let n = rows.len() as f64;
        let sum = |f: fn(&(&str, f64, f64)) -> f64| rows.iter().map(|r| f(r)).sum::<f64>();
        out.insert(format!("{prefix}exact"), 100.0 * sum(|r| r.1) / n);
        out.insert(format!("{prefix}f1"), 100.0 * sum(|r| r.2) / n);
        out.insert(format!("{prefix}total"), n);
    };
    put("", &thresholded.iter().collect::<Vec<_>>());
    for (prefix, answerable) in [("HasAns_", true), ("NoAns_", false)] {
        let rows: Vec<_> = thresholded
            .iter()
            .filter(|r| has_ans[r.0] == answerable)
            .collect();
        if has_ans.values().any(|&h| h == answerable) {
            put(prefix, &rows);
        }
    }
    if let Some(probs) = na_probs {
        for (name, column) in [("exact", 1), ("f1", 2)] {
            let scores: BTreeMap<&str, f64> = raw
                .iter()
                .map(|r| (r.0, if column == 1 { r.1 } else { r.2 }))
                .collect();
            let (score, thresh) = best_thresh(predictions, &scores, probs, &has_ans);
            out.insert(format!("best_{name}"), score);
            out.insert(format!("best_{name}_thresh"), thresh);
        }
    }
    out
}

/// The script's `find_best_thresh`: walk the questions by rising no-answer score, each
/// step answering one more; keep the threshold with the best total.
fn best_thresh(
    preds: &BTreeMap<String, String>,
    scores: &BTreeMap<&str, f64>,
    na_probs: &[(String, f64)],
    has_ans: &BTreeMap<&str, bool>,
) -> (f64, f64) {
    let no_ans = has_ans.values().filter(|h| !**h).count() as f64;
    let (mut cur, mut best, mut thresh) = (no_ans, no_ans, 0.0);
    // Python's sort is stable: ties keep the dict's order, the na_prob file's.
    let mut order: Vec<(&String, f64)> = na_probs.iter().map(|(k, v)| (k, *v)).collect();
    order.sort_by(|a, b| a.1.total_cmp(&b.1));
    for (id, p) in order {
        let Some(&score) = scores.get(id.as_str()) else {
            continue;
        };
        let diff = if has_ans.get(id.as_str()).copied().unwrap_or(false) {
            score
        } else if preds.get(id).is_some_and(|p| !p.is_empty()) {
            -1.0
        } else {
            0.0
        };
        cur += diff;
        if cur > best {
            best = cur;
            thresh = p;
        }
    }
    (100.0 * best / scores.len().max(1) as f64, thresh)
}

/// A run's dev metrics from its answers: the official figures as fractions, like every
/// other task's (thresholds and counts as they are), so that runs compare and print
/// alike. For 2.0 the main figures take the answers as given (the null threshold was
/// applied when picking them); `best_*` say what the best threshold on the null score
/// differences would give, and `best_f1_thresh` is that threshold.
pub fn dev_metrics(
    examples: &[QaExample],
    answers: &BTreeMap<String, String>,
    null_diff: Option<&[(String, f64)]>,
    v2: bool,
) -> BTreeMap<String, f64> {
    let percent = if v2 {
        evaluate_v2(examples, answers, null_diff, f64::INFINITY)
    } else {
        evaluate_v1(examples, answers)
    };
    percent
        .into_iter()
        .map(|(k, v)| {
            let v = if is_fraction(&k) { v / 100.0 } else { v };
            (k, v)
        })
        .collect()
}

/// Whether a metric key names a score (shown as a percentage) rather than a count or a
/// threshold.
pub fn is_fraction(key: &str) -> bool {
    !key.ends_with("_total") && !key.ends_with("_thresh") && key != "total"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_as_the_official_script() {
        assert_eq!(normalize("The  Normans!"), "normans");
        assert_eq!(normalize("an apple, a day"), "apple day");
        assert_eq!(normalize("Theatre and anA"), "theatre and ana");
        assert_eq!(normalize("  10th-century  "), "10thcentury");
        // `_` is punctuation, gone before the articles are.
        assert_eq!(normalize("the_a"), "thea");
        assert_eq!(f1_v2("", ""), 1.0);
        assert_eq!(f1_v1("", ""), 0.0);
        assert!((f1_v2("the cat sat", "cat sat down") - 0.8).abs() < 1e-12);
        assert_eq!(exact("The Cat.", "cat"), 1.0);
    }
}
