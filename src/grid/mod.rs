//! `peft grid`: a paper's table as a plan of independent runs (cells), each a process any
//! scheduler can start: Slurm job arrays, Kubernetes indexed Jobs, GNU parallel, or
//! `peft grid --workers N` here.
//!
//! A plan is a TOML file:
//!
//! ```toml
//! output_dir = "runs/grid"
//! [base]            # any training setting, as in --config
//! model = "sentence-transformers/all-MiniLM-L6-v2"
//! task = "rte"
//! [grid]            # settings with a list of values each: their cross product
//! method = ["layernorm", "bitfit"]
//! seed = [1, 2, 3]
//! ```
//!
//! `method` may instead be a table of methods, each with settings of its own: a list is
//! crossed (`[grid.method.lora] lr = [5e-4, 1e-3]`), a single value is that method's
//! setting (`reserve = 0.3`), and `[grid.method.bitfit]` alone adds none.
//!
//! `recipe = "NAME"` under `[base]` or a method's table starts its cells from a recipe:
//! one of the built-in `configs/` recipes (`--config NAME`) or a TOML file, relative to the
//! plan's folder. A cell's settings are, each over the one before: the recipe, `[base]`,
//! the method's single values, the grid's values. This is how a paper's table is written
//! once: each method's recipe as its paper gives it, the models and tasks as the grid.
//!
//! Cells are ordered by method (a list as listed, a table of methods by name), then by the other grid keys in alphabetical
//! order with `seed` last, the first key varying slowest, each key's values as listed. A
//! cell's run directory is `output_dir/<task>-<method>-<key><value>...-<hash>`: the values
//! it was given and eight hex digits of the sha256 of all its resolved settings, so the
//! same settings find the same directory on every machine and at every run of the plan,
//! and a cell whose settings changed (say, `epochs` in `[base]`) gets a new one.

pub mod cell;
pub mod emit;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::Result;
use sha2::{Digest, Sha256};
use toml::{Table, Value};

use crate::error::{user, PathContext};
use crate::settings::{Overrides, TrainConfig, RECIPES};

/// One run of the plan.
#[derive(Debug, Clone)]
pub struct Cell {
    pub index: usize,
    /// Its run directory's name.
    pub name: String,
    /// The grid values it was given, as `key=value`, in plan order.
    pub values: Vec<(String, String)>,
    pub cfg: TrainConfig,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub path: PathBuf,
    pub output_dir: PathBuf,
    pub cells: Vec<Cell>,
}

/// The settings a method crosses: (key, values) in plan order.
type Axes = Vec<(String, Vec<Value>)>;

