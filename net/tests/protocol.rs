//! Codec tests: round trips of every message, every decode error from a crafted frame, streaming
//! (partial input), and a bounded randomized run standing in for the fuzzer when nightly is absent.

use net::protocol::*;
use net::types::*;
use proptest::prelude::*;

const CLUSTER: u128 = 0xC1A5_7E55_0000_0000_0000_0000_0000_0042;

fn decoder() -> FrameDecoder {
    FrameDecoder::new(CLUSTER)
}

fn arb_code() -> impl Strategy<Value = ResultCode> {
    (0..ResultCode::ALL.len()).prop_map(|i| ResultCode::ALL[i])
}

fn arb_transfer() -> impl Strategy<Value = Transfer> {
    (any::<u128>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u32>(), any::<u32>(), any::<u128>()).prop_map(
        |(id, debit_account_id, credit_account_id, amount, ledger, flags, user_data)| Transfer {
            id,
            debit_account_id,
            credit_account_id,
            amount,
            ledger,
            flags,
            user_data,
        },
    )
}

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

fn arb_request() -> impl Strategy<Value = Request> {
    let create_account = (any::<u64>(), any::<u32>(), any::<u32>(), any::<u128>())
        .prop_map(|(id, ledger, flags, user_data)| CreateAccount { id, ledger, flags, user_data });
    // A minimum sequence per account under at_least; zero under the other levels.
    let lookup = prop_oneof![
        prop::collection::vec(any::<u64>(), 1..40).prop_map(|ids| Request::lookup(Consistency::Linearizable, &ids)),
        prop::collection::vec(any::<u64>(), 1..40).prop_map(|ids| Request::lookup(Consistency::Any, &ids)),
        prop::collection::vec((any::<u64>(), any::<u64>()), 1..40).prop_map(|reads| Request::LookupAccounts {
            consistency: ReadLevel::AtLeast,
            reads: reads.into_iter().map(|(id, at_least_seq)| AccountRead { id, at_least_seq }).collect(),
        }),
    ];
    prop_oneof![
        Just(Request::Ping),
        Just(Request::Status),
        prop::collection::vec(create_account, 1..40).prop_map(Request::CreateAccounts),
        prop::collection::vec(arb_transfer(), 1..40).prop_map(Request::CreateTransfers),
        lookup,
        (any::<u64>(), any::<u64>(), any::<u32>()).prop_map(|(account_id, from_seq, limit)| Request::AccountHistory {
            account_id,
            from_seq,
            limit
        }),
        prop::collection::vec(any::<u128>(), 1..40).prop_map(Request::LookupTransfers),
    ]
}

