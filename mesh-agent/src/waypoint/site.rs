//! The CONNECTs a waypoint accepts: only to a port of a Service that sends
//! its traffic through this very waypoint (so it is never an open relay),
//! from a verified mesh identity. Each accepted stream becomes an HTTP
//! connection ([`super::serve`]) with an L4 flow record of its own.
use std::{net::SocketAddr, sync::Arc};

use http::StatusCode;

use super::{Waypoint, serve};
use crate::{
    flows::record::{Path, State},
    proxy::{flow::Owner, hbone::Site as HboneSite, mesh::Mesh},
    tunnel::server::{Handler, Peer, Refusal, Session},
};

pub struct Site(pub Arc<Waypoint>);

impl HboneSite for Site {
    fn name(&self) -> &str {
        &self.0.pod
    }

    fn mesh(&self) -> &Mesh {
        &self.0.mesh
    }

    fn owner(&self) -> Owner<'_> {
        self.0.owner()
    }

    fn path(&self) -> Path {
        Path::Waypoint
    }
}

impl Handler for Site {
    /// The target is the Service address itself: no header needed.
    async fn open(
        &self,
        peer: Peer,
        target: SocketAddr,
        _service: Option<String>,
    ) -> Result<Session, Refusal> {
        let wp = Arc::clone(&self.0);
        let loaded = wp.mesh.snapshot();
        let snapshot = &loaded.snapshot;
        let target = SocketAddr::new(target.ip().to_canonical(), target.port());
        let mut flow = wp.arrival(snapshot, &peer, target);
        let served = snapshot
            .service_by_ip(target.ip())
            .filter(|svc| snapshot.waypoint_for(svc).as_ref() == Some(&wp.me))
            .filter(|svc| svc.ports.iter().any(|p| p.port == target.port()));
        let Some(svc) = served else {
            let why = format!(
                "CONNECT target {target} is not a port of a Service that uses waypoint {} (no \
                 open relay)",
                wp.me
            );
            tracing::warn!(waypoint = %wp.me, peer = %peer.identity, "HBONE CONNECT refused: {why}");
            flow.failed(State::Refused, why.clone());
            return Err(Refusal::new(StatusCode::BAD_REQUEST, why));
        };
        let downstream = serve::Downstream::new(peer, target, svc, &mut flow.record);
        Ok(Box::new(move |tunnel| {
            Box::pin(async move {
                match tunnel {
                    Ok(tunnel) => serve::connection(wp, tunnel, downstream, flow).await,
                    Err(e) => flow.failed(State::Error, format!("tunnel stream: {e}")),
                }
            })
        }))
    }

    fn rejected(&self, peer: &Peer, request: &str, refusal: &Refusal) {
        let local = self.log_rejected(peer, request, refusal);
        self.0
            .arrival(&self.0.mesh.snapshot().snapshot, peer, local)
            .failed(State::Refused, refusal.reason.clone());
    }
}
