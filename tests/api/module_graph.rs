//! The module graph has no cycles: no module under `src/` imports from a module that, directly
//! or through others, imports it.
//!
//! Each `.rs` file is a module (`src/a/b.rs` is `crate::a::b`, `src/a/mod.rs` is `crate::a`).
//! A module depends on every module it names in a `use` declaration or in a `crate::…`,
//! `super::…` or `self::…` path, resolved to the longest prefix that is a module file. Declaring
//! a child (`mod child;`) is containment, not a dependency. Unit-test code (from
//! `#[cfg(test)]` on, and `*_tests.rs` files) is left out.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use crate::architecture::rust_files;

type Module = Vec<String>;

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn module_of(file: &Path) -> Module {
    let relative = file.strip_prefix(src()).expect("under src/");
    let mut parts: Module = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_owned());
    }
    parts
}

/// The file's code without comments and unit tests.
fn code_of(source: &str) -> String {
    let mut code = String::new();
    for line in source.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]") {
            break;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        code.push_str(line);
        code.push('\n');
    }
    code
}

/// Expands a `use` tree (`a::{b, c::{d, e}}`) into full paths.
fn expand_use_tree(prefix: &str, tree: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head = tree[..open].trim().trim_end_matches("::");
        let inner = &tree[open + 1..tree.rfind('}').expect("balanced braces")];
        let prefix = join(prefix, head);
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand_use_tree(&prefix, &inner[start..i], out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand_use_tree(&prefix, &inner[start..], out);
    } else if !tree.is_empty() {
        let path = tree.split(" as ").next().unwrap().trim();
        let path = path.trim_end_matches("::*");
        if path != "self" {
            out.push(join(prefix, path));
        } else {
            out.push(prefix.to_owned());
        }
    }
}

fn join(prefix: &str, rest: &str) -> String {
    match (prefix.is_empty(), rest.is_empty()) {
        (true, _) => rest.to_owned(),
        (_, true) => prefix.to_owned(),
        _ => format!("{prefix}::{rest}"),
    }
}

/// Every path the code names: `use` trees, and inline `crate::…`/`super::…`/`self::…` paths.
fn named_paths(code: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut rest = code;
    let mut outside_use = String::new();
    while let Some(at) = find_use(rest) {
        outside_use.push_str(&rest[..at]);
        let after = &rest[at..];
        let body_start = after.find("use ").unwrap() + 4;
        let end = after.find(';').expect("use ends with ;");
        expand_use_tree("", &after[body_start..end], &mut paths);
        rest = &after[end + 1..];
    }
    outside_use.push_str(rest);
    for anchor in ["crate::", "super::", "self::"] {
        let mut text = outside_use.as_str();
        while let Some(at) = text.find(anchor) {
            let before = text[..at].chars().last();
            let path: String = text[at..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            if !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                paths.push(path.trim_end_matches(':').to_owned());
            }
            text = &text[at + anchor.len()..];
        }
    }
    paths
}

/// The start of the next `use` declaration (`use …;` or `pub use …;` at a line start).
fn find_use(code: &str) -> Option<usize> {
    let mut offset = 0;
    for line in code.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let decl = trimmed
            .strip_prefix("pub(crate) ")
            .or_else(|| trimmed.strip_prefix("pub(super) "))
            .or_else(|| trimmed.strip_prefix("pub "))
            .unwrap_or(trimmed);
        if decl.starts_with("use ") {
            return Some(offset + indent + (trimmed.len() - decl.len()));
        }
        offset += line.len();
    }
    None
}

/// Resolves a named path, seen from `module`, to the module file it lands in.
fn resolve(path: &str, module: &Module, modules: &BTreeSet<Module>) -> Option<Module> {
    let mut segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let mut base: Module = match segments.first().copied() {
        Some("crate") => {
            segments.remove(0);
            Vec::new()
        }
        Some("self") => {
            segments.remove(0);
            module.clone()
        }
        Some("super") => {
            // `super` of a file module is its folder's module; of a `mod.rs`, the parent folder.
            let mut base = module.clone();
            while segments.first() == Some(&"super") {
                segments.remove(0);
                base.pop();
            }
            base
        }
        // A path relative to the module itself (a child) or an external crate.
        _ => {
            let mut candidate = module.clone();
            candidate.push(segments.first()?.to_string());
            if modules.contains(&candidate) {
                module.clone()
            } else {
                return None;
            }
        }
    };
    let mut found = modules.contains(&base).then(|| base.clone());
    for segment in segments {
        base.push(segment.to_owned());
        if modules.contains(&base) {
            found = Some(base.clone());
        } else {
            break;
        }
    }
    found
}

fn graph() -> BTreeMap<Module, BTreeSet<Module>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files.retain(|f| {
        let name = f.file_name().unwrap().to_string_lossy();
        !name.ends_with("_tests.rs") && name != "main.rs"
    });
    let modules: BTreeSet<Module> = files.iter().map(|f| module_of(f)).collect();
    let mut graph = BTreeMap::new();
    for file in &files {
        let module = module_of(file);
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        let edges: BTreeSet<Module> = named_paths(&code)
            .iter()
            .filter_map(|path| resolve(path, &module, &modules))
            .filter(|target| *target != module)
            .collect();
        graph.insert(module, edges);
    }
    graph
}

fn find_cycle(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit(
        node: &Module,
        graph: &BTreeMap<Module, BTreeSet<Module>>,
        marks: &mut BTreeMap<Module, Mark>,
        stack: &mut Vec<Module>,
    ) -> Option<Vec<Module>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Visiting) => {
                let start = stack.iter().position(|m| m == node).unwrap();
                let mut cycle = stack[start..].to_vec();
                cycle.push(node.clone());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.clone(), Mark::Visiting);
        stack.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        marks.insert(node.clone(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, graph, &mut marks, &mut Vec::new()) {
            return Some(cycle);
        }
    }
    None
}

fn name(module: &Module) -> String {
    if module.is_empty() {
        "crate".to_owned()
    } else {
        format!("crate::{}", module.join("::"))
    }
}

#[test]
fn no_module_imports_from_a_module_that_imports_it() {
    let graph = graph();
    assert!(graph.len() > 40, "too few modules found: {}", graph.len());
    let edges: usize = graph.values().map(BTreeSet::len).sum();
    assert!(edges > 100, "too few dependencies found: {edges}");
    if let Some(cycle) = find_cycle(&graph) {
        let names: Vec<String> = cycle.iter().map(name).collect();
        panic!("import cycle: {}", names.join(" -> "));
    }
}

#[test]
fn the_checker_sees_a_cycle_through_super_and_use_trees() {
    let mut graph = BTreeMap::new();
    let a = vec!["x".to_owned()];
    let b = vec!["x".to_owned(), "y".to_owned()];
    let modules: BTreeSet<Module> = [a.clone(), b.clone()].into_iter().collect();
    let mut paths = Vec::new();
    expand_use_tree("", "super::{Thing, other::Item}", &mut paths);
    let from_b: BTreeSet<Module> = paths
        .iter()
        .filter_map(|p| resolve(p, &b, &modules))
        .collect();
    let from_a: BTreeSet<Module> = named_paths("pub use y::Item;\nfn f() { crate::x::y::g(); }\n")
        .iter()
        .filter_map(|p| resolve(p, &a, &modules))
        .collect();
    assert_eq!(from_b, [a.clone()].into_iter().collect());
    assert_eq!(from_a, [b.clone()].into_iter().collect());
    graph.insert(a, from_a);
    graph.insert(b, from_b);
    assert!(find_cycle(&graph).is_some());
}
