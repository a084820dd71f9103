//! What `deploy/` ships for operators speaks of metrics the service really exports: every
//! `cache_*` series the Grafana dashboard and the Prometheus rules query is on a live
//! instance's `/metrics`. (`scripts/check-deploy.sh` checks the rules' syntax and runs
//! their unit tests with promtool.)

use std::collections::BTreeSet;

use e2e::Server;
use serde_json::Value;

/// Every `cache_*` metric name in `text` (a recording rule's `cache:...` is not one).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut at = 0;
    while let Some(found) = text[at..].find("cache_") {
        let start = at + found;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = start
            + text[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(text.len() - start);
        if boundary {
            names.insert(text[start..end].to_owned());
        }
        at = end;
    }
    names
}

fn exported() -> BTreeSet<String> {
    let server = Server::start(&[("CACHE_CORES", "1")]);
    let scrape = server.get_once("/metrics").expect("/metrics answered");
    let text = String::from_utf8(scrape.body).unwrap();
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

fn deploy_file(name: &str) -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/").to_owned() + name)
        .unwrap()
}

#[test]
fn the_dashboard_and_the_alerts_query_only_metrics_the_service_exports() {
    let exported = exported();
    assert!(exported.contains("cache_hits_total"), "{exported:?}");

    let dashboard: Value = serde_json::from_str(&deploy_file("grafana-dashboard.json")).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10, "the /dashboard's charts");
    let mut queried = BTreeSet::new();
    for panel in panels {
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{} has queries", panel["title"]);
        for target in targets {
            let names = metric_names(target["expr"].as_str().unwrap());
            assert!(!names.is_empty(), "{}: {}", panel["title"], target["expr"]);
            queried.extend(names);
        }
    }
    let rules = deploy_file("prometheus-rules.yml");
    let alerts: Vec<&str> = rules.lines().filter(|l| l.contains("- alert:")).collect();
    assert!(alerts.len() >= 6, "{alerts:?}");
    queried.extend(metric_names(&rules));

    let unknown: Vec<&String> = queried.difference(&exported).collect();
    assert!(unknown.is_empty(), "not on /metrics: {unknown:?}");
    for needed in [
        "cache_l2_breaker_open",
        "cache_l1_flushes_total",
        "cache_snapshot_failures_total",
        "cache_rejected_requests_total",
    ] {
        assert!(queried.contains(needed), "{needed} is watched");
    }
}
