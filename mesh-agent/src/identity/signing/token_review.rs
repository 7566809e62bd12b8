//! The CA's check of a service-account token: a TokenReview
//! (`authentication.k8s.io/v1`) asks the API server whether the token is
//! genuine and meant for the CA (audience `nodemesh-ca`).
//!
//! - A node agent's: the user must be the node agents' service account, and
//!   the node is the one the kubelet bound into the token
//!   (`authentication.kubernetes.io/node-name`, in every projected token
//!   since Kubernetes 1.30). The node never comes from the request: a
//!   token is only ever worth its own node's identity.
//! - A workload's (a waypoint, which runs in its own pod with no node
//!   agent's powers): the user is the pod's service account, and the pod is
//!   the one bound into the token (`authentication.kubernetes.io/pod-name`),
//!   so a token is only ever worth its own pod's identity.
//!
//! Messages name what was wrong, never the token.
use http::StatusCode;
use k8s_openapi::api::authentication::v1::{
    TokenReview, TokenReviewSpec, TokenReviewStatus, UserInfo,
};
use kube::{Api, Client, api::PostParams};

/// The audience agents' projected tokens are minted for.
pub const AUDIENCE: &str = "nodemesh-ca";
/// The user of the node agents' tokens: the DaemonSet's service account.
pub const AGENT_SERVICE_ACCOUNT: &str = "system:serviceaccount:nodemesh-system:nodemesh-agent";
/// The user-info extra where bound tokens carry their pod's node.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
/// The user-info extra where bound tokens carry their pod's name.
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
const SERVICE_ACCOUNT_USER: &str = "system:serviceaccount:";

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
        "the token names no single pod ({POD_NAME_EXTRA} holds {got:?}): use a projected \
         service-account token of the pod (the kubelet binds the pod into it)"
    )]
    NoPod { got: Vec<String> },
    #[error("the token belongs to {got}, not to a service account")]
    NotAServiceAccount { got: String },
    #[error(
        "cannot check the token now: TokenReview failed: {0} (may the CA's service account \
         create tokenreviews?)"
    )]
    Review(#[source] kube::Error),
}

/// Who a workload's token says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub namespace: String,
    pub service_account: String,
    /// The pod bound into the token.
    pub pod: String,
    /// The node bound into the token, when the API server binds one.
    pub node: Option<String>,
}

impl TokenRefused {
    /// How the CA answers the agent.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotAuthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::Review(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::WrongAudience { .. }
            | Self::WrongUser { .. }
            | Self::NoNode { .. }
            | Self::NoPod { .. }
            | Self::NotAServiceAccount { .. } => StatusCode::FORBIDDEN,
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

    /// The node a node agent's `token` speaks for.
    pub async fn node_of(&self, token: &str) -> Result<String, TokenRefused> {
        self.review(token).await.and_then(|s| self.node_agent(s))
    }

    /// The pod (and its service account) a workload's `token` speaks for.
    pub async fn workload_of(&self, token: &str) -> Result<Workload, TokenRefused> {
        self.review(token).await.and_then(|s| self.workload(s))
    }

    async fn review(&self, token: &str) -> Result<TokenReviewStatus, TokenRefused> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        // The answer echoes the token in its spec: only its status is kept.
        Ok(Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(TokenRefused::Review)?
            .status
            .unwrap_or_default())
    }

    /// The user of a genuine token meant for the CA.
    fn genuine(&self, status: TokenReviewStatus) -> Result<UserInfo, TokenRefused> {
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
        Ok(status.user.unwrap_or_default())
    }

    fn node_agent(&self, status: TokenReviewStatus) -> Result<String, TokenRefused> {
        let user = self.genuine(status)?;
        let username = user.username.clone().unwrap_or_default();
        if username != self.service_account {
            return Err(TokenRefused::WrongUser {
                got: username,
                want: self.service_account.clone(),
            });
        }
        single(&user, NODE_NAME_EXTRA).ok_or_else(|| TokenRefused::NoNode {
            got: all(&user, NODE_NAME_EXTRA),
        })
    }

    fn workload(&self, status: TokenReviewStatus) -> Result<Workload, TokenRefused> {
        let user = self.genuine(status)?;
        let username = user.username.clone().unwrap_or_default();
        let Some((namespace, service_account)) = username
            .strip_prefix(SERVICE_ACCOUNT_USER)
            .and_then(|rest| rest.split_once(':'))
            .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty())
        else {
            return Err(TokenRefused::NotAServiceAccount { got: username });
        };
        let pod = single(&user, POD_NAME_EXTRA).ok_or_else(|| TokenRefused::NoPod {
            got: all(&user, POD_NAME_EXTRA),
        })?;
        Ok(Workload {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
            pod,
            node: single(&user, NODE_NAME_EXTRA),
        })
    }
}

/// Every value of a user-info extra.
fn all(user: &UserInfo, key: &str) -> Vec<String> {
    user.extra
        .as_ref()
        .and_then(|extra| extra.get(key))
        .cloned()
        .unwrap_or_default()
}

/// A user-info extra holding exactly one non-empty value.
fn single(user: &UserInfo, key: &str) -> Option<String> {
    match all(user, key).as_slice() {
        [one] if !one.is_empty() => Some(one.clone()),
        _ => None,
    }
}