impl Plan {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).path_context("cannot read plan", path)?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let at = |msg: String| user(format!("{}: {msg}", path.display()));
        let mut top: Table = toml::from_str(text).map_err(|e| at(e.message().to_string()))?;
        let output_dir = match top.remove("output_dir") {
            Some(Value::String(s)) => PathBuf::from(s),
            Some(other) => return Err(at(format!("output_dir must be a path, not {other}"))),
            None => return Err(at("no output_dir: where the cells' runs go".into())),
        };
        let base = match top.remove("base") {
            Some(Value::Table(t)) => t,
            Some(_) => return Err(at("[base] must be a table of settings".into())),
            None => Table::new(),
        };
        let mut grid = match top.remove("grid") {
            Some(Value::Table(t)) => t,
            Some(_) => return Err(at("[grid] must be a table of settings and lists".into())),
            None => Table::new(),
        };
        if let Some(key) = top.keys().next() {
            return Err(at(format!(
                "unknown key `{key}`; a plan has output_dir, [base] and [grid]"
            )));
        }
        for key in ["output_dir", "seeds", "resume", "overwrite"] {
            if base.contains_key(key) || grid.contains_key(key) {
                return Err(at(format!(
                    "`{key}` is not a setting of a cell: the plan's output_dir holds the runs, \
                     and list seeds as `seed = [...]` under [grid]"
                )));
            }
        }
        let mut base = base;
        let base_recipe = recipe(base.remove("recipe"), "[base]", path, &at)?;
        let methods = methods(grid.remove("method"), path, &at)?;
        let shared = axes(&grid, "[grid]", &at)?;
        let methods: Vec<Entry> = methods
            .into_iter()
            .map(|mut m| {
                let mut ax: Axes = shared.clone();
                for (k, v) in m.axes {
                    match ax.iter_mut().find(|(key, _)| *key == k) {
                        Some(slot) => slot.1 = v,
                        None => ax.push((k, v)),
                    }
                }
                order(&mut ax);
                m.axes = ax;
                m
            })
            .collect();
        // Counted before one is built: ten keys of ten values are 10^10 cells in 700 bytes.
        let count = count(methods.iter().map(|m| &m.axes));
        if count.is_none_or(|n| n > MAX_CELLS) {
            let n = count.map_or_else(|| format!("more than {}", usize::MAX), |n| n.to_string());
            return Err(at(format!(
                "the plan makes {n} cells (the product of its lists' lengths, per method); \
                 a plan holds at most {MAX_CELLS}: split it into several plans"
            )));
        }
        let mut cells: Vec<Cell> = Vec::new();
        let mut named: HashMap<String, usize> = HashMap::new();
        for Entry {
            name: method,
            recipe: own_recipe,
            fixed,
            axes: ax,
        } in methods
        {
            // The recipe, then [base], then the method's own values, then the grid's.
            let mut start = own_recipe
                .or_else(|| base_recipe.clone())
                .unwrap_or_default();
            start.extend(base.clone());
            start.extend(fixed);
            for combo in product(&ax) {
                let mut table = start.clone();
                let mut values = Vec::new();
                if let Some(m) = &method {
                    table.insert("method".into(), Value::String(m.clone()));
                    values.push(("method".to_string(), m.clone()));
                }
                for ((key, _), v) in ax.iter().zip(&combo) {
                    table.insert(key.clone(), v.clone());
                    values.push((key.clone(), shown(v)));
                }
                let index = cells.len();
                let cfg = resolve(table.clone(), &output_dir, "", index, path)?;
                let name = name(&cfg, &values)?;
                let cfg = resolve(table, &output_dir, &name, index, path)?;
                if let Some(same) = named.insert(name.clone(), index) {
                    return Err(at(format!(
                        "cells {same} and {index} have the same settings ({name}): a value is \
                         listed twice"
                    )));
                }
                cells.push(Cell {
                    index,
                    name,
                    values,
                    cfg,
                });
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            output_dir,
            cells,
        })
    }

    pub fn cell(&self, index: usize) -> Result<&Cell> {
        self.cells.get(index).ok_or_else(|| {
            user(format!(
                "{}: no cell {index}; the plan has {} (0 to {})",
                self.path.display(),
                self.cells.len(),
                self.cells.len().saturating_sub(1)
            ))
        })
    }
}

/// A method of the plan (None: the base's) with what it sets: a recipe, single values
/// and the settings it crosses.
struct Entry {
    name: Option<String>,
    recipe: Option<Table>,
    fixed: Table,
    axes: Axes,
}

impl Entry {
    fn named(name: Option<String>) -> Self {
        Entry {
            name,
            recipe: None,
            fixed: Table::new(),
            axes: Vec::new(),
        }
    }
}

