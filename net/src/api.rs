//! The HTTP API: routes, handlers and their JSON, as the original service defined them.
//!
//! Values are stored with a one-byte tag: `j` for a JSON value (stored as the exact text
//! the client sent, validated) and `b` for raw bytes (`PUT` with `Content-Type:
//! application/octet-stream`). The modes see each other's values like this:
//! - a JSON `GET` of a raw value returns it as a JSON string when it is UTF-8, else as
//!   base64 with `"encoding": "base64"`;
//! - a raw `GET` (`Accept: application/octet-stream`) of a JSON value returns the JSON
//!   text with `Content-Type: application/json`, and of a raw value the bytes with
//!   `application/octet-stream`; the metadata is in `X-Cache-*` and `Cache-Control`.
//!
//! With Redis configured (L2), a miss is filled from Redis through the key's owner core
//! (one fetch however many ask). Writes and invalidations go through `writes.rs`, which
//! takes them through L1, L2 and the other instances in one order; this module only
//! parses, authorises (once, in `route`), calls it and renders the answer.

use std::rc::Rc;

use engine::InsertError;
use l2::Written;

use crate::body::{self, Invalidation, Put};
use crate::config::ReadPath;
use crate::core::Core;
use crate::exchange::{Answered, Reply, Request, Response};
use crate::framing::{self, Head, Method, Reject};
use crate::http::Handler;
use crate::messages::{FillError, FillMode, Filled, OwnerMessage, Source};
use crate::render::{render_hit, rfc3339, Hit};
use crate::routes::{self, Route};
use crate::stats;
use crate::stored::Kept;
use crate::writes::{self, Invalidated, PutRefused};

/// What an answer is timed as: each operation has its latency histogram.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    Get,
    Set,
    Delete,
    Invalidate,
}

/// The API as the connections' handler, one per core.
pub struct Api(pub Rc<Core>);

impl Handler for Api {
    type Timed = Op;

    fn refuse_early(&self, head: &Head) -> Option<Reject> {
        refuse_early(&self.0, head.method, head.authorization.as_deref())
    }

    async fn handle<'a>(
        &'a self,
        request: &'a Request,
        reply: Reply<'a>,
    ) -> (Answered, Option<Op>) {
        let (op, answered) = route(&self.0, request, reply).await;
        (answered, op.filter(|_| self.0.config.metrics_enabled))
    }

    fn sent(&self, op: Op, latency: std::time::Duration) {
        let recorders = &self.0.stats().latency;
        let recorder = match op {
            Op::Get => &recorders.get,
            Op::Set => &recorders.set,
            Op::Delete => &recorders.delete,
            Op::Invalidate => &recorders.invalidate,
        };
        recorder.record(latency);
    }
}

/// The one authorisation check: a mutating request without the token is refused, from
/// its head alone (before its body is read, and before `100 Continue`).
fn refuse_early(core: &Core, method: Method, authorization: Option<&[u8]>) -> Option<Reject> {
    let mutating = matches!(method, Method::Put | Method::Delete | Method::Post);
    (mutating && !authorized(core, authorization)).then(|| Reject {
        status: 401,
        message: "missing or wrong bearer token (Authorization: Bearer <CACHE_AUTH_TOKEN>)".into(),
    })
}

fn authorized(core: &Core, authorization: Option<&[u8]>) -> bool {
    let Some(token) = core.config.auth_token.as_deref() else {
        return true;
    };
    let presented = authorization
        .and_then(|v| v.strip_prefix(b"Bearer "))
        .unwrap_or_default();
    constant_time_eq::constant_time_eq(presented, token.as_bytes())
}

/// The dashboard page: one self-contained file, embedded in the binary.
const DASHBOARD: &str = include_str!("dashboard.html");
/// The API's contract, served as written.
const OPENAPI: &str = include_str!("../../openapi.yaml");

