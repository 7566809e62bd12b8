//! What the CNI plugin and the node agent say to each other over the
//! agent's unix socket (`<run-dir>/cni.sock`): one JSON request line, one
//! JSON reply line. Kept this small so the plugin, which the container
//! runtime runs for every pod sandbox, stays a short-lived, simple process.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::IpAddr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// The socket's name in the agent's run directory.
pub const SOCKET_NAME: &str = "cni.sock";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Command {
    /// A sandbox was set up: enrol the pod before the kubelet starts it.
    Add,
    /// A sandbox is being torn down.
    Del,
    /// Is the pod still enrolled as the sandbox expects?
    Check,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub command: Command,
    pub namespace: String,
    pub name: String,
    /// The sandbox's container ID (`CNI_CONTAINERID`).
    pub sandbox: String,
    /// `CNI_NETNS`.
    pub netns: PathBuf,
    /// The addresses the earlier plugins of the chain gave the pod.
    #[serde(default)]
    pub ips: Vec<IpAddr>,
}

impl Request {
    pub fn pod(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// Whether the pod may start (ADD), or the command succeeded.
    pub ok: bool,
    /// What the agent did, or why it refused.
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error(
        "the nodemesh agent is not answering on {socket}: {source} (is the mesh-agent DaemonSet \
         pod on this node running and ready?)"
    )]
    Connect {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the nodemesh agent on {socket}: {source}")]
    Io {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the nodemesh agent on {socket} answered something unreadable: {source}")]
    Reply {
        socket: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Sends `request` and waits up to `timeout` for the reply (blocking: the
/// plugin has nothing else to do).
pub fn ask(socket: &Path, request: &Request, timeout: Duration) -> Result<Reply, AskError> {
    let io = |source| AskError::Io {
        socket: socket.to_owned(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(|source| AskError::Connect {
        socket: socket.to_owned(),
        source,
    })?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut line = serde_json::to_vec(request).expect("a request always serializes");
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).map_err(io)?;
    serde_json::from_str(&answer).map_err(|source| AskError::Reply {
        socket: socket.to_owned(),
        source,
    })
}
