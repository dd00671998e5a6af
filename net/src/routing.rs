//! A client that learns where each partition's leader is and sends every item straight there.
//!
//! Any node of a cluster accepts any request and forwards what it does not lead, so a plain [`Client`]
//! works against a cluster; this one saves that hop. It asks the nodes for their Status (which lists every
//! member's client address and, per partition, the leader each node knows), keeps one [`Client`] per
//! node, splits a batch by partition, sends each node its share in one request (pipelined across
//! nodes), and puts the answers back in the caller's order. A share that fails retryably (the node is
//! gone, or no longer leads) is sent again, with the same ids, after the routes are refreshed; that is
//! safe because transfer ids are idempotency keys. Against a single node (its Status lists no members)
//! everything goes to that node.
//!
//! A node that stops answering (crashed, paused, cut off: the request times out or its connection
//! fails) is routed around at once for `SUSPECT_NODE_MS`: its partitions go to the next member, which
//! forwards them to whichever node leads (and re-routes them itself when the leadership moves), and
//! the retry goes out without waiting for a fresh status (which the silent node might be the one to
//! be asked for). So a silent node costs a request one `request_timeout_ms`, not one per retry.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::client::{Client, ClientConfig, ClientError, RETRY_BACKOFF_MS_MAX};
use crate::protocol::{
    AccountLookup, AccountRead, Consistency, NodeStatus, ReadLevel, Request, Response, TransferLookup,
    PARTITION_FLAG_LEADER,
};
use crate::types::{partition_of, AccountId, CreateAccount, ItemResult, Transfer, TransferId};

/// Node id used for the seed connection while no route is known (node ids start at 1).
const SEED: u64 = 0;
/// How long a node that timed out or dropped the connection is routed around (and not asked for
/// status), unless every member is suspect; the next request after it asks for the routes again.
pub const SUSPECT_NODE_MS: u64 = 5_000;

pub struct RoutingClient {
    config: ClientConfig,
    /// Per node id (and `SEED`), a client connected to that node only.
    clients: BTreeMap<u64, Client>,
    addresses: BTreeMap<u64, SocketAddr>,
    /// Per partition, the leader's node id (`SEED` when unknown).
    leaders: Vec<u64>,
    partitions: u32,
    /// Nodes that stopped answering, with when they did: routed around for `SUSPECT_NODE_MS`.
    suspects: BTreeMap<u64, Instant>,
    /// Per partition, the members whose status listed a replica of it: where a silent leader's
    /// partitions go (a replica sees elections, so it follows the leadership itself).
    holders: BTreeMap<u32, BTreeSet<u64>>,
}

impl RoutingClient {
    /// `config.addresses` are the seeds asked for the cluster's layout; nothing connects until first use.
    pub fn new(config: ClientConfig) -> Result<RoutingClient, ClientError> {
        let seed = Client::new(config.clone())?;
        Ok(RoutingClient {
            config,
            clients: BTreeMap::from([(SEED, seed)]),
            addresses: BTreeMap::new(),
            leaders: Vec::new(),
            partitions: 0,
            suspects: BTreeMap::new(),
            holders: BTreeMap::new(),
        })
    }

