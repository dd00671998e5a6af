//! Domain types shared by the wire protocol, the engine and every client.
//!
//! These are plain fixed-size values: a client application depends on `net` alone and gets exactly the
//! types the engine validates. Amounts are integers in minor units (cents for USD), never floats.
//! Wire layouts are little-endian and fixed; `encode_into`/`decode` below are the single definition
//! of each layout (ARCHITECTURE.md documents them byte by byte).

use xxhash_rust::xxh3::xxh3_64;

/// Client-chosen account identifier. 0 and `u64::MAX` are reserved and rejected.
pub type AccountId = u64;
/// Client-chosen transfer identifier; it is the idempotency key. See [`transfer_id_timestamp_ms`].
pub type TransferId = u128;
/// Ledger (currency or asset) code. ISO 4217 currencies use their numeric code (USD = 840).
pub type Ledger = u32;

/// Account flag: a settlement/funding account that may go negative. Deposits are transfers from it,
/// withdrawals transfers to it, so money only moves and every ledger sums to zero.
pub const ACCOUNT_FLAG_EXTERNAL: u32 = 1 << 0;
/// Every account flag this version understands; any other bit set is rejected (`InvalidFlags`).
pub const ACCOUNT_FLAGS_KNOWN: u32 = ACCOUNT_FLAG_EXTERNAL;
/// Transfer flags: none are defined yet; any bit set is rejected (`InvalidFlags`).
pub const TRANSFER_FLAGS_KNOWN: u32 = 0;

/// Result-item flag: this item is a retry of an id already decided; the code and sequence are the
/// original outcome and nothing changed.
pub const RESULT_FLAG_REPLAYED: u16 = 1 << 0;

/// Number of high bits of a transfer id that carry its creation time in milliseconds since the Unix
/// epoch (ULID-style). Time-ordered ids let a partition tell a late retry from a new transfer with
/// bounded memory: see ARCHITECTURE.md, "Idempotency window".
pub const TRANSFER_ID_TIMESTAMP_BITS: u32 = 48;

/// How far ahead of the leader's clock a transfer id's timestamp may be. An id recorded in the id table
/// becomes, once evicted, the partition's expiry watermark: every id at or below it is refused
/// `id_expired`. An id far in the future would therefore expire every honest id for as long as it was
/// ahead; bounding it bounds that damage to this many milliseconds. Part of what the log means: the
/// leader and every replaying replica judge an id against the same event timestamp with this bound.
pub const TRANSFER_ID_FUTURE_MS_MAX: u64 = 10_000;

/// Milliseconds since the Unix epoch embedded in a time-ordered transfer id (0 for small ids).
pub fn transfer_id_timestamp_ms(id: TransferId) -> u64 {
    (id >> (128 - TRANSFER_ID_TIMESTAMP_BITS)) as u64
}

/// Builds a time-ordered transfer id from a millisecond timestamp and 80 bits of caller entropy.
pub fn transfer_id_from_parts(timestamp_ms: u64, entropy: u128) -> TransferId {
    let timestamp_mask = (1u64 << TRANSFER_ID_TIMESTAMP_BITS) - 1;
    let entropy_mask = (1u128 << (128 - TRANSFER_ID_TIMESTAMP_BITS)) - 1;
    (((timestamp_ms & timestamp_mask) as u128) << (128 - TRANSFER_ID_TIMESTAMP_BITS)) | (entropy & entropy_mask)
}

/// The partition that owns an account: `xxh3(account_id as 8 LE bytes) % partitions`.
/// A transfer belongs to the partition of its debit account.
pub fn partition_of(account_id: AccountId, partitions: u32) -> u32 {
    assert!(partitions > 0, "a cluster has at least one partition");
    (xxh3_64(&account_id.to_le_bytes()) % partitions as u64) as u32
}

/// Create-account command. Wire layout, 32 bytes:
/// `id u64 | ledger u32 | flags u32 | user_data u128`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CreateAccount {
    pub id: AccountId,
    pub ledger: Ledger,
    pub flags: u32,
    pub user_data: u128,
}

impl CreateAccount {
    pub const WIRE_BYTES: usize = 32;

    pub fn encode_into(&self, out: &mut [u8]) {
        let out = &mut out[..Self::WIRE_BYTES];
        out[0..8].copy_from_slice(&self.id.to_le_bytes());
        out[8..12].copy_from_slice(&self.ledger.to_le_bytes());
        out[12..16].copy_from_slice(&self.flags.to_le_bytes());
        out[16..32].copy_from_slice(&self.user_data.to_le_bytes());
    }

