//! The layers of `src/` only look down, and no module or file imports its way back to
//! itself (docs/architecture.md). Every `crate::…` and `super::…` path in the code, tests
//! included, is an import edge from its file to the module file it names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules from the bottom up; a module may use its own layer (without a cycle)
/// and the layers below, never one above.
const LAYERS: &[&[&str]] = &[
    &["error", "stats", "device", "hub"],
    &["kernels"],
    &["model", "loss"],
    &["methods", "optim", "tokenize"],
    &["data", "metrics"],
    &["settings"],
    &["run"],
    &["eval", "fisher", "embed", "components"],
    &["train", "bench", "grid"],
    &["report", "serve"],
    &["cli"],
];

type Module = Vec<String>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/run/dir.rs` → [run, dir]; `src/run/mod.rs` → [run]; lib.rs and main.rs → [].
fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Module = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|l| l == "mod") {
        parts.pop();
    }
    if parts == ["lib"] || parts == ["main"] {
        parts.clear();
    }
    parts
}

/// The code without comments (a path in a comment imports nothing).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Every path after `crate::` (expanding one level of `{a, b::c}`) and after `super::`.
fn paths(code: &str, me: &Module) -> Vec<Module> {
    let mut out = Vec::new();
    for (prefix, base) in [
        ("crate::", Vec::new()),
        ("super::", {
            let mut p = me.clone();
            p.pop();
            p
        }),
    ] {
        let mut rest = code;
        while let Some(i) = rest.find(prefix) {
            let before = rest[..i].chars().last();
            rest = &rest[i + prefix.len()..];
            if before.is_some_and(ident_char) {
                continue;
            }
            let end = rest
                .find(|c: char| !(ident_char(c) || c == ':'))
                .unwrap_or(rest.len());
            let head: Vec<String> = rest[..end]
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            let mut full = base.clone();
            full.extend(head.iter().cloned());
            out.push(full.clone());
            if rest[end..].starts_with('{') {
                let close = rest[end..].find('}').map_or(rest.len(), |j| end + j);
                for item in rest[end + 1..close].split(',') {
                    let name: String = item
                        .trim()
                        .chars()
                        .take_while(|c| ident_char(*c) || *c == ':')
                        .collect();
                    if !name.is_empty() && name != "self" {
                        let mut p = full.clone();
                        p.extend(name.split("::").map(str::to_string));
                        out.push(p);
                    }
                }
            }
        }
    }
    out
}

/// The longest prefix of `path` that is a module file.
fn resolve(path: &Module, modules: &BTreeSet<Module>) -> Option<Module> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| modules.contains(p))
}

fn graph() -> BTreeMap<Module, BTreeSet<Module>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<Module> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for f in &files {
        let me = module_of(&src, f);
        let text = code(&std::fs::read_to_string(f).unwrap());
        let to = edges.entry(me.clone()).or_default();
        for p in paths(&text, &me) {
            if let Some(m) = resolve(&p, &modules) {
                if m != me {
                    to.insert(m);
                }
            }
        }
    }
    edges
}

/// A cycle through `start`, if any, as a list of nodes.
fn cycle<N: Ord + Clone>(g: &BTreeMap<N, BTreeSet<N>>) -> Option<Vec<N>> {
    fn visit<N: Ord + Clone>(
        n: &N,
        g: &BTreeMap<N, BTreeSet<N>>,
        done: &mut BTreeSet<N>,
        stack: &mut Vec<N>,
    ) -> Option<Vec<N>> {
        if let Some(i) = stack.iter().position(|s| s == n) {
            return Some(stack[i..].to_vec());
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.clone());
        for m in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, g, done, stack) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.clone());
        None
    }
    let mut done = BTreeSet::new();
    g.keys()
        .find_map(|n| visit(n, g, &mut done, &mut Vec::new()))
}

#[test]
fn no_file_imports_its_way_back_to_itself() {
    let g = graph();
    assert!(g.len() > 40, "found only {} files", g.len());
    let c = cycle(&g).map(|c| c.iter().map(|m| m.join("/")).collect::<Vec<_>>());
    assert_eq!(c, None, "an import cycle between files");
}

#[test]
fn layers_only_look_down() {
    let layer = |m: &str| LAYERS.iter().position(|l| l.contains(&m));
    let mut top: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, tos) in graph() {
        let Some(a) = from.first() else { continue };
        for to in tos {
            if to[0] != *a {
                top.entry(a.clone()).or_default().insert(to[0].clone());
            }
        }
    }
    for (from, tos) in &top {
        let lf = layer(from).unwrap_or_else(|| panic!("src/{from} is in no layer of LAYERS"));
        for to in tos {
            let lt = layer(to).unwrap_or_else(|| panic!("src/{to} is in no layer of LAYERS"));
            assert!(
                lt <= lf,
                "{from} (layer {lf}) uses {to} (layer {lt}), a layer above it"
            );
        }
    }
    assert_eq!(
        cycle(&top),
        None,
        "an import cycle between top-level modules"
    );
}

/// The scan itself: a cycle it should see, and `{a, b::c}` groups it should expand.
#[test]
fn the_scan_sees_grouped_imports_and_cycles() {
    let me: Module = vec!["x".into(), "y".into()];
    let p = paths("use crate::{data::Source, run::dir};\nsuper::z::f();", &me);
    let shown: Vec<String> = p.iter().map(|m| m.join("::")).collect();
    for want in ["data::Source", "run::dir", "x::z::f"] {
        assert!(shown.contains(&want.to_string()), "{shown:?}");
    }
    let g: BTreeMap<u8, BTreeSet<u8>> = [(1, [2].into()), (2, [3].into()), (3, [1].into())]
        .into_iter()
        .collect();
    assert!(cycle(&g).is_some());
}