fn arb_response() -> impl Strategy<Value = Response> {
    let partition = (any::<u32>(), any::<u32>(), any::<[u64; 7]>()).prop_map(|(partition, flags, v)| PartitionStatus {
        partition,
        flags,
        term: v[0],
        leader: v[1],
        last_index: v[2],
        commit_index: v[3],
        applied_index: v[4],
        applied_seq: v[5],
        state_digest: v[6],
    });
    let node = (any::<u64>(), any::<bool>(), any::<[u8; 16]>(), any::<u16>()).prop_map(|(node_id, v6, ip, port)| {
        let ip: std::net::IpAddr = if v6 {
            std::net::Ipv6Addr::from(ip).into()
        } else {
            std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).into()
        };
        NodeAddress { node_id, address: std::net::SocketAddr::new(ip, port) }
    });
    let status = (
        any::<u64>(),
        any::<u32>(),
        any::<u32>(),
        prop::collection::vec(partition, 0..20),
        prop::collection::vec(node, 0..5),
    )
        .prop_map(|(node_id, partitions, shards, partition_states, nodes)| NodeStatus {
            node_id,
            partitions,
            shards,
            partition_states,
            nodes,
        });
    let item = (any::<u32>(), arb_code(), any::<u16>(), any::<u64>())
        .prop_map(|(index, code, flags, seq)| ItemResult { index, code, flags, seq });
    let lookup = prop_oneof![
        arb_account().prop_map(AccountLookup::Found),
        (any::<u64>(), arb_code().prop_filter("not ok", |c| *c != ResultCode::Ok))
            .prop_map(|(id, code)| AccountLookup::NotFound { id, code }),
    ];
    let history_kind = prop_oneof![
        Just(HistoryKind::AccountCreated),
        Just(HistoryKind::TransferPosted),
        Just(HistoryKind::TransferRejected)
    ];
    let entry = (any::<u64>(), any::<u64>(), history_kind, arb_code(), arb_transfer(), any::<i64>()).prop_map(
        |(seq, timestamp_ns, kind, code, transfer, balance_after)| HistoryEntry {
            seq,
            timestamp_ns,
            kind,
            code,
            transfer,
            balance_after,
        },
    );
    let transfer_lookup = prop_oneof![
        (arb_transfer(), arb_code(), any::<u64>(), any::<u64>()).prop_map(|(transfer, code, seq, timestamp_ns)| {
            TransferLookup::Found { transfer, code, seq, timestamp_ns }
        }),
        (any::<u128>(), arb_code(), any::<u64>(), any::<u64>()).prop_map(|(id, code, seq, timestamp_ns)| {
            TransferLookup::FoundWithoutFields { id, code, seq, timestamp_ns }
        }),
        any::<u128>().prop_map(|id| TransferLookup::NotFound { id }),
    ];
    prop_oneof![
        Just(Response::Pong),
        status.prop_map(Response::Status),
        prop::collection::vec(item, 0..40).prop_map(Response::Results),
        prop::collection::vec(lookup, 0..40).prop_map(Response::Accounts),
        (prop::collection::vec(entry, 0..20), any::<Option<u64>>()).prop_map(|(entries, next_from_seq)| {
            Response::History { entries, next_from_seq, account_not_found: false }
        }),
        Just(Response::History { entries: Vec::new(), next_from_seq: None, account_not_found: true }),
        ((0..ErrorCode::ALL.len()), "[a-zA-Zé ]{0,80}")
            .prop_map(|(i, message)| Response::Error { code: ErrorCode::ALL[i], message }),
        prop::collection::vec(transfer_lookup, 0..40).prop_map(Response::Transfers),
    ]
}

proptest! {
    #[test]
    fn every_request_round_trips(request in arb_request(), request_id in any::<u64>()) {
        let mut out = vec![0xAA; 3]; // encoders append: prior content must survive untouched
        encode_request(&mut out, CLUSTER, request_id, &request).expect("within limits");
        prop_assert_eq!(&out[..3], &[0xAA; 3]);
        let (frame, consumed) = decoder().decode(&out[3..]).expect("valid").expect("complete");
        prop_assert_eq!(consumed, out.len() - 3);
        prop_assert_eq!(frame.header.request_id, request_id);
        prop_assert_eq!(frame.message, Message::Request(request));
    }

    #[test]
    fn every_response_round_trips(response in arb_response(), request_id in any::<u64>()) {
        let mut out = Vec::new();
        encode_response(&mut out, CLUSTER, request_id, &response).expect("within limits");
        let (frame, consumed) = decoder().decode(&out).expect("valid").expect("complete");
        prop_assert_eq!(consumed, out.len());
        prop_assert_eq!(frame.header.request_id, request_id);
        prop_assert_eq!(frame.message, Message::Response(response));
    }

    #[test]
    fn peer_frames_carry_their_body(kind in kind::PEER_MIN..=u16::MAX, body in prop::collection::vec(any::<u8>(), 0..300)) {
        let mut out = Vec::new();
        encode_raw_frame(&mut out, kind, CLUSTER, 9, &body);
        let (frame, _) = decoder().decode(&out).expect("valid").expect("complete");
        prop_assert_eq!(frame.message, Message::Peer { kind, body });
    }

    #[test]
    fn every_strict_prefix_needs_more_bytes(request in arb_request()) {
        let mut out = Vec::new();
        encode_request(&mut out, CLUSTER, 1, &request).expect("within limits");
        for end in 0..out.len() {
            prop_assert_eq!(decoder().decode(&out[..end]), Ok(None));
        }
    }
}

#[test]
fn back_to_back_frames_decode_one_at_a_time() {
    let mut out = Vec::new();
    encode_request(&mut out, CLUSTER, 1, &Request::Ping).expect("ok");
    encode_request(&mut out, CLUSTER, 2, &Request::Status).expect("ok");
    let (first, used) = decoder().decode(&out).expect("valid").expect("complete");
    assert_eq!((first.header.request_id, used), (1, HEADER_BYTES));
    let (second, used_2) = decoder().decode(&out[used..]).expect("valid").expect("complete");
    assert_eq!(second.header.request_id, 2);
    assert_eq!(used + used_2, out.len());
}

