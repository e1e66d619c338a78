//! The HTTP API, shaped as text-embeddings-inference's (`inputs`, `raw_scores`,
//! `truncate`, `normalize`; errors as `{"error", "error_type"}`) plus the adapter: routes,
//! request checks and their status codes. The model work goes to the batcher's queue.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::adapters::{Adapters, Base, Served};
use super::batcher::{Job, On, Queue, Refused, Want};
use super::metrics::Metrics;
use super::Options;
use crate::data::tasks::Problem;
use crate::embed::Pooling;
use crate::tokenize::{Encoded, TextEncoder};

pub struct AppState {
    pub adapters: Adapters,
    pub base: Arc<Base>,
    pub queue: Queue,
    pub metrics: Arc<Metrics>,
    pub opts: Options,
    pub in_flight: AtomicUsize,
}

type St = State<Arc<AppState>>;

pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.opts.max_body_bytes;
    Router::new()
        .route("/health", get(health))
        .route("/info", get(info))
        .route("/metrics", get(metrics))
        .route("/adapters", get(list).post(load))
        .route("/adapters/{name}", delete(unload))
        .route("/predict", post(predict))
        .route("/embed", post(embed))
        .route("/qa", post(qa))
        .route("/openapi.json", get(openapi))
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// An error answer: its status, TEI's `error_type`, and a message naming the field.
pub struct ApiError(StatusCode, &'static str, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.2, "error_type": self.1});
        (self.0, Json(body)).into_response()
    }
}

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::UNPROCESSABLE_ENTITY, "Validation", msg.into())
}

/// Before a handler runs: a body announced over `--max-body-bytes` is refused unread
/// (the limit layer alone would read up to it first); with `--api-key`, every route but
/// /health needs `Authorization: Bearer KEY`.
async fn guard(
    State(s): St,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > s.opts.max_body_bytes as u64) {
        return ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Validation",
            format!(
                "the body is over --max-body-bytes {}",
                s.opts.max_body_bytes
            ),
        )
        .into_response();
    }
    let Some(key) = &s.opts.api_key else {
        return next.run(req).await;
    };
    if req.uri().path() == "/health" {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Compared in full whatever the first difference, so timing tells nothing.
    let ok = given.is_some_and(|g| {
        g.len() == key.len() && g.bytes().zip(key.bytes()).fold(0, |d, (a, b)| d | (a ^ b)) == 0
    });
    match ok {
        true => next.run(req).await,
        false => ApiError(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "send the server's --api-key as `Authorization: Bearer KEY`".into(),
        )
        .into_response(),
    }
}

/// The body as `T`, or a 422 naming the field that is wrong (`inputs[2]`, `adapter`).
fn parse<T: DeserializeOwned>(headers: &HeaderMap, body: &Bytes) -> Result<T, ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return Err(ApiError(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Validation",
            "send JSON with `Content-Type: application/json`".into(),
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let at = e.path().to_string();
        match at.as_str() {
            "." => invalid(format!("body: {}", e.inner())),
            _ => invalid(format!("{at}: {}", e.inner())),
        }
    })
}

/// This API's OpenAPI 3.1 description, kept beside the routes (a test checks that every
/// route it names answers).
const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

async fn health() -> &'static str {
    "ok"
}

async fn info(State(s): St) -> Json<Value> {
    let o = &s.opts;
    Json(json!({
        "model_id": s.base.dir.display().to_string(),
        "version": env!("CARGO_PKG_VERSION"),
        "max_input_length": s.base.encoder.max_len(),
        "max_batch_tokens": o.max_batch_tokens,
        "max_batch_requests": o.max_batch_requests,
        "max_client_batch_size": o.max_client_batch_size,
        "max_concurrent_requests": o.max_concurrent_requests,
        "max_wait_ms": o.max_wait.as_millis() as u64,
        "auto_truncate": o.auto_truncate,
        "adapters": s.adapters.list().iter().map(|a| describe(a)).collect::<Vec<_>>(),
    }))
}

/// An adapter as `/adapters` and `/info` list it.
fn describe(a: &Served) -> Value {
    let labels = match a.task.problem {
        Problem::Classification { labels } => json!(labels),
        _ => Value::Null,
    };
    json!({
        "name": a.name,
        "path": a.dir.display().to_string(),
        "method": a.method,
        "task": a.task.name,
        "labels": labels,
        "max_input_length": a.encoder.max_len(),
        "own_parameters": a.own_params,
        // A fully fine-tuned run is its own model: it shares nothing with the base.
        "own_model": a.full,
    })
}

async fn metrics(State(s): St) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.text(),
    )
}