/// `method` under [grid]: a list of names, a table of names with settings of their own,
/// or absent (the base's method).
fn methods(
    v: Option<Value>,
    plan: &Path,
    at: &impl Fn(String) -> anyhow::Error,
) -> Result<Vec<Entry>> {
    match v {
        None => Ok(vec![Entry::named(None)]),
        Some(Value::Array(names)) => names
            .into_iter()
            .map(|n| match n {
                Value::String(s) => Ok(Entry::named(Some(s))),
                other => Err(at(format!("[grid] method: `{other}` is not a method name"))),
            })
            .collect(),
        Some(Value::Table(t)) => t
            .into_iter()
            .map(|(m, own)| match own {
                Value::Table(mut own) => {
                    let table = format!("[grid.method.{m}]");
                    let recipe = recipe(own.remove("recipe"), &table, plan, at)?;
                    let (lists, fixed): (Table, Table) =
                        own.into_iter().partition(|(k, v)| is_axis(k, v));
                    Ok(Entry {
                        name: Some(m.clone()),
                        recipe,
                        fixed,
                        axes: axes(&lists, &table, at)?,
                    })
                }
                _ => Err(at(format!("[grid.method.{m}] must be a table of settings"))),
            })
            .collect(),
        Some(other) => Err(at(format!(
            "[grid] method must be a list of methods or a table of them, not {other}"
        ))),
    }
}

/// A `recipe = "NAME"` value: a built-in recipe's settings, or a TOML file's (relative to
/// the plan's folder), as a table the cell's settings go over.
fn recipe(
    v: Option<Value>,
    table: &str,
    plan: &Path,
    at: &impl Fn(String) -> anyhow::Error,
) -> Result<Option<Table>> {
    let name = match v {
        None => return Ok(None),
        Some(Value::String(s)) => s,
        Some(other) => {
            return Err(at(format!(
                "{table} recipe = {other}: a recipe is a name (`recipe = \"full\"`) or a file"
            )))
        }
    };
    let text = match RECIPES.iter().find(|(n, _)| *n == name) {
        Some((_, text)) => text.to_string(),
        None => {
            let file = plan.parent().unwrap_or(Path::new(".")).join(&name);
            std::fs::read_to_string(&file).map_err(|e| {
                at(format!(
                    "{table} recipe = \"{name}\": neither a built-in recipe ({}) nor a \
                     readable file {}: {e}",
                    RECIPES
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", "),
                    file.display()
                ))
            })?
        }
    };
    let t: Table = toml::from_str(&text)
        .map_err(|e| at(format!("{table} recipe \"{name}\": {}", e.message())))?;
    Ok(Some(t))
}

/// Whether a setting's value in a plan is a list of values to cross. A setting that takes
/// a list itself (`lora_targets = ["query", "value"]`) is crossed only as a list of lists.
fn is_axis(key: &str, v: &Value) -> bool {
    let takes_list = Overrides::from_toml_text(&format!("{key} = []"), Path::new("")).is_ok();
    v.as_array()
        .is_some_and(|a| !takes_list || a.iter().all(Value::is_array))
}

fn axes(t: &Table, table: &str, at: &impl Fn(String) -> anyhow::Error) -> Result<Axes> {
    t.iter()
        .map(|(k, v)| match v {
            Value::Array(a) if !a.is_empty() && !is_axis(k, v) => Err(at(format!(
                "{table} {k}: the setting takes a list, so one list is one value: cross \
                 several as a list of lists (`{k} = [[\"query\"], [\"query\", \"value\"]]`), \
                 and put one under [base] or the method's table"
            ))),
            Value::Array(a) if !a.is_empty() => Ok((k.clone(), a.clone())),
            Value::Array(_) => Err(at(format!("{table} {k}: an empty list makes no cells"))),
            other => Err(at(format!(
                "{table} {k} = {other}: grid values are lists (`{k} = [{other}]`); a single \
                 value goes under [base]"
            ))),
        })
        .collect()
}

/// The most cells a plan may make. A paper's grid is thousands (8 tasks × 10 methods × 6
/// learning rates × 5 seeds is 2,400), and Kubernetes caps an indexed Job at 100,000
/// completions; each cell is a training run of minutes at least, so a plan above this is
/// a mistake. Every cell's settings are resolved and held to list them: at the bound,
/// `--list` takes some 10 s and 600 MB.
pub const MAX_CELLS: usize = 100_000;

