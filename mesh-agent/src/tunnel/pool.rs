//! Reusing HBONE connections between a source identity and a destination
//! agent: shared by every application connection between them, and spread
//! over a few connections when streams contend.
//!
//! Keyed by the source identity because a connection authenticates as one
//! workload: reusing it for another would send that workload's traffic with
//! the wrong certificate. Each connection is driven by one task, so one core
//! encrypts everything it carries: past [`Spread::streams_per_connection`]
//! open streams on every connection of a key, the next stream gets a new
//! connection, up to [`Spread::connections_per_key`]; past that the least
//! loaded connection takes it. Idle connections stay shared (a quiet pair
//! of pods holds one). Bounded: past `max` keys the least recently used
//! key's connections are dropped (their streams finish; new ones dial
//! again). Concurrent requests for a connection not yet there dial once and
//! share the result.
use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use crate::identity::SpiffeId;

/// A pooled connection: cheap to clone, knows when it is dead and how busy
/// it is.
pub trait Pooled: Clone + Send + Sync + 'static {
    fn is_open(&self) -> bool;
    /// Streams open on it now.
    fn streams(&self) -> usize;
}

impl Pooled for super::client::Connection {
    fn is_open(&self) -> bool {
        super::client::Connection::is_open(self)
    }

    fn streams(&self) -> usize {
        super::client::Connection::streams(self)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub source: SpiffeId,
    pub destination: SocketAddr,
}

/// When a key gets more than one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spread {
    /// Open streams a connection takes before another is dialled.
    pub streams_per_connection: usize,
    /// Connections one key may have.
    pub connections_per_key: usize,
}

impl Spread {
    /// One connection per key whatever the load (a waypoint's workers each
    /// keep their own pool: their connections are spread already).
    pub const ONE: Spread = Spread {
        streams_per_connection: usize::MAX,
        connections_per_key: 1,
    };
}

struct Slot<C> {
    connections: Vec<Entry<C>>,
    last_used: u64,
}

struct Entry<C> {
    /// Empty while its connection is being dialled.
    cell: Arc<OnceCell<C>>,
    /// Callers sent to it while it was being dialled: its load until it
    /// is up and counts its own streams, so a burst of new streams spreads
    /// before the first connection exists.
    promised: usize,
}

impl<C: Pooled> Entry<C> {
    fn load(&self) -> usize {
        self.cell.get().map_or(self.promised, Pooled::streams)
    }

    /// Dead, or its dial failed and nobody waits on it any more.
    fn is_gone(&self) -> bool {
        match self.cell.get() {
            Some(c) => !c.is_open(),
            None => Arc::strong_count(&self.cell) == 1 && self.promised > 0,
        }
    }
}

pub struct Pool<C> {
    slots: Mutex<(u64, HashMap<Key, Slot<C>>)>,
    max: usize,
    spread: Spread,
}

impl<C: Pooled> Pool<C> {
    pub fn new(max: usize, spread: Spread) -> Self {
        Self {
            slots: Mutex::new((0, HashMap::new())),
            max: max.max(1),
            spread: Spread {
                streams_per_connection: spread.streams_per_connection.max(1),
                connections_per_key: spread.connections_per_key.max(1),
            },
        }
    }

    /// A connection for `key` with room for one more stream, dialling
    /// (once, however many callers wait) when the key needs another.
    pub async fn get<E, F, Fut>(&self, key: &Key, dial: F) -> Result<C, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<C, E>>,
    {
        let cell = self.choose(key);
        let conn = cell.get_or_try_init(dial).await?.clone();
        Ok(conn)
    }