async fn list(State(s): St) -> Json<Value> {
    Json(json!(s
        .adapters
        .list()
        .iter()
        .map(|a| describe(a))
        .collect::<Vec<_>>()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadRequest {
    name: String,
    path: String,
    /// For an adapter saved by Hugging Face PEFT: the task its head was trained on.
    task: Option<String>,
}

async fn load(State(s): St, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let req: LoadRequest = parse(&headers, &body)?;
    let state = s.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        state
            .adapters
            .load_below_root(&req.name, &req.path, req.task.as_deref())
    })
    .await
    .map_err(|_| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Backend",
            "the load failed".into(),
        )
    })?;
    match loaded {
        Ok(a) => Ok((StatusCode::CREATED, Json(describe(&a))).into_response()),
        Err(e) if crate::error::is_user_error(&e) => {
            let msg = format!("{e:#}");
            let status = match msg.contains("is off") {
                true => StatusCode::FORBIDDEN,
                false => StatusCode::UNPROCESSABLE_ENTITY,
            };
            Err(ApiError(status, "Validation", msg))
        }
        Err(e) => Err(ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Backend",
            format!("{e:#}"),
        )),
    }
}

async fn unload(State(s): St, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    match s.adapters.unload(&name) {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(not_found(&name)),
    }
}

fn not_found(name: &str) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("adapter: no adapter {name:?} is loaded (GET /adapters lists them)"),
    )
}

/// One input: a text, or the two texts of a pair.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum Sequence {
    Single(String),
    Pair(String, String),
    /// `["text"]`: one text, as a batch of single texts lists them (`[["a"], ["b"]]`).
    Wrapped([String; 1]),
}

/// TEI's `inputs`: one sequence (a text, or `[a, b]`: a pair) or a list of them.
#[derive(Deserialize)]
#[serde(untagged, expecting = "a text, a pair [a, b], or a list of those")]
enum Inputs {
    One(Sequence),
    Many(Vec<Sequence>),
}

impl Inputs {
    fn list(self) -> (Vec<Sequence>, bool) {
        match self {
            Inputs::One(s) => (vec![s], false),
            Inputs::Many(v) => (v, true),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PredictRequest {
    inputs: Inputs,
    adapter: String,
    #[serde(default)]
    raw_scores: bool,
    truncate: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbedRequest {
    inputs: Inputs,
    adapter: Option<String>,
    #[serde(default = "yes")]
    normalize: bool,
    #[serde(default)]
    pooling: Option<String>,
    truncate: Option<bool>,
}

fn yes() -> bool {
    true
}

/// A slot of `--max-concurrent-requests`, given back when the request ends or its
/// client goes away (the handler's future is then dropped).
struct Slot(Arc<AppState>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn slot(s: &Arc<AppState>) -> Result<Slot, ApiError> {
    let before = s.in_flight.fetch_add(1, Ordering::SeqCst);
    let slot = Slot(s.clone());
    if before >= s.opts.max_concurrent_requests {
        return Err(ApiError(
            StatusCode::TOO_MANY_REQUESTS,
            "Overloaded",
            format!(
                "the server is at --max-concurrent-requests {}; retry later",
                s.opts.max_concurrent_requests
            ),
        ));
    }
    Ok(slot)
}

/// Each input tokenized; a text longer than the window is cut when `truncate`, else 413.
fn encode(
    enc: &TextEncoder,
    inputs: &[Sequence],
    pairs: Option<bool>,
    truncate: bool,
    max_inputs: usize,
) -> Result<Vec<Encoded>, ApiError> {
    if inputs.is_empty() {
        return Err(invalid("inputs: empty"));
    }
    if inputs.len() > max_inputs {
        return Err(ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Validation",
            format!(
                "inputs: {} inputs; at most --max-client-batch-size {max_inputs} a request",
                inputs.len()
            ),
        ));
    }
    let mut rows = Vec::with_capacity(inputs.len());
    for (i, seq) in inputs.iter().enumerate() {
        let (a, b) = match seq {
            Sequence::Single(a) | Sequence::Wrapped([a]) => (a.as_str(), None),
            Sequence::Pair(a, b) => (a.as_str(), Some(b.as_str())),
        };
        match (pairs, b.is_some()) {
            (Some(true), false) => {
                return Err(invalid(format!(
                    "inputs[{i}]: this adapter's task takes pairs: [\"first\", \"second\"]"
                )))
            }
            (Some(false), true) => {
                return Err(invalid(format!(
                    "inputs[{i}]: this adapter's task takes one text, not a pair (a batch of \
                     texts is [[\"a\"], [\"b\"]] or [\"a\", \"b\", \"c\"])"
                )))
            }
            _ => {}
        }
        let (row, cut) = enc
            .encode_checked(a, b)
            .map_err(|e| invalid(format!("inputs[{i}]: {e:#}")))?;
        if cut && !truncate {
            return Err(ApiError(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Validation",
                format!(
                    "inputs[{i}]: longer than the {} tokens the model reads; send \
                     \"truncate\": true to cut it",
                    enc.max_len()
                ),
            ));
        }
        rows.push(row);
    }
    Ok(rows)
}

/// Queue the job and wait for its rows.
async fn run(
    s: &AppState,
    on: On,
    want: Want,
    rows: Vec<Encoded>,
) -> Result<Vec<Vec<f32>>, ApiError> {
    let (tx, rx) = oneshot::channel();
    s.metrics.enqueued();
    let submitted = s.queue.submit(Job {
        on,
        want,
        rows,
        reply: tx,
    });
    if let Err(r) = submitted {
        s.metrics.dequeued(1);
        return Err(match r {
            Refused::Full => ApiError(
                StatusCode::TOO_MANY_REQUESTS,
                "Overloaded",
                "the queue is full; retry later".into(),
            ),
            Refused::Closed => ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "Unhealthy",
                "the server is shutting down".into(),
            ),
        });
    }
    match rx.await {
        Ok(Ok(rows)) => Ok(rows),
        Ok(Err(e)) => Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, "Backend", e)),
        Err(_) => Err(ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Backend",
            "the model thread dropped the request".into(),
        )),
    }
}

