//! A replica rebuilt from nothing on a node that lost its data (`walletd --rejoin`): it asks every
//! other replica for its term, commit index and last index, takes no part in Raft until all have
//! answered, then joins in the highest reported term withholding its votes until its commit index
//! reaches the highest reported last index. The rules are recorded in the store's rejoin marker
//! before they take effect, so a restart during catch-up resumes them.

use std::collections::HashMap;

use super::{Handles, Now, ReplicaCore, ReplicaStorage};
use crate::replica::wire::PeerItem;

/// What a partition's rejoin marker says: `AwaitingReports` until every other replica has answered,
/// then `WithholdVotesUntil` until the commit index reaches `index` (`term`: the term adopted,
/// re-adopted at open in case the crash came before the new term reached the hard state).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejoinMarker {
    AwaitingReports,
    WithholdVotesUntil { index: u64, term: u64 },
}

/// A replica that lost its log and vote, asking the others where the group stands.
pub(super) struct Recovery {
    /// (term, commit index, last index) per replica that answered.
    reports: HashMap<u64, (u64, u64, u64)>,
    last_probe_ms: Option<u64>,
    last_warning_ms: u64,
}

impl Recovery {
    pub fn new(now: Now) -> Recovery {
        Recovery { reports: HashMap::new(), last_probe_ms: None, last_warning_ms: now.mono_ms }
    }
}

/// How often a recovering replica asks the replicas that have not answered yet, and how often it says
/// whom it is still waiting for.
const RECOVERY_PROBE_INTERVAL_MS: u64 = 100;
const RECOVERY_WARNING_INTERVAL_MS: u64 = 5_000;

impl<S: ReplicaStorage, H: Handles> ReplicaCore<S, H> {
    /// Asks the replicas that have not reported yet, for every recovering group.
    pub(super) fn probe_for_recovery(&mut self, now: Now) {
        for group in &mut self.groups {
            let Some(recovery) = group.recovery.as_mut() else { continue };
            if recovery.last_probe_ms.is_some_and(|at| now.mono_ms.saturating_sub(at) < RECOVERY_PROBE_INTERVAL_MS) {
                continue;
            }
            recovery.last_probe_ms = Some(now.mono_ms);
            let missing: Vec<u64> = self
                .cluster
                .replicas(group.partition)
                .into_iter()
                .filter(|&n| n != self.node_id && !recovery.reports.contains_key(&n))
                .collect();
            for &node in &missing {
                self.sink.send(node, PeerItem::TermProbe { partition: group.partition });
            }
            if now.mono_ms.saturating_sub(recovery.last_warning_ms) >= RECOVERY_WARNING_INTERVAL_MS {
                recovery.last_warning_ms = now.mono_ms;
                self.sink.log(log::Level::Warn, format!(
                    "node {}: partition {}: rejoining; still waiting for the term and commit index of replicas {missing:?}",
                    self.node_id, group.partition
                ));
            }
        }
    }

    /// Only a replica that has its state answers; two rebuilt replicas must not vouch for each other.
    pub(super) fn on_term_probe(&mut self, from: u64, partition: u32) {
        let Some(&slot) = self.group_of.get(&partition) else { return };
        let group = &self.groups[slot];
        if group.recovery.is_none() && self.failed.is_none() {
            let status = group.raw.status();
            let (term, commit, last_index) = (status.term, status.commit, status.last_index);
            self.sink.send(from, PeerItem::TermReport { partition, term, commit, last_index });
        }
    }

    /// Records a replica's `(term, commit, last index)`; once every other replica has answered, the
    /// group joins Raft in the highest reported term and withholds its votes until its commit index
    /// reaches the highest reported *last* index. Any entry the lost copy helped commit is in the log of
    /// some other replica (a majority holds it, and that majority includes another replica), though
    /// maybe not yet known there as committed: the last index covers it where a commit index might not.
    pub(super) fn on_term_report(&mut self, from: u64, partition: u32, report: (u64, u64, u64)) {
        let Some(&slot) = self.group_of.get(&partition) else { return };
        let others: Vec<u64> = self.cluster.replicas(partition).into_iter().filter(|&n| n != self.node_id).collect();
        if !others.contains(&from) {
            return;
        }
        let group = &mut self.groups[slot];
        let Some(recovery) = group.recovery.as_mut() else { return };
        recovery.reports.insert(from, report);
        if !others.iter().all(|n| recovery.reports.contains_key(n)) {
            return;
        }
        let term = recovery.reports.values().map(|r| r.0).max().unwrap_or(0);
        let target = recovery.reports.values().map(|r| r.2).max().unwrap_or(0);
        // Durable first: a restart during catch-up must come back withholding, with or without --rejoin.
        let marker = RejoinMarker::WithholdVotesUntil { index: target, term };
        if let Err(error) = group.raw.storage_mut().set_rejoin_marker(Some(marker)) {
            return self.fail(format!("partition {partition}: {error}"));
        }
        group.recovery = None;
        group.raw.rejoin_after_loss(term, target);
        group.withhold_marker_stored = true;
        self.sink.log(
            log::Level::Info,
            format!(
                "node {}: partition {}: rejoined in term {term}; votes withheld until commit index {target}",
                self.node_id, partition
            ),
        );
    }
}
