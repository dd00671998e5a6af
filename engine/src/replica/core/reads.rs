//! Reads at the three consistency levels: `any` at once from the committed state, `at_least(seq)`
//! once this replica has applied `seq`, `linearizable` on the leader after a ReadIndex round once it
//! has applied the read index. Every wait has a deadline (`read_wait_timeout_ms`).

use net::protocol::Consistency;
use raft::Role;

use super::group::Group;
use super::{Handles, LookupTo, Now, ReplicaCore, ReplicaStorage, Sink};
use crate::error::EngineError;
use crate::partition::PartitionState;

pub(super) struct PendingRead<H: Handles> {
    pub ids: Vec<u64>,
    pub to: LookupTo<H>,
    pub deadline_ms: u64,
}

impl<S: ReplicaStorage, H: Handles> ReplicaCore<S, H> {
    pub(super) fn lookup(&mut self, now: Now, slot: usize, consistency: Consistency, ids: Vec<u64>, to: LookupTo<H>) {
        let read = PendingRead { ids, to, deadline_ms: now.mono_ms + self.replication.read_wait_timeout_ms };
        let group = &mut self.groups[slot];
        let sink = &mut self.sink;
        match consistency {
            Consistency::Any => serve_read(sink, &group.committed, read),
            Consistency::AtLeast(seq) if group.committed.last_seq() >= seq || sink.planted.at_least_without_waiting => {
                serve_read(sink, &group.committed, read)
            }
            Consistency::AtLeast(seq) => group.seq_waits.push((seq, read)),
            Consistency::Linearizable => {
                if group.speculative.is_none() {
                    return sink.lookup(read.to, Err(group.not_leader()));
                }
                if sink.planted.linearizable_without_read_index && group.role == Role::Leader {
                    return serve_read(sink, &group.committed, read);
                }
                let context = self.next_read_context;
                self.next_read_context += 1;
                match group.raw.read_index(context) {
                    Ok(()) => {
                        let earlier = group.read_index_waits.insert(context, read);
                        assert!(earlier.is_none(), "read context {context} used twice");
                    }
                    Err(error) => {
                        let error =
                            EngineError::Unavailable(format!("partition {}: read refused: {error}", group.partition));
                        sink.lookup(read.to, Err(error));
                    }
                }
            }
        }
    }

    /// Fails forwarded requests and reads whose time is up.
    pub(super) fn expire_waits(&mut self, now: Now) {
        let expired: Vec<u64> = self
            .forwarded
            .iter()
            .filter(|(_, forwarded)| forwarded.trip.deadline_ms <= now.mono_ms)
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            let forwarded = self.forwarded.remove(&id).expect("listed just above");
            crate::metrics::count_forward(crate::metrics::ForwardOutcome::TimedOut);
            self.suspect_remote_leader(forwarded.partition, forwarded.to);
            let error = EngineError::Unavailable(format!(
                "node {}, the leader of partition {} as far as this node knew, did not answer in time",
                forwarded.to, forwarded.partition
            ));
            forwarded.request.fail(&mut self.sink, error);
        }
        for group in &mut self.groups {
            group.expire_reads(now, &mut self.sink);
        }
    }
}

impl<S: ReplicaStorage, H: Handles> Group<S, H> {
    /// Serves the reads whose sequence or read index the committed state has reached.
    pub(super) fn serve_waiting_reads(&mut self, sink: &mut Sink<H>) {
        if !self.seq_waits.is_empty() {
            let seq = self.committed.last_seq();
            let (ready, waiting): (Vec<_>, Vec<_>) = self.seq_waits.drain(..).partition(|(needed, _)| *needed <= seq);
            self.seq_waits = waiting;
            for (_, read) in ready {
                serve_read(sink, &self.committed, read);
            }
        }
        if !self.index_waits.is_empty() {
            let applied = self.applied_index;
            let (ready, waiting): (Vec<_>, Vec<_>) =
                self.index_waits.drain(..).partition(|(needed, _)| *needed <= applied);
            self.index_waits = waiting;
            for (_, read) in ready {
                serve_read(sink, &self.committed, read);
            }
        }
    }

    fn expire_reads(&mut self, now: Now, sink: &mut Sink<H>) {
        let partition = self.partition;
        let timeout = |read: PendingRead<H>, sink: &mut Sink<H>| {
            let error =
                EngineError::Unavailable(format!("partition {partition} did not reach the requested state in time"));
            sink.lookup(read.to, Err(error));
        };
        let late = |read: &PendingRead<H>| read.deadline_ms <= now.mono_ms;
        let (expired, keep): (Vec<_>, Vec<_>) = self.seq_waits.drain(..).partition(|(_, r)| late(r));
        self.seq_waits = keep;
        expired.into_iter().for_each(|(_, read)| timeout(read, sink));
        let (expired, keep): (Vec<_>, Vec<_>) = self.index_waits.drain(..).partition(|(_, r)| late(r));
        self.index_waits = keep;
        expired.into_iter().for_each(|(_, read)| timeout(read, sink));
        let expired: Vec<u64> = self.read_index_waits.iter().filter(|(_, r)| late(r)).map(|(&c, _)| c).collect();
        for context in expired {
            let read = self.read_index_waits.remove(&context).expect("listed just above");
            timeout(read, sink);
        }
    }
}

fn serve_read<H: Handles>(sink: &mut Sink<H>, state: &PartitionState, read: PendingRead<H>) {
    let accounts = read.ids.iter().map(|&id| state.account(id)).collect();
    sink.lookup(read.to, Ok(accounts));
}
