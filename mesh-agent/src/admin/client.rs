//! Talking to an agent's admin API (what `meshctl` does): over its unix
//! socket, or a TCP address given as `host:port`.
use std::path::PathBuf;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

/// The default agent: the unix socket in the default run directory.
pub const DEFAULT_AGENT: &str = "/run/nodemesh/admin.sock";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no agent answers at {0}: is mesh-agent running on this node? (start it, or point \
         --agent at its <run-dir>/admin.sock or --admin-listen address)"
    )]
    NotRunning(String),
    #[error(
        "permission denied on {0}: the admin socket is root-only (mode 0600); run meshctl as root \
         (sudo meshctl …)"
    )]
    PermissionDenied(String),
    #[error("talking to the agent at {agent}: {source}")]
    Io {
        agent: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the agent at {agent}: {source}")]
    Http {
        agent: String,
        #[source]
        source: hyper::Error,
    },
    #[error("the agent refused the request ({status}): {message}")]
    Refused { status: StatusCode, message: String },
    #[error("the agent's answer is not what this meshctl understands: {0}")]
    Decode(#[from] serde_json::Error),
}

/// Where the agent is.
#[derive(Debug, Clone)]
pub enum Agent {
    Unix(PathBuf),
    Tcp(String),
}

impl Agent {
    /// `host:port` is TCP; anything else is a socket path.
    pub fn parse(text: &str) -> Self {
        if text.parse::<std::net::SocketAddr>().is_ok() {
            Self::Tcp(text.to_owned())
        } else {
            Self::Unix(PathBuf::from(text))
        }
    }

    /// Sends `GET path_and_query`; returns the response once its head
    /// arrived (the body may still stream).
    pub async fn get(&self, path_and_query: &str) -> Result<http::Response<Incoming>, ClientError> {
        let agent = self.to_string();
        let connect_error = |source: std::io::Error| match source.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                ClientError::NotRunning(agent.clone())
            }
            std::io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(agent.clone()),
            _ => ClientError::Io {
                agent: agent.clone(),
                source,
            },
        };
        let http_error = |source| ClientError::Http {
            agent: agent.clone(),
            source,
        };
        let request = Request::get(path_and_query)
            .header("host", "nodemesh-agent")
            .body(Empty::<Bytes>::new())
            .expect("a GET of a path is a valid request");
        let response = match self {
            Self::Unix(path) => {
                let io = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(connect_error)?;
                send(io, request).await.map_err(http_error)?
            }
            Self::Tcp(addr) => {
                let io = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(connect_error)?;
                send(io, request).await.map_err(http_error)?
            }
        };
        if !response.status().is_success() {
            let status = response.status();
            let body = response.into_body().collect().await.map_err(http_error)?;
            return Err(ClientError::Refused {
                status,
                message: String::from_utf8_lossy(&body.to_bytes()).trim().to_owned(),
            });
        }
        Ok(response)
    }

    /// `GET` and decode the JSON answer.
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path_and_query: &str,
    ) -> Result<T, ClientError> {
        let response = self.get(path_and_query).await?;
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|source| ClientError::Http {
                agent: self.to_string(),
                source,
            })?
            .to_bytes();
        Ok(serde_json::from_slice(&body)?)
    }
}

/// As given: the socket path or `host:port`.
impl std::fmt::Display for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "{}", p.display()),
            Self::Tcp(a) => f.write_str(a),
        }
    }
}

async fn send<S>(
    io: S,
    request: Request<Empty<Bytes>>,
) -> Result<http::Response<Incoming>, hyper::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(connection);
    sender.send_request(request).await
}