#[test]
fn largest_batches_fit_in_a_frame() {
    let transfers = vec![Transfer::default(); BATCH_ITEMS_MAX];
    let mut out = Vec::new();
    encode_request(&mut out, CLUSTER, 1, &Request::CreateTransfers(transfers)).expect("max batch fits");
    let entry = HistoryEntry {
        seq: 1,
        timestamp_ns: 2,
        kind: HistoryKind::TransferPosted,
        code: ResultCode::Ok,
        transfer: Transfer::default(),
        balance_after: 3,
    };
    let history =
        Response::History { entries: vec![entry; BATCH_ITEMS_MAX], next_from_seq: Some(7), account_not_found: false };
    out.clear();
    encode_response(&mut out, CLUSTER, 1, &history).expect("max history fits");
    assert!(out.len() <= FRAME_BYTES_MAX);
    let (frame, _) = decoder().decode(&out).expect("valid").expect("complete");
    assert_eq!(frame.message, Message::Response(history));
}

#[test]
fn encoder_refuses_what_the_decoder_would_refuse() {
    let mut out = vec![1, 2, 3];
    let too_many = Request::CreateTransfers(vec![Transfer::default(); BATCH_ITEMS_MAX + 1]);
    assert!(matches!(encode_request(&mut out, CLUSTER, 1, &too_many), Err(ProtocolError::TooManyItems { .. })));
    assert_eq!(encode_request(&mut out, CLUSTER, 1, &Request::CreateAccounts(vec![])), Err(ProtocolError::EmptyBatch));
    let lookup = Request::lookup(Consistency::Any, &[]);
    assert_eq!(encode_request(&mut out, CLUSTER, 1, &lookup), Err(ProtocolError::EmptyBatch));
    let stray =
        Request::LookupAccounts { consistency: ReadLevel::Any, reads: vec![AccountRead { id: 1, at_least_seq: 3 }] };
    assert!(matches!(encode_request(&mut out, CLUSTER, 1, &stray), Err(ProtocolError::Malformed(_))));
    let missing_with_entries =
        Response::History { entries: Vec::new(), next_from_seq: Some(3), account_not_found: true };
    assert!(matches!(encode_response(&mut out, CLUSTER, 1, &missing_with_entries), Err(ProtocolError::Malformed(_))));
    assert_eq!(out, vec![1, 2, 3], "a refused frame leaves the buffer as it was");
}

#[test]
fn long_error_messages_are_truncated_at_a_character_boundary() {
    let message = "é".repeat(ERROR_MESSAGE_BYTES_MAX); // 2 bytes per character
    let mut out = Vec::new();
    encode_response(&mut out, CLUSTER, 1, &Response::error(ErrorCode::Internal, message)).expect("ok");
    let (frame, _) = decoder().decode(&out).expect("valid").expect("complete");
    let Message::Response(Response::Error { message, .. }) = frame.message else { panic!("not an error") };
    assert_eq!(message, "é".repeat(ERROR_MESSAGE_BYTES_MAX / 2));
}

/// A valid frame with a raw body, then `edit` applied to the whole frame (header re-sealed when
/// `reseal`), decoded: the error must be `expected`.
fn crafted(
    kind: u16,
    body: &[u8],
    edit: impl FnOnce(&mut Vec<u8>),
    reseal: bool,
) -> Result<Option<(Frame, usize)>, DecodeError> {
    let mut frame = Vec::new();
    encode_raw_frame(&mut frame, kind, CLUSTER, 77, body);
    edit(&mut frame);
    if reseal {
        seal_header(&mut frame[..HEADER_BYTES]);
    }
    decoder().decode(&frame)
}

fn error_of(result: Result<Option<(Frame, usize)>, DecodeError>) -> (ErrorCode, u64) {
    let error = result.expect_err("crafted frame must be refused");
    (error.error.code(), error.request_id)
}

fn batch_body(count: u32, item_bytes: usize, items: usize) -> Vec<u8> {
    let mut body = count.to_le_bytes().to_vec();
    body.extend_from_slice(&[0; 4]);
    body.resize(8 + item_bytes * items, 0);
    body
}

