//! The node agent's side of signing.
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use rcgen::{CertificateParams, KeyPair};

use super::{PATH, SignError, SignRequest, SignResponse};
use crate::tunnel::{TunnelError, client::Connection};

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("reaching the CA: {0}")]
    Transport(#[from] TunnelError),
    #[error("the CA refused ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("the CA's answer is not understood: {0}")]
    Protocol(String),
    #[error("making the CSR: {0}")]
    Csr(#[from] rcgen::Error),
}

/// Asks the CA (over `conn`, authenticated as this node) for the certificate
/// of `pod` (`namespace/name`) over `key`'s public half.
pub async fn request_certificate(
    conn: &Connection,
    pod: &str,
    key: &KeyPair,
) -> Result<SignResponse, SigningError> {
    let csr = CertificateParams::default().serialize_request(key)?.pem()?;
    let body = serde_json::to_vec(&SignRequest {
        pod: pod.to_owned(),
        csr,
    })
    .expect("serializes");
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("https://nodemesh-ca.invalid{PATH}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(())
        .expect("valid request");
    let (status, body) = conn.request(request, Bytes::from(body)).await?;
    if status != StatusCode::OK {
        let message = serde_json::from_slice::<SignError>(&body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        return Err(SigningError::Refused {
            status: status.as_u16(),
            message,
        });
    }
    serde_json::from_slice(&body).map_err(|e| SigningError::Protocol(e.to_string()))
}