    pub fn decode(bytes: &[u8]) -> Self {
        let b = &bytes[..Self::WIRE_BYTES];
        CreateAccount {
            id: le_u64(&b[0..8]),
            ledger: le_u32(&b[8..12]),
            flags: le_u32(&b[12..16]),
            user_data: le_u128(&b[16..32]),
        }
    }

    pub fn is_external(&self) -> bool {
        self.flags & ACCOUNT_FLAG_EXTERNAL != 0
    }
}

/// Transfer command. Wire layout, 64 bytes:
/// `id u128 | debit_account_id u64 | credit_account_id u64 | amount u64 | ledger u32 | flags u32 |
/// user_data u128`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Transfer {
    pub id: TransferId,
    pub debit_account_id: AccountId,
    pub credit_account_id: AccountId,
    /// Minor units; must be > 0 and at most `i64::MAX` (balances are i64).
    pub amount: u64,
    pub ledger: Ledger,
    pub flags: u32,
    /// Caller's own reference, stored and returned untouched.
    pub user_data: u128,
}

impl Transfer {
    pub const WIRE_BYTES: usize = 64;

    pub fn encode_into(&self, out: &mut [u8]) {
        let out = &mut out[..Self::WIRE_BYTES];
        out[0..16].copy_from_slice(&self.id.to_le_bytes());
        out[16..24].copy_from_slice(&self.debit_account_id.to_le_bytes());
        out[24..32].copy_from_slice(&self.credit_account_id.to_le_bytes());
        out[32..40].copy_from_slice(&self.amount.to_le_bytes());
        out[40..44].copy_from_slice(&self.ledger.to_le_bytes());
        out[44..48].copy_from_slice(&self.flags.to_le_bytes());
        out[48..64].copy_from_slice(&self.user_data.to_le_bytes());
    }

    pub fn decode(bytes: &[u8]) -> Self {
        let b = &bytes[..Self::WIRE_BYTES];
        Transfer {
            id: le_u128(&b[0..16]),
            debit_account_id: le_u64(&b[16..24]),
            credit_account_id: le_u64(&b[24..32]),
            amount: le_u64(&b[32..40]),
            ledger: le_u32(&b[40..44]),
            flags: le_u32(&b[44..48]),
            user_data: le_u128(&b[48..64]),
        }
    }
}

/// An account as stored and as returned by lookups. Wire layout, 56 bytes:
/// `id u64 | ledger u32 | flags u32 | user_data u128 | balance i64 | created_seq u64 | last_seq u64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Account {
    pub id: AccountId,
    pub ledger: Ledger,
    pub flags: u32,
    pub user_data: u128,
    /// Minor units. Never negative unless the account is external.
    pub balance: i64,
    /// Partition sequence of the event that created the account.
    pub created_seq: u64,
    /// Partition sequence of the last event that changed this account.
    pub last_seq: u64,
}

impl Account {
    pub const WIRE_BYTES: usize = 56;

    pub fn encode_into(&self, out: &mut [u8]) {
        let out = &mut out[..Self::WIRE_BYTES];
        out[0..8].copy_from_slice(&self.id.to_le_bytes());
        out[8..12].copy_from_slice(&self.ledger.to_le_bytes());
        out[12..16].copy_from_slice(&self.flags.to_le_bytes());
        out[16..32].copy_from_slice(&self.user_data.to_le_bytes());
        out[32..40].copy_from_slice(&self.balance.to_le_bytes());
        out[40..48].copy_from_slice(&self.created_seq.to_le_bytes());
        out[48..56].copy_from_slice(&self.last_seq.to_le_bytes());
    }

    pub fn decode(bytes: &[u8]) -> Self {
        let b = &bytes[..Self::WIRE_BYTES];
        Account {
            id: le_u64(&b[0..8]),
            ledger: le_u32(&b[8..12]),
            flags: le_u32(&b[12..16]),
            user_data: le_u128(&b[16..32]),
            balance: le_u64(&b[32..40]) as i64,
            created_seq: le_u64(&b[40..48]),
            last_seq: le_u64(&b[48..56]),
        }
    }

    pub fn is_external(&self) -> bool {
        self.flags & ACCOUNT_FLAG_EXTERNAL != 0
    }
}