#[test]
fn every_error_kind_from_a_crafted_frame() {
    use ErrorCode::*;
    let ping = kind::PING;
    // Magic: refused from the first wrong byte, before a whole header arrives.
    assert_eq!(error_of(decoder().decode(b"GET / HTTP/1.1\r\n")), (BadMagic, 0));
    assert_eq!(error_of(crafted(ping, &[], |f| f[0] = b'X', true)), (BadMagic, 0));
    assert_eq!(error_of(crafted(ping, &[], |f| f[10] ^= 1, false)), (HeaderChecksum, 0));
    assert_eq!(error_of(crafted(ping, &[], |f| f[4] = 2, true)), (UnsupportedVersion, 77));
    assert_eq!(error_of(crafted(ping, &[], |f| f[36] = 1, true)), (MalformedFrame, 77));
    assert_eq!(error_of(crafted(ping, &[], |f| f[50] = 1, true)), (MalformedFrame, 77));
    assert_eq!(error_of(crafted(ping, &[], |f| f[8] ^= 1, true)), (WrongClusterId, 77));
    let too_large = (FRAME_BYTES_MAX - HEADER_BYTES + 1) as u32;
    assert_eq!(
        error_of(crafted(ping, &[], |f| f[32..36].copy_from_slice(&too_large.to_le_bytes()), true)),
        (FrameTooLarge, 77)
    );
    assert_eq!(
        error_of(crafted(ping, &[], |f| f[32..36].copy_from_slice(&u32::MAX.to_le_bytes()), true)),
        (FrameTooLarge, 77)
    );
    assert_eq!(error_of(crafted(0x0008, &[], |_| {}, false)), (UnknownMessageKind, 77));
    assert_eq!(error_of(crafted(0x7FFF, &[], |_| {}, false)), (UnknownMessageKind, 77));
    assert_eq!(error_of(crafted(ping, &[1, 2, 3], |f| f[HEADER_BYTES] ^= 1, false)), (BodyChecksum, 77));
    assert_eq!(error_of(crafted(ping, &[0], |_| {}, false)), (MalformedFrame, 77));

    let transfers = kind::CREATE_TRANSFERS;
    let over = BATCH_ITEMS_MAX as u32 + 1;
    assert_eq!(error_of(crafted(transfers, &batch_body(over, 64, over as usize), |_| {}, false)), (TooManyItems, 77));
    assert_eq!(error_of(crafted(transfers, &batch_body(u32::MAX, 64, 1), |_| {}, false)), (TooManyItems, 77));
    assert_eq!(error_of(crafted(transfers, &batch_body(0, 64, 0), |_| {}, false)), (EmptyBatch, 77));
    assert_eq!(error_of(crafted(transfers, &batch_body(2, 64, 1), |_| {}, false)), (MalformedFrame, 77));
    assert_eq!(error_of(crafted(transfers, &batch_body(1, 64, 2), |_| {}, false)), (MalformedFrame, 77));
    assert_eq!(error_of(crafted(transfers, &[1, 0, 0], |_| {}, false)), (MalformedFrame, 77));
    let mut reserved = batch_body(1, 64, 1);
    reserved[5] = 1;
    assert_eq!(error_of(crafted(transfers, &reserved, |_| {}, false)), (MalformedFrame, 77));

    let mut lookup = vec![3, 0, 0, 0, 1, 0, 0, 0];
    lookup.extend_from_slice(&[0; 16]);
    assert_eq!(error_of(crafted(kind::LOOKUP_ACCOUNTS, &lookup, |_| {}, false)), (MalformedFrame, 77));
    lookup[0] = 0;
    lookup[1] = 1; // reserved
    assert_eq!(error_of(crafted(kind::LOOKUP_ACCOUNTS, &lookup, |_| {}, false)), (MalformedFrame, 77));
    lookup[1] = 0;
    assert_eq!(error_of(crafted(kind::LOOKUP_ACCOUNTS, &lookup[..16], |_| {}, false)), (MalformedFrame, 77));

    let mut results = batch_body(1, 16, 1);
    results[12] = 200; // unknown result code
    assert_eq!(error_of(crafted(kind::RESULTS, &results, |_| {}, false)), (MalformedFrame, 77));
    let mut error_body = vec![99, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(error_of(crafted(kind::ERROR, &error_body, |_| {}, false)), (MalformedFrame, 77));
    error_body = vec![1, 0, 2, 0, 0, 0, 0, 0, 0xFF, 0xFE];
    assert_eq!(error_of(crafted(kind::ERROR, &error_body, |_| {}, false)), (MalformedFrame, 77));
}

#[test]
fn a_correct_magic_prefix_waits_for_more() {
    assert_eq!(decoder().decode(b"W"), Ok(None));
    assert_eq!(decoder().decode(b"WAL"), Ok(None));
    assert_eq!(decoder().decode(b""), Ok(None));
    assert_eq!(error_of(decoder().decode(b"WAX")).0, ErrorCode::BadMagic);
}

#[test]
fn a_lower_frame_limit_is_enforced() {
    let small = FrameDecoder { cluster_id: CLUSTER, frame_bytes_max: 1024 };
    let mut out = Vec::new();
    encode_request(&mut out, CLUSTER, 1, &Request::CreateTransfers(vec![Transfer::default(); 20])).expect("ok");
    let error = small.decode(&out[..HEADER_BYTES]).expect_err("over the configured limit");
    assert_eq!(error.error.code(), ErrorCode::FrameTooLarge);
}

/// Small deterministic PRNG (xorshift64*) so the randomized run needs no extra crate and replays.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Stand-in for `cargo fuzz` (see fuzz/): 200k random and mutated frames through the decoder. It
/// must never panic, never claim to consume more than it was given, and be deterministic; a frame it
/// accepts must re-encode to the same bytes (the codec is canonical).
#[test]
fn randomized_frames_never_panic_and_decode_consistently() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut seeds = Vec::new();
    let samples: Vec<Request> = vec![
        Request::Ping,
        Request::CreateTransfers(vec![Transfer { id: 5, amount: 9, ..Transfer::default() }; 3]),
        Request::lookup(Consistency::AtLeast(4), &[1, 2, 3]),
        Request::AccountHistory { account_id: 1, from_seq: 2, limit: 3 },
        Request::LookupTransfers(vec![7, u128::MAX]),
        Request::CreateAccounts(vec![CreateAccount { id: 1, ledger: 840, flags: 0, user_data: 0 }]),
    ];
    for (i, request) in samples.iter().enumerate() {
        let mut out = Vec::new();
        encode_request(&mut out, CLUSTER, i as u64, request).expect("ok");
        seeds.push(out);
    }
    let mut out = Vec::new();
    encode_response(
        &mut out,
        CLUSTER,
        1,
        &Response::Results(vec![ItemResult { index: 0, code: ResultCode::Ok, flags: 0, seq: 1 }]),
    )
    .expect("ok");
    seeds.push(out);

    let mut accepted = 0;
    let mut reencoded = Vec::new();
    for round in 0..200_000 {
        let mut bytes = if round % 4 == 0 {
            let length = rng.below(200);
            (0..length).map(|_| rng.next() as u8).collect::<Vec<u8>>()
        } else {
            seeds[rng.below(seeds.len())].clone()
        };
        if round % 4 != 0 {
            for _ in 0..1 + rng.below(4) {
                match rng.below(5) {
                    0 if !bytes.is_empty() => {
                        let at = rng.below(bytes.len());
                        bytes[at] ^= 1 << rng.below(8);
                    }
                    1 => bytes.truncate(rng.below(bytes.len() + 1)),
                    2 => bytes.push(rng.next() as u8),
                    3 if !bytes.is_empty() => {
                        // Change any byte and recompute both checksums: reaches the body decoders.
                        let at = rng.below(bytes.len());
                        bytes[at] = rng.next() as u8;
                        seal_frame(&mut bytes);
                    }
                    _ if bytes.len() >= HEADER_BYTES => {
                        // Mutate a header field and re-seal, so the checks past the header
                        // checksum are reached too.
                        let at = rng.below(HEADER_BYTES - 8);
                        bytes[at] = rng.next() as u8;
                        seal_header(&mut bytes[..HEADER_BYTES]);
                    }
                    _ => {}
                }
            }
        }
        let first = decoder().decode(&bytes);
        assert_eq!(first, decoder().decode(&bytes), "decoding is deterministic");
        if let Ok(Some((frame, consumed))) = first {
            accepted += 1;
            assert!(consumed <= bytes.len() && consumed >= HEADER_BYTES);
            reencoded.clear();
            match &frame.message {
                Message::Request(request) => encode_request(&mut reencoded, CLUSTER, frame.header.request_id, request),
                Message::Response(response) => {
                    encode_response(&mut reencoded, CLUSTER, frame.header.request_id, response)
                }
                Message::Peer { kind, body } => {
                    encode_raw_frame(&mut reencoded, *kind, CLUSTER, frame.header.request_id, body);
                    Ok(())
                }
            }
            .expect("an accepted frame re-encodes");
            assert_eq!(&reencoded[..], &bytes[..consumed], "the codec is canonical");
        }
    }
    assert!(accepted > 1_000, "the mutations must also exercise the success path ({accepted})");
}

