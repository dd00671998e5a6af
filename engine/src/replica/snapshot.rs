//! A partition image as one checksummed byte string: the data of a Raft snapshot, built from
//! [`PartitionState::export_rows`](crate::partition::PartitionState::export_rows) and turned back into
//! rows for [`PartitionState::restore_rows`](crate::partition::PartitionState::restore_rows). Pure.
//!
//! Layout, little-endian:
//!
//! | offset      | size   | field                                                        |
//! |------------:|-------:|--------------------------------------------------------------|
//! | 0           | 4      | magic, the bytes `WSNP`                                      |
//! | 4           | 4      | format version ([`SNAPSHOT_FORMAT_VERSION`])                 |
//! | 8           | 4      | partition                                                    |
//! | 12          | 8      | last_seq                                                     |
//! | 20          | 8      | last_timestamp_ns                                            |
//! | 28          | 1      | zero                                                         |
//! | 29          | 8      | arrival number of the first in-memory id entry               |
//! | 37          | 8      | account count `a`                                            |
//! | 45          | 56 a   | accounts, `Account` wire layout                              |
//! | 45 + 56 a   | 8      | in-memory id entry count `i`                                 |
//! | 53 + 56 a   | 50 i   | in-memory id entries in arrival order, the state store's layout |
//! | ...         | 8      | id-index run count `r`, then per run: first arrival u64,     |
//! |             |        | entry count `n` u64, `n` entries (50 B each) in arrival order |
//! | end - 8     | 8      | xxh3-64 of every byte before it                              |
//!
//! Version 2 carries the id-index runs (the idempotency window in time); version 1 images (count
//! bound and watermark) are refused.
//!
//! The decoder checks, in this order: length and magic, checksum, version, then the fields. Any change
//! to the bytes therefore reports `Checksum` (or `BadMagic`), including bytes appended after the image:
//! the trailer is then no longer the checksum. Counts are checked against the bytes left before
//! anything is reserved, so no input makes the decoder panic or allocate beyond the image's size.
//! The rows are not judged here (foreign or duplicate accounts): `restore_rows` does that.

use net::types::Account;
use thiserror::Error;
use xxhash_rust::xxh3::xxh3_64;

use crate::idempotency::{ColdImage, IdEntry, IdImage};
use crate::partition::PartitionRows;
use crate::store::{decode_id_entry, encode_id_entry, ID_ENTRY_BYTES};

pub const SNAPSHOT_MAGIC: [u8; 4] = *b"WSNP";
pub const SNAPSHOT_FORMAT_VERSION: u32 = 2;

/// Magic through the account count.
const HEADER_BYTES: usize = 45;
const ACCOUNTS_AT: usize = HEADER_BYTES;
const COUNT_BYTES: usize = 8;
const CHECKSUM_BYTES: usize = 8;
/// An image with no accounts and no ids: the header, the id count, the run count and the checksum.
const IMAGE_BYTES_MIN: usize = HEADER_BYTES + 2 * COUNT_BYTES + CHECKSUM_BYTES;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SnapshotError {
    #[error("not a partition image (bad magic)")]
    BadMagic,
    #[error("partition image format version {0}, this build reads {SNAPSHOT_FORMAT_VERSION}")]
    UnsupportedVersion(u32),
    #[error("partition image checksum mismatch")]
    Checksum,
    #[error("partition image ends inside a field")]
    Truncated,
    #[error("bytes after the partition image's last field")]
    TrailingBytes,
    #[error("invalid partition image: {0}")]
    Invalid(&'static str),
}

pub fn encode_partition_image(partition: u32, rows: &PartitionRows) -> Vec<u8> {
    let runs: Vec<(u64, Vec<IdEntry>)> = rows.ids.cold.iter().map(|run| (run.first_arrival(), run.entries())).collect();
    let run_bytes: usize = runs.iter().map(|(_, entries)| 16 + ID_ENTRY_BYTES * entries.len()).sum();
    let bytes_total =
        IMAGE_BYTES_MIN + Account::WIRE_BYTES * rows.accounts.len() + ID_ENTRY_BYTES * rows.ids.hot.len() + run_bytes;
    let mut out = Vec::with_capacity(bytes_total);
    out.extend_from_slice(&SNAPSHOT_MAGIC);
    out.extend_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&partition.to_le_bytes());
    out.extend_from_slice(&rows.last_seq.to_le_bytes());
    out.extend_from_slice(&rows.last_timestamp_ns.to_le_bytes());
    out.push(0);
    out.extend_from_slice(&rows.ids.head_arrival.to_le_bytes());
    out.extend_from_slice(&(rows.accounts.len() as u64).to_le_bytes());
    for account in &rows.accounts {
        let start = out.len();
        out.resize(start + Account::WIRE_BYTES, 0);
        account.encode_into(&mut out[start..]);
    }
    out.extend_from_slice(&(rows.ids.hot.len() as u64).to_le_bytes());
    for entry in &rows.ids.hot {
        out.extend_from_slice(&encode_id_entry(entry));
    }
    out.extend_from_slice(&(runs.len() as u64).to_le_bytes());
    for (first_arrival, entries) in &runs {
        out.extend_from_slice(&first_arrival.to_le_bytes());
        out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
        for entry in entries {
            out.extend_from_slice(&encode_id_entry(entry));
        }
    }
    let checksum = xxh3_64(&out);
    out.extend_from_slice(&checksum.to_le_bytes());
    assert_eq!(out.len(), bytes_total, "partition image size");
    out
}