/// A model route: the body parsed as `T`, handed to `run`, and the answer timed and
/// counted under its adapter and route (a body that does not parse, under no adapter).
async fn handle<T, F, Fut>(
    s: Arc<AppState>,
    route: &str,
    headers: HeaderMap,
    body: Bytes,
    run: F,
) -> Response
where
    T: DeserializeOwned + Named,
    F: FnOnce(Arc<AppState>, T) -> Fut,
    Fut: std::future::Future<Output = Result<Json<Value>, ApiError>>,
{
    let start = Instant::now();
    let (adapter, out) = match parse::<T>(&headers, &body) {
        Ok(req) => (
            req.adapter().unwrap_or_default().to_string(),
            run(s.clone(), req).await,
        ),
        Err(e) => (String::new(), Err(e)),
    };
    let resp = match out {
        Ok(v) => v.into_response(),
        Err(e) => e.into_response(),
    };
    let seconds = start.elapsed().as_secs_f64();
    s.metrics
        .answered(&adapter, route, resp.status().as_u16(), seconds);
    resp
}

/// The adapter a request names, if any.
trait Named {
    fn adapter(&self) -> Option<&str>;
}

impl Named for PredictRequest {
    fn adapter(&self) -> Option<&str> {
        Some(&self.adapter)
    }
}

impl Named for EmbedRequest {
    fn adapter(&self) -> Option<&str> {
        self.adapter.as_deref()
    }
}

impl Named for QaRequest {
    fn adapter(&self) -> Option<&str> {
        Some(&self.adapter)
    }
}

/// The loaded adapter of that name, or 404.
fn loaded(s: &AppState, name: &str) -> Result<Arc<Served>, ApiError> {
    s.adapters.get(name).ok_or_else(|| not_found(name))
}

async fn predict(State(s): St, headers: HeaderMap, body: Bytes) -> Response {
    handle(s, "predict", headers, body, predict_rows).await
}

async fn predict_rows(s: Arc<AppState>, req: PredictRequest) -> Result<Json<Value>, ApiError> {
    let _slot = slot(&s)?;
    let a = loaded(&s, &req.adapter)?;
    if let Problem::Span { .. } = a.task.problem {
        return Err(invalid(format!(
            "adapter: {:?} answers questions (task {}); /predict serves classification and \
             regression adapters",
            a.name, a.task.name
        )));
    }
    let (inputs, many) = req.inputs.list();
    let pairs = a.task.takes_pairs();
    let truncate = req.truncate.unwrap_or(s.opts.auto_truncate);
    let rows = encode(
        &a.encoder,
        &inputs,
        Some(pairs),
        truncate,
        s.opts.max_client_batch_size,
    )?;
    let logits = run(&s, On::Adapter(a.clone()), Want::Logits, rows).await?;
    let answers: Vec<Value> = logits
        .iter()
        .map(|l| scores(a.task.problem, l, req.raw_scores))
        .collect();
    Ok(Json(match many {
        true => json!(answers),
        false => answers.into_iter().next().unwrap_or(Value::Null),
    }))
}

/// TEI's answer for one input: every label with its probability (or raw logit), highest
/// first; a regression head's score under the label "score".
fn scores(problem: Problem, logits: &[f32], raw: bool) -> Value {
    match problem {
        Problem::Classification { labels } => {
            let p = match raw {
                true => logits.iter().map(|&l| l as f64).collect(),
                false => crate::eval::softmax(logits),
            };
            let mut out: Vec<(usize, f64)> = p.into_iter().enumerate().collect();
            out.sort_by(|a, b| b.1.total_cmp(&a.1));
            json!(out
                .iter()
                .map(|(i, p)| json!({"label": labels.get(*i).copied().unwrap_or("?"), "score": p}))
                .collect::<Vec<_>>())
        }
        _ => json!([{"label": "score", "score": logits.first().copied().unwrap_or(f32::NAN)}]),
    }
}

