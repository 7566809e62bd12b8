//! Where flow records live: every open flow, and the most recent closed
//! ones in a ring of fixed capacity, so memory stays bounded under any load.
//! Closed flows are also broadcast to followers, and every opening and
//! ending is told to the store's subscribers (metrics are derived this way,
//! so the data path records a flow once and knows nothing of Prometheus).
use std::{
    collections::{BTreeMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::sync::broadcast;

use super::{Filter, FlowRecord};

/// How many closed flows are kept by default.
pub const DEFAULT_CAPACITY: usize = 4096;
/// Closed flows a slow follower may lag behind before it misses some.
const FOLLOW_BUFFER: usize = 1024;

/// Bytes moved so far, readable while the relay runs (open flows show it).
#[derive(Debug, Default)]
pub struct Progress {
    /// Client → server.
    pub sent: AtomicU64,
    /// Server → client.
    pub received: AtomicU64,
}

/// Told of every flow the store sees, synchronously and in order.
pub trait FlowSubscriber: Send + Sync {
    /// A flow started moving bytes.
    fn opened(&self, record: &FlowRecord);
    /// A flow ended; `was_open` says whether it had moved bytes (been
    /// [`FlowSubscriber::opened`]) or was refused or failed before that.
    fn ended(&self, record: &FlowRecord, was_open: bool);
}

pub struct FlowStore {
    node: String,
    subscribers: Vec<Arc<dyn FlowSubscriber>>,
    capacity: usize,
    next_id: AtomicU64,
    inner: Mutex<Inner>,
    /// Shared with the ring: a closed flow is written once, never copied.
    closed_feed: broadcast::Sender<Arc<FlowRecord>>,
}

#[derive(Default)]
struct Inner {
    /// Open flows, with the live byte counts of their relays.
    open: BTreeMap<u64, (FlowRecord, Arc<Progress>)>,
    closed: VecDeque<Arc<FlowRecord>>,
}

impl FlowStore {
    pub fn new(node: &str, capacity: usize) -> Self {
        Self {
            node: node.to_owned(),
            subscribers: Vec::new(),
            capacity: capacity.max(1),
            next_id: AtomicU64::new(1),
            inner: Mutex::default(),
            closed_feed: broadcast::channel(FOLLOW_BUFFER).0,
        }
    }

    /// Adds a subscriber; done before the store is shared.
    #[must_use]
    pub fn with_subscriber(mut self, subscriber: Arc<dyn FlowSubscriber>) -> Self {
        self.subscribers.push(subscriber);
        self
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// A fresh flow id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Records a flow whose bytes are moving; listings read `progress`.
    pub fn open(&self, record: FlowRecord, progress: Arc<Progress>) {
        for s in &self.subscribers {
            s.opened(&record);
        }
        let mut inner = self.inner.lock().expect("flow store");
        inner.open.insert(record.id, (record, progress));
    }

    /// Records a flow's end: it leaves the open set and enters the ring.
    pub fn close(&self, record: FlowRecord) {
        let record = Arc::new(record);
        let was_open = {
            let mut inner = self.inner.lock().expect("flow store");
            let was_open = inner.open.remove(&record.id).is_some();
            if inner.closed.len() == self.capacity {
                inner.closed.pop_front();
            }
            inner.closed.push_back(Arc::clone(&record));
            was_open
        };
        for s in &self.subscribers {
            s.ended(&record, was_open);
        }
        // No follower is not an error.
        let _ = self.closed_feed.send(record);
    }

    /// Open and recent closed flows matching `filter`, oldest first.
    pub fn list(&self, filter: &Filter) -> Vec<FlowRecord> {
        let inner = self.inner.lock().expect("flow store");
        let open = inner.open.values().map(|(record, progress)| {
            let mut now = record.clone();
            now.bytes_sent = progress.sent.load(Ordering::Relaxed);
            now.bytes_received = progress.received.load(Ordering::Relaxed);
            now
        });
        let mut all: Vec<FlowRecord> = inner
            .closed
            .iter()
            .map(|r| FlowRecord::clone(r))
            .chain(open)
            .filter(|r| filter.matches(r))
            .collect();
        all.sort_by_key(|r| r.id);
        if let Some(last) = filter.last {
            all.drain(..all.len().saturating_sub(last));
        }
        all
    }

    /// Closed flows from now on.
    pub fn follow(&self) -> broadcast::Receiver<Arc<FlowRecord>> {
        self.closed_feed.subscribe()
    }

    /// (open, closed) flows held.
    pub fn sizes(&self) -> (usize, usize) {
        let inner = self.inner.lock().expect("flow store");
        (inner.open.len(), inner.closed.len())
    }
}
