//! The replica's view of its log: durable entries in `Storage` followed by `unstable` entries (and
//! possibly a snapshot) that were accepted in memory but are not yet reported persisted.
//!
//! Invariants: `committed <= last_index()`; `applied <= applying <= committed`; entries at or
//! below `committed` are never truncated; unstable entries shadow storage entries at the same
//! index (storage drops them when the application persists the unstable ones).

use crate::error::StorageError;
use crate::storage::Storage;
use crate::types::{Entry, Snapshot};

#[derive(Debug, Default)]
struct Unstable {
    snapshot: Option<Snapshot>,
    /// Set once the snapshot has been handed to the application in a Ready.
    snapshot_in_progress: bool,
    /// Index of `entries[0]`.
    offset: u64,
    entries: Vec<Entry>,
    /// First index not yet handed to the application in a Ready.
    offset_in_progress: u64,
}

impl Unstable {
    fn last_index(&self) -> Option<u64> {
        if let Some(last) = self.entries.last() {
            return Some(last.index);
        }
        self.snapshot.as_ref().map(|s| s.meta.index)
    }

    fn term(&self, index: u64) -> Option<u64> {
        if index < self.offset {
            return match &self.snapshot {
                Some(s) if s.meta.index == index => Some(s.meta.term),
                _ => None,
            };
        }
        let position = (index - self.offset) as usize;
        self.entries.get(position).map(|e| e.term)
    }

    /// O(1) so it can run after every step: the ends pin the run of indexes, since every
    /// append is checked to start right after the retained prefix.
    fn check_invariants(&self) {
        if let (Some(first), Some(last)) = (self.entries.first(), self.entries.last()) {
            assert_eq!(first.index, self.offset, "unstable entries do not start at offset");
            assert_eq!(last.index, self.offset + self.entries.len() as u64 - 1, "unstable entries not contiguous");
        }
        assert!(self.offset_in_progress >= self.offset, "in-progress offset before offset");
        assert!(
            self.offset_in_progress <= self.offset + self.entries.len() as u64,
            "in-progress offset beyond unstable entries"
        );
    }

    fn truncate_and_append(&mut self, entries: &[Entry]) {
        let first = entries[0].index;
        for pair in entries.windows(2) {
            assert_eq!(pair[1].index, pair[0].index + 1, "appended entries not contiguous");
        }
        let end = self.offset + self.entries.len() as u64;
        if first == end {
            // Plain append.
        } else if first <= self.offset {
            // Replaces every unstable entry; storage drops its own tail when this is persisted.
            self.offset = first;
            self.entries.clear();
        } else {
            self.entries.truncate((first - self.offset) as usize);
        }
        self.offset_in_progress = self.offset_in_progress.min(first);
        self.entries.extend_from_slice(entries);
        self.check_invariants();
    }
}

pub struct RaftLog<S: Storage> {
    pub(crate) storage: S,
    unstable: Unstable,
    committed: u64,
    /// Highest index handed to the application for applying.
    applying: u64,
    /// Highest index the application reported applied.
    applied: u64,
}

impl<S: Storage> RaftLog<S> {
    pub fn new(storage: S, committed: u64, applied: u64) -> Result<RaftLog<S>, StorageError> {
        let first_index = storage.first_index()?;
        let last_index = storage.last_index()?;
        let snapshot_index = first_index - 1;
        let committed = committed.max(snapshot_index);
        assert!(committed <= last_index, "durable commit {committed} beyond log end {last_index}");
        let applied = applied.max(snapshot_index);
        assert!(applied <= committed, "applied {applied} beyond commit {committed}");
        Ok(RaftLog {
            storage,
            unstable: Unstable { offset: last_index + 1, offset_in_progress: last_index + 1, ..Unstable::default() },
            committed,
            applying: applied,
            applied,
        })
    }

    pub fn committed(&self) -> u64 {
        self.committed
    }

    pub fn applied(&self) -> u64 {
        self.applied
    }

    pub fn first_index(&self) -> u64 {
        match &self.unstable.snapshot {
            Some(s) => s.meta.index + 1,
            None => self.storage.first_index().expect("storage first_index must not fail"),
        }
    }

    pub fn last_index(&self) -> u64 {
        match self.unstable.last_index() {
            Some(index) => index,
            None => self.storage.last_index().expect("storage last_index must not fail"),
        }
    }

    /// Last index known durable (entries below the unstable offset are in storage).
    pub fn persisted_last_index(&self) -> u64 {
        if self.unstable.snapshot.is_some() {
            return 0;
        }
        (self.unstable.offset - 1).min(self.last_index())
    }