/// Every answer but a read's is boxed: a future holds room for the largest of the futures
/// it awaits, and is copied when it is made and when it is awaited, so the writes' and
/// the fills' large futures would otherwise be copied with every read (about 600
/// instructions per GET hit, `scripts/instructions.sh`).
async fn route(core: &Rc<Core>, request: &Request, mut reply: Reply<'_>) -> (Option<Op>, Answered) {
    let path = request.head.path.as_str();
    let Some(matched) = routes::find(path) else {
        let response = Response::error(404, format!("no route for {path}"));
        return (None, reply.send(&response));
    };
    if !matched.allows(request.head.method) {
        let allow = matched.allow_header();
        let response = Response::error(405, format!("method not allowed here; allowed: {allow}"))
            .with_header("Allow", allow);
        return (None, reply.send(&response));
    }
    // Requests sent without `Expect: 100-continue` reach here without the early check.
    if let Some(refused) = refuse_early(
        core,
        request.head.method,
        request.head.authorization.as_deref(),
    ) {
        return (None, reply.send(&refused.into()));
    }
    let shared = &core.shared;
    let response = match matched.route {
        Route::Health => json(200, &serde_json::json!({ "status": "ok" })),
        Route::Ready if core.stopping() => Response::error(503, "shutting down"),
        Route::Ready if !shared.started.is_triggered() => Response::error(
            503,
            "starting: not every core serves yet (each first checks its restored entries with L2)",
        ),
        Route::Ready => json(200, &serde_json::json!({ "status": "ready" })),
        Route::Prometheus | Route::Metrics | Route::History | Route::Dashboard
            if !core.config.metrics_enabled =>
        {
            Response::error(404, "metrics are disabled (METRICS_ENABLED=false)")
        }
        Route::Prometheus => stats::prometheus(shared).await,
        Route::Metrics => json(200, &stats::snapshot(shared).await),
        Route::History => match history_since(request.head.query.as_deref()) {
            Ok(since) => Response::json(200, stats::history_json(shared, since)),
            Err(message) => Response::error(400, message),
        },
        Route::Dashboard => static_text("text/html; charset=utf-8", DASHBOARD),
        Route::OpenApi => static_text("application/yaml", OPENAPI),
        Route::Refresh => {
            let response = Box::pin(refresh(core, request)).await;
            return (Some(Op::Set), reply.send(&response));
        }
        Route::Invalidate => {
            let response = Box::pin(invalidate(core, request)).await;
            return (Some(Op::Invalidate), reply.send(&response));
        }
        Route::Entry => {
            let key = matched.key.unwrap_or_default();
            return entry_route(core, key, request, reply).await;
        }
    };
    (None, reply.send(&response))
}

/// `since=T` of a history request: only the samples of the seconds that ended after
/// `T`, a Unix time in milliseconds (a sample's `t`).
fn history_since(query: Option<&str>) -> Result<Option<u64>, String> {
    framing::query_param(query, "since")
        .map(|v| {
            v.parse().map_err(|_| {
                format!("since must be a Unix time in milliseconds (a sample's t), got {v:?}")
            })
        })
        .transpose()
}

fn static_text(content_type: &'static str, text: &str) -> Response {
    let mut response = Response::json(200, text.as_bytes().to_vec());
    response.content_type = content_type;
    response.with_header("Cache-Control", "no-cache")
}

async fn entry_route(
    core: &Rc<Core>,
    encoded: &str,
    request: &Request,
    mut reply: Reply<'_>,
) -> (Option<Op>, Answered) {
    if encoded.bytes().any(|b| b == b'/') {
        let response = Response::error(404, "a key is one path segment; encode '/' as %2F");
        return (None, reply.send(&response));
    }
    // Borrowed from the path unless it has escapes to decode (checked by a byte loop
    // first: the decoder's own check costs about 240 instructions on a short key).
    let key: std::borrow::Cow<'_, [u8]> = if encoded.bytes().any(|b| b == b'%') {
        percent_encoding::percent_decode_str(encoded).into()
    } else {
        encoded.as_bytes().into()
    };
    if let Err(refused) = body::check_key(&core.config, &key, 414) {
        return (None, reply.send(&refused.into()));
    }
    match request.head.method {
        Method::Put => {
            let response = Box::pin(put(core, &key, request)).await;
            (Some(Op::Set), reply.send(&response))
        }
        Method::Delete => {
            let response = Box::pin(delete(core, &key)).await;
            (Some(Op::Delete), reply.send(&response))
        }
        _ => (
            Some(Op::Get),
            get(core, &key, request.head.wants_bytes, &mut reply).await,
        ),
    }
}

fn json(status: u16, value: &impl serde::Serialize) -> Response {
    Response::json(status, serde_json::to_vec(value).expect("serializable"))
}

fn shard_unavailable(e: engine::ShardGone) -> Response {
    Response::error(503, e.to_string())
}

/// Writes a hit into `reply`; `None` for a remembered origin 404, which is not written.
fn render(
    reply: &mut Reply<'_>,
    hit: &Hit<'_>,
    wants_bytes: bool,
    now: u64,
    source: Source,
) -> Option<Answered> {
    (!hit.value.is_absent()).then(|| render_hit(reply, hit, wants_bytes, now, source))
}

