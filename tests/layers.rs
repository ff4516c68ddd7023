//! The crate's data flows one way: `model -> split -> weights -> engine ->
//! net -> session -> serve -> cli` (with the generic `window` I/O beside `model`). This test reads every `src/` file
//! (its code before `#[cfg(test)]`), collects the `crate::<module>` paths
//! it names, and fails on a module that reaches a later layer, on a cycle
//! between top-level modules, and on a cycle between the files of one
//! folder. Run it alone with `cargo test --test integration layers`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module's layer: a module may name only modules of its
/// own or an earlier layer (and its own layer without a cycle).
/// The window is generic I/O (byte ranges of one file through a ring of
/// slots) and knows no model, so it sits beside `model`, below the split
/// whose reader verifies slices through it.
const LAYERS: &[(&str, usize)] = &[
    ("codec", 0),
    ("progress", 0),
    ("sys", 0),
    ("model", 1),
    ("window", 1),
    ("split", 2),
    ("weights", 3),
    ("engine", 4),
    ("net", 5),
    ("session", 6),
    ("error", 6),
    ("ui", 7),
    ("serve", 7),
    ("cli", 8),
];

fn layer(m: &str) -> Option<usize> {
    LAYERS.iter().find(|(n, _)| *n == m).map(|&(_, l)| l)
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src").flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file: `src/net/join/hub.rs` -> ["net", "join", "hub"],
/// `src/net/mod.rs` -> ["net"].
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The code of a file before its unit tests, comments dropped (nothing
/// for a file that is test-only, `#![cfg(test)]`).
fn code(file: &Path) -> String {
    let text = std::fs::read_to_string(file).expect("read file");
    if text.lines().any(|l| l.trim() == "#![cfg(test)]") {
        return String::new();
    }
    text.lines()
        .take_while(|l| !l.trim_start().starts_with("#[cfg(test)]"))
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths `file` names: `crate::a::b` as ["a", "b"], `super::x` resolved
/// against `module`; `use crate::{a, b}` groups included.
fn named_paths(module: &[String], code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    // `a::b::C;` -> [a, b, C]: a segment followed by anything but `::` ends it.
    let ident = |s: &str| -> Vec<String> {
        let mut v = Vec::new();
        for p in s.split("::") {
            let w: String = p
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let ends = w.len() < p.len();
            if w.is_empty() {
                break;
            }
            v.push(w);
            if ends {
                break;
            }
        }
        v
    };
    // `super` of a file is its folder; of a mod.rs (whose module path
    // names the folder), the folder's parent: one up either way.
    let mut parent = module.to_vec();
    parent.pop();
    for (prefix, base) in [("crate::", Vec::new()), ("super::", parent)] {
        let mut rest = code;
        while let Some(i) = rest.find(prefix) {
            let before = rest[..i].chars().last();
            rest = &rest[i + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            if let Some(group) = rest.strip_prefix('{') {
                for item in group.split('}').next().unwrap_or("").split(',') {
                    let mut p = base.clone();
                    p.extend(ident(item.trim()));
                    out.push(p);
                }
            } else {
                let mut p = base.clone();
                p.extend(ident(rest));
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn modules_import_only_earlier_layers_and_no_cycles() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut top: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut sibling: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    let mut problems = Vec::new();
    for f in &files {
        let m = module_of(&src, f);
        let Some(own) = m.first().cloned() else {
            continue; // lib.rs, main.rs
        };
        if own == "lib" || own == "main" {
            continue;
        }
        if layer(&own).is_none() {
            problems.push(format!(
                "src/{own}: not in the layer table of tests/layers.rs"
            ));
            continue;
        }
        let is_mod_rs = f.file_name().is_some_and(|n| n == "mod.rs");
        for p in named_paths(&m, &code(f)) {
            let Some(first) = p.first() else { continue };
            if *first != own && layer(first).is_some() {
                top.entry(own.clone()).or_default().insert(first.clone());
                if layer(first) > layer(&own) {
                    problems.push(format!(
                        "{}: names crate::{} (layer {:?}) from layer {:?}",
                        f.strip_prefix(&src).unwrap().display(),
                        p.join("::"),
                        layer(first),
                        layer(&own)
                    ));
                }
            }
            // Sibling files of one folder: the longest module the path names.
            let target = (1..=p.len())
                .rev()
                .map(|n| p[..n].to_vec())
                .find(|c| modules.contains(c));
            if let Some(t) = target {
                let same_folder = t.len() == m.len() && t[..t.len() - 1] == m[..m.len() - 1];
                if same_folder && t != m && !is_mod_rs {
                    sibling.entry(m.clone()).or_default().insert(t);
                }
            }
        }
    }
    // Cycles between top-level modules, and between files of a folder.
    fn cycle<T: Ord + Clone + std::fmt::Debug>(g: &BTreeMap<T, BTreeSet<T>>) -> Option<Vec<T>> {
        fn visit<T: Ord + Clone>(
            n: &T,
            g: &BTreeMap<T, BTreeSet<T>>,
            stack: &mut Vec<T>,
            done: &mut BTreeSet<T>,
        ) -> Option<Vec<T>> {
            if let Some(i) = stack.iter().position(|s| s == n) {
                return Some(stack[i..].to_vec());
            }
            if done.contains(n) {
                return None;
            }
            stack.push(n.clone());
            for m in g.get(n).into_iter().flatten() {
                if let Some(c) = visit(m, g, stack, done) {
                    return Some(c);
                }
            }
            stack.pop();
            done.insert(n.clone());
            None
        }
        let mut done = BTreeSet::new();
        g.keys()
            .find_map(|n| visit(n, g, &mut Vec::new(), &mut done))
    }
    if let Some(c) = cycle(&top) {
        problems.push(format!("cycle between modules: {c:?}"));
    }
    if let Some(c) = cycle(&sibling) {
        problems.push(format!("cycle between files of one folder: {c:?}"));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