    /// The leader of `partition` as last learned, if any.
    pub fn leader_of(&self, partition: u32) -> Option<u64> {
        self.leaders.get(partition as usize).copied().filter(|&node| node != SEED)
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// Asks the cluster for its members and every partition's leader: a member not under suspicion
    /// first (the seed while none is known), then every other one it lists that is not under
    /// suspicion (each node knows the leaders of the partitions it replicates, and lists them).
    pub fn refresh(&mut self) -> Result<(), ClientError> {
        self.forget_old_suspicions();
        let asked: Vec<u64> = self.addresses.keys().copied().filter(|node| !self.suspects.contains_key(node)).collect();
        let first = asked.iter().find_map(|&node| self.node(node).and_then(Client::status).ok());
        let first = match first {
            Some(status) => status,
            None => self.seed().status()?,
        };
        self.partitions = first.partitions;
        self.leaders = vec![SEED; first.partitions as usize];
        self.addresses = first.nodes.iter().map(|n| (n.node_id, n.address)).collect();
        self.holders.clear();
        self.learn(&first);
        let members: Vec<u64> = self
            .addresses
            .keys()
            .copied()
            .filter(|&id| id != first.node_id && !self.suspects.contains_key(&id))
            .collect();
        for node in members {
            if let Ok(status) = self.node(node).and_then(Client::status) {
                self.learn(&status);
            }
        }
        let suspects: Vec<u64> = self.suspects.keys().copied().collect();
        for node in suspects {
            self.route_around(node);
        }
        Ok(())
    }

    fn learn(&mut self, status: &NodeStatus) {
        for record in &status.partition_states {
            self.holders.entry(record.partition).or_default().insert(status.node_id);
            let Some(slot) = self.leaders.get_mut(record.partition as usize) else { continue };
            if record.flags & PARTITION_FLAG_LEADER != 0 {
                *slot = status.node_id;
            } else if record.leader != 0 && *slot == SEED {
                *slot = record.leader;
            }
        }
    }

    fn forget_old_suspicions(&mut self) {
        self.suspects.retain(|_, since| since.elapsed() < Duration::from_millis(SUSPECT_NODE_MS));
    }

    /// `node` timed out or dropped the connection: its partitions go elsewhere (see `route_around`).
    /// True when every one of them found a member not under suspicion.
    fn suspect(&mut self, node: u64) -> bool {
        if node == SEED {
            return false;
        }
        self.suspects.insert(node, Instant::now());
        self.route_around(node)
    }

    /// Each partition routed to `node` goes to the next member after it (in id order) that holds a
    /// replica of it and is not under suspicion, else to the next member not under suspicion (any
    /// node forwards what it does not lead). True when every such partition moved; a partition with
    /// nowhere to go keeps its route (one of the suspects may answer again).
    fn route_around(&mut self, node: u64) -> bool {
        let members: Vec<u64> = self.addresses.keys().copied().collect();
        let after = |candidates: &mut dyn Iterator<Item = u64>| {
            let candidates: Vec<u64> = candidates.collect();
            let next = candidates.iter().copied().find(|&member| member > node);
            next.or_else(|| candidates.first().copied())
        };
        let mut moved_all = true;
        for partition in 0..self.leaders.len() {
            if self.leaders[partition] != node {
                continue;
            }
            let free = |member: &u64| *member != node && !self.suspects.contains_key(member);
            let holders = self.holders.get(&(partition as u32));
            let replica = holders.and_then(|holders| after(&mut holders.iter().copied().filter(free)));
            match replica.or_else(|| after(&mut members.iter().copied().filter(free))) {
                Some(next) => self.leaders[partition] = next,
                None => moved_all = false,
            }
        }
        moved_all
    }

    fn seed(&mut self) -> &mut Client {
        self.clients.get_mut(&SEED).expect("the seed client always exists")
    }

    fn node(&mut self, node: u64) -> Result<&mut Client, ClientError> {
        if !self.clients.contains_key(&node) {
            let address = *self.addresses.get(&node).ok_or(ClientError::InvalidConfig("unknown node id"))?;
            let config = ClientConfig { addresses: vec![address], ..self.config.clone() };
            self.clients.insert(node, Client::new(config)?);
        }
        Ok(self.clients.get_mut(&node).expect("inserted above"))
    }

    /// Where an item keyed by `account` goes now.
    fn route(&self, account: AccountId) -> u64 {
        if self.partitions == 0 || self.addresses.is_empty() {
            return SEED;
        }
        self.leaders[partition_of(account, self.partitions) as usize]
    }

    pub fn create_transfers(&mut self, transfers: &[Transfer]) -> Result<Vec<ItemResult>, ClientError> {
        self.routed_items(transfers, |t| t.debit_account_id, Request::CreateTransfers)
    }

    pub fn create_accounts(&mut self, accounts: &[CreateAccount]) -> Result<Vec<ItemResult>, ClientError> {
        self.routed_items(accounts, |a| a.id, Request::CreateAccounts)
    }

    /// Linearizable lookups go to each partition's leader; the other levels may be served by any
    /// replica and go to the leader too, which is as fresh as it gets.
    pub fn lookup_accounts(
        &mut self,
        consistency: Consistency,
        ids: &[AccountId],
    ) -> Result<Vec<AccountLookup>, ClientError> {
        let Request::LookupAccounts { consistency, reads } = Request::lookup(consistency, ids) else {
            unreachable!("Request::lookup builds a lookup")
        };
        self.lookup(consistency, &reads)
    }

    /// Like [`RoutingClient::lookup_accounts`], each account with its own minimum sequence.
    pub fn lookup(&mut self, consistency: ReadLevel, reads: &[AccountRead]) -> Result<Vec<AccountLookup>, ClientError> {
        let request = |reads: Vec<AccountRead>| Request::LookupAccounts { consistency, reads };
        let answers = self.routed(
            reads,
            |read| read.id,
            request,
            |response, count| match response {
                Response::Accounts(accounts) if accounts.len() == count => Ok(accounts),
                other => Err(ClientError::UnexpectedResponse { expected: "Accounts", got: format!("{other:?}") }),
            },
        )?;
        Ok(answers)
    }

    /// What became of each transfer id (one answer per id, in order). An id names no partition (a
    /// transfer is remembered by its debit account's), so no node is closer than another: the whole
    /// request goes to one member, the node routed to for account 0's partition (routed around like any
    /// share when it is silent, retried like any share when it refuses), which asks every partition's
    /// leader itself.
    pub fn lookup_transfers(&mut self, ids: &[TransferId]) -> Result<Vec<TransferLookup>, ClientError> {
        self.routed(
            ids,
            |_| 0,
            |ids| Request::LookupTransfers(ids),
            |response, count| match response {
                Response::Transfers(found) if found.len() == count => Ok(found),
                other => Err(ClientError::UnexpectedResponse { expected: "Transfers", got: format!("{other:?}") }),
            },
        )
    }

    fn routed_items<T: Clone>(
        &mut self,
        items: &[T],
        key: impl Fn(&T) -> AccountId,
        request: impl Fn(Vec<T>) -> Request,
    ) -> Result<Vec<ItemResult>, ClientError> {
        let mut results = self.routed(items, key, request, |response, count| match response {
            Response::Results(results) if results.len() == count => Ok(results),
            other => Err(ClientError::UnexpectedResponse { expected: "Results", got: format!("{other:?}") }),
        })?;
        for (index, result) in results.iter_mut().enumerate() {
            result.index = index as u32;
        }
        Ok(results)
    }

    /// Splits `items` by destination node, sends every share (one request per node, all in flight at
    /// once), and retries the shares that failed retryably after refreshing the routes.
    fn routed<T: Clone, A: Clone>(
        &mut self,
        items: &[T],
        key: impl Fn(&T) -> AccountId,
        request: impl Fn(Vec<T>) -> Request,
        answer: impl Fn(Response, usize) -> Result<Vec<A>, ClientError>,
    ) -> Result<Vec<A>, ClientError> {
        let suspicion_over =
            self.suspects.values().any(|since| since.elapsed() >= Duration::from_millis(SUSPECT_NODE_MS));
        if self.leaders.is_empty() || suspicion_over {
            // A failed refresh is not fatal: the seed node forwards whatever it does not lead. Once a
            // suspicion is over, the routes are learned again, so the node's partitions go straight
            // to their leaders again instead of through the member that stood in.
            let _ = self.refresh();
        }
        let mut out: Vec<Option<A>> = vec![None; items.len()];
        let mut pending: Vec<usize> = (0..items.len()).collect();
        let mut backoff_ms = self.config.retry_backoff_ms;
        for attempt in 1..=self.config.retry_attempts_max {
            let mut shares: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
            for &index in &pending {
                shares.entry(self.route(key(&items[index]))).or_default().push(index);
            }
            let mut sent = Vec::new();
            let mut failed: Vec<usize> = Vec::new();
            let mut last_error = None;
            // Whether some node answered that it cannot serve (not leader, busy), or went silent with
            // nowhere else to send its share: then the routes are stale or exhausted, and the retry
            // waits its backoff and asks for them again.
            let mut refused = false;
            for (node, indices) in shares {
                let share = request(indices.iter().map(|&i| items[i].clone()).collect());
                match self.node(node).and_then(|client| client.send(&share)) {
                    Ok(request_id) => sent.push((node, request_id, indices)),
                    Err(error) if error.is_retryable() => {
                        self.note_failure(node, &error, &mut refused);
                        failed.extend(indices);
                        last_error = Some(error);
                    }
                    Err(error) => return Err(error),
                }
            }
            for (node, request_id, indices) in sent {
                match self.await_answer(node, request_id).and_then(|response| answer(response, indices.len())) {
                    Ok(answers) => {
                        for (index, value) in indices.into_iter().zip(answers) {
                            out[index] = Some(value);
                        }
                    }
                    Err(error) if error.is_retryable() => {
                        self.note_failure(node, &error, &mut refused);
                        failed.extend(indices);
                        last_error = Some(error);
                    }
                    Err(error) => return Err(error),
                }
            }
            if failed.is_empty() {
                return Ok(out.into_iter().map(|value| value.expect("every item answered")).collect());
            }
            if attempt == self.config.retry_attempts_max {
                return Err(last_error.expect("a failure was recorded"));
            }
            pending = failed;
            if refused {
                std::thread::sleep(Duration::from_millis(backoff_ms));
                backoff_ms = (backoff_ms * 2).min(RETRY_BACKOFF_MS_MAX);
                let _ = self.refresh();
            }
            // Otherwise only silent nodes, each routed around to a member not under suspicion: go
            // again at once.
        }
        unreachable!("the last attempt returns")
    }

    /// Files a retryable failure from `node`: a server's refusal marks the routes stale; a timeout or
    /// a failed connection puts the node under suspicion, and if its share found nowhere else to go
    /// the routes count as stale too.
    fn note_failure(&mut self, node: u64, error: &ClientError, refused: &mut bool) {
        let moved = match error {
            ClientError::Server { .. } => false,
            _ => self.suspect(node),
        };
        *refused |= !moved;
    }

    fn await_answer(&mut self, node: u64, request_id: u64) -> Result<Response, ClientError> {
        let client = self.node(node)?;
        // Only one request is in flight per node client here, so the next answer is ours.
        let (answered, response) = client.recv()?;
        if answered != request_id {
            client.disconnect();
            return Err(ClientError::ConnectionClosed);
        }
        match response {
            Response::Error { code, message } => Err(ClientError::Server { code, message }),
            response => Ok(response),
        }
    }
}
