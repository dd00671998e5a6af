//! A replica rebuilt from nothing on a node that lost its data (`walletd --rejoin`): it asks every
//! other replica for its term, commit index and last index, takes no part in Raft until all have
//! answered, then joins in the highest reported term withholding its votes until its commit index
//! reaches the last index of that term's leader (or, with no leader among the reports, the highest
//! reported last index, lowered by a leader's later report: it keeps asking while it withholds), or
//! until it has committed an entry of a later term. The rules are recorded in the store's rejoin marker
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

/// What a replica with its state answers a rejoining one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct TermReport {
    pub term: u64,
    pub commit: u64,
    pub last_index: u64,
    /// The answering replica leads `term`.
    pub leads: bool,
}

/// The rules a rejoined replica withholds its votes under (those of its rejoin marker), and when it
/// last asked the other replicas again.
pub(super) struct Withheld {
    pub index: u64,
    pub term: u64,
    pub probed_ms: Option<u64>,
}

/// A replica that lost its log and vote, asking the others where the group stands.
pub(super) struct Recovery {
    /// The report of each replica that answered.
    reports: HashMap<u64, TermReport>,
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
/// How often a replica that withholds its votes asks the others again: a leader's later report can
/// lower what it must reach (see `ReplicaCore::on_term_report`).
const WITHHELD_PROBE_INTERVAL_MS: u64 = 1_000;
const RECOVERY_WARNING_INTERVAL_MS: u64 = 5_000;

impl<S: ReplicaStorage, H: Handles> ReplicaCore<S, H> {
    /// Asks the replicas that have not reported yet, for every recovering group.
    pub(super) fn probe_for_recovery(&mut self, now: Now) {
        for group in &mut self.groups {
            if let Some(withheld) = group.withheld.as_mut() {
                if withheld.probed_ms.is_some_and(|at| now.mono_ms.saturating_sub(at) < WITHHELD_PROBE_INTERVAL_MS) {
                    continue;
                }
                withheld.probed_ms = Some(now.mono_ms);
                for node in self.cluster.replicas(group.partition) {
                    if node != self.node_id {
                        self.sink.send(node, PeerItem::TermProbe { partition: group.partition });
                    }
                }
                continue;
            }
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
            let leads = status.role == raft::Role::Leader;
            self.sink.send(from, PeerItem::TermReport { partition, term, commit, last_index, leads });
        }
    }

    /// Records a replica's report; once every other replica has answered, the group joins Raft in the
    /// highest reported term and withholds its votes until its commit index reaches [`rejoin_target`].
    pub(super) fn on_term_report(&mut self, from: u64, partition: u32, report: TermReport) {
        let Some(&slot) = self.group_of.get(&partition) else { return };
        let others: Vec<u64> = self.cluster.replicas(partition).into_iter().filter(|&n| n != self.node_id).collect();
        if !others.contains(&from) {
            return;
        }
        let group = &mut self.groups[slot];
        if let Some((index, term)) = group.withheld.as_ref().map(|w| (w.index, w.term)) {
            return self.lower_withheld_target(slot, from, report, index, term);
        }
        let Some(recovery) = group.recovery.as_mut() else { return };
        recovery.reports.insert(from, report);
        if !others.iter().all(|n| recovery.reports.contains_key(n)) {
            return;
        }
        let (term, target) = rejoin_target(recovery.reports.values());
        // Durable first: a restart during catch-up must come back withholding, with or without --rejoin.
        let marker = RejoinMarker::WithholdVotesUntil { index: target, term };
        if let Err(error) = group.raw.storage_mut().set_rejoin_marker(Some(marker)) {
            return self.fail(format!("partition {partition}: {error}"));
        }
        group.recovery = None;
        group.raw.rejoin_after_loss(term, target);
        group.withheld = Some(Withheld { index: target, term, probed_ms: None });
        self.sink.log(
            log::Level::Info,
            format!(
                "node {}: partition {}: rejoined in term {term}; votes withheld until commit index {target}",
                self.node_id, partition
            ),
        );
    }