pub fn decode_partition_image(bytes: &[u8]) -> Result<(u32, PartitionRows), SnapshotError> {
    if bytes.len() < SNAPSHOT_MAGIC.len() {
        return Err(SnapshotError::Truncated);
    }
    if bytes[..SNAPSHOT_MAGIC.len()] != SNAPSHOT_MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    if bytes.len() < IMAGE_BYTES_MIN {
        return Err(SnapshotError::Truncated);
    }
    let (body, checksum) = bytes.split_at(bytes.len() - CHECKSUM_BYTES);
    if xxh3_64(body) != le_u64(checksum) {
        return Err(SnapshotError::Checksum);
    }
    let version = u32::from_le_bytes(body[4..8].try_into().expect("4 bytes"));
    if version != SNAPSHOT_FORMAT_VERSION {
        return Err(SnapshotError::UnsupportedVersion(version));
    }
    let partition = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes"));
    let last_seq = le_u64(&body[12..20]);
    let last_timestamp_ns = le_u64(&body[20..28]);
    if body[28] != 0 {
        return Err(SnapshotError::Invalid("reserved byte is not zero"));
    }
    let head_arrival = le_u64(&body[29..37]);

    // The id count sits after the accounts, so it must fit too.
    let accounts_bytes =
        counted_bytes(le_u64(&body[37..45]), Account::WIRE_BYTES, body.len() - ACCOUNTS_AT, COUNT_BYTES)?;
    let accounts: Vec<Account> = body[ACCOUNTS_AT..ACCOUNTS_AT + accounts_bytes]
        .chunks_exact(Account::WIRE_BYTES)
        .map(Account::decode)
        .collect();

    let ids_count_at = ACCOUNTS_AT + accounts_bytes;
    let ids_at = ids_count_at + COUNT_BYTES;
    let ids_bytes =
        counted_bytes(le_u64(&body[ids_count_at..ids_at]), ID_ENTRY_BYTES, body.len() - ids_at, COUNT_BYTES)?;
    let hot = decode_entries(&body[ids_at..ids_at + ids_bytes])?;
    let mut at = ids_at + ids_bytes;
    let runs_count = le_u64(&body[at..at + COUNT_BYTES]);
    at += COUNT_BYTES;
    let mut cold = Vec::new();
    for _ in 0..runs_count {
        if body.len() - at < 16 {
            return Err(SnapshotError::Truncated);
        }
        let first_arrival = le_u64(&body[at..at + 8]);
        let bytes = counted_bytes(le_u64(&body[at + 8..at + 16]), ID_ENTRY_BYTES, body.len() - at - 16, 0)?;
        let entries = decode_entries(&body[at + 16..at + 16 + bytes])?;
        at += 16 + bytes;
        cold.push(ColdImage::Entries { first_arrival, entries });
    }
    if at != body.len() {
        return Err(SnapshotError::TrailingBytes);
    }
    let ids = IdImage { cold, head_arrival, hot };
    Ok((partition, PartitionRows { last_seq, last_timestamp_ns, accounts, ids }))
}

fn decode_entries(bytes: &[u8]) -> Result<Vec<IdEntry>, SnapshotError> {
    bytes
        .chunks_exact(ID_ENTRY_BYTES)
        .map(|chunk| decode_id_entry(chunk).ok_or(SnapshotError::Invalid("id entry with an unknown result code")))
        .collect()
}

/// Bytes of `count` items of `item_bytes`, provided they and `after_bytes` more fit in `available`.
fn counted_bytes(count: u64, item_bytes: usize, available: usize, after_bytes: usize) -> Result<usize, SnapshotError> {
    let room = available.checked_sub(after_bytes).ok_or(SnapshotError::Truncated)?;
    match usize::try_from(count).ok().and_then(|count| count.checked_mul(item_bytes)) {
        Some(bytes) if bytes <= room => Ok(bytes),
        _ => Err(SnapshotError::Truncated),
    }
}

