//! Which agent process owns the node's kernel state.
//!
//! During a rolling update a new agent starts beside the old one (the
//! DaemonSet's surge pod) and both run until the old one is told to stop.
//! The pinned maps are shared, so only one may change them: the one that
//! claimed the node last. It writes its token into `<run-dir>/owner` at
//! start and touches it every status tick; an agent that finds another
//! token there stops enrolling, unenrolling and writing its status, and only
//! serves the connections it has. If the owner stops touching the file (it
//! died, or was stopped first), the other takes the node back after
//! [`STALE`], so a node is never left without an owner.
use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

const FILE_NAME: &str = "owner";
/// An owner that has not touched the file for this long is gone (it is
/// touched every 2 s).
pub const STALE: Duration = Duration::from_secs(10);

pub struct Ownership {
    path: PathBuf,
    token: String,
}

impl Ownership {
    /// Takes the node over from any agent running before this one.
    pub fn claim(run_dir: &Path) -> std::io::Result<Self> {
        let token = format!(
            "pid {} started {} nonce {:016x}",
            std::process::id(),
            time::OffsetDateTime::now_utc().unix_timestamp_nanos(),
            fastrand::u64(..)
        );
        let owned = Self {
            path: run_dir.join(FILE_NAME),
            token,
        };
        owned.write()?;
        Ok(owned)
    }

    /// Whether this process owns the node now, taking it back from an owner
    /// gone stale; touches the file while it does. A missing or unreadable
    /// file leaves ownership where it was.
    pub fn hold(&self) -> bool {
        let Ok(holder) = std::fs::read_to_string(&self.path) else {
            return true;
        };
        let stale = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age > STALE);
        if holder != self.token && !stale {
            return false;
        }
        if holder != self.token {
            tracing::warn!(%holder, "the agent that owned this node stopped answering; taking it back");
        }
        if let Err(e) = self.write() {
            tracing::warn!(path = %self.path.display(), "touching the ownership file: {e}");
        }
        true
    }

    /// Who owns the node now, for the log.
    pub fn holder(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap_or_default()
    }

    fn write(&self) -> std::io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!(".{FILE_NAME}.{}", std::process::id()));
        std::fs::write(&tmp, &self.token)?;
        std::fs::rename(&tmp, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_claim_owns_the_node_until_it_goes_stale() {
        let dir = tempfile::tempdir().unwrap();
        let old = Ownership::claim(dir.path()).unwrap();
        assert!(old.hold());
        let new = Ownership::claim(dir.path()).unwrap();
        assert!(new.hold());
        assert!(!old.hold());
        assert_eq!(old.holder(), new.token);
        // The new owner stops touching the file (it died): the old one takes
        // the node back, and the new one, should it live after all, yields.
        let long_ago = SystemTime::now() - STALE - Duration::from_secs(1);
        std::fs::File::options()
            .write(true)
            .open(dir.path().join(FILE_NAME))
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        assert!(old.hold());
        assert!(!new.hold());
    }
}
