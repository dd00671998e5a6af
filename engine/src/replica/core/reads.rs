//! Reads at the three consistency levels: `any` at once from the committed state, `at_least(seq)`
//! once this replica has applied `seq`, `linearizable` on the leader after a ReadIndex round once it
//! has applied the read index. Every wait has a deadline (`read_wait_timeout_ms`). Account lookups use
//! all three; transfer lookups are always linearizable. Both are answered from the committed state
//! only, never from a leader's speculative one.

use net::protocol::{Consistency, TransferLookup};
use raft::{Entry, Payload, Role};

use super::group::Group;
use super::{Handles, LookupTo, Now, ReplicaCore, ReplicaStorage, Sink, TransfersTo};
use crate::error::EngineError;
use crate::event::{EventBatchView, EventBody};

/// What a read asks for, and where its answer goes.
pub(crate) enum Read<H: Handles> {
    Accounts {
        ids: Vec<u64>,
        to: LookupTo<H>,
    },
    /// `wall_ns`: the serving node's clock when the read reached it, against which an id's age is
    /// judged (as a single node judges it against its own clock).
    Transfers {
        ids: Vec<u128>,
        wall_ns: u64,
        to: TransfersTo<H>,
    },
}

impl<H: Handles> Read<H> {
    pub fn fail(self, sink: &mut Sink<H>, error: EngineError) {
        match self {
            Read::Accounts { to, .. } => sink.lookup(to, Err(error)),
            Read::Transfers { to, .. } => sink.transfers(to, Err(error)),
        }
    }
}

pub(super) struct PendingRead<H: Handles> {
    pub read: Read<H>,
    pub deadline_ms: u64,
}

impl<S: ReplicaStorage, H: Handles> ReplicaCore<S, H> {
    pub(super) fn read(&mut self, now: Now, slot: usize, consistency: Consistency, read: Read<H>) {
        let read = PendingRead { read, deadline_ms: now.mono_ms + self.replication.read_wait_timeout_ms };
        let group = &mut self.groups[slot];
        let sink = &mut self.sink;
        assert!(
            consistency == Consistency::Linearizable || matches!(read.read, Read::Accounts { .. }),
            "transfer lookups are linearizable"
        );
        match consistency {
            Consistency::Any => group.serve_read(sink, read),
            Consistency::AtLeast(seq) if group.committed.last_seq() >= seq || sink.planted.at_least_without_waiting => {
                group.serve_read(sink, read)
            }
            Consistency::AtLeast(seq) => group.seq_waits.push((seq, read)),
            Consistency::Linearizable => {
                if group.speculative.is_none() {
                    return read.read.fail(sink, group.not_leader());
                }
                if sink.planted.linearizable_without_read_index && group.role == Role::Leader {
                    return group.serve_read(sink, read);
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
                        read.read.fail(sink, error);
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
                self.serve_read(sink, read);
            }
        }
        if !self.index_waits.is_empty() {
            let applied = self.applied_index;
            let (ready, waiting): (Vec<_>, Vec<_>) =
                self.index_waits.drain(..).partition(|(needed, _)| *needed <= applied);
            self.index_waits = waiting;
            for (_, read) in ready {
                self.serve_read(sink, read);
            }
        }
    }

    fn expire_reads(&mut self, now: Now, sink: &mut Sink<H>) {
        let partition = self.partition;
        let timeout = |read: PendingRead<H>, sink: &mut Sink<H>| {
            let error =
                EngineError::Unavailable(format!("partition {partition} did not reach the requested state in time"));
            read.read.fail(sink, error);
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

impl<S: ReplicaStorage, H: Handles> Group<S, H> {
    /// Answers a read from the committed state.
    pub(super) fn serve_read(&self, sink: &mut Sink<H>, read: PendingRead<H>) {
        match read.read {
            Read::Accounts { ids, to } => {
                let accounts = ids.iter().map(|&id| self.committed.account(id)).collect();
                sink.lookup(to, Ok(accounts));
            }
            Read::Transfers { ids, wall_ns, to } => {
                let found = ids.iter().map(|&id| self.transfer_lookup(id, wall_ns)).collect();
                sink.transfers(to, found);
            }
        }
    }

    /// What became of transfer `id` in this partition: the id table's entry (outcome, seq, time),
    /// with the transfer's fields from the event in this replica's log when the log still holds it
    /// (entries before the latest snapshot are compacted away); `None` when the partition holds no
    /// decision for `id` within the window.
    fn transfer_lookup(&self, id: u128, wall_ns: u64) -> Result<Option<TransferLookup>, EngineError> {
        let Some(decided) = self.committed.transfer_entry(id, wall_ns) else { return Ok(None) };
        let (code, seq, timestamp_ns) = (decided.code, decided.seq, decided.recorded_ns);
        let without_fields = TransferLookup::FoundWithoutFields { id, code, seq, timestamp_ns };
        let after = self.batch_index.partition_point(|&(first_seq, _)| first_seq <= seq);
        if after == 0 {
            return Ok(Some(without_fields));
        }
        let index = self.batch_index[after - 1].1;
        let Some(Entry { payload: Payload::Data(bytes), .. }) = self.raw.entry(index) else {
            return Ok(Some(without_fields));
        };
        let view = EventBatchView::new(&bytes).map_err(|e| EngineError::Log(format!("log entry {index}: {e}")))?;
        let wrong = |what: String| {
            EngineError::Log(format!(
                "partition {}: transfer {id:#x} was decided at seq {seq}, but log entry {index} holds {what}",
                self.partition
            ))
        };
        if view.partition() != self.partition || seq < view.first_seq() || seq > view.last_seq() {
            return Err(wrong(format!("seqs {}..={}", view.first_seq(), view.last_seq())));
        }
        match view.event((seq - view.first_seq()) as u32).body {
            EventBody::TransferPosted { transfer, .. } | EventBody::TransferRejected { transfer, .. }
                if transfer.id == id =>
            {
                Ok(Some(TransferLookup::Found { transfer, code, seq, timestamp_ns }))
            }
            other => Err(wrong(format!("{other:?} there"))),
        }
    }
}