    pub fn last_term(&self) -> u64 {
        self.term(self.last_index()).expect("last index always has a term")
    }

    /// Term at `index`, or None when compacted or beyond the end.
    pub fn term(&self, index: u64) -> Option<u64> {
        let first_index = self.first_index();
        if index + 1 < first_index || index > self.last_index() {
            return None;
        }
        if let Some(term) = self.unstable.term(index) {
            return Some(term);
        }
        match self.storage.term(index) {
            Ok(term) => Some(term),
            Err(StorageError::Compacted { .. }) | Err(StorageError::Unavailable { .. }) => None,
            Err(error) => panic!("storage term lookup failed: {error}"),
        }
    }

    pub fn match_term(&self, index: u64, term: u64) -> bool {
        self.term(index) == Some(term)
    }

    /// Election restriction (§5.4.1): is a log ending at (`last_index`, `last_term`) at least
    /// as up to date as ours?
    pub fn is_up_to_date(&self, last_index: u64, last_term: u64) -> bool {
        last_term > self.last_term() || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// Largest index <= `index` whose term is <= `term`, with that term (fast back-off).
    pub fn find_conflict_by_term(&self, index: u64, term: u64) -> (u64, u64) {
        let mut probe = index.min(self.last_index());
        loop {
            match self.term(probe) {
                Some(probe_term) if probe_term > term => probe -= 1,
                Some(probe_term) => return (probe, probe_term),
                None => return (probe, 0),
            }
        }
    }

    /// Follower side of AppendEntries. Returns the last index known to match the leader and
    /// the position in `entries` from which entries were written (None if all were present),
    /// or None when the entry at `prev_index` does not have `prev_term`.
    pub fn maybe_append(
        &mut self,
        prev_index: u64,
        prev_term: u64,
        leader_commit: u64,
        entries: &[Entry],
    ) -> Option<(u64, Option<usize>)> {
        if !self.match_term(prev_index, prev_term) {
            return None;
        }
        let last_new_index = prev_index + entries.len() as u64;
        // Truncate only from the first conflicting index: a stale or duplicated AppendEntries
        // must never cut entries that a later one already added.
        let mut appended_from = None;
        if let Some(conflict) = self.find_conflict(entries) {
            assert!(
                conflict > self.committed,
                "entry {conflict} conflicts with a committed entry (committed {})",
                self.committed
            );
            let start = (conflict - entries[0].index) as usize;
            self.append(&entries[start..]);
            appended_from = Some(start);
        }
        self.commit_to(leader_commit.min(last_new_index));
        Some((last_new_index, appended_from))
    }

    /// First index in `entries` that is missing from or has another term in our log.
    fn find_conflict(&self, entries: &[Entry]) -> Option<u64> {
        for entry in entries {
            if !self.match_term(entry.index, entry.term) {
                return Some(entry.index);
            }
        }
        None
    }

    /// Appends entries starting at most one past the end; later entries are dropped first.
    pub fn append(&mut self, entries: &[Entry]) -> u64 {
        let Some(first) = entries.first() else {
            return self.last_index();
        };
        assert!(first.index > self.committed, "append at {} would overwrite committed {}", first.index, self.committed);
        assert!(first.index <= self.last_index() + 1, "append leaves a gap");
        self.unstable.truncate_and_append(entries);
        self.last_index()
    }

    pub fn commit_to(&mut self, index: u64) {
        if index <= self.committed {
            return;
        }
        assert!(index <= self.last_index(), "commit {index} beyond last index {}", self.last_index());
        self.committed = index;
    }

    /// Leader commit rule (figure 8): only an entry of the current term is committed by
    /// counting replicas; earlier ones follow by log matching.
    pub fn maybe_commit(&mut self, index: u64, term: u64) -> bool {
        if index > self.committed && self.term(index) == Some(term) {
            self.commit_to(index);
            return true;
        }
        false
    }

    /// Entries in `[low, high)` from storage and unstable, up to `bytes_max` (at least one).
    pub fn slice(&self, low: u64, high: u64, bytes_max: u64) -> Result<Vec<Entry>, StorageError> {
        assert!(low <= high, "slice bounds inverted");
        if low == high {
            return Ok(Vec::new());
        }
        if low < self.first_index() {
            return Err(StorageError::Compacted { index: low, first_index: self.first_index() });
        }
        assert!(high <= self.last_index() + 1, "slice beyond the end");
        let mut out = Vec::new();
        let unstable_offset = self.unstable.offset;
        if low < unstable_offset {
            let stored_high = high.min(unstable_offset);
            out = self.storage.entries(low, stored_high, bytes_max)?;
            if (out.len() as u64) < stored_high - low {
                return Ok(out);
            }
        }
        if high > unstable_offset {
            let mut bytes: u64 = out.iter().map(Entry::size_bytes).sum();
            let from = low.max(unstable_offset);
            for entry in &self.unstable.entries[(from - unstable_offset) as usize..(high - unstable_offset) as usize] {
                bytes += entry.size_bytes();
                if !out.is_empty() && bytes > bytes_max {
                    break;
                }
                out.push(entry.clone());
            }
        }
        Ok(out)
    }

    /// Unstable entries not yet handed out; marks them handed out.
    pub fn take_entries_to_persist(&mut self) -> Vec<Entry> {
        let start = (self.unstable.offset_in_progress - self.unstable.offset) as usize;
        let out = self.unstable.entries[start..].to_vec();
        self.unstable.offset_in_progress = self.unstable.offset + self.unstable.entries.len() as u64;
        out
    }

    pub fn has_entries_to_persist(&self) -> bool {
        self.unstable.offset_in_progress < self.unstable.offset + self.unstable.entries.len() as u64
    }

    pub fn take_snapshot_to_persist(&mut self) -> Option<Snapshot> {
        if self.unstable.snapshot_in_progress {
            return None;
        }
        let snapshot = self.unstable.snapshot.clone()?;
        self.unstable.snapshot_in_progress = true;
        Some(snapshot)
    }

    pub fn has_snapshot_to_persist(&self) -> bool {
        self.unstable.snapshot.is_some() && !self.unstable.snapshot_in_progress
    }

    /// The application made entries up to (`index`, `term`) durable. Ignored when the log has
    /// since been rewritten at `index` (a later Ready carries the replacement).
    pub fn stable_to(&mut self, index: u64, term: u64) {
        if index < self.unstable.offset || self.unstable.term(index) != Some(term) {
            return;
        }
        let count = (index + 1 - self.unstable.offset) as usize;
        self.unstable.entries.drain(..count);
        self.unstable.offset = index + 1;
        self.unstable.offset_in_progress = self.unstable.offset_in_progress.max(self.unstable.offset);
        self.unstable.check_invariants();
    }

    pub fn stable_snapshot_to(&mut self, index: u64) {
        if let Some(snapshot) = &self.unstable.snapshot {
            if snapshot.meta.index == index {
                self.unstable.snapshot = None;
                self.unstable.snapshot_in_progress = false;
                self.applying = self.applying.max(index);
                self.applied = self.applied.max(index);
            }
        }
    }

    /// Replaces the log by a snapshot received from the leader.
    pub fn restore(&mut self, snapshot: Snapshot) {
        let index = snapshot.meta.index;
        assert!(index > self.committed, "restoring a snapshot at or below commit");
        self.committed = index;
        self.unstable.offset = index + 1;
        self.unstable.offset_in_progress = index + 1;
        self.unstable.entries.clear();
        self.unstable.snapshot = Some(snapshot);
        self.unstable.snapshot_in_progress = false;
    }

    /// Highest committed index whose entry is durable here and may be handed out for applying.
    fn appliable_index(&self) -> u64 {
        if self.unstable.snapshot.is_some() {
            return self.applying;
        }
        self.committed.min(self.unstable.offset - 1)
    }

    pub fn has_committed_to_apply(&self) -> bool {
        self.appliable_index() > self.applying
    }

    pub fn take_committed_to_apply(&mut self, bytes_max: u64) -> Vec<Entry> {
        let high = self.appliable_index();
        if high <= self.applying {
            return Vec::new();
        }
        let out = self
            .slice(self.applying + 1, high + 1, bytes_max)
            .expect("entries between applying and commit are never compacted");
        if let Some(last) = out.last() {
            self.applying = last.index;
        }
        out
    }

    pub fn applied_to(&mut self, index: u64) {
        assert!(index <= self.applying, "applied {index} beyond handed out {}", self.applying);
        self.applied = self.applied.max(index);
    }

    pub fn check_invariants(&self) {
        assert!(self.applied <= self.applying, "applied beyond applying");
        assert!(self.applying <= self.committed, "applying beyond committed");
        assert!(self.committed <= self.last_index(), "committed beyond last index");
        self.unstable.check_invariants();
    }
}
