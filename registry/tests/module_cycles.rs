//! The registry's modules form layers (see `src/lib.rs`): this test fails
//! when a module imports, directly or through others, a module that
//! imports it back, and names the cycle with the lines that close it.
//!
//! Two graphs are checked: one over the top-level modules (`store`, `sync`,
//! `http`, …) and, inside each folder, one over its direct children
//! (`store::index`, `store::objects`, …). Edges come from `crate::…` paths
//! (also inside `use crate::{…}` groups) and `super::…` paths in the source,
//! with the flat compatibility aliases of `lib.rs` (`pub use a::b;`)
//! resolved to the module they name. Comments are ignored, and so are
//! files named `tests.rs`: a module's tests may drive the whole crate (the
//! sync handler tests go through `http::server::app`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path of a source file relative to `src/`: `store/index/mod.rs`
/// → `["store", "index"]`, `tar/mod.rs` → `["tar"]`, `lib.rs` → `[]`.
fn module_path(rel: &str) -> Vec<String> {
    let rel = rel.strip_suffix(".rs").expect("a .rs file");
    let mut parts: Vec<String> = rel.split('/').map(str::to_owned).collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// `lib.rs` aliases: `pub use a::b;`, `pub use a::{b, c};`,
/// `pub use a::b as c;` → name → module path.
fn aliases(lib: &str) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for line in lib.lines() {
        let Some(rest) = line.trim().strip_prefix("pub use ") else {
            continue;
        };
        let rest = rest.trim_end_matches(';');
        for path in expand(rest) {
            let (path, name) = match path.split_once(" as ") {
                Some((p, n)) => (p.to_owned(), n.trim().to_owned()),
                None => {
                    let name = path.rsplit("::").next().unwrap_or_default().to_owned();
                    (path.clone(), name)
                }
            };
            let segs: Vec<String> = path.split("::").map(|s| s.trim().to_owned()).collect();
            out.insert(name, segs);
        }
    }
    out
}

/// Expand one `use` tree (`a::{b, c::{d, e}}`) into its flat paths.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        return vec![tree.to_owned()];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut out = Vec::new();
    let (mut depth, mut start) = (0, 0);
    let bytes = inner.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'{' => depth += 1,
            b'}' => depth -= 1,
            b',' if depth == 0 => {
                out.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&inner[start..]);
    out.into_iter()
        .filter(|s| !s.trim().is_empty())
        .flat_map(expand)
        .map(|s| format!("{prefix}{s}"))
        .collect()
}

/// The `use` tree or path at the start of `text` (just after `crate::` or
/// `super::`), up to where a path cannot continue.
fn path_at(text: &str) -> String {
    let mut depth = 0;
    let mut end = text.len();
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                end = i;
                break;
            }
            '}' => depth -= 1,
            c if depth == 0 && !(c.is_alphanumeric() || c == '_' || c == ':') => {
                end = i;
                break;
            }
            _ => {}
        }
    }
    text[..end].to_owned()
}

/// One import: from module path, to module path, where (file:line).
type Edge = (Vec<String>, Vec<String>, String);

/// Every `crate::`/`super::` path in `files` (relative path, text) as an
/// edge between module paths, `lib.rs` aliases resolved.
fn edges(files: &[(String, String)]) -> Vec<Edge> {
    let lib = files
        .iter()
        .find(|(p, _)| p == "lib.rs")
        .map(|(_, t)| t.as_str())
        .unwrap_or("");
    let alias = aliases(lib);
    let mut out = Vec::new();
    for (rel, text) in files {
        if rel == "lib.rs" || rel == "main.rs" || rel.ends_with("tests.rs") {
            continue;
        }
        let from = module_path(rel);
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            let mut rest = code;
            loop {
                // The first `crate::` or `super::` left on the line.
                let (i, is_crate) = match (rest.find("crate::"), rest.find("super::")) {
                    (Some(c), Some(s)) if s < c => (s, false),
                    (Some(c), _) => (c, true),
                    (None, Some(s)) => (s, false),
                    (None, None) => break,
                };
                let preceded_by_ident = rest[..i]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
                let tail = &rest[i..];
                rest = &rest[i + 7..];
                if preceded_by_ident {
                    continue;
                }
                let (base, tail) = if is_crate {
                    (Vec::new(), &tail[7..])
                } else {
                    // A chain of `super::` from this file's module.
                    let mut base = from.clone();
                    let mut t = tail;
                    while let Some(r) = t.strip_prefix("super::") {
                        base.pop();
                        t = r;
                    }
                    (base, t)
                };
                for path in expand(&path_at(tail)) {
                    let mut segs: Vec<String> = path
                        .split("::")
                        .map(|s| s.split(" as ").next().unwrap_or("").trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .collect();
                    if base.is_empty() {
                        if let Some(target) = segs.first().and_then(|s| alias.get(s)) {
                            segs.splice(0..1, target.iter().cloned());
                        }
                    }
                    let mut to = base.clone();
                    to.extend(segs);
                    out.push((from.clone(), to, format!("src/{rel}:{}", n + 1)));
                }
            }
        }
    }
    out
}

