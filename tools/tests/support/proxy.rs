//! A TCP proxy on loopback that can cut the link it carries, so tests can partition real
//! processes from each other without touching their code.
//!
//! Every accepted connection is forwarded to one target by two copy threads (one per direction).
//! Blocking shuts down every forwarded socket at once and closes new connections as soon as they
//! are accepted: both peers see the link die, as with a partition followed by a connection reset.
//! Dropping the proxy stops every thread it started and joins them.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a forwarded connection may take to reach the target before the client is closed.
const TARGET_CONNECT_TIMEOUT_MS: u64 = 1_000;
/// How long `Drop` may take to reach the proxy's own listener to wake the accept thread.
const WAKE_CONNECT_TIMEOUT_MS: u64 = 1_000;
const COPY_BUFFER_BYTES: usize = 16 * 1024;

pub struct FaultProxy {
    address: SocketAddr,
    shared: Arc<Shared>,
    accept_thread: Option<JoinHandle<()>>,
}

struct Shared {
    target: SocketAddr,
    blocked: AtomicBool,
    stopping: AtomicBool,
    bytes_forwarded: AtomicU64,
    /// Both sockets of every live forwarded connection, so blocking and dropping can cut them.
    links: Mutex<Vec<Link>>,
    /// One thread per forwarded connection; finished ones are reaped on each accept.
    link_threads: Mutex<Vec<JoinHandle<()>>>,
    next_link_id: AtomicU64,
}

struct Link {
    id: u64,
    client: TcpStream,
    target: TcpStream,
}

impl Link {
    fn cut(&self) {
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.target.shutdown(Shutdown::Both);
    }
}

impl FaultProxy {
    /// Listens on 127.0.0.1:0 and forwards every accepted connection to `target`.
    pub fn start(target: SocketAddr) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let address = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target,
            blocked: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            bytes_forwarded: AtomicU64::new(0),
            links: Mutex::new(Vec::new()),
            link_threads: Mutex::new(Vec::new()),
            next_link_id: AtomicU64::new(0),
        });
        let accept_shared = shared.clone();
        let accept_thread = std::thread::Builder::new()
            .name(format!("proxy-accept-{}", address.port()))
            .spawn(move || accept_loop(listener, accept_shared))?;
        Ok(FaultProxy { address, shared, accept_thread: Some(accept_thread) })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Blocked: every forwarded connection is cut at once and new connections are closed as soon
    /// as they are accepted. Unblocked: new connections are forwarded again (cut ones stay cut).
    pub fn set_blocked(&self, blocked: bool) {
        // The flag is stored before the list is read: a link registered after this read sees the
        // flag itself (see `forward`), so no connection slips through a block.
        self.shared.blocked.store(blocked, Ordering::SeqCst);
        if blocked {
            self.shared.cut_all();
        }
    }

    pub fn is_blocked(&self) -> bool {
        self.shared.blocked.load(Ordering::SeqCst)
    }

    /// Bytes forwarded so far in both directions.
    pub fn bytes_forwarded(&self) -> u64 {
        self.shared.bytes_forwarded.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // accept(2) has no timeout: a connection of our own wakes it to see the flag.
        let _ = TcpStream::connect_timeout(&self.address, Duration::from_millis(WAKE_CONNECT_TIMEOUT_MS));
        if let Some(thread) = self.accept_thread.take() {
            let _ = thread.join();
        }
        // No new link threads past this point; the ones still connecting see `stopping`.
        self.shared.cut_all();
        let threads = std::mem::take(&mut *self.shared.link_threads.lock().expect("no thread panics holding it"));
        for thread in threads {
            let _ = thread.join();
        }
    }
}

impl Shared {
    fn cut_all(&self) {
        for link in self.links.lock().expect("no thread panics holding it").iter() {
            link.cut();
        }
    }

    fn should_refuse(&self) -> bool {
        self.blocked.load(Ordering::SeqCst) || self.stopping.load(Ordering::SeqCst)
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let accepted = listener.accept();
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let client = match accepted {
            Ok((client, _)) => client,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => {
                // Out of descriptors or similar: back off rather than spin.
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if shared.blocked.load(Ordering::SeqCst) {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let link_shared = shared.clone();
        let spawned = std::thread::Builder::new().name("proxy-link".into()).spawn(move || forward(client, link_shared));
        let mut threads = shared.link_threads.lock().expect("no thread panics holding it");
        threads.retain(|thread| !thread.is_finished());
        if let Ok(thread) = spawned {
            threads.push(thread);
        }
    }
}

/// Connects to the target and copies both ways until either side closes or the link is cut.
fn forward(client: TcpStream, shared: Arc<Shared>) {
    let Ok(target) = TcpStream::connect_timeout(&shared.target, Duration::from_millis(TARGET_CONNECT_TIMEOUT_MS))
    else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = target.set_nodelay(true);
    let (Ok(client_for_list), Ok(target_for_list), Ok(client_reader), Ok(target_reader)) =
        (client.try_clone(), target.try_clone(), client.try_clone(), target.try_clone())
    else {
        let _ = client.shutdown(Shutdown::Both);
        let _ = target.shutdown(Shutdown::Both);
        return;
    };
    let link_id = shared.next_link_id.fetch_add(1, Ordering::SeqCst);
    {
        let mut links = shared.links.lock().expect("no thread panics holding it");
        links.push(Link { id: link_id, client: client_for_list, target: target_for_list });
        // Checked under the lock after registering: either `set_blocked` saw this link in the
        // list, or this check sees its flag.
        if shared.should_refuse() {
            links.last().expect("just pushed").cut();
        }
    }
    let back_shared = shared.clone();
    let backward =
        std::thread::Builder::new().name("proxy-copy".into()).spawn(move || copy(target_reader, client, &back_shared));
    copy(client_reader, target, &shared);
    if let Ok(backward) = backward {
        let _ = backward.join();
    }
    let mut links = shared.links.lock().expect("no thread panics holding it");
    links.retain(|link| link.id != link_id);
}

/// Copies `from` into `to` until end of stream (passed on as a half close) or an error (which
/// cuts both sockets so the other direction stops too).
fn copy(mut from: TcpStream, mut to: TcpStream, shared: &Shared) {
    let mut buffer = vec![0u8; COPY_BUFFER_BYTES];
    loop {
        match from.read(&mut buffer) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if to.write_all(&buffer[..n]).is_err() {
                    break;
                }
                shared.bytes_forwarded.fetch_add(n as u64, Ordering::SeqCst);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
