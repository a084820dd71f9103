//! Real responses against `openapi.yaml`: a service with Redis and an origin is asked
//! every route, with good and bad requests, and each answer's status must be one the
//! spec lists for that operation, its content type one the spec gives for that status,
//! and its JSON body valid against that schema. The service serves the same document
//! at `/openapi.yaml`.

use e2e::origin::Origin;
use e2e::redis::RedisServer;
use e2e::Server;
use serde_json::{json, Value};

struct Spec {
    document: Value,
}

impl Spec {
    fn load() -> Spec {
        let text = include_str!("../../openapi.yaml");
        let document: Value = serde_yaml::from_str(text).expect("openapi.yaml is YAML");
        assert_eq!(document["openapi"], "3.1.0");
        Spec { document }
    }

    /// Follows a `$ref` (within the document) once, returning the pointer it names.
    fn resolve(&self, pointer: String) -> String {
        match self
            .document
            .pointer(&pointer)
            .and_then(|v| v["$ref"].as_str())
        {
            Some(target) => target.trim_start_matches('#').to_owned(),
            None => pointer,
        }
    }

    /// Checks one answer to `method` on the spec's `template` path.
    fn check(&self, method: &str, template: &str, status: u16, content_type: &str, body: &[u8]) {
        let what = format!("{method} {template} answered {status} ({content_type})");
        let path = template.replace('~', "~0").replace('/', "~1");
        let operation = format!("/paths/{path}/{}", method.to_lowercase());
        assert!(
            self.document.pointer(&operation).is_some(),
            "{what}: the spec has no such operation"
        );
        let response = self.resolve(format!("{operation}/responses/{status}"));
        assert!(
            self.document.pointer(&response).is_some(),
            "{what}: status {status} is not in the spec; body {}",
            String::from_utf8_lossy(body)
        );
        let media = content_type.split(';').next().unwrap().trim();
        let schema = format!("{response}/content/{}/schema", media.replace('/', "~1"));
        assert!(
            self.document.pointer(&schema).is_some(),
            "{what}: the spec gives no {media} content for it"
        );
        if media != "application/json" {
            return;
        }
        let instance: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
            panic!("{what}: not JSON ({e}): {}", String::from_utf8_lossy(body))
        });
        let mut root = self.document.clone();
        root["$ref"] = Value::String(format!("#{schema}"));
        let validator = jsonschema::validator_for(&root).expect("the spec's schemas compile");
        let errors: Vec<String> = validator
            .iter_errors(&instance)
            .map(|e| format!("{e} at {}", e.instance_path))
            .collect();
        assert!(
            errors.is_empty(),
            "{what}: {instance} breaks the schema: {errors:?}"
        );
    }
}

/// One request over a fresh connection: status, content type and body.
fn call(
    server: &Server,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> (u16, String, Vec<u8>) {
    let mut request = ureq::request(method, &server.url(path));
    for (name, value) in headers {
        request = request.set(name, value);
    }
    let answer = match body {
        Some(body) => request.send_bytes(body),
        None => request.call(),
    };
    let response = match answer {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {path}: {e}"),
    };
    let status = response.status();
    let content_type = response.header("Content-Type").unwrap_or("").to_owned();
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut response.into_reader(), &mut bytes).unwrap();
    (status, content_type, bytes)
}

/// Method, path, the spec's path template, headers, body, and the status expected.
type Case<'a> = (
    &'a str,
    String,
    &'a str,
    &'a [(&'a str, &'a str)],
    Option<Vec<u8>>,
    u16,
);

