//! Where the model comes from: a local directory or the Kubernetes API
//! server. Either way the agent gets the same channel of [`Loaded`] models.
use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::watch, task::JoinHandle};

use super::{
    Loaded,
    cluster::{Scope, SourceStatus},
};

pub enum Source {
    /// Kubernetes-style YAML in a directory, re-read when its files change.
    Dir { path: PathBuf, interval: Duration },
    /// The API server: in-cluster credentials when run in a pod, else this
    /// kubeconfig (or `$KUBECONFIG`, then `~/.kube/config`); every pod, or
    /// one node's and the CA's directory of the others (`scope`).
    Cluster {
        kubeconfig: Option<PathBuf>,
        scope: Scope,
    },
}

/// A source being followed.
pub struct Opened {
    pub config: watch::Receiver<Arc<Loaded>>,
    pub task: JoinHandle<()>,
    /// The API server watches' state (`None` for a directory).
    pub cluster: Option<Arc<Mutex<SourceStatus>>>,
    /// The API server's client, for what a role writes there or asks it
    /// (`None` for a directory).
    pub client: Option<kube::Client>,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("reading kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error(
        "no Kubernetes credentials: not in a pod (no service account token), and no kubeconfig \
         at $KUBECONFIG or ~/.kube/config; pass --kubeconfig, or use --config-dir for \
         local mode"
    )]
    Infer(#[source] kube::config::InferConfigError),
    #[error("building the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

/// Starts following `source`; for the API server, returns once every
/// resource has been listed (until then there is no model to serve).
pub async fn open(source: Source) -> Result<Opened, SourceError> {
    match source {
        Source::Dir { path, interval } => {
            let (config, task) = super::watch(path, interval);
            Ok(Opened {
                config,
                task,
                cluster: None,
                client: None,
            })
        }
        Source::Cluster { kubeconfig, scope } => {
            let config = match kubeconfig {
                Some(path) => {
                    let file = kube::config::Kubeconfig::read_from(&path).map_err(|source| {
                        SourceError::Kubeconfig {
                            path: path.clone(),
                            source,
                        }
                    })?;
                    kube::Config::from_custom_kubeconfig(file, &Default::default())
                        .await
                        .map_err(|source| SourceError::Kubeconfig { path, source })?
                }
                None => kube::Config::infer().await.map_err(SourceError::Infer)?,
            };
            tracing::info!(server = %config.cluster_url, "watching the Kubernetes API server");
            let client = kube::Client::try_from(config).map_err(SourceError::Client)?;
            let status = Arc::new(Mutex::new(SourceStatus::default()));
            let (config, task) =
                super::cluster::watch(client.clone(), Arc::clone(&status), scope).await;
            Ok(Opened {
                config,
                task,
                cluster: Some(status),
                client: Some(client),
            })
        }
    }
}