/// How many cells the methods' axes make, without making them: None past `usize`.
fn count<'a>(mut methods: impl Iterator<Item = &'a Axes>) -> Option<usize> {
    methods.try_fold(0usize, |total, ax| {
        let cells = ax
            .iter()
            .try_fold(1usize, |n, (_, values)| n.checked_mul(values.len()))?;
        total.checked_add(cells)
    })
}

/// Alphabetical, `seed` last: seeds of one setting sit together.
fn order(ax: &mut Axes) {
    ax.sort_by(|a, b| (a.0 == "seed", &a.0).cmp(&(b.0 == "seed", &b.0)));
}

/// The cross product, the first axis varying slowest.
fn product(ax: &Axes) -> Vec<Vec<Value>> {
    ax.iter().fold(vec![Vec::new()], |acc, (_, values)| {
        acc.iter()
            .flat_map(|prefix| {
                values.iter().map(move |v| {
                    let mut p = prefix.clone();
                    p.push(v.clone());
                    p
                })
            })
            .collect()
    })
}

fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(shown).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// A cell's settings resolved as `peft train --config` would resolve them, its runs in
/// `output_dir/name`.
fn resolve(
    mut table: Table,
    output_dir: &Path,
    name: &str,
    index: usize,
    path: &Path,
) -> Result<TrainConfig> {
    table.insert(
        "output_dir".into(),
        Value::String(output_dir.join(name).to_string_lossy().into_owned()),
    );
    let text = toml::to_string(&table)?;
    let o = Overrides::from_toml_text(&text, path)
        .and_then(crate::run::setup::with_init)
        .and_then(|o| o.resolve())
        .map_err(|e| user(format!("{}: cell {index}: {e}", path.display())))?;
    Ok(o)
}

/// `<task>-<method>-<key><value>...-<hash>`: what tells the cell apart at a glance, and
/// the hash of everything else.
fn name(cfg: &TrainConfig, values: &[(String, String)]) -> Result<String> {
    // The flat keys, as config.json held them before they were grouped: the same cell
    // keeps its name across that change.
    let mut json = serde_json::to_value(cfg.flat())?;
    if let Some(o) = json.as_object_mut() {
        o.remove("output_dir");
    }
    // serde_json's map is ordered by key: the same settings, the same bytes.
    let digest = Sha256::digest(json.to_string().as_bytes());
    let hash: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    let mut parts = vec![cfg.data.task.clone(), cfg.method.name.to_string()];
    parts.extend(
        values
            .iter()
            .filter(|(k, _)| k != "task" && k != "method")
            .map(|(k, v)| format!("{k}{v}")),
    );
    parts.push(hash);
    let safe: String = parts
        .join("-")
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' | '+' | '-' | ',' => c,
            _ => '_',
        })
        .collect();
    Ok(safe)
}

