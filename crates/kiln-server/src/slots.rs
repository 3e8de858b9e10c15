//! Counted slots per key (per client IP, per token): a cap on how many of
//! something one key holds at once, released when the guard drops.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// At most `limit` slots per key.
#[derive(Debug)]
pub(crate) struct Slots<K: Eq + Hash + Clone> {
    limit: usize,
    held: Arc<Mutex<HashMap<K, usize>>>,
}

impl<K: Eq + Hash + Clone> Slots<K> {
    pub(crate) fn new(limit: usize) -> Self {
        Slots {
            limit: limit.max(1),
            held: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// A slot for `key`, or `None` when it holds `limit` already.
    pub(crate) fn try_take(&self, key: K) -> Option<Slot<K>> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let count = held.entry(key.clone()).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(Slot {
            key,
            held: self.held.clone(),
        })
    }
}

/// One taken slot; dropping it gives it back.
#[derive(Debug)]
pub(crate) struct Slot<K: Eq + Hash + Clone> {
    key: K,
    held: Arc<Mutex<HashMap<K, usize>>>,
}

impl<K: Eq + Hash + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = held.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}
