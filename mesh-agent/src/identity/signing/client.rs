//! The node agent's side of signing.
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use rcgen::{CertificateParams, KeyPair};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::address::ResolveError;
use super::{NODE_PATH, NodeRequest, PATH, SignError, SignRequest, SignResponse, WORKLOAD_PATH};
use crate::{
    identity::{IdentityError, SpiffeId, verify::TrustBundle},
    tunnel::{TunnelError, client::Connection, tls::WorkloadCert},
};

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("reaching the CA: {0}")]
    Transport(#[from] TunnelError),
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error("the CA refused ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("the CA's answer is not understood: {0}")]
    Protocol(String),
    #[error("making the CSR: {0}")]
    Csr(#[from] rcgen::Error),
    #[error("{0}")]
    Token(String),
}

/// Asks the CA (over `conn`, authenticated as this node) for the certificate
/// of `pod` (`namespace/name`) over `key`'s public half.
pub async fn request_certificate(
    conn: &Connection,
    pod: &str,
    key: &KeyPair,
) -> Result<SignResponse, SigningError> {
    pod_request(conn, PATH, None, pod, key).await
}

/// Asks the CA (over `conn`, which need not carry a client certificate)
/// for this node's own credentials over `key`'s public half, proving who
/// the node is with a service-account `token`.
pub async fn request_node_credentials(
    conn: &Connection,
    token: &str,
    key: &KeyPair,
) -> Result<SignResponse, SigningError> {
    post(
        conn,
        NODE_PATH,
        Some(token),
        &NodeRequest { csr: csr(key)? },
    )
    .await
}

/// Asks the CA (over `conn`, which need not carry a client certificate)
/// for the certificate of the workload's own `pod` over `key`'s public
/// half, proving which pod it is with the pod's service-account `token`.
pub async fn request_workload_credentials(
    conn: &Connection,
    token: &str,
    pod: &str,
    key: &KeyPair,
) -> Result<SignResponse, SigningError> {
    pod_request(conn, WORKLOAD_PATH, Some(token), pod, key).await
}

async fn pod_request(
    conn: &Connection,
    path: &str,
    bearer: Option<&str>,
    pod: &str,
    key: &KeyPair,
) -> Result<SignResponse, SigningError> {
    let request = SignRequest {
        pod: pod.to_owned(),
        csr: csr(key)?,
    };
    post(conn, path, bearer, &request).await
}

/// The certificate of an answer, with the key it was requested over.
pub fn issued(
    signed: &SignResponse,
    key: &KeyPair,
) -> Result<(SpiffeId, WorkloadCert), SigningError> {
    let protocol = |e: IdentityError| SigningError::Protocol(e.to_string());
    let chain = TrustBundle::certs_from_pem(&signed.certificate).map_err(protocol)?;
    if chain.is_empty() {
        return Err(SigningError::Protocol(
            "no certificate in the answer".into(),
        ));
    }
    let identity = SpiffeId::parse(&signed.identity).map_err(protocol)?;
    let cert = WorkloadCert {
        chain,
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    };
    Ok((identity, cert))
}

fn csr(key: &KeyPair) -> Result<String, SigningError> {
    Ok(CertificateParams::default().serialize_request(key)?.pem()?)
}

async fn post(
    conn: &Connection,
    path: &str,
    bearer: Option<&str>,
    body: &impl serde::Serialize,
) -> Result<SignResponse, SigningError> {
    let body = serde_json::to_vec(body).expect("serializes");
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(format!("https://nodemesh-ca.invalid{path}"))
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = bearer {
        let mut value = http::HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            SigningError::Protocol(
                "the token holds characters an HTTP header cannot carry: is the token file a \
                 service-account token?"
                    .into(),
            )
        })?;
        value.set_sensitive(true);
        request = request.header(header::AUTHORIZATION, value);
    }
    let request = request.body(()).expect("valid request");
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