/// The plan's cells as `grid.json` in its output_dir records them: index, run directory
/// and grid values. `peft report` reads runs, not this; it is for people and scripts.
pub fn index_json(plan: &Plan) -> serde_json::Value {
    let cells: Vec<serde_json::Value> = plan
        .cells
        .iter()
        .map(|c| {
            let values: BTreeMap<&str, &str> = c
                .values
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            serde_json::json!({ "index": c.index, "dir": c.cfg.output.output_dir, "values": values })
        })
        .collect();
    serde_json::json!({ "plan": plan.path, "cells": cells })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(text: &str) -> Result<Plan> {
        Plan::parse(text, Path::new("plan.toml"))
    }

    const ISSUE: &str = r#"
output_dir = "runs/grid"
[base]
model = "sentence-transformers/all-MiniLM-L6-v2"
task = "rte"
epochs = 5
[grid]
method = ["layernorm", "bitfit"]
seed = [1, 2, 3]
"#;

    #[test]
    fn the_cross_product_in_its_documented_order() {
        let p = plan(ISSUE).unwrap();
        let got: Vec<(String, u64)> = p
            .cells
            .iter()
            .map(|c| (c.cfg.method.name.to_string(), c.cfg.optimisation.seed))
            .collect();
        let want: Vec<(String, u64)> = ["layernorm", "bitfit"]
            .iter()
            .flat_map(|m| (1..=3).map(move |s| (m.to_string(), s)))
            .collect();
        assert_eq!(got, want);
        assert!(p
            .cells
            .iter()
            .all(|c| c.cfg.optimisation.epochs == 5 && c.cfg.data.task == "rte"));
        assert!(
            p.cells[0].name.starts_with("rte-layernorm-seed1-"),
            "{}",
            p.cells[0].name
        );
        assert_eq!(
            p.cells[4].cfg.output.output_dir,
            Path::new("runs/grid").join(&p.cells[4].name)
        );
        // The same plan names the same directories; another base setting, others.
        let again = plan(ISSUE).unwrap();
        assert_eq!(p.cells[2].name, again.cells[2].name);
        let changed = plan(&ISSUE.replace("epochs = 5", "epochs = 6")).unwrap();
        assert_ne!(p.cells[2].name, changed.cells[2].name);
    }

    #[test]
    fn per_method_settings_and_alphabetical_keys_with_seed_last() {
        let p = plan(
            r#"
output_dir = "g"
[base]
model = "m"
[grid]
task = ["rte", "stsb"]
seed = [1, 2]
lr = [1e-3]
[grid.method.bitfit]
[grid.method.lora]
lr = [5e-4, 1e-3]
lora_r = [4]
"#,
        )
        .unwrap();
        let rows: Vec<String> = p
            .cells
            .iter()
            .map(|c| {
                let v: Vec<String> = c.values.iter().map(|(k, v)| format!("{k}={v}")).collect();
                v.join(" ")
            })
            .collect();
        assert_eq!(rows.len(), 2 * 2 + 2 * 2 * 2);
        assert_eq!(rows[0], "method=bitfit lr=0.001 task=rte seed=1");
        assert_eq!(rows[3], "method=bitfit lr=0.001 task=stsb seed=2");
        assert_eq!(rows[4], "method=lora lora_r=4 lr=0.0005 task=rte seed=1");
        assert_eq!(rows[11], "method=lora lora_r=4 lr=0.001 task=stsb seed=2");
        assert_eq!(p.cells[4].cfg.method.lora.as_ref().unwrap().r, 4);
    }

    #[test]
    fn recipes_then_base_then_the_methods_values_then_the_grids() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join("mine.toml"),
            "lr = 7e-4\nwarmup_ratio = 0.2\n",
        )
        .unwrap();
        let text = r#"
