//! The crate's modules depend on each other one way: no import cycle. Read from the
//! sources (`crate::module` paths outside test modules), so a cycle fails CI the moment
//! it is written.

use std::collections::{BTreeMap, BTreeSet};

use e2e::module_graph::first_cycle;

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    e2e::module_graph::graph(concat!(env!("CARGO_MANIFEST_DIR"), "/src"))
}

#[test]
fn the_modules_form_no_import_cycle() {
    let graph = graph();
    assert!(graph.len() > 10, "the sources were read: {graph:?}");
    assert!(graph["api"].contains("writes"), "dependencies were found");
    if let Some(found) = first_cycle(&graph) {
        panic!("import cycle: {}", found.join(" -> "));
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
