//! The output cache: node outputs by content key, across prompts, within a byte budget, least
//! recently used evicted first. Values stay where they were computed (a tensor on the GPU stays
//! there).
//!
//! Deliberate difference from ComfyUI's default ("classic") cache, which drops everything not in
//! the current prompt: Weft keeps entries across prompts until the budget is reached, like
//! ComfyUI's `--cache-lru`, so switching between two workflows does not recompute both.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use crate::graph::CacheKey;
use crate::nodes::{Ui, Value};

/// What a node produced, shared between the cache and running prompts.
#[derive(Debug, Clone)]
pub struct CachedOutput {
    pub values: Arc<Vec<Value>>,
    pub ui: Option<Ui>,
}

struct Entry {
    output: CachedOutput,
    bytes: usize,
    last_used: u64,
    hits: u64,
    class_type: &'static str,
    node_id: String,
}

/// A summary of one cache entry, for the inspection endpoint.
#[derive(Debug, Clone)]
pub struct EntryInfo {
    pub key: CacheKey,
    pub class_type: &'static str,
    pub node_id: String,
    pub bytes: usize,
    pub hits: u64,
    pub last_used: u64,
}

/// Keyed outputs with an LRU byte budget.
pub struct OutputCache {
    entries: HashMap<CacheKey, Entry>,
    budget: usize,
    used: usize,
    clock: u64,
    /// Recently evicted keys, to tell "evicted" from "never computed" when explaining a miss.
    evicted: HashSet<CacheKey>,
    evicted_order: VecDeque<CacheKey>,
}

const EVICTED_MEMORY: usize = 4096;

impl OutputCache {
    pub fn new(budget_bytes: usize) -> OutputCache {
        OutputCache {
            entries: HashMap::new(),
            budget: budget_bytes,
            used: 0,
            clock: 0,
            evicted: HashSet::new(),
            evicted_order: VecDeque::new(),
        }
    }

    pub fn contains(&self, key: &CacheKey) -> bool {
        self.entries.contains_key(key)
    }

    /// Looks up and marks as recently used.
    pub fn get(&mut self, key: &CacheKey) -> Option<CachedOutput> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.get_mut(key).map(|entry| {
            entry.last_used = clock;
            entry.hits += 1;
            entry.output.clone()
        })
    }

    /// Stores an output, evicting the least recently used entries to stay within budget. An output
    /// larger than the whole budget is not stored.
    pub fn insert(
        &mut self,
        key: CacheKey,
        output: CachedOutput,
        class_type: &'static str,
        node_id: &str,
    ) {
        let bytes = output.values.iter().map(Value::byte_size).sum::<usize>() + 64;
        if bytes > self.budget {
            return;
        }
        self.clock += 1;
        if let Some(old) = self.entries.remove(&key) {
            self.used -= old.bytes;
        }
        while self.used + bytes > self.budget {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| *k)
            else {
                break;
            };
            self.evict(oldest);
        }
        self.used += bytes;
        self.evicted.remove(&key);
        self.entries.insert(
            key,
            Entry {
                output,
                bytes,
                last_used: self.clock,
                hits: 0,
                class_type,
                node_id: node_id.to_owned(),
            },
        );
    }

    fn evict(&mut self, key: CacheKey) {
        if let Some(entry) = self.entries.remove(&key) {
            self.used -= entry.bytes;
            if self.evicted.insert(key) {
                self.evicted_order.push_back(key);
                if self.evicted_order.len() > EVICTED_MEMORY {
                    if let Some(old) = self.evicted_order.pop_front() {
                        self.evicted.remove(&old);
                    }
                }
            }
        }
    }

    pub fn was_evicted(&self, key: &CacheKey) -> bool {
        self.evicted.contains(key)
    }

    /// Drops everything (`/free` with `free_memory`, or when memory is short); returns the bytes
    /// it held.
    pub fn clear(&mut self) -> usize {
        self.entries.clear();
        std::mem::take(&mut self.used)
    }

    /// Drops the entries that keep models alive (`/free` with `unload_models`), so that the
    /// models' memory is released, not just their slot in the model manager.
    pub fn drop_models(&mut self) {
        let keys: Vec<CacheKey> = self
            .entries
            .iter()
            .filter(|(_, e)| e.output.values.iter().any(Value::holds_model))
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            self.evict(key);
        }
    }

    pub fn used_bytes(&self) -> usize {
        self.used
    }

    pub fn budget_bytes(&self) -> usize {
        self.budget
    }

    /// Entries, most recently used first.
    pub fn entries(&self) -> Vec<EntryInfo> {
        let mut list: Vec<EntryInfo> = self
            .entries
            .iter()
            .map(|(key, e)| EntryInfo {
                key: *key,
                class_type: e.class_type,
                node_id: e.node_id.clone(),
                bytes: e.bytes,
                hits: e.hits,
                last_used: e.last_used,
            })
            .collect();
        list.sort_by_key(|e| std::cmp::Reverse(e.last_used));
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(text_len: usize) -> CachedOutput {
        CachedOutput {
            values: Arc::new(vec![Value::String("x".repeat(text_len))]),
            ui: None,
        }
    }

    #[test]
    fn lru_eviction_within_budget() {
        let mut cache = OutputCache::new(1000);
        let key = |b: u8| CacheKey([b; 32]);
        cache.insert(key(1), output(300), "A", "1");
        cache.insert(key(2), output(300), "A", "2");
        assert!(cache.get(&key(1)).is_some()); // 1 is now more recent than 2
        cache.insert(key(3), output(300), "A", "3");
        assert!(cache.contains(&key(1)) && cache.contains(&key(3)));
        assert!(!cache.contains(&key(2)) && cache.was_evicted(&key(2)));
        assert!(cache.used_bytes() <= 1000);
        cache.insert(key(4), output(5000), "A", "4");
        assert!(
            !cache.contains(&key(4)),
            "larger than the budget is not stored"
        );
    }
}