#[test]
fn real_responses_match_the_openapi_spec() {
    let spec = Spec::load();
    let origin = Origin::start();
    origin.set("from-origin", r#"{"id": 7}"#);
    let redis = RedisServer::start();
    let (template, url) = (origin.template(), redis.url());
    let server = Server::start(&[
        ("ORIGIN_URL", template.as_str()),
        ("ORIGIN_TIMEOUT_MS", "500"),
        ("REDIS_URL", url.as_str()),
        ("CACHE_MAX_VALUE_BYTES", "1000"),
    ]);
    let json_type = [("Content-Type", "application/json")];
    let raw_type = [("Content-Type", "application/octet-stream")];
    let long_key = "k".repeat(251);
    let big = format!(r#"{{"value": "{}"}}"#, "x".repeat(2000));
    let cases: Vec<Case> = vec![
        ("GET", "/healthz".into(), "/healthz", &[], None, 200),
        ("GET", "/readyz".into(), "/readyz", &[], None, 200),
        (
            "GET",
            "/openapi.yaml".into(),
            "/openapi.yaml",
            &[],
            None,
            200,
        ),
        ("GET", "/dashboard".into(), "/dashboard", &[], None, 200),
        ("GET", "/metrics".into(), "/metrics", &[], None, 200),
        (
            "PUT",
            "/api/cache/user:1".into(),
            "/api/cache/{key}",
            &json_type,
            Some(br#"{"value": {"name": "Ann"}, "ttl": 60, "key": "user:1"}"#.to_vec()),
            200,
        ),
        (
            "PUT",
            "/api/cache/blob?ttl=30".into(),
            "/api/cache/{key}",
            &raw_type,
            Some(vec![0xff, 0, 1]),
            200,
        ),
        (
            "PUT",
            "/api/cache/forever".into(),
            "/api/cache/{key}",
            &json_type,
            Some(br#"{"value": 1, "ttl": 0}"#.to_vec()),
            200,
        ),
        (
            "PUT",
            "/api/cache/user:1".into(),
            "/api/cache/{key}",
            &json_type,
            Some(b"{not json".to_vec()),
            400,
        ),
        (
            "PUT",
            "/api/cache/user:1".into(),
            "/api/cache/{key}",
            &[("Content-Type", "text/xml")],
            Some(b"<a/>".to_vec()),
            415,
        ),
        (
            "PUT",
            "/api/cache/user:1".into(),
            "/api/cache/{key}",
            &json_type,
            Some(big.into_bytes()),
            413,
        ),
        (
            "PUT",
            format!("/api/cache/{long_key}"),
            "/api/cache/{key}",
            &json_type,
            Some(br#"{"value": 1}"#.to_vec()),
            414,
        ),
        (
            "GET",
            "/api/cache/user:1".into(),
            "/api/cache/{key}",
            &[],
            None,
            200,
        ),
        (
            "GET",
            "/api/cache/blob".into(),
            "/api/cache/{key}",
            &[],
            None,
            200,
        ),
        (
            "GET",
            "/api/cache/blob".into(),
            "/api/cache/{key}",
            &[("Accept", "application/octet-stream")],
            None,
            200,
        ),
        (
            "GET",
            "/api/cache/entry/user:1".into(),
            "/api/cache/entry/{key}",
            &[],
            None,
            200,
        ),
        (
            "GET",
            "/api/cache/from-origin".into(),
            "/api/cache/{key}",
            &[],
            None,
            200,
        ),
        (
            "GET",
            "/api/cache/nowhere".into(),
            "/api/cache/{key}",
            &[],
            None,
            404,
        ),
        (
            "GET",
            "/api/cache/a%2Fb%00".into(),
            "/api/cache/{key}",
            &[],
            None,
            400,
        ),
        (
            "GET",
            "/api/cache/a/b".into(),
            "/api/cache/{key}",
            &[],
            None,
            404,
        ),
        (
            "POST",
            "/api/cache/invalidate".into(),
            "/api/cache/invalidate",
            &json_type,
            Some(br#"{"keys": ["user:1", "other"]}"#.to_vec()),
            200,
        ),
        (
            "POST",
            "/api/cache/invalidate".into(),
            "/api/cache/invalidate",
            &json_type,
            Some(br#"{"pattern": "user:*"}"#.to_vec()),
            200,
        ),
        (
            "POST",
            "/api/cache/invalidate".into(),
            "/api/cache/invalidate",
            &json_type,
            Some(br#"{"keys": ["a"], "pattern": "b"}"#.to_vec()),
            400,
        ),
        (
            "POST",
            "/api/cache/invalidate".into(),
            "/api/cache/invalidate",
            &[("Content-Type", "text/plain")],
            Some(b"user:*".to_vec()),
            415,
        ),
        (
            "POST",
            "/api/cache/refresh".into(),
            "/api/cache/refresh",
            &json_type,
            Some(br#"{"keys": ["from-origin", "nowhere"]}"#.to_vec()),
            200,
        ),
        (
            "POST",
            "/api/cache/refresh".into(),
            "/api/cache/refresh",
            &json_type,
            Some(br#"{"keys": "one"}"#.to_vec()),
            400,
        ),
        (
            "DELETE",
            "/api/cache/forever".into(),
            "/api/cache/{key}",
            &[],
            None,
            200,
        ),
        (
            "DELETE",
            "/api/cache/entry/blob".into(),
            "/api/cache/entry/{key}",
            &[],
            None,
            200,
        ),
        (
            "GET",
            "/api/cache/metrics".into(),
            "/api/cache/metrics",
            &[],
            None,
            200,
        ),
        (
            "GET",
            "/api/cache/history".into(),
            "/api/cache/history",
            &[],
            None,
            200,
        ),
        (
            "GET",
            "/api/cache/history?since=0".into(),
            "/api/cache/history",
            &[],
            None,
            200,
        ),
        (
            "GET",
            "/api/cache/history?since=yesterday".into(),
            "/api/cache/history",
            &[],
            None,
            400,
        ),
    ];
    // Let the dashboard's history gather a sample.
    e2e::wait_for(
        "a history sample",
        std::time::Duration::from_secs(5),
        || {
            call(&server, "GET", "/api/cache/history", &[], None)
                .2
                .windows(3)
                .any(|w| w == b"\"t\"")
        },
    );
    for (method, path, template, headers, body, expected) in cases {
        let (status, content_type, bytes) = call(&server, method, &path, headers, body.as_deref());
        assert_eq!(
            status,
            expected,
            "{method} {path}: {}",
            String::from_utf8_lossy(&bytes)
        );
        spec.check(method, template, status, &content_type, &bytes);
    }

    // With the origin failing, a miss is a 502 the spec lists.
    origin.fail_with(Some(500));
    let (status, content_type, bytes) = call(&server, "GET", "/api/cache/fails", &[], None);
    assert_eq!(status, 502);
    spec.check("GET", "/api/cache/{key}", status, &content_type, &bytes);

    // With Redis gone, a write is a 503 the spec lists.
    drop(redis);
    let (status, content_type, bytes) = call(
        &server,
        "PUT",
        "/api/cache/after-redis",
        &json_type,
        Some(br#"{"value": 1}"#),
    );
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&bytes));
    spec.check("PUT", "/api/cache/{key}", status, &content_type, &bytes);

    // The document the service serves is this one.
    let (_, _, served) = call(&server, "GET", "/openapi.yaml", &[], None);
    assert_eq!(served, include_bytes!("../../openapi.yaml"));
}

/// The checker itself refuses what the spec does not allow.
#[test]
fn the_checker_catches_an_undocumented_status_and_a_wrong_body() {
    let spec = Spec::load();
    let undocumented = std::panic::catch_unwind(|| {
        spec.check("GET", "/healthz", 418, "application/json", b"{}");
    });
    assert!(undocumented.is_err());
    let wrong_body = std::panic::catch_unwind(|| {
        spec.check(
            "GET",
            "/api/cache/{key}",
            200,
            "application/json",
            br#"{"hit": true}"#,
        );
    });
    assert!(wrong_body.is_err());
    spec.check(
        "GET",
        "/api/cache/{key}",
        200,
        "application/json",
        json!({"value": 1, "hit": true, "source": "l1", "cached_at": "2026-11-25T00:00:00Z", "expires_at": null})
            .to_string()
            .as_bytes(),
    );
}
