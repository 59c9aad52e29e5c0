//! The model cache: loaded models stay in memory, least recently used first
//! out when their weights pass a byte budget; concurrent first requests for
//! a model wait for one load.
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

pub type Key = (String, u32);

struct Slot<T> {
    cell: Arc<OnceCell<Arc<T>>>,
    last_used: u64,
    bytes: u64,
}

/// The slots, and a clock that ticks at each use (the least recently used
/// slot has the smallest `last_used`).
struct Slots<T> {
    by_key: HashMap<Key, Slot<T>>,
    clock: u64,
}

pub struct ModelCache<T> {
    slots: Mutex<Slots<T>>,
    max_bytes: u64,
}

impl<T> ModelCache<T> {
    pub fn new(max_bytes: u64) -> Self {
        Self {
            slots: Mutex::new(Slots {
                by_key: HashMap::new(),
                clock: 0,
            }),
            max_bytes,
        }
    }

    /// The cached value for `key`, loading it with `load` (returning the
    /// value and its size in bytes) if absent. Returns whether it was a hit.
    pub async fn get_or_load<E, F, Fut>(&self, key: Key, load: F) -> Result<(Arc<T>, bool), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(Arc<T>, u64), E>>,
    {
        let cell = {
            let mut slots = self.lock();
            slots.clock += 1;
            let clock = slots.clock;
            let slot = slots.by_key.entry(key.clone()).or_insert_with(|| Slot {
                cell: Arc::new(OnceCell::new()),
                last_used: 0,
                bytes: 0,
            });
            slot.last_used = clock;
            Arc::clone(&slot.cell)
        };
        if let Some(value) = cell.get() {
            return Ok((Arc::clone(value), true));
        }
        let mut loaded_bytes = None;
        let value = cell
            .get_or_try_init(|| async {
                let (value, bytes) = load().await?;
                loaded_bytes = Some(bytes);
                Ok(value)
            })
            .await?
            .clone();
        if let Some(bytes) = loaded_bytes {
            self.admit(&key, bytes);
        }
        Ok((value, loaded_bytes.is_none()))
    }

    /// The loaded value for `key`, if it is loaded (a load in progress is
    /// not); counts as a use.
    pub fn peek(&self, key: &Key) -> Option<Arc<T>> {
        let mut slots = self.lock();
        let clock = slots.clock + 1;
        let slot = slots.by_key.get_mut(key)?;
        let value = Arc::clone(slot.cell.get()?);
        slot.last_used = clock;
        slots.clock = clock;
        Some(value)
    }

    /// The loaded versions of `name`.
    pub fn values_of(&self, name: &str) -> Vec<Arc<T>> {
        self.lock()
            .by_key
            .iter()
            .filter(|((n, _), _)| n == name)
            .filter_map(|(_, s)| s.cell.get().cloned())
            .collect()
    }

    /// Records a fresh load's size and evicts least recently used models
    /// until the budget holds (the newest always stays).
    fn admit(&self, key: &Key, bytes: u64) {
        let mut guard = self.lock();
        let slots = &mut guard.by_key;
        if let Some(slot) = slots.get_mut(key) {
            slot.bytes = bytes;
        }
        loop {
            let total: u64 = slots.values().map(|s| s.bytes).sum();
            if total <= self.max_bytes {
                break;
            }
            let victim = slots
                .iter()
                .filter(|(k, s)| *k != key && s.bytes > 0)
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| k.clone());
            match victim {
                Some(k) => {
                    tracing::info!(model = %k.0, version = k.1, "evicting model from the cache");
                    slots.remove(&k);
                }
                None => break,
            }
        }
    }

    /// Drops cached versions of a model (all when `version` is None).
    pub fn evict(&self, name: &str, version: Option<u32>) {
        self.lock()
            .by_key
            .retain(|(n, v), _| n != name || version.is_some_and(|want| want != *v));
    }

    /// Models in memory and their bytes.
    pub fn loaded(&self) -> (usize, u64) {
        let slots = self.lock();
        let loaded = slots.by_key.values().filter(|s| s.cell.get().is_some());
        loaded.fold((0, 0), |(n, b), s| (n + 1, b + s.bytes))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots<T>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn loads_once_and_evicts_least_recently_used() {
        let cache: ModelCache<u32> = ModelCache::new(100);
        let loads = std::sync::atomic::AtomicUsize::new(0);
        let load = |v: u32, bytes: u64| {
            let loads = &loads;
            move || async move {
                loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok::<_, ()>((Arc::new(v), bytes))
            }
        };
        let key = |n: &str| (n.to_string(), 1);
        assert_eq!(
            *cache.get_or_load(key("a"), load(1, 60)).await.unwrap().0,
            1
        );
        let (v, hit) = cache.get_or_load(key("a"), load(9, 60)).await.unwrap();
        assert!(hit);
        assert_eq!(*v, 1);
        assert_eq!(loads.load(std::sync::atomic::Ordering::SeqCst), 1);
        cache.get_or_load(key("b"), load(2, 30)).await.unwrap();
        cache.get_or_load(key("a"), load(9, 60)).await.unwrap(); // a is now newer than b
        cache.get_or_load(key("c"), load(3, 30)).await.unwrap(); // 120 > 100: b goes
        assert_eq!(cache.loaded(), (2, 90));
        let (_, hit) = cache.get_or_load(key("b"), load(2, 30)).await.unwrap();
        assert!(!hit, "b was evicted");
    }
}