output_dir = "g"
[base]
model = "m"
task = "rte"
epochs = 2
recipe = "mine.toml"
[grid]
seed = [1, 2]
[grid.method.child-d]
recipe = "child-tuning-d"
reserve = 0.2
[grid.method.full]
recipe = "full"
lr = [1e-5, 2e-5]
[grid.method.bitfit]
"#;
        let p = Plan::parse(text, &tmp.path().join("plan.toml")).unwrap();
        assert_eq!(p.cells.len(), 2 + 2 + 4);
        // Methods written as tables come in name order: bitfit, child-d, full.
        let (d, o) = (&p.cells[2].cfg, &p.cells[2].cfg.optimisation);
        assert_eq!(d.method.name.to_string(), "child-d");
        // The recipe's lr and batch, [base]'s epochs over its 3, the method's reserve over
        // its 0.3.
        assert_eq!((o.lr, o.batch_size, o.epochs), (4e-5, 16, 2));
        assert_eq!(d.method.child_tuning.as_ref().unwrap().reserve, 0.2);
        let lrs: Vec<f64> = p.cells[4..].iter().map(|c| c.cfg.optimisation.lr).collect();
        assert_eq!(lrs, [1e-5, 1e-5, 2e-5, 2e-5]);
        assert_eq!(p.cells[4].cfg.optimisation.warmup_ratio, 0.1);
        // A method without a recipe of its own takes [base]'s, a file beside the plan.
        let b = &p.cells[0].cfg.optimisation;
        assert_eq!((b.lr, b.warmup_ratio, b.epochs), (7e-4, 0.2, 2));
        let e = plan("output_dir='g'\n[grid.method.full]\nrecipe='nope'")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("[grid.method.full] recipe = \"nope\"") && e.contains("child-tuning-d"),
            "{e}"
        );
    }

    #[test]
    fn a_list_is_one_value_of_a_setting_that_takes_a_list() {
        let p = plan(
            r#"
output_dir = "g"
[base]
model = "m"
task = "rte"
[grid.method.lora]
lora_targets = [["query"], ["key", "value"]]
lora_r = 4
[grid.method.ina]
ina_targets = ["query", "key"]
"#,
        )
        .unwrap();
        let got: Vec<String> = p
            .cells
            .iter()
            .map(|c| {
                let m = &c.cfg.method;
                match (&m.ina, &m.lora) {
                    (Some(i), _) => format!("ina {}", i.targets.join(",")),
                    (_, Some(l)) => format!("lora r{} {}", l.r, l.targets.join(",")),
                    _ => unreachable!(),
                }
            })
            .collect();
        assert_eq!(got, ["ina query,key", "lora r4 query", "lora r4 key,value"]);
        assert!(!p.cells[0].name.contains("targets"), "{}", p.cells[0].name);
        let e = plan("output_dir='g'\n[base]\nmodel='m'\ntask='rte'\nmethod='lora'\n[grid]\nlora_targets=['query','key']")
            .unwrap_err()
            .to_string();
        assert!(e.contains("list of lists"), "{e}");
    }

    #[test]
    fn plan_errors_name_the_key() {
        let err = |t: &str| plan(t).unwrap_err().to_string();
        assert!(err("[grid]\nseed=[1]").contains("no output_dir"));
        assert!(err("output_dir='g'\n[grid]\nseed=1").contains("grid values are lists"));
        assert!(err("output_dir='g'\n[grid]\nseed=[]").contains("empty list"));
        assert!(err("output_dir='g'\nfoo=1").contains("unknown key `foo`"));
        let e = err("output_dir='g'\n[base]\nmodel='m'\ntask='rte'\n[grid]\nlrr=[1]");
        assert!(e.contains("cell 0") && e.contains("lrr"), "{e}");
        let e = err("output_dir='g'\n[base]\nmodel='m'\ntask='rte'\n[grid]\nseed=[1,1]");
        assert!(e.contains("listed twice"), "{e}");
        assert!(err("output_dir='g'\n[grid]\nseeds=[1]").contains("seed = [...]"));
    }

    #[test]
    fn cells_are_counted_before_they_are_built() {
        // Ten keys of ten values: 10^10 cells in a few hundred bytes, refused at once.
        let mut text = "output_dir='g'\n[base]\nmodel='m'\ntask='rte'\n[grid]\n".to_string();
        for k in [
            "lr",
            "seed",
            "epochs",
            "batch_size",
            "lora_r",
            "lora_alpha",
            "warmup_ratio",
            "weight_decay",
            "max_seq_len",
            "grad_accum",
        ] {
            text.push_str(&format!(
                "{k} = [{}]\n",
                (1..=10)
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let t0 = std::time::Instant::now();
        let e = plan(&text).unwrap_err();
        assert!(crate::error::is_user_error(&e));
        let e = e.to_string();
        assert!(
            e.contains("plan.toml") && e.contains("10000000000 cells"),
            "{e}"
        );
        assert!(t0.elapsed().as_secs() < 5);
        // Per method, summed; past usize, still refused.
        let ax = |lens: &[usize]| -> Axes {
            lens.iter()
                .map(|&n| ("k".to_string(), vec![Value::Integer(0); n]))
                .collect()
        };
        assert_eq!(count([ax(&[2, 3]), ax(&[4]), ax(&[])].iter()), Some(11));
        let huge: Axes = (0..70)
            .map(|_| ("k".to_string(), vec![Value::Integer(0); 2]))
            .collect();
        assert_eq!(count([huge].iter()), None);
    }
}
