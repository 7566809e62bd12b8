//! Which agent process owns the node's kernel state.
//!
//! During a rolling update a new agent starts beside the old one (the
//! DaemonSet's surge pod) and both run until the old one is told to stop.
//! The pinned maps are shared, so only one may change them: the newest. It
//! writes its token into `<run-dir>/owner` at start; an older agent that
//! finds another token there stops enrolling, unenrolling and writing its
//! status, and only serves the connections it already has until it is
//! stopped.
use std::path::{Path, PathBuf};

const FILE_NAME: &str = "owner";

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
        let path = run_dir.join(FILE_NAME);
        let tmp = run_dir.join(format!(".{FILE_NAME}.{}", std::process::id()));
        std::fs::write(&tmp, &token)?;
        std::fs::rename(&tmp, &path)?;
        Ok(Self { path, token })
    }

    /// Whether this process still owns the node. A missing file (removed
    /// by hand) leaves ownership where it was.
    pub fn held(&self) -> bool {
        std::fs::read_to_string(&self.path).map_or(true, |t| t == self.token)
    }

    /// Who owns the node now, for the log.
    pub fn holder(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_claim_owns_the_node() {
        let dir = tempfile::tempdir().unwrap();
        let old = Ownership::claim(dir.path()).unwrap();
        assert!(old.held());
        let new = Ownership::claim(dir.path()).unwrap();
        assert!(new.held());
        assert!(!old.held());
        assert_eq!(old.holder(), new.token);
    }
}
