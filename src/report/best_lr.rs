//! A grid's table as the seed papers report theirs: for each task and method (and any
//! other setting the grid varied), the learning rate whose median dev score over seeds is
//! best, and that median with its spread. Each run's score is its task's main metric at
//! its best evaluation (the state `trainable.safetensors` holds).

use std::collections::BTreeMap;

use super::runs::{main_metric, Run};
use super::table::{names, Table};
use crate::stats::Spread;

/// Settings that say nothing about what was trained: where it went and how it was run.
const IGNORED: &[&str] = &[
    "seed",
    "lr",
    "output_dir",
    "device",
    "eval_batch_size",
    "save_steps",
    "eval_steps",
];

/// One row: a task, a method, the other settings that vary, and per learning rate the
/// seeds' scores.
struct Group {
    task: String,
    method: String,
    others: String,
    metric: String,
    by_lr: BTreeMap<String, (f64, Vec<f64>)>,
}

fn groups(runs: &[Run]) -> Vec<Group> {
    let finished: Vec<&Run> = runs.iter().filter(|r| r.finished).collect();
    // Settings that differ among the runs of one task and method (besides the ignored).
    let mut values: BTreeMap<(String, String, String), Vec<String>> = BTreeMap::new();
    for r in &finished {
        for (k, v) in &r.train.settings {
            if !IGNORED.contains(&k.as_str()) {
                values
                    .entry((r.train.task.clone(), r.train.method.clone(), k.clone()))
                    .or_default()
                    .push(v.to_string());
            }
        }
    }
    let varies = |task: &str, method: &str, key: &str| {
        values
            .get(&(task.to_string(), method.to_string(), key.to_string()))
            .is_some_and(|v| v.iter().any(|x| *x != v[0]))
    };
    let mut out: Vec<Group> = Vec::new();
    for r in finished {
        let Some((metric, score)) = r.best().and_then(|b| main_metric(&r.train, b)) else {
            continue;
        };
        let (task, method) = (&r.train.task, &r.train.method);
        let others: Vec<String> = r
            .train
            .settings
            .iter()
            .filter(|(k, _)| varies(task, method, k))
            .map(|(k, v)| format!("{k}={}", v.to_string().trim_matches('"')))
            .collect();
        let others = others.join(" ");
        let i = match out
            .iter()
            .position(|g| g.task == *task && g.method == *method && g.others == others)
        {
            Some(i) => i,
            None => {
                out.push(Group {
                    task: task.clone(),
                    method: method.clone(),
                    others,
                    metric,
                    by_lr: BTreeMap::new(),
                });
                out.len() - 1
            }
        };
        out[i]
            .by_lr
            .entry(format!("{:e}", r.train.lr))
            .or_insert_with(|| (r.train.lr, Vec::new()))
            .1
            .push(score);
    }
    out.sort_by(|a, b| (&a.task, &a.method, &a.others).cmp(&(&b.task, &b.method, &b.others)));
    out
}

/// Whether the runs form a grid worth this table: some task and method ran with more
/// than one seed.
pub fn applies(runs: &[Run]) -> bool {
    groups(runs)
        .iter()
        .any(|g| g.by_lr.values().any(|(_, s)| s.len() > 1))
}

/// Each learning rate's spread over seeds, in the order of the group's map, and the one
/// with the best median (ties go to the first).
fn spreads(g: &Group) -> (Vec<(f64, Spread)>, Option<usize>) {
    let spreads: Vec<(f64, Spread)> = g
        .by_lr
        .values()
        .filter_map(|(lr, s)| Spread::of(s).map(|sp| (*lr, sp)))
        .collect();
    let best = (0..spreads.len()).fold(None::<usize>, |b, i| match b {
        Some(b) if spreads[b].1.median >= spreads[i].1.median => Some(b),
        _ => Some(i),
    });
    (spreads, best)
}