    /// Connections held, over all keys.
    pub fn len(&self) -> usize {
        let guard = self.slots.lock().expect("pool lock");
        guard
            .1
            .values()
            .map(|s| {
                s.connections
                    .iter()
                    .filter(|e| e.cell.initialized())
                    .count()
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cell the next stream for `key` goes to: the least loaded
    /// connection (live or being dialled) if it has room, else a new one
    /// while the key may have more, else the least loaded anyway. Evicts
    /// the least recently used key when a new key finds the pool full.
    fn choose(&self, key: &Key) -> Arc<OnceCell<C>> {
        let mut guard = self.slots.lock().expect("pool lock");
        let (clock, slots) = &mut *guard;
        *clock += 1;
        let now = *clock;
        if !slots.contains_key(key)
            && slots.len() >= self.max
            && let Some(oldest) = slots
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| k.clone())
        {
            slots.remove(&oldest);
        }
        let slot = slots.entry(key.clone()).or_insert_with(|| Slot {
            connections: Vec::new(),
            last_used: now,
        });
        slot.last_used = now;
        slot.connections.retain(|e| !e.is_gone());
        let least = (0..slot.connections.len()).min_by_key(|&i| slot.connections[i].load());
        let index = match least {
            Some(i) if slot.connections[i].load() < self.spread.streams_per_connection => i,
            _ if slot.connections.len() < self.spread.connections_per_key => {
                slot.connections.push(Entry {
                    cell: Arc::new(OnceCell::new()),
                    promised: 0,
                });
                slot.connections.len() - 1
            }
            least => least.expect("a full key has connections"),
        };
        let entry = &mut slot.connections[index];
        if !entry.cell.initialized() {
            entry.promised += 1;
        }
        Arc::clone(&entry.cell)
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
        streams: Arc<AtomicUsize>,
    }

    impl Pooled for Fake {
        fn is_open(&self) -> bool {
            self.open.load(Ordering::SeqCst)
        }

        fn streams(&self) -> usize {
            self.streams.load(Ordering::SeqCst)
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
                streams: Arc::default(),
            })
        }
    }

    #[tokio::test]
    async fn one_connection_per_identity_and_destination() {
        let pool = Pool::new(8, Spread::ONE);
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

    /// `callers` concurrent `get`s of one key; the connection each got and
    /// how many dials there were.
    async fn burst(spread: Spread, callers: usize) -> (Vec<usize>, usize) {
        let pool = Arc::new(Pool::new(8, spread));
        let dialer = Arc::new(Dialer(AtomicUsize::new(0)));
        let tasks: Vec<_> = (0..callers)
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
        let mut got = Vec::new();
        for t in tasks {
            got.push(t.await.unwrap());
        }
        (got, dialer.0.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn concurrent_callers_dial_once() {
        let (got, dials) = burst(Spread::ONE, 50).await;
        assert!(got.iter().all(|&id| id == 0));
        assert_eq!(dials, 1);
    }

    #[tokio::test]
    async fn a_burst_before_the_first_dial_completes_spreads_too() {
        let spread = Spread {
            streams_per_connection: 2,
            connections_per_key: 3,
        };
        let (got, dials) = burst(spread, 8).await;
        let mut per_connection = [0; 3];
        for id in got {
            per_connection[id] += 1;
        }
        // Two each while room lasts, then the least promised.
        assert!(
            per_connection.iter().all(|&n| (2..=3).contains(&n)),
            "{per_connection:?}"
        );
        assert_eq!(dials, 3);
    }

    #[tokio::test]
    async fn dead_connections_are_redialled_and_failures_not_cached() {
        let pool = Pool::new(8, Spread::ONE);
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
    async fn busy_connections_spread_and_idle_ones_are_shared() {
        let pool = Pool::new(
            8,
            Spread {
                streams_per_connection: 2,
                connections_per_key: 3,
            },
        );
        let dialer = Dialer(AtomicUsize::new(0));
        let k = key("frontend", 15008);
        let get = || pool.get(&k, || dialer.dial());
        let first = get().await.unwrap();
        assert_eq!(
            get().await.unwrap().id,
            first.id,
            "an idle connection is shared"
        );

        first.streams.store(2, Ordering::SeqCst);
        let second = get().await.unwrap();
        assert_ne!(second.id, first.id, "a full connection gets company");
        second.streams.store(1, Ordering::SeqCst);
        assert_eq!(get().await.unwrap().id, second.id, "the one with room");

        second.streams.store(2, Ordering::SeqCst);
        let third = get().await.unwrap();
        third.streams.store(5, Ordering::SeqCst);
        first.streams.store(3, Ordering::SeqCst);
        assert_eq!(
            get().await.unwrap().id,
            second.id,
            "at the bound the least busy takes it"
        );
        assert_eq!(dialer.0.load(Ordering::SeqCst), 3);
        assert_eq!(pool.len(), 3);

        second.open.store(false, Ordering::SeqCst);
        let fourth = get().await.unwrap();
        assert_eq!(fourth.id, 3, "a dead connection's place is dialled again");
    }

    #[tokio::test]
    async fn the_least_recently_used_key_is_evicted_at_the_bound() {
        let pool = Pool::new(2, Spread::ONE);
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
