//! `nodemesh.test.Greeter`, a gRPC service for the waypoint's tests, on
//! tonic: a real gRPC implementation independent of the mesh's, so a test
//! that passes says the waypoint speaks gRPC, not merely that it agrees
//! with itself. The messages are declared by hand (prost derive) and the
//! service is wired with tonic's lower-level server and client, so no
//! protoc is needed. As a proto file it would read:
//!
//! ```text
//! service Greeter {
//!   rpc Hello(HelloRequest) returns (HelloReply);         // unary
//!   rpc Count(HelloRequest) returns (stream HelloReply);  // `count` replies
//! }
//! ```
//!
//! A request with `fail` set ends in NOT_FOUND with that message and the
//! metadata `x-backend` and `x-detail`: in the response headers for Hello
//! (a trailers-only answer), in the trailers after the replies for Count.
use std::{collections::BTreeMap, future::Ready, net::SocketAddr};

use bytes::Bytes;
use http::uri::PathAndQuery;
use serde_json::{Value, json};
use tonic::{
    Code, Request, Response, Status,
    metadata::{MetadataMap, MetadataValue},
    server::{Grpc, ServerStreamingService, UnaryService},
    transport::Endpoint,
};
use tonic_prost::ProstCodec;

pub const SERVICE: &str = "nodemesh.test.Greeter";

#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloRequest {
    #[prost(string, tag = "1")]
    pub name: String,
    /// How many replies Count streams.
    #[prost(uint32, tag = "2")]
    pub count: u32,
    /// Non-empty: end with NOT_FOUND and this message.
    #[prost(string, tag = "3")]
    pub fail: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloReply {
    #[prost(string, tag = "1")]
    pub message: String,
    /// The backend that answered, so a test can tell where a call went.
    #[prost(string, tag = "2")]
    pub backend: String,
    #[prost(uint32, tag = "3")]
    pub index: u32,
}

/// Whether `path` names one of the Greeter's methods.
pub fn serves(path: &str) -> bool {
    path.strip_prefix('/')
        .and_then(|p| p.strip_prefix(SERVICE))
        .is_some_and(|rest| rest.starts_with('/'))
}

/// Answers one call to the Greeter as backend `backend`.
pub async fn answer<B>(backend: &str, req: http::Request<B>) -> http::Response<tonic::body::Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    let mut grpc = Grpc::new(ProstCodec::<HelloReply, HelloRequest>::default());
    let method = req.uri().path().rsplit('/').next().unwrap_or_default();
    match method {
        "Hello" => grpc.unary(Hello(backend.to_owned()), req).await,
        "Count" => grpc.server_streaming(Count(backend.to_owned()), req).await,
        other => Status::unimplemented(format!("{SERVICE} has no method {other}")).into_http(),
    }
}

fn not_found(backend: &str, message: &str) -> Status {
    let mut metadata = MetadataMap::new();
    if let Ok(value) = MetadataValue::try_from(backend) {
        metadata.insert("x-backend", value);
    }
    metadata.insert("x-detail", MetadataValue::from_static("from-greeter"));
    Status::with_metadata(Code::NotFound, message, metadata)
}

fn reply(backend: &str, name: &str, index: u32) -> HelloReply {
    HelloReply {
        message: format!("hello {name}"),
        backend: backend.to_owned(),
        index,
    }
}

struct Hello(String);

impl UnaryService<HelloRequest> for Hello {
    type Response = HelloReply;
    type Future = Ready<Result<Response<HelloReply>, Status>>;

    fn call(&mut self, request: Request<HelloRequest>) -> Self::Future {
        let req = request.into_inner();
        std::future::ready(if req.fail.is_empty() {
            Ok(Response::new(reply(&self.0, &req.name, 0)))
        } else {
            Err(not_found(&self.0, &req.fail))
        })
    }
}

struct Count(String);

impl ServerStreamingService<HelloRequest> for Count {
    type Response = HelloReply;
    type ResponseStream = tokio_stream::Iter<std::vec::IntoIter<Result<HelloReply, Status>>>;
    type Future = Ready<Result<Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: Request<HelloRequest>) -> Self::Future {
        let req = request.into_inner();
        let mut items: Vec<_> = (0..req.count)
            .map(|i| Ok(reply(&self.0, &req.name, i)))
            .collect();
        if !req.fail.is_empty() {
            items.push(Err(not_found(&self.0, &req.fail)));
        }
        std::future::ready(Ok(Response::new(tokio_stream::iter(items))))
    }
}

/// One call to `to` (asking for `host`): `method` of `service` (Count
/// streams, anything else is unary). Its outcome as JSON: `code` (0 = OK),
/// `message`, `replies`, and `metadata` (response headers and trailers).
pub async fn call(
    to: SocketAddr,
    host: &str,
    service: &str,
    method: &str,
    request: HelloRequest,
) -> anyhow::Result<Value> {
    let channel = Endpoint::from_shared(format!("http://{to}"))?
        .origin(format!("http://{host}").parse()?)
        .connect()
        .await?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await?;
    let path = PathAndQuery::try_from(format!("/{service}/{method}"))?;
    let codec = ProstCodec::<HelloRequest, HelloReply>::default();
    let mut replies = Vec::new();
    let mut metadata = BTreeMap::new();
    let outcome: Result<(), Status> = async {
        if method == "Count" {
            let response = grpc
                .server_streaming(Request::new(request), path, codec)
                .await?;
            collect(&mut metadata, response.metadata());
            let mut stream = response.into_inner();
            while let Some(reply) = stream.message().await? {
                replies.push(reply);
            }
            if let Some(trailers) = stream.trailers().await? {
                collect(&mut metadata, &trailers);
            }
        } else {
            let response = grpc.unary(Request::new(request), path, codec).await?;
            collect(&mut metadata, response.metadata());
            replies.push(response.into_inner());
        }
        Ok(())
    }
    .await;
    let (code, message) = match &outcome {
        Ok(()) => (Code::Ok, String::new()),
        Err(status) => {
            collect(&mut metadata, status.metadata());
            (status.code(), status.message().to_owned())
        }
    };
    Ok(json!({
        "code": code as i32,
        "message": message,
        "replies": replies
            .iter()
            .map(|r| json!({"message": r.message, "backend": r.backend, "index": r.index}))
            .collect::<Vec<_>>(),
        "metadata": metadata,
    }))
}

/// Adds `from` (headers or trailers) to `into`, as text.
fn collect(into: &mut BTreeMap<String, String>, from: &MetadataMap) {
    for (name, value) in from.clone().into_headers().iter() {
        into.insert(
            name.to_string(),
            String::from_utf8_lossy(value.as_bytes()).into_owned(),
        );
    }
}
