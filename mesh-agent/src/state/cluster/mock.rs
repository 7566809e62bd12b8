//! An API server mocked at the HTTP level for tests: the real kube client
//! sends real requests through a `tower-test` pair, and a test's handler
//! answers each with a status and a body (JSON, or a stream of watch
//! events it keeps feeding).
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, channel::Channel, combinators::BoxBody};
use kube::Client;
use serde_json::Value as Json;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type MockBody = BoxBody<Bytes, BoxError>;
/// Feeds a streaming body (a watch) one chunk at a time.
pub type Feed = http_body_util::channel::Sender<Bytes, BoxError>;

/// One request as the mock saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: http::Method,
    pub path: String,
    /// Path and query.
    pub uri: String,
    pub content_type: Option<String>,
    /// The body as JSON (`Null` when empty).
    pub body: Json,
}

pub fn full(value: &Json) -> MockBody {
    Full::new(Bytes::from(value.to_string()))
        .map_err(|never| match never {})
        .boxed()
}

/// A body that stays open; send watch events (JSON lines) on the feed.
pub fn stream() -> (Feed, MockBody) {
    let (tx, body) = Channel::<Bytes, BoxError>::new(16);
    (tx, body.boxed())
}

/// An answer with `status` and a JSON body.
pub fn answer(status: StatusCode, value: &Json) -> Response<MockBody> {
    let mut response = Response::new(full(value));
    *response.status_mut() = status;
    response
}

/// A `Status` error body, as the API server sends with 4xx/5xx.
pub fn status_error(code: StatusCode, reason: &str, message: &str) -> Response<MockBody> {
    answer(
        code,
        &serde_json::json!({"apiVersion": "v1", "kind": "Status", "metadata": {},
            "status": "Failure", "reason": reason, "code": code.as_u16(), "message": message}),
    )
}

/// A client whose every request is answered by `handler`.
pub fn client(mut handler: impl FnMut(Seen) -> Response<MockBody> + Send + 'static) -> Client {
    let (service, mut handle) =
        tower_test::mock::pair::<Request<kube::client::Body>, Response<MockBody>>();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let seen = Seen {
                method: parts.method,
                path: parts.uri.path().to_owned(),
                uri: parts.uri.to_string(),
                content_type: parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                body: serde_json::from_slice(&bytes).unwrap_or(Json::Null),
            };
            send.send_response(handler(seen));
        }
    });
    Client::new(service, "default")
}
