//! The fault-injecting proxy used by the multi-process tests: it forwards bytes both ways, a
//! block cuts live connections and refuses new ones, unblocking forwards again, and dropping it
//! never hangs.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use support::proxy::FaultProxy;

/// Longest any single read in these tests may wait.
const READ_TIMEOUT_MS: u64 = 1_000;

/// Echoes every connection until its peer closes; the thread lives as long as the test binary.
fn start_echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buffer = [0u8; 4096];
                while let Ok(n @ 1..) = stream.read(&mut buffer) {
                    if stream.write_all(&buffer[..n]).is_err() {
                        break;
                    }
                }
                let _ = stream.shutdown(Shutdown::Both);
            });
        }
    });
    address
}

fn connect(address: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&address, Duration::from_millis(READ_TIMEOUT_MS)).unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(READ_TIMEOUT_MS))).unwrap();
    stream
}

fn round_trip(stream: &mut TcpStream, message: &[u8]) {
    stream.write_all(message).unwrap();
    let mut echoed = vec![0u8; message.len()];
    stream.read_exact(&mut echoed).unwrap();
    assert_eq!(echoed, message);
}

/// Asserts the link is dead: the read ends (EOF or reset) rather than timing out or echoing.
fn assert_link_dead(stream: &mut TcpStream) {
    let started = Instant::now();
    let mut buffer = [0u8; 64];
    match stream.read(&mut buffer) {
        Ok(0) => {}
        Ok(n) => panic!("a dead link delivered {n} bytes"),
        Err(e) => assert!(!matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut), "read timed out: {e}"),
    }
    assert!(started.elapsed() < Duration::from_millis(READ_TIMEOUT_MS), "the cut was seen late");
}

#[test]
fn bytes_round_trip_through_the_proxy_and_are_counted() {
    let proxy = FaultProxy::start(start_echo_server()).unwrap();
    assert!(!proxy.is_blocked());
    let mut stream = connect(proxy.address());
    round_trip(&mut stream, b"hello");
    let large: Vec<u8> = (0..64 * 1024u32).map(|i| i as u8).collect();
    round_trip(&mut stream, &large);
    let expected = 2 * (5 + large.len() as u64);
    // The proxy counts a chunk after writing it, so the count may trail the echo briefly.
    let deadline = Instant::now() + Duration::from_millis(READ_TIMEOUT_MS);
    while proxy.bytes_forwarded() < expected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(proxy.bytes_forwarded(), expected);
}

#[test]
fn a_block_cuts_live_links_and_refuses_new_ones_until_unblocked() {
    let proxy = FaultProxy::start(start_echo_server()).unwrap();
    let mut live = connect(proxy.address());
    round_trip(&mut live, b"before");

    proxy.set_blocked(true);
    assert!(proxy.is_blocked());
    assert_link_dead(&mut live);
    let mut refused = connect(proxy.address());
    let _ = refused.write_all(b"anyone?");
    assert_link_dead(&mut refused);

    proxy.set_blocked(false);
    assert!(!proxy.is_blocked());
    let mut again = connect(proxy.address());
    round_trip(&mut again, b"after");
}

#[test]
fn an_unreachable_target_closes_the_client() {
    let target = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let proxy = FaultProxy::start(target).unwrap();
    let mut stream = connect(proxy.address());
    assert_link_dead(&mut stream);
    assert_eq!(proxy.bytes_forwarded(), 0);
}

#[test]
fn dropping_the_proxy_is_prompt_and_cuts_its_links() {
    let proxy = FaultProxy::start(start_echo_server()).unwrap();
    let address = proxy.address();
    let mut live = connect(address);
    round_trip(&mut live, b"ping");
    let started = Instant::now();
    drop(proxy);
    assert!(started.elapsed() < Duration::from_secs(2), "drop took {:?}", started.elapsed());
    assert_link_dead(&mut live);
    assert!(TcpStream::connect_timeout(&address, Duration::from_millis(READ_TIMEOUT_MS)).is_err(), "still listening");
}
