//! Reusing HBONE connections: one per (source identity, destination agent),
//! shared by every application connection between them.
//!
//! Keyed by the source identity because a connection authenticates as one
//! workload: reusing it for another would send that workload's traffic with
//! the wrong certificate. Bounded: past `max` keys the least recently used
//! connection is dropped (its streams finish; new ones dial again).
//! Concurrent requests for a missing key dial once and share the result.
use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::sync::OnceCell;

use crate::identity::SpiffeId;

/// A pooled connection: cheap to clone, and knows when it is dead.
pub trait Pooled: Clone + Send + Sync + 'static {
    fn is_open(&self) -> bool;
}

impl Pooled for super::client::Connection {
    fn is_open(&self) -> bool {
        super::client::Connection::is_open(self)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub source: SpiffeId,
    pub destination: SocketAddr,
}

struct Slot<C> {
    cell: Arc<OnceCell<C>>,
    last_used: u64,
}

pub struct Pool<C> {
    slots: Mutex<(u64, HashMap<Key, Slot<C>>)>,
    max: usize,
}

impl<C: Pooled> Pool<C> {
    pub fn new(max: usize) -> Self {
        Self {
            slots: Mutex::new((0, HashMap::new())),
            max: max.max(1),
        }
    }

    /// The open connection for `key`, dialling (once, however many callers
    /// wait) when there is none or the previous one died.
    pub async fn get<E, F, Fut>(&self, key: &Key, dial: F) -> Result<C, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<C, E>>,
    {
        let cell = self.slot(key);
        let conn = cell.get_or_try_init(dial).await?.clone();
        Ok(conn)
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.slots.lock().expect("pool lock").1.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cell for `key`: the current one if its connection is alive (or
    /// still being dialled), else a fresh one. Evicts the least recently
    /// used key when full.
    fn slot(&self, key: &Key) -> Arc<OnceCell<C>> {
        let mut guard = self.slots.lock().expect("pool lock");
        let (clock, slots) = &mut *guard;
        *clock += 1;
        let now = *clock;
        let alive = slots
            .get(key)
            .is_some_and(|s| s.cell.get().is_none_or(Pooled::is_open));
        if !alive {
            slots.remove(key);
            if slots.len() >= self.max
                && let Some(oldest) = slots
                    .iter()
                    .min_by_key(|(_, s)| s.last_used)
                    .map(|(k, _)| k.clone())
            {
                slots.remove(&oldest);
            }
            slots.insert(
                key.clone(),
                Slot {
                    cell: Arc::new(OnceCell::new()),
                    last_used: now,
                },
            );
        }
        let slot = slots.get_mut(key).expect("inserted above");
        slot.last_used = now;
        Arc::clone(&slot.cell)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;

    /// A fake connection whose liveness the test controls.
    #[derive(Clone)]
    struct Fake {
        id: usize,
        open: Arc<AtomicBool>,
    }

    impl Pooled for Fake {
        fn is_open(&self) -> bool {
            self.open.load(Ordering::SeqCst)
        }
    }

    fn key(sa: &str, port: u16) -> Key {
        Key {
            source: SpiffeId::new("cluster.local", "shop", sa).unwrap(),
            destination: SocketAddr::from(([10, 2, 0, 11], port)),
        }
    }

    struct Dialer(AtomicUsize);

    impl Dialer {
        async fn dial(&self) -> Result<Fake, ()> {
            // Yield so concurrent callers really overlap.
            tokio::task::yield_now().await;
            Ok(Fake {
                id: self.0.fetch_add(1, Ordering::SeqCst),
                open: Arc::new(AtomicBool::new(true)),
            })
        }
    }

    #[tokio::test]
    async fn one_connection_per_identity_and_destination() {
        let pool = Pool::new(8);
        let dialer = Dialer(AtomicUsize::new(0));
        let a1 = pool
            .get(&key("frontend", 15008), || dialer.dial())
            .await
            .unwrap();
        let a2 = pool
            .get(&key("frontend", 15008), || dialer.dial())
            .await
            .unwrap();
        assert_eq!(a1.id, a2.id, "reused");
        let other_identity = pool
            .get(&key("cart", 15008), || dialer.dial())
            .await
            .unwrap();
        let other_destination = pool
            .get(&key("frontend", 15009), || dialer.dial())
            .await
            .unwrap();
        assert_ne!(other_identity.id, a1.id, "never shared across identities");
        assert_ne!(other_destination.id, a1.id);
        assert_eq!(pool.len(), 3);
    }

    #[tokio::test]
    async fn concurrent_callers_dial_once() {
        let pool = Arc::new(Pool::new(8));
        let dialer = Arc::new(Dialer(AtomicUsize::new(0)));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (pool, dialer) = (Arc::clone(&pool), Arc::clone(&dialer));
                tokio::spawn(async move {
                    pool.get(&key("frontend", 15008), || dialer.dial())
                        .await
                        .unwrap()
                        .id
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), 0);
        }
        assert_eq!(dialer.0.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn dead_connections_are_redialled_and_failures_not_cached() {
        let pool = Pool::new(8);
        let dialer = Dialer(AtomicUsize::new(0));
        let first = pool
            .get(&key("frontend", 15008), || dialer.dial())
            .await
            .unwrap();
        first.open.store(false, Ordering::SeqCst);
        let second = pool
            .get(&key("frontend", 15008), || dialer.dial())
            .await
            .unwrap();
        assert_ne!(first.id, second.id, "a closed connection is replaced");

        let failed: Result<Fake, &str> = pool
            .get(&key("cart", 15008), || async { Err("refused") })
            .await;
        assert!(failed.is_err());
        let retried = pool.get(&key("cart", 15008), || dialer.dial()).await;
        assert!(retried.is_ok(), "a failed dial is not remembered");
    }

    #[tokio::test]
    async fn the_least_recently_used_key_is_evicted_at_the_bound() {
        let pool = Pool::new(2);
        let dialer = Dialer(AtomicUsize::new(0));
        let a = pool.get(&key("a", 1), || dialer.dial()).await.unwrap();
        pool.get(&key("b", 1), || dialer.dial()).await.unwrap();
        pool.get(&key("a", 1), || dialer.dial()).await.unwrap(); // a is now the most recent
        pool.get(&key("c", 1), || dialer.dial()).await.unwrap(); // evicts b
        assert_eq!(pool.len(), 2);
        let a_again = pool.get(&key("a", 1), || dialer.dial()).await.unwrap();
        assert_eq!(a.id, a_again.id, "a survived");
        let b_again = pool.get(&key("b", 1), || dialer.dial()).await.unwrap();
        assert_eq!(b_again.id, 3, "b was evicted and dialled anew");
    }
}
