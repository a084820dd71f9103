//! The crate's modules depend on each other one way: no import cycle. Read from the
//! sources (`crate::module` paths outside test modules), so a cycle fails CI the moment
//! it is written.

use std::collections::{BTreeMap, BTreeSet};

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
    // A module is a file, or a directory whose files together are the module; test
    // modules (at the end of a file) are left out.
    let without_tests = |text: String| {
        text.split("#[cfg(test)]")
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    let read = |path: &std::path::Path| -> String {
        if path.is_dir() {
            let mut files: Vec<_> = std::fs::read_dir(path)
                .unwrap()
                .map(|entry| entry.unwrap().path())
                .collect();
            files.sort();
            files
                .iter()
                .map(|file| without_tests(std::fs::read_to_string(file).unwrap()))
                .collect::<Vec<_>>()
                .join("\n")
        } else {
            without_tests(std::fs::read_to_string(path).unwrap())
        }
    };
    let sources: BTreeMap<String, String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_dir() || path.extension().is_some_and(|e| e == "rs"))
        .map(|path| {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            (name, read(&path))
        })
        .filter(|(name, _)| name != "lib" && name != "main")
        .collect();
    let mut graph = BTreeMap::new();
    for (module, text) in &sources {
        let text = text.split("#[cfg(test)]").next().unwrap_or_default();
        let mut deps = BTreeSet::new();
        for (at, _) in text.match_indices("crate::") {
            let rest = &text[at + "crate::".len()..];
            let names: Vec<&str> = match rest.strip_prefix('{') {
                Some(group) => group[..group.find('}').unwrap_or(0)]
                    .split(',')
                    .map(|item| item.trim().split("::").next().unwrap_or_default())
                    .collect(),
                None => vec![rest
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .next()
                    .unwrap_or_default()],
            };
            for name in names {
                if name != module && sources.contains_key(name) {
                    deps.insert(name.to_owned());
                }
            }
        }
        graph.insert(module.clone(), deps);
    }
    graph
}

/// A cycle through `from`, if there is one: depth-first, with the path so far.
fn cycle(
    graph: &BTreeMap<String, BTreeSet<String>>,
    node: &str,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(at) = path.iter().position(|n| n == node) {
        let mut found = path[at..].to_vec();
        found.push(node.to_owned());
        return Some(found);
    }
    if !done.insert(node.to_owned()) {
        return None;
    }
    path.push(node.to_owned());
    for next in &graph[node] {
        if let Some(found) = cycle(graph, next, path, done) {
            return Some(found);
        }
    }
    path.pop();
    None
}

#[test]
fn the_modules_form_no_import_cycle() {
    let graph = graph();
    assert!(graph.len() > 10, "the sources were read: {graph:?}");
    assert!(graph["api"].contains("writes"), "dependencies were found");
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        if let Some(found) = cycle(&graph, module, &mut Vec::new(), &mut done) {
            panic!("import cycle: {}", found.join(" -> "));
        }
    }
}

#[test]
fn the_connection_code_knows_nothing_of_routes_or_tiers() {
    let graph = graph();
    let http: Vec<&str> = graph["http"].iter().map(String::as_str).collect();
    assert_eq!(http, ["core", "exchange", "framing"]);
    assert!(graph["exchange"].iter().all(|m| m == "framing"));
}

#[test]
fn the_snapshot_format_and_file_know_nothing_of_the_service() {
    let graph = graph();
    assert!(graph["snapshot"].is_empty(), "{:?}", graph["snapshot"]);
    assert!(graph["warm"].contains("snapshot"), "directories are read");
}
