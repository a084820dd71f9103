//! The route table: every path the service answers and the methods it takes there.
//! `api.rs` dispatches through it, 405 answers list its methods, and `openapi.yaml` must
//! describe exactly these routes (the test below fails on a route in one and not the
//! other). HEAD is allowed wherever GET is, and is not listed.

use crate::framing::Method;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Health,
    Ready,
    Prometheus,
    Metrics,
    History,
    Dashboard,
    OpenApi,
    Refresh,
    Invalidate,
    /// `/api/cache/{key}` and its alias `/api/cache/entry/{key}`.
    Entry,
}

/// Paths in OpenAPI form; `{key}` is one percent-encoded path segment. Earlier entries
/// win: `/api/cache/metrics` is a route, not the key `metrics`.
pub const ROUTES: &[(&str, Route, &[Method])] = &[
    ("/healthz", Route::Health, &[Method::Get]),
    ("/readyz", Route::Ready, &[Method::Get]),
    ("/metrics", Route::Prometheus, &[Method::Get]),
    ("/api/cache/metrics", Route::Metrics, &[Method::Get]),
    ("/api/cache/history", Route::History, &[Method::Get]),
    ("/dashboard", Route::Dashboard, &[Method::Get]),
    ("/openapi.yaml", Route::OpenApi, &[Method::Get]),
    ("/api/cache/refresh", Route::Refresh, &[Method::Post]),
    ("/api/cache/invalidate", Route::Invalidate, &[Method::Post]),
    (
        "/api/cache/entry/{key}",
        Route::Entry,
        &[Method::Get, Method::Put, Method::Delete],
    ),
    (
        "/api/cache/{key}",
        Route::Entry,
        &[Method::Get, Method::Put, Method::Delete],
    ),
];

/// A path matched against the table.
pub struct Matched<'a> {
    pub route: Route,
    /// The `{key}` segment, still percent-encoded (may contain `/`, which the handler
    /// refuses with a clear message).
    pub key: Option<&'a str>,
    methods: &'static [Method],
}

impl Matched<'_> {
    pub fn allows(&self, method: Method) -> bool {
        let method = if method == Method::Head {
            Method::Get
        } else {
            method
        };
        self.methods.contains(&method)
    }

    /// The `Allow` header's value.
    pub fn allow_header(&self) -> String {
        let mut names: Vec<&str> = self.methods.iter().map(|m| m.as_str()).collect();
        if self.methods.contains(&Method::Get) {
            names.insert(1, "HEAD");
        }
        names.join(", ")
    }
}

pub fn find(path: &str) -> Option<Matched<'_>> {
    ROUTES.iter().find_map(|&(template, route, methods)| {
        let key = match template.strip_suffix("{key}") {
            Some(prefix) => Some(path.strip_prefix(prefix)?),
            None if path == template => None,
            None => return None,
        };
        Some(Matched {
            route,
            key,
            methods,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn fixed_routes_win_over_keys() {
        assert_eq!(find("/api/cache/metrics").unwrap().route, Route::Metrics);
        let entry = find("/api/cache/user%3A1").unwrap();
        assert_eq!((entry.route, entry.key), (Route::Entry, Some("user%3A1")));
        assert_eq!(find("/api/cache/entry/a").unwrap().key, Some("a"));
        assert!(find("/nowhere").is_none());
        assert_eq!(
            find("/api/cache/x").unwrap().allow_header(),
            "GET, HEAD, PUT, DELETE"
        );
    }

    /// openapi.yaml describes exactly the routes and methods of this table.
    #[test]
    fn the_openapi_spec_and_the_route_table_agree() {
        let spec: serde_yaml::Value =
            serde_yaml::from_str(include_str!("../../openapi.yaml")).unwrap();
        let in_spec: BTreeSet<(String, String)> = spec["paths"]
            .as_mapping()
            .unwrap()
            .iter()
            .flat_map(|(path, operations)| {
                let path = path.as_str().unwrap().to_owned();
                operations
                    .as_mapping()
                    .unwrap()
                    .keys()
                    .filter_map(|k| k.as_str())
                    .filter(|k| {
                        ["get", "put", "post", "delete", "patch", "head", "options"].contains(k)
                    })
                    .map(move |method| (path.clone(), method.to_uppercase()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let in_code: BTreeSet<(String, String)> = ROUTES
            .iter()
            .flat_map(|(path, _, methods)| {
                methods
                    .iter()
                    .map(|m| (path.to_string(), m.as_str().to_owned()))
            })
            .collect();
        let missing: Vec<_> = in_code.difference(&in_spec).collect();
        let extra: Vec<_> = in_spec.difference(&in_code).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "routes in the code but not in openapi.yaml: {missing:?}; in openapi.yaml but not in the code: {extra:?}"
        );
    }
}