fn le_u64(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes.try_into().expect("caller slices exactly 8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventBuffer;
    use crate::idempotency::IdEntry;
    use crate::partition::{PartitionConfig, PartitionState};
    use net::types::{transfer_id_from_parts, CreateAccount, ResultCode, Transfer, ACCOUNT_FLAG_EXTERNAL};
    use proptest::prelude::*;

    const USD: u32 = 840;
    const MS: u64 = 1_000_000;

    fn arb_account() -> impl Strategy<Value = Account> {
        (any::<u64>(), any::<u32>(), any::<u32>(), any::<u128>(), any::<i64>(), any::<u64>(), any::<u64>()).prop_map(
            |(id, ledger, flags, user_data, balance, created_seq, last_seq)| Account {
                id,
                ledger,
                flags,
                user_data,
                balance,
                created_seq,
                last_seq,
            },
        )
    }

    fn arb_id_entry() -> impl Strategy<Value = IdEntry> {
        let code = (0..ResultCode::ALL.len()).prop_map(|i| ResultCode::ALL[i]);
        (any::<u128>(), any::<u128>(), code, any::<u64>(), any::<u64>())
            .prop_map(|(id, fingerprint, code, seq, recorded_ns)| IdEntry { id, fingerprint, code, seq, recorded_ns })
    }

    fn arb_rows() -> impl Strategy<Value = PartitionRows> {
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            prop::collection::vec(arb_account(), 0..12),
            prop::collection::vec(arb_id_entry(), 0..12),
            prop::collection::vec((any::<u64>(), prop::collection::vec(arb_id_entry(), 0..4)), 0..3),
        )
            .prop_map(|(last_seq, last_timestamp_ns, head_arrival, accounts, hot, runs)| PartitionRows {
                last_seq,
                last_timestamp_ns,
                accounts,
                ids: IdImage {
                    cold: runs
                        .into_iter()
                        .map(|(first_arrival, entries)| ColdImage::Entries { first_arrival, entries })
                        .collect(),
                    head_arrival,
                    hot,
                },
            })
    }

    #[derive(Clone, Debug)]
    enum Step {
        CreateAccount(u64),
        Transfer {
            debit: u64,
            credit: u64,
            amount: u64,
            entropy: u128,
        },
        /// Lets time pass, so ids expire and id-index runs are dropped.
        Wait(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (1..10u64).prop_map(Step::CreateAccount),
            (1..10u64, 1..10u64, 0..500u64, any::<u128>())
                .prop_map(|(debit, credit, amount, entropy)| Step::Transfer { debit, credit, amount, entropy }),
            (1..200u64).prop_map(Step::Wait),
        ]
    }

    /// A partition driven through its leader path: account 1 is external (the funding source).
    fn run(steps: &[Step]) -> PartitionState {
        let config = PartitionConfig {
            partition: 0,
            partitions: 1,
            idempotency_window_ms: 50,
            idempotency_ids_max: 8,
            id_hash_key: 7,
        };
        let mut state = PartitionState::new(config);
        let mut events = EventBuffer::new();
        let mut results = Vec::new();
        let mut now_ns = 1_000 * MS;
        for step in steps {
            match *step {
                Step::CreateAccount(id) => {
                    let flags = if id == 1 { ACCOUNT_FLAG_EXTERNAL } else { 0 };
                    let account = CreateAccount { id, ledger: USD, flags, user_data: id.into() };
                    state.execute_create_accounts(now_ns, &[account], &mut events, &mut results);
                }
                Step::Transfer { debit, credit, amount, entropy } => {
                    let id = transfer_id_from_parts(now_ns / MS, entropy);
                    let transfer = Transfer {
                        id,
                        debit_account_id: debit,
                        credit_account_id: credit,
                        amount,
                        ledger: USD,
                        flags: 0,
                        user_data: 0,
                    };
                    state.execute_transfers(now_ns, &[transfer], &mut events, &mut results);
                }
                Step::Wait(ms) => now_ns += ms * MS,
            }
            events.clear();
            now_ns += MS;
        }
        state
    }

    #[test]
    fn crafted_images_with_valid_checksums_are_typed_errors() {
        let rows = PartitionRows {
            last_seq: 9,
            last_timestamp_ns: 10,
            accounts: vec![Account { id: 5, ledger: USD, ..Account::default() }],
            ids: IdImage {
                cold: Vec::new(),
                head_arrival: 3,
                hot: vec![IdEntry { id: 1, fingerprint: 2, code: ResultCode::Ok, seq: 3, recorded_ns: 4 }],
            },
        };
        let image = encode_partition_image(7, &rows);
        assert_eq!(decode_partition_image(&image), Ok((7, rows)));
        // Rewrites the body with `edit`, then seals it with a fresh checksum.
        let resealed = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut body = image[..image.len() - CHECKSUM_BYTES].to_vec();
            edit(&mut body);
            let checksum = xxh3_64(&body);
            body.extend_from_slice(&checksum.to_le_bytes());
            decode_partition_image(&body)
        };
        assert_eq!(resealed(&|body| body[4] = 1), Err(SnapshotError::UnsupportedVersion(1)), "format 1 is refused");
        assert!(matches!(resealed(&|body| body[28] = 2), Err(SnapshotError::Invalid(_))));
        assert_eq!(resealed(&|body| body.push(0)), Err(SnapshotError::TrailingBytes));
        assert_eq!(resealed(&|body| body.truncate(body.len() - 1)), Err(SnapshotError::Truncated));
        assert_eq!(
            resealed(&|body| body[37..45].copy_from_slice(&u64::MAX.to_le_bytes())),
            Err(SnapshotError::Truncated)
        );
        assert_eq!(resealed(&|body| body[37..45].copy_from_slice(&2u64.to_le_bytes())), Err(SnapshotError::Truncated));
        let ids_count_at = HEADER_BYTES + Account::WIRE_BYTES;
        let ids_count = ids_count_at..ids_count_at + COUNT_BYTES;
        assert_eq!(
            resealed(&|body| body[ids_count.clone()].copy_from_slice(&(u64::MAX / 2).to_le_bytes())),
            Err(SnapshotError::Truncated)
        );
        let code_at = ids_count_at + COUNT_BYTES + 32;
        assert!(matches!(
            resealed(&|body| body[code_at..code_at + 2].copy_from_slice(&999u16.to_le_bytes())),
            Err(SnapshotError::Invalid(_))
        ));
    }

    #[test]
    fn short_and_foreign_inputs_are_refused() {
        assert_eq!(decode_partition_image(&[]), Err(SnapshotError::Truncated));
        assert_eq!(decode_partition_image(b"WSN"), Err(SnapshotError::Truncated));
        assert_eq!(
            decode_partition_image(b"WALT and more bytes than the minimum image size..........."),
            Err(SnapshotError::BadMagic)
        );
        let image = encode_partition_image(0, &PartitionRows::default());
        assert_eq!(image.len(), IMAGE_BYTES_MIN);
        assert_eq!(decode_partition_image(&image[..IMAGE_BYTES_MIN - 1]), Err(SnapshotError::Truncated));
    }

    proptest! {
        #[test]
        fn arbitrary_rows_round_trip(partition in any::<u32>(), rows in arb_rows()) {
            let image = encode_partition_image(partition, &rows);
            prop_assert_eq!(decode_partition_image(&image), Ok((partition, rows)));
        }

        #[test]
        fn a_live_partition_round_trips_and_restores(steps in prop::collection::vec(step(), 1..60)) {
            let state = run(&steps);
            let rows = state.export_rows();
            let image = encode_partition_image(state.partition(), &rows);
            let (partition, decoded) = decode_partition_image(&image).expect("valid image");
            prop_assert_eq!(partition, state.partition());
            prop_assert_eq!(&decoded, &rows);
            let restored = PartitionState::restore_rows(state.config(), decoded).expect("consistent rows");
            prop_assert_eq!(restored.digest(), state.digest());
        }

        #[test]
        fn every_strict_prefix_is_an_error(rows in arb_rows()) {
            let image = encode_partition_image(1, &rows);
            for len in 0..image.len() {
                prop_assert!(decode_partition_image(&image[..len]).is_err(), "prefix of {} bytes decoded", len);
            }
        }

        #[test]
        fn appended_bytes_fail_the_checksum(rows in arb_rows(), garbage in prop::collection::vec(any::<u8>(), 1..16)) {
            let mut image = encode_partition_image(1, &rows);
            image.extend_from_slice(&garbage);
            prop_assert_eq!(decode_partition_image(&image), Err(SnapshotError::Checksum));
        }

        #[test]
        fn a_flipped_bit_fails_the_checksum(rows in arb_rows(), bit in any::<prop::sample::Index>()) {
            let mut image = encode_partition_image(1, &rows);
            let bit = bit.index(image.len() * 8);
            image[bit / 8] ^= 1 << (bit % 8);
            let in_magic = bit / 8 < SNAPSHOT_MAGIC.len();
            let expected = if in_magic { SnapshotError::BadMagic } else { SnapshotError::Checksum };
            prop_assert_eq!(decode_partition_image(&image), Err(expected));
        }

        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode_partition_image(&bytes);
            // With the magic and a valid checksum the decoder reaches the fields.
            let mut sealed = SNAPSHOT_MAGIC.to_vec();
            sealed.extend_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
            sealed.extend_from_slice(&bytes);
            let checksum = xxh3_64(&sealed);
            sealed.extend_from_slice(&checksum.to_le_bytes());
            let _ = decode_partition_image(&sealed);
        }
    }
}
