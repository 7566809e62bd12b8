//! The per-source buckets of one policy, bounded in number so that a flood
//! of identities cannot grow the waypoint's memory without end.
//!
//! At the bound the least recently used source is forgotten. Every bucket
//! of a policy refills at the same rate, so the source seen longest ago is
//! the one most likely to have refilled to full — and a full bucket is
//! exactly what a forgotten source starts over with, so eviction usually
//! loses nothing. Only with more than [`MAX_SOURCES`] identities active at
//! once does a returning source get a fresh burst: memory stays bounded at
//! the cost of precision, never the other way round. A source's use is
//! refreshed on refusals too, so a source hammering its limit stays the
//! most recent and is the last to be forgotten.
use std::collections::{BTreeMap, HashMap};

use super::bucket::Bucket;

/// Sources tracked per policy.
pub(super) const MAX_SOURCES: usize = 10_000;

#[derive(Debug, Default)]
pub(super) struct Sources {
    /// Source → (its last use, its bucket).
    buckets: HashMap<String, (u64, Bucket)>,
    /// Last use → source, oldest first: the eviction order.
    by_use: BTreeMap<u64, String>,
    /// Counts uses; a u64 cannot wrap in any waypoint's lifetime.
    clock: u64,
}

impl Sources {
    /// The bucket of `source`, marked as just used; `None` when the source
    /// is not tracked (its bucket would be full).
    pub(super) fn touch(&mut self, source: &str) -> Option<&mut Bucket> {
        let (used, bucket) = self.buckets.get_mut(source)?;
        self.clock += 1;
        if let Some(name) = self.by_use.remove(used) {
            self.by_use.insert(self.clock, name);
        }
        *used = self.clock;
        Some(bucket)
    }

    /// Starts tracking `source` with `bucket`, forgetting the least recently
    /// used source when at the bound. Only for untracked sources.
    pub(super) fn insert(&mut self, source: &str, bucket: Bucket) {
        if self.buckets.len() >= MAX_SOURCES
            && let Some((_, oldest)) = self.by_use.pop_first()
        {
            self.buckets.remove(&oldest);
        }
        self.clock += 1;
        self.by_use.insert(self.clock, source.to_owned());
        self.buckets.insert(source.to_owned(), (self.clock, bucket));
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.buckets.len()
    }
}
