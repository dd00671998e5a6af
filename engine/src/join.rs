//! Reassembles a client batch that was split by partition across shards.
//!
//! Each shard answers its part with results indexed within the part; the join puts them back at the
//! caller's positions and calls the caller once, when the last part is in. A client batch is not atomic
//! across partitions: each item is decided on its own, so when one part fails (its shard stopped) the
//! whole batch reports that error and the caller retries it with the same ids, which is safe.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use net::types::ItemResult;

use crate::error::EngineError;

pub type BatchReply = Box<dyn FnOnce(Result<Vec<ItemResult>, EngineError>) + Send>;

struct Join {
    /// When the node accepted the batch: the start of every stage measurement of its parts.
    accepted_at: Instant,
    parts_remaining: AtomicUsize,
    state: Mutex<JoinState>,
}

struct JoinState {
    results: Vec<Option<ItemResult>>,
    error: Option<EngineError>,
    reply: Option<BatchReply>,
}

/// One partition's share of a client batch: the caller's index of each of its items.
pub struct BatchPart {
    join: Arc<Join>,
    indices: Vec<u32>,
}

/// Splits a batch of `items_len` items into the given parts (each a list of caller indices).
pub fn split(items_len: usize, parts: Vec<Vec<u32>>, reply: BatchReply) -> Vec<BatchPart> {
    assert!(!parts.is_empty(), "an empty batch has no parts; callers answer it directly");
    let covered: usize = parts.iter().map(Vec::len).sum();
    assert_eq!(covered, items_len, "every item belongs to exactly one part");
    let join = Arc::new(Join {
        accepted_at: Instant::now(),
        parts_remaining: AtomicUsize::new(parts.len()),
        state: Mutex::new(JoinState { results: vec![None; items_len], error: None, reply: Some(reply) }),
    });
    parts.into_iter().map(|indices| BatchPart { join: join.clone(), indices }).collect()
}

impl BatchPart {
    /// The caller's index of each item of this part, in the order the part carries them.
    pub fn indices(&self) -> &[u32] {
        &self.indices
    }

    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// When the node accepted the batch this part belongs to.
    pub fn accepted_at(&self) -> Instant {
        self.join.accepted_at
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// Delivers this part's outcome; the last part to arrive answers the caller.
    pub fn complete(self, outcome: Result<Vec<ItemResult>, EngineError>) {
        let mut state = self.join.state.lock().expect("a join's lock is never held across a panic");
        match outcome {
            Ok(results) => {
                assert_eq!(results.len(), self.indices.len(), "one result per item of the part");
                for (result, &index) in results.into_iter().zip(&self.indices) {
                    state.results[index as usize] = Some(ItemResult { index, ..result });
                }
            }
            Err(error) => {
                state.error.get_or_insert(error);
            }
        }
        if self.join.parts_remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let reply = state.reply.take().expect("only the last part answers");
        let answer = match state.error.take() {
            Some(error) => Err(error),
            None => Ok(std::mem::take(&mut state.results)
                .into_iter()
                .map(|result| result.expect("every part delivered all of its results"))
                .collect()),
        };
        drop(state);
        reply(answer);
    }
}
