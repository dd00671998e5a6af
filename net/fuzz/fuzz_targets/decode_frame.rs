//! Any bytes into the frame decoder: it must never panic, never claim more bytes than it was given,
//! and any frame it accepts must re-encode to exactly the bytes it consumed (the codec is canonical).
#![no_main]

use libfuzzer_sys::fuzz_target;
use net::protocol::{encode_raw_frame, encode_request, encode_response, FrameDecoder, Message, HEADER_BYTES};

// The fuzzer cannot guess a cluster id; the first 16 bytes of the input choose it, so frames it
// builds can get past the cluster check.
fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let cluster_id = u128::from_le_bytes(data[..16].try_into().expect("16 bytes"));
    let bytes = &data[16..];
    let decoder = FrameDecoder::new(cluster_id);
    let Ok(Some((frame, consumed))) = decoder.decode(bytes) else { return };
    assert!(consumed >= HEADER_BYTES && consumed <= bytes.len());
    let mut again = Vec::new();
    let request_id = frame.header.request_id;
    match &frame.message {
        Message::Request(request) => encode_request(&mut again, cluster_id, request_id, request).expect("re-encodes"),
        Message::Response(response) => encode_response(&mut again, cluster_id, request_id, response).expect("re-encodes"),
        Message::Peer { kind, body } => encode_raw_frame(&mut again, *kind, cluster_id, request_id, body),
    }
    assert_eq!(&again[..], &bytes[..consumed]);
});