#[test]
fn reserved_bytes_inside_items_are_refused_so_the_codec_stays_canonical() {
    let mut lookup = batch_body(1, AccountLookup::WIRE_BYTES, 1);
    lookup[8] = ResultCode::AccountNotFound as u8;
    lookup[8 + 8 + 40] = 1; // a balance on a not-found item
    assert_eq!(error_of(crafted(kind::ACCOUNTS, &lookup, |_| {}, false)).0, ErrorCode::MalformedFrame);
    let mut history = vec![1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    history.resize(16 + HistoryEntry::WIRE_BYTES, 0);
    history[16 + 16] = HistoryKind::TransferPosted as u8;
    assert!(crafted(kind::HISTORY, &history, |_| {}, false).is_ok());
    history[16 + 21] = 1;
    assert_eq!(error_of(crafted(kind::HISTORY, &history, |_| {}, false)).0, ErrorCode::MalformedFrame);
}

#[test]
fn a_transfer_found_without_fields_carries_only_its_id() {
    // found = 2: outcome, seq and time, and a transfer that is all zero but its id.
    let mut body = batch_body(1, TransferLookup::WIRE_BYTES, 1);
    let item = 8;
    body[item] = 2;
    body[item + 2] = ResultCode::InsufficientFunds as u8;
    body[item + 8] = 7; // seq
    body[item + 16] = 9; // timestamp_ns
    body[item + 32] = 5; // transfer id
    let Ok(Some((Frame { message: Message::Response(Response::Transfers(found)), .. }, _))) =
        crafted(kind::TRANSFERS, &body, |_| {}, false)
    else {
        panic!("a found-without-fields item decodes")
    };
    assert_eq!(
        found,
        vec![TransferLookup::FoundWithoutFields {
            id: 5,
            code: ResultCode::InsufficientFunds,
            seq: 7,
            timestamp_ns: 9
        }]
    );
    // A field beside the id would not re-encode the same: refused.
    body[item + 48] = 1; // debit account
    assert_eq!(error_of(crafted(kind::TRANSFERS, &body, |_| {}, false)).0, ErrorCode::MalformedFrame);
    // So is a found kind the protocol does not have.
    body[item + 48] = 0;
    body[item] = 3;
    assert_eq!(error_of(crafted(kind::TRANSFERS, &body, |_| {}, false)).0, ErrorCode::MalformedFrame);
}

/// The lookup body a client in another language writes: `consistency u8 | reserved [3] | count u32 |
/// count x {id u64 | at_least_seq u64}`.
fn lookup_body(consistency: u8, reads: &[(u64, u64)]) -> Vec<u8> {
    let mut body = vec![consistency, 0, 0, 0];
    body.extend_from_slice(&(reads.len() as u32).to_le_bytes());
    for (id, seq) in reads {
        body.extend_from_slice(&id.to_le_bytes());
        body.extend_from_slice(&seq.to_le_bytes());
    }
    body
}

/// Issue 16, items 5 and 6: each account of a lookup carries its own minimum sequence (sequences are
/// per partition); the minimum is read only under at_least, and a non-zero one under linearizable or
/// any is refused MalformedFrame with a message that names the rule.
#[test]
fn each_looked_up_account_carries_its_own_minimum_sequence_read_only_under_at_least() {
    let decoded = |body: &[u8]| match crafted(kind::LOOKUP_ACCOUNTS, body, |_| {}, false) {
        Ok(Some((frame, _))) => frame.message,
        other => panic!("{other:?}"),
    };
    let at_least = decoded(&lookup_body(1, &[(5, 17), (6, 0), (7, 3)]));
    let expected = Request::LookupAccounts {
        consistency: ReadLevel::AtLeast,
        reads: vec![
            AccountRead { id: 5, at_least_seq: 17 },
            AccountRead { id: 6, at_least_seq: 0 },
            AccountRead { id: 7, at_least_seq: 3 },
        ],
    };
    assert_eq!(at_least, Message::Request(expected.clone()));
    let mut out = Vec::new();
    encode_request(&mut out, CLUSTER, 77, &expected).expect("encodes");
    assert_eq!(&out[HEADER_BYTES..], &lookup_body(1, &[(5, 17), (6, 0), (7, 3)])[..], "byte for byte as documented");
    assert_eq!(decoded(&lookup_body(0, &[(5, 0)])), Message::Request(Request::lookup(Consistency::Linearizable, &[5])));
    assert_eq!(decoded(&lookup_body(2, &[(5, 0)])), Message::Request(Request::lookup(Consistency::Any, &[5])));
    for level in [0u8, 2] {
        let error = crafted(kind::LOOKUP_ACCOUNTS, &lookup_body(level, &[(5, 0), (6, 9)]), |_| {}, false)
            .expect_err("a minimum outside at_least is refused");
        assert_eq!((error.error.code(), error.request_id), (ErrorCode::MalformedFrame, 77));
        assert!(error.error.to_string().contains("at_least_seq must be 0 unless consistency is 1"), "{}", error.error);
    }
}

/// Issue 16, item 9: a history limit is the most entries wanted: 0 and anything above the largest
/// page ask for the largest page; no limit is refused or closes the connection. A missing account is
/// said so by flag bit 1, with no entries and no cursor.
#[test]
fn every_history_limit_is_accepted_and_a_missing_account_is_flagged() {
    for limit in [0u32, 1, HISTORY_LIMIT_MAX, HISTORY_LIMIT_MAX + 1, u32::MAX] {
        let mut body = 9u64.to_le_bytes().to_vec();
        body.extend_from_slice(&0u64.to_le_bytes());
        body.extend_from_slice(&limit.to_le_bytes());
        body.extend_from_slice(&[0; 4]);
        let (frame, _) = crafted(kind::ACCOUNT_HISTORY, &body, |_| {}, false).expect("accepted").expect("whole");
        assert_eq!(frame.message, Message::Request(Request::AccountHistory { account_id: 9, from_seq: 0, limit }));
    }
    assert_eq!(history_page_entries(0), HISTORY_LIMIT_MAX as usize);
    assert_eq!(history_page_entries(1), 1);
    assert_eq!(history_page_entries(HISTORY_LIMIT_MAX), HISTORY_LIMIT_MAX as usize);
    assert_eq!(history_page_entries(u32::MAX), HISTORY_LIMIT_MAX as usize);

    let missing = [0u8, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let (frame, _) = crafted(kind::HISTORY, &missing, |_| {}, false).expect("accepted").expect("whole");
    assert_eq!(
        frame.message,
        Message::Response(Response::History { entries: Vec::new(), next_from_seq: None, account_not_found: true })
    );
    // Not-found with a cursor, or with both flags, is not a canonical answer.
    let mut with_cursor = missing;
    with_cursor[8] = 1;
    assert_eq!(error_of(crafted(kind::HISTORY, &with_cursor, |_| {}, false)).0, ErrorCode::MalformedFrame);
    let mut both = missing;
    both[4] = 3;
    assert_eq!(error_of(crafted(kind::HISTORY, &both, |_| {}, false)).0, ErrorCode::MalformedFrame);
}

/// Issue 16, item 10: a member's IPv4 address takes the first 4 of the 16 ip bytes, the rest zero;
/// family 4 with anything in the other 12 is refused.
#[test]
fn an_ipv4_node_address_fills_the_first_four_ip_bytes() {
    let status = Response::Status(NodeStatus {
        node_id: 2,
        partitions: 1,
        shards: 1,
        partition_states: Vec::new(),
        nodes: vec![NodeAddress { node_id: 3, address: "10.1.2.3:7401".parse().unwrap() }],
    });
    let mut out = Vec::new();
    encode_response(&mut out, CLUSTER, 1, &status).expect("encodes");
    let record = &out[HEADER_BYTES + 24..];
    assert_eq!(record.len(), NodeAddress::WIRE_BYTES);
    assert_eq!(&record[0..8], &3u64.to_le_bytes());
    assert_eq!(&record[8..10], &7401u16.to_le_bytes());
    assert_eq!(record[10], 4, "family");
    assert_eq!(&record[11..16], &[0; 5], "reserved");
    assert_eq!(&record[16..20], &[10, 1, 2, 3]);
    assert_eq!(&record[20..32], &[0; 12]);
    let mut body = out[HEADER_BYTES..].to_vec();
    body[24 + 31] = 1;
    assert_eq!(error_of(crafted(kind::STATUS_RESPONSE, &body, |_| {}, false)).0, ErrorCode::MalformedFrame);
}