/// Per-item outcome of a command. Stable numeric values: they are on the wire and in the log.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResultCode {
    Ok = 0,
    /// Create-account: an identical account with this id already exists (nothing changed).
    Exists = 1,
    /// The id was already used with different fields (account or transfer); nothing changed.
    ExistsWithDifferentFields = 2,
    InsufficientFunds = 3,
    DebitAccountNotFound = 4,
    CreditAccountNotFound = 5,
    /// The transfer's ledger differs from an account's ledger, or the two accounts' ledgers differ.
    LedgerMismatch = 6,
    SameAccount = 7,
    ZeroAmount = 8,
    /// A balance or amount would leave the i64 range; nothing changed.
    Overflow = 9,
    /// The transfer id is older than the partition's idempotency window: it may be a late retry of a
    /// forgotten transfer, so it is refused rather than risk applying it twice.
    IdExpired = 10,
    /// Debit and credit accounts live in different partitions and this node does not run sagas yet.
    CrossPartitionUnsupported = 11,
    InvalidFlags = 12,
    /// Account id 0 or `u64::MAX`, or transfer id 0.
    ReservedId = 13,
    /// Lookup: no such account.
    AccountNotFound = 14,
    /// Create-account: ledger 0 is reserved.
    InvalidLedger = 15,
    /// The transfer id's timestamp is more than `TRANSFER_ID_FUTURE_MS_MAX` ahead of the leader's clock
    /// (a client clock far ahead, or an id that is not time-ordered). Nothing is recorded: once the
    /// clock catches up the same id is accepted.
    IdFromFuture = 16,
}

impl ResultCode {
    pub const ALL: [ResultCode; 17] = [
        ResultCode::Ok,
        ResultCode::Exists,
        ResultCode::ExistsWithDifferentFields,
        ResultCode::InsufficientFunds,
        ResultCode::DebitAccountNotFound,
        ResultCode::CreditAccountNotFound,
        ResultCode::LedgerMismatch,
        ResultCode::SameAccount,
        ResultCode::ZeroAmount,
        ResultCode::Overflow,
        ResultCode::IdExpired,
        ResultCode::CrossPartitionUnsupported,
        ResultCode::InvalidFlags,
        ResultCode::ReservedId,
        ResultCode::AccountNotFound,
        ResultCode::InvalidLedger,
        ResultCode::IdFromFuture,
    ];

    pub fn from_u16(value: u16) -> Option<ResultCode> {
        ResultCode::ALL.get(value as usize).copied()
    }

    /// Stable snake_case name, used in JSON output and reports.
    pub fn name(self) -> &'static str {
        match self {
            ResultCode::Ok => "ok",
            ResultCode::Exists => "exists",
            ResultCode::ExistsWithDifferentFields => "exists_with_different_fields",
            ResultCode::InsufficientFunds => "insufficient_funds",
            ResultCode::DebitAccountNotFound => "debit_account_not_found",
            ResultCode::CreditAccountNotFound => "credit_account_not_found",
            ResultCode::LedgerMismatch => "ledger_mismatch",
            ResultCode::SameAccount => "same_account",
            ResultCode::ZeroAmount => "zero_amount",
            ResultCode::Overflow => "overflow",
            ResultCode::IdExpired => "id_expired",
            ResultCode::CrossPartitionUnsupported => "cross_partition_unsupported",
            ResultCode::InvalidFlags => "invalid_flags",
            ResultCode::ReservedId => "reserved_id",
            ResultCode::AccountNotFound => "account_not_found",
            ResultCode::InvalidLedger => "invalid_ledger",
            ResultCode::IdFromFuture => "id_from_future",
        }
    }
}

/// Per-item result. Wire layout, 16 bytes: `index u32 | code u16 | flags u16 | seq u64`.
/// `seq` is the partition sequence of the event that recorded the outcome (the original one for a
/// replayed retry), so a client can ask any replica for a read at least that fresh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ItemResult {
    pub index: u32,
    pub code: ResultCode,
    pub flags: u16,
    pub seq: u64,
}

impl ItemResult {
    pub const WIRE_BYTES: usize = 16;

    pub fn is_replayed(&self) -> bool {
        self.flags & RESULT_FLAG_REPLAYED != 0
    }

    pub fn encode_into(&self, out: &mut [u8]) {
        let out = &mut out[..Self::WIRE_BYTES];
        out[0..4].copy_from_slice(&self.index.to_le_bytes());
        out[4..6].copy_from_slice(&(self.code as u16).to_le_bytes());
        out[6..8].copy_from_slice(&self.flags.to_le_bytes());
        out[8..16].copy_from_slice(&self.seq.to_le_bytes());
    }

