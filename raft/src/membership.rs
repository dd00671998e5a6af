//! Membership as a function of the log: a configuration takes effect as soon as its entry is in a
//! replica's log (committed or not), as in the Raft dissertation's single-server changes, and is
//! rolled back if that entry is truncated. Combined with "at most one uncommitted change" and
//! "the leader has committed an entry of its term", any two consecutive configurations share a
//! majority, so two leaders cannot be elected for one term.

use crate::types::{ConfState, Entry, Payload};

#[derive(Clone, Debug)]
pub struct Membership {
    /// Configuration as of `base_index` (the snapshot).
    base_index: u64,
    base: ConfState,
    /// (index of the change entry, configuration after it), ascending by index.
    changes: Vec<(u64, ConfState)>,
}

impl Membership {
    pub fn new(base_index: u64, base: ConfState) -> Membership {
        Membership { base_index, base, changes: Vec::new() }
    }

    pub fn current(&self) -> &ConfState {
        match self.changes.last() {
            Some((_, conf)) => conf,
            None => &self.base,
        }
    }

    /// Index of the newest change entry in the log (0 if none after the snapshot).
    pub fn last_change_index(&self) -> u64 {
        self.changes.last().map_or(0, |(index, _)| *index)
    }

    /// Records entries just written at `entries[0].index..`; returns whether the configuration
    /// changed (also when a truncation removed a change).
    pub fn on_append(&mut self, entries: &[Entry]) -> bool {
        let Some(first) = entries.first() else {
            return false;
        };
        let before = self.changes.len();
        self.changes.retain(|(index, _)| *index < first.index);
        let mut changed = self.changes.len() != before;
        for entry in entries {
            if let Payload::ConfChange(change) = entry.payload {
                let next =
                    self.current().apply(change).expect("a logged membership change was validated by its leader");
                self.changes.push((entry.index, next));
                changed = true;
            }
        }
        changed
    }

    /// Configuration in force at `index` (which must not precede the base).
    pub fn at(&self, index: u64) -> ConfState {
        assert!(index >= self.base_index, "configuration before the snapshot is unknown");
        self.changes
            .iter()
            .rev()
            .find(|(change_index, _)| *change_index <= index)
            .map_or_else(|| self.base.clone(), |(_, conf)| conf.clone())
    }

    /// The log prefix up to `index` became a snapshot.
    pub fn compact_to(&mut self, index: u64) {
        if index <= self.base_index {
            return;
        }
        self.base = self.at(index);
        self.base_index = index;
        self.changes.retain(|(change_index, _)| *change_index > index);
    }

    pub fn reset(&mut self, base_index: u64, base: ConfState) {
        *self = Membership::new(base_index, base);
    }
}