    /// A report that reached a replica already withholding its votes (it asks again every
    /// `WITHHELD_PROBE_INTERVAL_MS`): from a leader of the adopted term or a later one, its last index
    /// now covers every entry the lost copy can have helped commit, as in [`rejoin_target`] (that
    /// copy was lost before the probe, so it acknowledged nothing that leader's log lacks). A lower
    /// target is recorded in the marker first, then given to Raft. This closes the case the first
    /// reports miss: the leader elected in the adopted term itself, whose candidate answered before it
    /// won; no later term then begins on an idle partition, and the highest reported last index (a
    /// deposed leader's uncommitted tail) is never committed past.
    fn lower_withheld_target(&mut self, slot: usize, from: u64, report: TermReport, index: u64, term: u64) {
        if !report.leads || report.term < term || report.last_index >= index {
            return;
        }
        let partition = self.groups[slot].partition;
        let lowered = report.last_index;
        let marker = RejoinMarker::WithholdVotesUntil { index: lowered, term };
        let group = &mut self.groups[slot];
        if let Err(error) = group.raw.storage_mut().set_rejoin_marker(Some(marker)) {
            return self.fail(format!("partition {partition}: {error}"));
        }
        group.raw.rejoin_after_loss(term, lowered);
        if let Some(withheld) = group.withheld.as_mut() {
            withheld.index = lowered;
        }
        self.sink.log(
            log::Level::Info,
            format!(
                "node {}: partition {partition}: node {from}, leader in term {}, holds up to index {lowered}; \
                 votes withheld until commit index {lowered} (was {index})",
                self.node_id, report.term
            ),
        );
    }
}

/// The term a rejoining replica adopts (the highest reported) and the commit index it must reach before
/// it votes again. Any entry its lost copy helped commit sits in another replica's log, though that
/// replica may not know it is committed yet; which replica is not known, so the highest reported *last*
/// index covers it. Where the leader of the adopted term reported, its own last index is enough: its log
/// holds every entry committed in an earlier term (leader completeness) and every entry of its own term,
/// and a longer log elsewhere is an uncommitted tail the leader will overwrite. Without that rule an
/// idle partition never commits past such a tail, and the replica withholds its vote for good (a
/// failover then finds no quorum: replica simulator seed 101093). Raft also ends the withholding once
/// this replica commits an entry of a later term (`RawNode::rejoin_after_loss`).
pub(super) fn rejoin_target<'a>(reports: impl Iterator<Item = &'a TermReport> + Clone) -> (u64, u64) {
    let term = reports.clone().map(|r| r.term).max().unwrap_or(0);
    let leader = reports.clone().find(|r| r.leads && r.term == term);
    let target = match leader {
        Some(leader) => leader.last_index,
        None => reports.map(|r| r.last_index).max().unwrap_or(0),
    };
    (term, target)
}

#[cfg(test)]
mod tests {
    use super::{rejoin_target, TermReport};

    fn report(term: u64, commit: u64, last_index: u64, leads: bool) -> TermReport {
        TermReport { term, commit, last_index, leads }
    }

    #[test]
    fn the_target_is_the_leaders_last_index_where_the_leader_of_the_highest_term_reported() {
        // A deposed leader's uncommitted tail (last index 90) next to the term-7 leader (last 60).
        let reports = [report(6, 40, 90, false), report(7, 58, 60, true)];
        assert_eq!(rejoin_target(reports.iter()), (7, 60));
        // The leader's report is the one that counts, whatever the order.
        let reversed = [reports[1], reports[0]];
        assert_eq!(rejoin_target(reversed.iter()), (7, 60));
    }

    #[test]
    fn without_the_leader_of_the_highest_term_the_target_is_the_highest_last_index() {
        // No leader at all.
        assert_eq!(rejoin_target([report(7, 40, 90, false), report(7, 58, 60, false)].iter()), (7, 90));
        // A leader of an older term says nothing about what term 8 may have committed.
        assert_eq!(rejoin_target([report(7, 40, 60, true), report(8, 58, 90, false)].iter()), (8, 90));
        // Nothing reported (no other replica): nothing to wait for.
        assert_eq!(rejoin_target([].iter()), (0, 0));
    }
}