    /// `None` when the code is unknown to this version.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let b = &bytes[..Self::WIRE_BYTES];
        Some(ItemResult {
            index: le_u32(&b[0..4]),
            code: ResultCode::from_u16(u16::from_le_bytes([b[4], b[5]]))?,
            flags: u16::from_le_bytes([b[6], b[7]]),
            seq: le_u64(&b[8..16]),
        })
    }
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b.try_into().expect("caller slices exactly 4 bytes"))
}
fn le_u64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b.try_into().expect("caller slices exactly 8 bytes"))
}
fn le_u128(b: &[u8]) -> u128 {
    u128::from_le_bytes(b.try_into().expect("caller slices exactly 16 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_round_trip() {
        let t = Transfer {
            id: u128::MAX - 3,
            debit_account_id: 7,
            credit_account_id: 9,
            amount: 100,
            ledger: 840,
            flags: 0,
            user_data: 42,
        };
        let mut buf = [0u8; Transfer::WIRE_BYTES];
        t.encode_into(&mut buf);
        assert_eq!(Transfer::decode(&buf), t);
        let a = Account {
            id: 1,
            ledger: 978,
            flags: ACCOUNT_FLAG_EXTERNAL,
            user_data: 5,
            balance: -12,
            created_seq: 3,
            last_seq: 8,
        };
        let mut buf = [0u8; Account::WIRE_BYTES];
        a.encode_into(&mut buf);
        assert_eq!(Account::decode(&buf), a);
        let r = ItemResult { index: 3, code: ResultCode::InsufficientFunds, flags: RESULT_FLAG_REPLAYED, seq: 99 };
        let mut buf = [0u8; ItemResult::WIRE_BYTES];
        r.encode_into(&mut buf);
        assert_eq!(ItemResult::decode(&buf), Some(r));
        buf[4] = 200;
        assert_eq!(ItemResult::decode(&buf), None, "unknown codes are refused, not guessed");
    }

    #[test]
    fn result_codes_match_their_numbers() {
        for (number, code) in ResultCode::ALL.iter().enumerate() {
            assert_eq!(*code as u16 as usize, number);
            assert_eq!(ResultCode::from_u16(number as u16), Some(*code));
        }
    }

    #[test]
    fn time_ordered_ids_carry_their_timestamp() {
        let id = transfer_id_from_parts(1_764_000_000_000, u128::MAX);
        assert_eq!(transfer_id_timestamp_ms(id), 1_764_000_000_000);
        assert_eq!(transfer_id_timestamp_ms(42), 0);
    }

    #[test]
    fn partitions_are_stable_and_in_range() {
        for id in 1..1000u64 {
            let p = partition_of(id, 64);
            assert!(p < 64);
            assert_eq!(p, partition_of(id, 64));
        }
        assert_eq!(partition_of(12345, 1), 0);
    }
}

/// What a history entry records about one account.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HistoryKind {
    AccountCreated = 1,
    TransferPosted = 2,
    TransferRejected = 3,
}

impl HistoryKind {
    pub fn from_u8(value: u8) -> Option<HistoryKind> {
        match value {
            1 => Some(HistoryKind::AccountCreated),
            2 => Some(HistoryKind::TransferPosted),
            3 => Some(HistoryKind::TransferRejected),
            _ => None,
        }
    }
}

/// One event of an account's history, with the balance right after it: the answer to "why is this
/// balance what it is". Wire layout, 96 bytes:
/// `seq u64 | timestamp_ns u64 | kind u8 | reserved u8 | code u16 | reserved u32 | transfer (64) |
/// balance_after i64`. For `AccountCreated` the transfer is all zeros.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    pub seq: u64,
    pub timestamp_ns: u64,
    pub kind: HistoryKind,
    pub code: ResultCode,
    pub transfer: Transfer,
    pub balance_after: i64,
}

impl HistoryEntry {
    pub const WIRE_BYTES: usize = 96;

    pub fn encode_into(&self, out: &mut [u8]) {
        let out = &mut out[..Self::WIRE_BYTES];
        out[0..8].copy_from_slice(&self.seq.to_le_bytes());
        out[8..16].copy_from_slice(&self.timestamp_ns.to_le_bytes());
        out[16] = self.kind as u8;
        out[17] = 0;
        out[18..20].copy_from_slice(&(self.code as u16).to_le_bytes());
        out[20..24].copy_from_slice(&[0; 4]);
        self.transfer.encode_into(&mut out[24..88]);
        out[88..96].copy_from_slice(&self.balance_after.to_le_bytes());
    }

    /// `None` when the kind or code is unknown to this version.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let b = &bytes[..Self::WIRE_BYTES];
        Some(HistoryEntry {
            seq: le_u64(&b[0..8]),
            timestamp_ns: le_u64(&b[8..16]),
            kind: HistoryKind::from_u8(b[16])?,
            code: ResultCode::from_u16(u16::from_le_bytes([b[18], b[19]]))?,
            transfer: Transfer::decode(&b[24..88]),
            balance_after: le_u64(&b[88..96]) as i64,
        })
    }
}
