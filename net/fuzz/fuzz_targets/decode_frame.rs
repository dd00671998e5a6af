//! Any bytes into the frame decoder: it must never panic, never claim more bytes than it was given,
//! and any frame it accepts must re-encode to exactly the bytes it consumed (the codec is canonical).
#![no_main]

use libfuzzer_sys::fuzz_target;
use net::protocol::{
    encode_raw_frame, encode_request, encode_response, seal_frame, FrameDecoder, Message, HEADER_BYTES,
};

// The fuzzer cannot guess a cluster id nor forge xxh3: the first 16 bytes of the input choose the
// cluster id, and when byte 16 is odd the frame's checksums are recomputed, so the body decoders
// behind them are reached too.
fuzz_target!(|data: &[u8]| {
    if data.len() < 17 {
        return;
    }
    let cluster_id = u128::from_le_bytes(data[..16].try_into().expect("16 bytes"));
    let mut bytes = data[17..].to_vec();
    if data[16] & 1 == 1 {
        seal_frame(&mut bytes);
    }
    let bytes = &bytes[..];
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