/// Answers a read: a hit is written from the entry straight into `reply`; a miss is
/// filled through the key's owner when there is a tier to fill from (boxed, like the
/// other answers that wait; see `route`).
async fn get(core: &Rc<Core>, key: &[u8], wants_bytes: bool, reply: &mut Reply<'_>) -> Answered {
    let shared = &core.shared;
    let now = core.now_ms();
    let hash = shared.router.hash(key);
    let owner = shared.router.shard_of(hash);
    let found = match core.config.read_path {
        ReadPath::Direct => core.readers[owner].get_with(hash, key, now, |e| {
            let hit = Hit {
                value: Kept::from(&e),
                cached_at_ms: e.cached_at_ms,
                expires_at_ms: e.expires_at_ms,
                stale: e.stale,
            };
            (render(reply, &hit, wants_bytes, now, Source::L1), e.stale)
        }),
        ReadPath::Hop => match Box::pin(shared.mail.lookup(key)).await {
            Ok(entry) => entry.map(|e| {
                let answered = render(reply, &Hit::of(&e), wants_bytes, now, Source::L1);
                (answered, e.stale)
            }),
            Err(e) => return reply.send(&shard_unavailable(e)),
        },
    };
    let metrics = core.shard_metrics();
    match found {
        Some((Some(answered), stale)) => {
            metrics.hits.incr();
            if stale {
                // Stale-while-revalidate: answer now, fetch a fresh copy in the background
                // (the owner's singleflight keeps it to one per key).
                let (core, key) = (core.clone(), key.to_vec());
                monoio::spawn(async move {
                    let shared = &core.shared;
                    let _ = shared
                        .mail
                        .call(owner, |reply| OwnerMessage::Fill {
                            hash,
                            key,
                            mode: FillMode::Revalidate,
                            reply,
                        })
                        .await;
                });
            }
            return answered;
        }
        Some((None, _)) => {
            metrics.misses.incr();
            return reply.send(&not_found(
                key,
                "the origin has no such key (remembered for CACHE_NEGATIVE_TTL)",
            ));
        }
        None => metrics.misses.incr(),
    }
    if shared.tiers.l2.is_none() && shared.origin.is_none() {
        return reply.send(&not_found(key, ""));
    }
    Box::pin(fill(core, key, hash, owner, wants_bytes, reply)).await
}

/// Fills a miss through the key's owner (one fetch however many ask) and answers with
/// what it found.
async fn fill(
    core: &Rc<Core>,
    key: &[u8],
    hash: u64,
    owner: usize,
    wants_bytes: bool,
    reply: &mut Reply<'_>,
) -> Answered {
    let shared = &core.shared;
    let key_owned = key.to_vec();
    let filled = shared
        .mail
        .call(owner, |reply| OwnerMessage::Fill {
            hash,
            key: key_owned,
            mode: FillMode::Miss,
            reply,
        })
        .await;
    let response = match filled {
        Ok(Ok(Filled::Hit { entry, source })) => {
            match render(reply, &Hit::of(&entry), wants_bytes, core.now_ms(), source) {
                Some(answered) => return answered,
                None => not_found(key, ""),
            }
        }
        Ok(Ok(Filled::Absent)) if shared.origin.is_some() => {
            not_found(key, "in L1, L2 or at the origin")
        }
        Ok(Ok(Filled::Absent)) => not_found(key, "in L1 or L2"),
        Ok(Err(FillError {
            status: 404,
            message,
        })) => not_found(key, &message),
        Ok(Err(FillError { status, message })) => Response::error(status, message),
        Err(e) => shard_unavailable(e),
    };
    reply.send(&response)
}

fn not_found(key: &[u8], detail: &str) -> Response {
    let mut message = format!("no entry for key {:?}", String::from_utf8_lossy(key));
    if !detail.is_empty() {
        message.push_str(if detail.starts_with("in ") { " " } else { ": " });
        message.push_str(detail);
    }
    json(404, &serde_json::json!({ "hit": false, "error": message }))
}

async fn put(core: &Rc<Core>, key: &[u8], request: &Request) -> Response {
    let config = &core.config;
    let Put { stored, ttl } = match body::decode_put(
        config,
        key,
        request.head.content_type.as_deref(),
        request.head.query.as_deref(),
        &request.body,
    ) {
        Ok(put) => put,
        Err(refused) => return refused.into(),
    };
    let outcome = match writes::put(&core.shared, key, stored, ttl).await {
        Ok(outcome) => outcome,
        Err(PutRefused::Origin(e)) => {
            return Response::error(502, PutRefused::Origin(e).to_string())
        }
        Err(PutRefused::Shard(e)) => return shard_unavailable(e),
    };
    match outcome.l1 {
        Ok(inserted) => {
            let body = serde_json::json!({
                "success": true,
                "expires_at": inserted.expires_at_ms.map(rfc3339),
            });
            match outcome.l2 {
                Some(Ok(Written::Superseded)) => {
                    let mut body = body;
                    body["l2"] = "superseded by a newer write of the key from another instance, which every tier now holds".into();
                    json(200, &body)
                }
                Some(l2) => answer_write(body, &l2, "stored"),
                None => json(200, &body),
            }
        }
        Err(e @ InsertError::TooLarge { .. }) => {
            Response::error(413, format!("{e} (CACHE_L1_MAX_BYTES per core)"))
        }
        Err(e) => Response::error(400, e.to_string()),
    }
}

