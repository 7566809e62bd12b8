//! The agent's status document (`<run-dir>/status.json`): capture proof per
//! enrolled pod, capture counters, and config errors. One type, written by
//! the agent and read by `meshctl`, so the two cannot drift apart.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{
    capture::{CaptureCounters, proof::PodCaptureStatus},
    identity::store::{CaStatus, CertStatus},
    proxy::mesh::TunnelStatus,
    state::cluster::SourceStatus,
};

pub const FILE_NAME: &str = "status.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub node: String,
    pub version: String,
    pub pods: Vec<PodCaptureStatus>,
    /// Pods of enrolled namespaces on this node whose network namespace is
    /// not known yet (Kubernetes: neither the CNI plugin nor the /proc scan
    /// has found them): their traffic is not captured.
    #[serde(default)]
    pub unlocated: Vec<String>,
    pub counters: Vec<CounterValue>,
    pub config_errors: Vec<String>,
    /// Pod certificates (empty when the agent runs without a CA).
    #[serde(default)]
    pub certs: Vec<CertStatus>,
    #[serde(default)]
    pub tunnel: TunnelStatus,
    /// Kubernetes mode: the API server watches (`None` in local mode).
    #[serde(default)]
    pub api_server: Option<SourceStatus>,
    /// The mesh CA and failing certificate requests (`None`: the agent runs
    /// without a CA).
    #[serde(default)]
    pub ca: Option<CaStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CounterValue {
    pub hook: String,
    pub counter: String,
    pub value: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(
        "no agent status at {0}: is mesh-agent running on this node? (start it, or point \
         --run-dir at the directory it was given)"
    )]
    Missing(PathBuf),
    #[error("reading {path}: {source} (meshctl needs root to read the agent's run directory)")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a status document this meshctl understands: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Status {
    pub fn counters_from(counters: &CaptureCounters) -> Vec<CounterValue> {
        counters
            .iter()
            .map(|(hook, counter, value)| CounterValue {
                hook: hook.name().to_owned(),
                counter: counter.name().to_owned(),
                value: *value,
            })
            .collect()
    }

    /// Writes atomically (write, then rename): readers never see half a file.
    pub fn write(&self, run_dir: &Path) -> Result<(), StatusError> {
        let path = run_dir.join(FILE_NAME);
        let tmp = run_dir.join(format!(".{FILE_NAME}.tmp"));
        let json = serde_json::to_vec_pretty(self).expect("status serializes");
        std::fs::write(&tmp, json)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|source| StatusError::Write { path, source })
    }

    pub fn read(run_dir: &Path) -> Result<Self, StatusError> {
        let path = run_dir.join(FILE_NAME);
        let text = std::fs::read_to_string(&path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                StatusError::Missing(path.clone())
            } else {
                StatusError::Read {
                    path: path.clone(),
                    source,
                }
            }
        })?;
        serde_json::from_str(&text).map_err(|source| StatusError::Parse { path, source })
    }
}