async fn embed(State(s): St, headers: HeaderMap, body: Bytes) -> Response {
    handle(s, "embed", headers, body, embed_rows).await
}

async fn embed_rows(s: Arc<AppState>, req: EmbedRequest) -> Result<Json<Value>, ApiError> {
    let _slot = slot(&s)?;
    let on = match &req.adapter {
        Some(name) => On::Adapter(loaded(&s, name)?),
        None => On::Base(s.base.clone()),
    };
    let pooling = match req.pooling.as_deref() {
        None | Some("mean") => Pooling::Mean,
        Some("cls") => Pooling::Cls,
        Some(p) => return Err(invalid(format!("pooling: {p:?}; use \"mean\" or \"cls\""))),
    };
    let encoder = match &on {
        On::Adapter(a) => &a.encoder,
        On::Base(b) => &b.encoder,
    };
    let (inputs, _) = req.inputs.list();
    let truncate = req.truncate.unwrap_or(s.opts.auto_truncate);
    let rows = encode(
        encoder,
        &inputs,
        None,
        truncate,
        s.opts.max_client_batch_size,
    )?;
    let out = run(&s, on, Want::Embed(pooling, req.normalize), rows).await?;
    Ok(Json(json!(out)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QaRequest {
    question: String,
    context: String,
    adapter: String,
}

async fn qa(State(s): St, headers: HeaderMap, body: Bytes) -> Response {
    handle(s, "qa", headers, body, answer).await
}

/// A question over a context, windowed as the run was trained, answered as `peft predict`
/// answers it: the text, its probability among the n best, and where it is in the context
/// (characters; null for no answer); SQuAD 2.0 runs add the null score difference.
async fn answer(s: Arc<AppState>, req: QaRequest) -> Result<Json<Value>, ApiError> {
    use crate::data::squad::{featurize, Featurized, QaExample};
    let _slot = slot(&s)?;
    let a = loaded(&s, &req.adapter)?;
    if !matches!(a.task.problem, Problem::Span { .. }) {
        return Err(invalid(format!(
            "adapter: {:?} is a {} run; /qa serves question-answering (SQuAD) runs",
            a.name, a.task.name
        )));
    }
    let example = QaExample {
        id: "0".into(),
        question: req.question,
        context: req.context,
        answers: Vec::new(),
    };
    let windows = a.encoder.qa().and_then(|q| featurize(vec![example], &q));
    let Featurized { qa, inputs, .. } = windows.map_err(|e| invalid(format!("question: {e:#}")))?;
    let tokens: usize = inputs.iter().map(Encoded::len).sum();
    if tokens > s.opts.max_batch_tokens {
        return Err(ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Validation",
            format!(
                "context: {} windows, {tokens} tokens; a request must fit --max-batch-tokens {}",
                inputs.len(),
                s.opts.max_batch_tokens
            ),
        ));
    }
    let rows = run(&s, On::Adapter(a.clone()), Want::Spans, inputs).await?;
    let logits: Vec<(Vec<f32>, Vec<f32>)> = rows
        .into_iter()
        .map(|r| {
            let (start, end) = r.split_at(r.len() / 2);
            (start.to_vec(), end.to_vec())
        })
        .collect();
    let found = crate::eval::spans::answers(&qa, &logits, a.spans);
    let text = found.text.first().map(|t| t.1.clone()).unwrap_or_default();
    let chosen = found.chosen.first().copied().flatten();
    let chars = chosen.and_then(|c| c.chars);
    let mut out = json!({
        "answer": text,
        "score": chosen.map(|c| c.probability),
        "start": chars.map(|c| c.0),
        "end": chars.map(|c| c.1),
    });
    if let Some((_, diff)) = found.null_diff.first() {
        out["null_score_diff"] = json!(diff);
    }
    Ok(Json(out))
}

#[cfg(test)]
mod tests {
    use super::OPENAPI;
    use serde_json::Value;

    /// Every `$ref` in the description names one of its components.
    #[test]
    fn the_openapi_description_is_whole() {
        let doc: Value = serde_json::from_str(OPENAPI).unwrap();
        fn refs(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        out.push(r.clone());
                    }
                    m.values().for_each(|v| refs(v, out));
                }
                Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(all.len() > 20);
        for r in all {
            let at = r.strip_prefix("#").unwrap();
            assert!(doc.pointer(at).is_some(), "{r} resolves to nothing");
        }
        assert_eq!(doc["paths"].as_object().unwrap().len(), 9);
    }
}