async fn delete(core: &Rc<Core>, key: &[u8]) -> Response {
    let outcome = match writes::delete(&core.shared, key).await {
        Ok(outcome) => outcome,
        Err(e) => return shard_unavailable(e),
    };
    let Some(l2) = outcome.l2 else {
        return json(
            200,
            &serde_json::json!({ "success": true, "deleted": outcome.l1 }),
        );
    };
    let deleted = outcome.l1 || l2.as_ref().is_ok_and(|n| *n > 0);
    answer_write(
        serde_json::json!({ "success": true, "deleted": deleted }),
        &l2,
        "deleted",
    )
}

/// Answers a write or deletion whose L1 part is done: 200 when Redis took its part too,
/// else 503 with `success: false`, because the other instances would go on reading the
/// previous value from L2 (the coherence event alone only drops it from their L1).
fn answer_write<T>(
    mut body: serde_json::Value,
    outcome: &Result<T, l2::L2Error>,
    done: &str,
) -> Response {
    body["l2"] = l2_outcome(outcome, done);
    match outcome {
        Ok(_) => json(200, &body),
        Err(e) => {
            body["success"] = false.into();
            body["error"] = format!(
                "done in this instance's L1 but not in Redis ({e}); other instances may read the previous value from L2 until a retry succeeds"
            )
            .into();
            json(503, &body)
        }
    }
}

/// How the L2 part of a write went, for the response: `done`, or why not. (Writes are
/// never skipped by the breaker; see `l2::client`.)
fn l2_outcome<T>(outcome: &Result<T, l2::L2Error>, done: &str) -> serde_json::Value {
    match outcome {
        Ok(_) => done.into(),
        Err(e) => format!("failed: {e}").into(),
    }
}

/// Re-fetches keys from the origin (bypassing L1 and L2, superseding fills in flight),
/// stores them in both tiers and tells the other instances.
async fn refresh(core: &Rc<Core>, request: &Request) -> Response {
    if core.shared.origin.is_none() {
        return Response::error(
            400,
            "refresh re-fetches from the origin, and no ORIGIN_URL is configured",
        );
    }
    let keys = match body::decode_refresh(&core.config, &request.body) {
        Ok(keys) => keys,
        Err(refused) => return refused.into(),
    };
    let shared = &core.shared;
    let (mut refreshed, mut absent, mut failed) = (0, Vec::new(), Vec::new());
    for key in &keys {
        match writes::refresh(shared, key.as_bytes()).await {
            Ok(Ok(Filled::Hit { .. })) => refreshed += 1,
            Ok(Ok(Filled::Absent)) => absent.push(key.clone()),
            Ok(Err(e)) => failed.push(serde_json::json!({ "key": key, "error": e.message })),
            Err(e) => failed.push(serde_json::json!({ "key": key, "error": e.to_string() })),
        }
    }
    json(
        200,
        &serde_json::json!({ "refreshed": refreshed, "absent": absent, "failed": failed, "success": failed.is_empty() }),
    )
}

async fn invalidate(core: &Rc<Core>, request: &Request) -> Response {
    let invalidation = match body::decode_invalidate(
        &core.config,
        request.head.content_type.as_deref(),
        &request.body,
    ) {
        Ok(invalidation) => invalidation,
        Err(refused) => return refused.into(),
    };
    let invalidated = match invalidation {
        Invalidation::Keys(keys) => writes::invalidate_keys(&core.shared, &keys).await,
        Invalidation::Pattern(pattern) => writes::invalidate_pattern(&core.shared, &pattern).await,
    };
    let Invalidated {
        l1: local,
        l2: remote,
    } = match invalidated {
        Ok(invalidated) => invalidated,
        Err(e) => return shard_unavailable(e),
    };
    match remote {
        // L2 holds every key L1 does (a write L2 refused answered 503), so the larger
        // count is the number of distinct keys removed.
        Some(remote) => answer_write(
            serde_json::json!({
                "invalidated": local.max(*remote.as_ref().unwrap_or(&0)),
                "success": true,
            }),
            &remote,
            "invalidated",
        ),
        None => json(
            200,
            &serde_json::json!({ "invalidated": local, "success": true }),
        ),
    }
}