/// The first cycle in `graph`, as the list of nodes around it.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        mark: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        mark.insert(n.to_owned(), Mark::Open);
        stack.push(n.to_owned());
        for m in graph.get(n).into_iter().flatten() {
            match mark.get(m).copied().unwrap_or(Mark::New) {
                Mark::Open => {
                    let start = stack.iter().position(|s| s == m).expect("on the stack");
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = visit(m, graph, mark, stack) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        mark.insert(n.to_owned(), Mark::Done);
        None
    }
    let mut mark = BTreeMap::new();
    for n in graph.keys() {
        if mark.get(n).copied().unwrap_or(Mark::New) == Mark::New {
            if let Some(c) = visit(n, graph, &mut mark, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

/// Check both levels; `Err` names every cycle found with the lines that
/// make each of its edges.
fn check(files: &[(String, String)]) -> Result<(), String> {
    let modules: BTreeSet<Vec<String>> = files.iter().map(|(p, _)| module_path(p)).collect();
    let is_module = |p: &[String]| modules.iter().any(|m| m.as_slice() == p);
    // Graphs keyed by level: "" = top level, "store" = inside store/, ….
    let mut graphs: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    let mut why: BTreeMap<(String, String), String> = BTreeMap::new();
    for (from, to, at) in edges(files) {
        let (Some(f0), Some(t0)) = (from.first(), to.first()) else {
            continue;
        };
        let level_edge = if f0 != t0 {
            Some((String::new(), f0.clone(), t0.clone()))
        } else if from.len() >= 2 && to.len() >= 2 && from[1] != to[1] {
            Some((f0.clone(), from[..2].join("::"), to[..2].join("::")))
        } else {
            None
        };
        let Some((level, a, b)) = level_edge else {
            continue;
        };
        let target: Vec<String> = b.split("::").map(str::to_owned).collect();
        if !is_module(&target) {
            continue; // an item, not a module (e.g. `super::Thing` in a top-level file)
        }
        graphs
            .entry(level)
            .or_default()
            .entry(a.clone())
            .or_default()
            .insert(b.clone());
        why.entry((a, b)).or_insert(at);
    }
    let mut problems = Vec::new();
    for (level, graph) in &graphs {
        // Report every cycle: remove one edge of each found and look again.
        let mut graph = graph.clone();
        while let Some(cycle) = find_cycle(&graph) {
            let steps: Vec<String> = cycle
                .windows(2)
                .map(|w| {
                    let at = why.get(&(w[0].clone(), w[1].clone())).cloned();
                    format!("{} -> {} ({})", w[0], w[1], at.unwrap_or_default())
                })
                .collect();
            let where_ = if level.is_empty() {
                "top-level registry modules".to_owned()
            } else {
                format!("modules inside {level}/")
            };
            problems.push(format!(
                "import cycle between {where_}: {}\n    {}",
                cycle.join(" -> "),
                steps.join("\n    ")
            ));
            if let Some(set) = graph.get_mut(&cycle[0]) {
                set.remove(&cycle[1]);
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

fn read_tree(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    for e in std::fs::read_dir(dir).expect("read src/") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            read_tree(root, &p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let rel = p.strip_prefix(root).expect("under src/");
            let text = std::fs::read_to_string(&p).expect("read source");
            out.push((rel.to_string_lossy().replace('\\', "/"), text));
        }
    }
}

#[test]
fn registry_modules_have_no_import_cycle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    read_tree(&root, &root, &mut files);
    assert!(files.len() > 20, "found only {} source files", files.len());
    if let Err(e) = check(&files) {
        panic!("{e}");
    }
}

fn tree(files: &[(&str, &str)]) -> Vec<(String, String)> {
    files
        .iter()
        .map(|(p, t)| ((*p).to_owned(), (*t).to_owned()))
        .collect()
}

#[test]
fn the_check_finds_and_names_a_cycle() {
    let files = tree(&[
        (
            "lib.rs",
            "pub mod a;\npub mod b;\npub mod c;\npub use c::d;\n",
        ),
        ("a.rs", "use crate::b::Thing;\n"),
        ("b.rs", "use crate::{c::More, config};\n"),
        ("c/mod.rs", "pub mod d;\n"),
        (
            "c/d.rs",
            "// use crate::b; is only a comment\nfn f() { crate::a::g() }\n",
        ),
        ("config.rs", ""),
    ]);
    let err = check(&files).expect_err("a -> b -> c -> a is a cycle");
    assert!(
        err.contains("import cycle between top-level registry modules: a -> b -> c -> a"),
        "{err}"
    );
    assert!(err.contains("a -> b (src/a.rs:1)"), "{err}");
    assert!(err.contains("c -> a (src/c/d.rs:2)"), "{err}");

    // Through a lib.rs alias and inside a folder.
    let files = tree(&[
        ("lib.rs", "pub mod s;\npub use s::{x, y};\n"),
        ("s/mod.rs", "pub mod x;\npub mod y;\n"),
        ("s/x.rs", "use super::y::Y;\n"),
        ("s/y.rs", "use crate::x::X;\n"),
    ]);
    let err = check(&files).expect_err("s::x <-> s::y");
    assert!(
        err.contains("modules inside s/: s::x -> s::y -> s::x"),
        "{err}"
    );

    // No cycle: a module and its parent may use each other; a layer may
    // use any layer below it.
    let files = tree(&[
        ("lib.rs", "pub mod s;\npub mod t;\n"),
        ("s/mod.rs", "pub mod x;\npub use x::X;\n"),
        ("s/x.rs", "use super::Helper;\n"),
        ("t.rs", "use crate::s::{self, x::X};\n"),
    ]);
    check(&files).expect("acyclic");
}
