//! The CA's check of a node agent's service-account token: a TokenReview
//! (`authentication.k8s.io/v1`) asks the API server whether the token is
//! genuine and meant for the CA (audience `nodemesh-ca`); the user must be
//! the node agents' service account, and the node is the one the kubelet
//! bound into the token (`authentication.kubernetes.io/node-name`, in
//! every projected token since Kubernetes 1.30). The node never comes from
//! the request: a token is only ever worth its own node's identity.
//!
//! Messages name what was wrong, never the token.
use http::StatusCode;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::{Api, Client, api::PostParams};

/// The audience agents' projected tokens are minted for.
pub const AUDIENCE: &str = "nodemesh-ca";
/// The user of the node agents' tokens: the DaemonSet's service account.
pub const AGENT_SERVICE_ACCOUNT: &str = "system:serviceaccount:nodemesh-system:nodemesh-agent";
/// The user-info extra where bound tokens carry their pod's node.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// Why a token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum TokenRefused {
    #[error("the API server does not accept the token: {0}")]
    NotAuthenticated(String),
    #[error(
        "the token is not meant for the CA (audiences {got:?}, expected {want:?}): give the agent \
         a projected service-account token with audience {want:?}"
    )]
    WrongAudience { got: Vec<String>, want: String },
    #[error(
        "the token belongs to {got}; only {want} (the node agents' service account, \
         `ca serve --agent-service-account`) may obtain node credentials"
    )]
    WrongUser { got: String, want: String },
    #[error(
        "the token names no single node ({NODE_NAME_EXTRA} holds {got:?}): use a projected \
         service-account token of a pod (the kubelet binds its node into it on Kubernetes 1.30 \
         and later)"
    )]
    NoNode { got: Vec<String> },
    #[error(
        "cannot check the token now: TokenReview failed: {0} (may the CA's service account \
         create tokenreviews?)"
    )]
    Review(#[source] kube::Error),
}

impl TokenRefused {
    /// How the CA answers the agent.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotAuthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::Review(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::WrongAudience { .. } | Self::WrongUser { .. } | Self::NoNode { .. } => {
                StatusCode::FORBIDDEN
            }
        }
    }
}

/// Checks node agents' tokens with the API server.
pub struct TokenReviewer {
    client: Client,
    audience: String,
    service_account: String,
}

impl TokenReviewer {
    /// Accepts tokens of `service_account` (a username,
    /// `system:serviceaccount:<namespace>:<name>`) meant for `audience`.
    pub fn new(client: Client, audience: &str, service_account: &str) -> Self {
        Self {
            client,
            audience: audience.to_owned(),
            service_account: service_account.to_owned(),
        }
    }

    /// The node `token` speaks for.
    pub async fn node_of(&self, token: &str) -> Result<String, TokenRefused> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        // The answer echoes the token in its spec: only its status is kept.
        let status = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(TokenRefused::Review)?
            .status
            .unwrap_or_default();
        self.judge(status)
    }

    fn judge(&self, status: TokenReviewStatus) -> Result<String, TokenRefused> {
        if status.authenticated != Some(true) {
            return Err(TokenRefused::NotAuthenticated(
                status
                    .error
                    .filter(|e| !e.is_empty())
                    .unwrap_or_else(|| "not authenticated".to_owned()),
            ));
        }
        // An audience-aware API server says which of ours the token is
        // for; one that says none did not check the audience.
        let audiences = status.audiences.unwrap_or_default();
        if !audiences.contains(&self.audience) {
            return Err(TokenRefused::WrongAudience {
                got: audiences,
                want: self.audience.clone(),
            });
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        if username != self.service_account {
            return Err(TokenRefused::WrongUser {
                got: username,
                want: self.service_account.clone(),
            });
        }
        match user
            .extra
            .and_then(|mut extra| extra.remove(NODE_NAME_EXTRA))
            .unwrap_or_default()
            .as_slice()
        {
            [node] if !node.is_empty() => Ok(node.clone()),
            other => Err(TokenRefused::NoNode {
                got: other.to_vec(),
            }),
        }
    }
}
