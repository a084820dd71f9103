//! The modules of a crate and what each imports, read from its sources, so that a test
//! can hold a crate to dependencies that point one way (no import cycle).

use std::collections::{BTreeMap, BTreeSet};

/// Each module of the crate whose sources are in `dir` (a file, or a directory whose
/// files together are the module; `lib` and `main` left out), with the modules it names
/// as `crate::module` outside its test module.
pub fn graph(dir: &str) -> BTreeMap<String, BTreeSet<String>> {
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

/// A cycle through `node`, if there is one: depth-first, with the path so far.
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

/// The first import cycle in `graph`, as the path around it.
pub fn first_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|module| cycle(graph, module, &mut Vec::new(), &mut done))
}
