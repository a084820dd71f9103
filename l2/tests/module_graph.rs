//! The Redis tier's modules depend on each other one way: no import cycle (read from
//! the sources, as for the service crate).

use e2e::module_graph::{first_cycle, graph};

#[test]
fn the_modules_form_no_import_cycle() {
    let graph = graph(concat!(env!("CARGO_MANIFEST_DIR"), "/src"));
    assert!(graph.len() > 10, "the sources were read: {graph:?}");
    assert!(
        graph["pubsub"].contains("client"),
        "dependencies were found"
    );
    if let Some(found) = first_cycle(&graph) {
        panic!("import cycle: {}", found.join(" -> "));
    }
}