/// The papers' shape: a row per method (and other varied settings), a column per task,
/// each cell the best learning rate's median over seeds ×100 with its standard deviation.
pub fn wide(runs: &[Run]) -> Table {
    let gs = groups(runs);
    let mut tasks: Vec<String> = gs.iter().map(|g| g.task.clone()).collect();
    tasks.sort();
    tasks.dedup();
    // (other settings, method, label, cells): sorted so that the rows of one model (or
    // other setting) sit together, as the papers group theirs.
    let mut rows: Vec<(String, String, String, Vec<String>)> = Vec::new();
    for g in &gs {
        let label = match g.others.is_empty() {
            true => g.method.clone(),
            false => format!("{} {}", g.method, g.others),
        };
        let (spreads, best) = spreads(g);
        let Some(b) = best else { continue };
        let s = &spreads[b].1;
        let cell = match s.std {
            Some(sd) => format!("{:.2} ± {:.2}", 100.0 * s.median, 100.0 * sd),
            None => format!("{:.2}", 100.0 * s.median),
        };
        let col = tasks.iter().position(|t| *t == g.task).unwrap_or(0);
        let i = match rows.iter().position(|(_, _, l, _)| *l == label) {
            Some(i) => i,
            None => {
                rows.push((
                    g.others.clone(),
                    g.method.clone(),
                    label,
                    vec!["-".to_string(); tasks.len()],
                ));
                rows.len() - 1
            }
        };
        rows[i].3[col] = cell;
    }
    rows.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let mut header = vec!["method".to_string()];
    header.extend(tasks.iter().cloned());
    Table {
        numeric: std::iter::once(false)
            .chain(tasks.iter().map(|_| true))
            .collect(),
        header,
        rows: rows
            .into_iter()
            .map(|(_, _, l, cells)| std::iter::once(l).chain(cells).collect())
            .collect(),
    }
}

pub fn table(runs: &[Run]) -> Table {
    let rows = groups(runs)
        .into_iter()
        .map(|g| {
            let (spreads, best) = spreads(&g);
            let best = best.map(|i| &spreads[i]);
            let tried: Vec<String> = spreads
                .iter()
                .map(|(lr, s)| format!("{lr:e}: {:.2} (n={})", 100.0 * s.median, s.n))
                .collect();
            match best {
                Some((lr, s)) => vec![
                    g.task,
                    g.method,
                    g.others,
                    g.metric,
                    format!("{lr:e}"),
                    s.n.to_string(),
                    format!("{:.2}", 100.0 * s.median),
                    format!("{:.2}–{:.2}", 100.0 * s.min, 100.0 * s.max),
                    s.std
                        .map_or_else(|| "-".into(), |v| format!("{:.2}", 100.0 * v)),
                    tried.join(", "),
                ],
                None => Vec::new(),
            }
        })
        .filter(|r| !r.is_empty())
        .collect();
    Table {
        header: names(&[
            "task",
            "method",
            "settings",
            "metric",
            "best lr",
            "seeds",
            "median",
            "range",
            "std",
            "median per lr",
        ]),
        numeric: vec![
            false, false, false, false, true, true, true, true, true, false,
        ],
        rows,
    }
}

/// The table in long form for spreadsheets: one row per task, method and setting, the
/// numbers as recorded (fractions).
pub fn csv(runs: &[Run]) -> String {
    let mut out = String::from("task,method,settings,metric,best_lr,seeds,median,min,max,std\n");
    for g in groups(runs) {
        let (spreads, best) = spreads(&g);
        let Some((lr, s)) = best.map(|i| &spreads[i]) else {
            continue;
        };
        let field = |v: &str| match v.contains([',', '"']) {
            true => format!("\"{}\"", v.replace('"', "\"\"")),
            false => v.to_string(),
        };
        out.push_str(&format!(
            "{},{},{},{},{lr},{},{},{},{},{}\n",
            field(&g.task),
            field(&g.method),
            field(&g.others),
            field(&g.metric),
            s.n,
            s.median,
            s.min,
            s.max,
            s.std.map_or_else(String::new, |v| v.to_string())
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(scores: &[(f64, &[f64])]) -> Group {
        Group {
            task: "rte".into(),
            method: "layernorm".into(),
            others: String::new(),
            metric: "accuracy".into(),
            by_lr: scores
                .iter()
                .map(|(lr, s)| (format!("{lr:e}"), (*lr, s.to_vec())))
                .collect(),
        }
    }

    /// The best median wins, not the best single seed or the best mean.
    #[test]
    fn the_best_median_over_seeds_wins() {
        // 1e-3: median 0.60 (mean 0.60); 3e-2: median 0.75 (one bad seed, mean 0.55);
        // 1e-1: one lucky seed (max 0.95), median 0.30.
        let g = group(&[
            (1e-3, &[0.5, 0.6, 0.7]),
            (3e-2, &[0.8, 0.1, 0.75]),
            (1e-1, &[0.95, 0.3, 0.2]),
        ]);
        let (spreads, best) = spreads(&g);
        assert_eq!(spreads[best.unwrap()].0, 3e-2);
    }

    /// Equal medians: the first rate in the group's order keeps the pick.
    #[test]
    fn a_tie_goes_to_the_first_rate() {
        let g = group(&[(1e-3, &[0.5, 0.7]), (3e-2, &[0.6, 0.6])]);
        let (spreads, best) = spreads(&g);
        assert_eq!(spreads[best.unwrap()].0, 1e-3);
    }
}
