//! A small HTTP client for the tests of walletd's HTTP edge (ureq, keep-alive), and a single walletd
//! process with both listeners on free loopback ports.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Longest walletd may take until its HTTP edge answers.
const START_TIMEOUT_MS: u64 = 30_000;
const HTTP_TIMEOUT_MS: u64 = 30_000;

pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub replayed: bool,
    pub retry_after: Option<String>,
    pub text: String,
    pub body: Value,
}

impl Reply {
    /// The problem's stable code (panics unless the reply is `application/problem+json`).
    pub fn problem_code(&self) -> &str {
        assert_eq!(self.content_type, "application/problem+json", "a problem: {}", self.text);
        assert_eq!(self.body["status"].as_u64(), Some(self.status as u64), "problem status = HTTP status");
        let code = self.body["code"].as_str().expect("problems carry a code");
        assert_eq!(self.body["type"].as_str(), Some(format!("urn:wallet:problem:{code}").as_str()));
        code
    }
}

pub struct Http {
    agent: ureq::Agent,
    base: String,
}

impl Http {
    pub fn new(address: SocketAddr) -> Http {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_millis(HTTP_TIMEOUT_MS)))
            .build()
            .into();
        Http { agent, base: format!("http://{address}") }
    }

    pub fn get(&self, path: &str) -> Reply {
        let response = self.agent.get(&format!("{}{path}", self.base)).call().expect("GET answered");
        reply(response)
    }

    pub fn try_get(&self, path: &str) -> Option<Reply> {
        self.agent.get(&format!("{}{path}", self.base)).call().ok().map(reply)
    }

    /// POSTs `body` as JSON, with an Idempotency-Key when given.
    pub fn post(&self, path: &str, key: Option<&str>, body: &Value) -> Reply {
        let mut headers = vec![("content-type", "application/json")];
        if let Some(key) = key {
            headers.push(("idempotency-key", key));
        }
        self.post_raw(path, &headers, &body.to_string())
    }

    pub fn post_raw(&self, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        let mut request = self.agent.post(&format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        reply(request.send(body).expect("POST answered"))
    }
}

fn reply(response: ureq::http::Response<ureq::Body>) -> Reply {
    let status = response.status().as_u16();
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let content_type = header("content-type").unwrap_or_default();
    let replayed = header("idempotent-replayed").as_deref() == Some("true");
    let retry_after = header("retry-after");
    let text = response.into_body().read_to_string().expect("body readable");
    let body = if content_type.contains("json") {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("JSON body ({e}): {text}"))
    } else {
        Value::Null
    };
    Reply { status, content_type, replayed, retry_after, text, body }
}

/// A free loopback address (free a moment ago).
pub fn free_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("bound address")
}

/// One single-node walletd with fixed ports (kept across restarts, so a client can come back).
pub struct Node {
    pub client_address: SocketAddr,
    pub http_address: SocketAddr,
    child: Option<Child>,
}

/// Fresh ports tried before giving up on a start (see `Node::start`).
const START_ATTEMPTS_MAX: usize = 5;

impl Node {
    /// Starts walletd on two free ports. A port `free_address` found free can be taken by another test
    /// before walletd binds it (walletd then exits: "Address already in use"), so a start whose walletd
    /// exits before it answers is tried again on fresh ports, up to `START_ATTEMPTS_MAX` times.
    pub fn start(data_dir: &Path) -> Node {
        for attempt in 1..=START_ATTEMPTS_MAX {
            let mut node = Node { client_address: free_address(), http_address: free_address(), child: None };
            match node.try_spawn(data_dir) {
                Ok(()) => return node,
                Err(status) => eprintln!("walletd exited before answering ({status}), attempt {attempt}: new ports"),
            }
        }
        panic!("walletd did not start in {START_ATTEMPTS_MAX} attempts on fresh ports");
    }

    /// Starts walletd on the node's ports and waits until its HTTP edge answers `/v1/status`.
    pub fn spawn(&mut self, data_dir: &Path) {
        if let Err(status) = self.try_spawn(data_dir) {
            panic!("walletd exited before its HTTP edge answered: {status}");
        }
    }

    fn try_spawn(&mut self, data_dir: &Path) -> Result<(), std::process::ExitStatus> {
        assert!(self.child.is_none(), "already running");
        let child = Command::new(env!("CARGO_BIN_EXE_walletd"))
            .args(["--data-dir", data_dir.to_str().expect("UTF-8 temp path"), "--no-pin"])
            .args(["--listen", &self.client_address.to_string(), "--http-listen", &self.http_address.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("walletd starts");
        self.child = Some(child);
        let ready = try_wait_http_ready(self.http_address, self.child.as_mut());
        if ready.is_err() {
            self.child = None;
        }
        ready
    }

    pub fn http(&self) -> Http {
        Http::new(self.http_address)
    }

    pub fn sigkill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().expect("reaped")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `GET /v1/status` until it answers 200; panics if `child` exits first or time runs out.
pub fn wait_http_ready(address: SocketAddr, child: Option<&mut Child>) {
    if let Err(status) = try_wait_http_ready(address, child) {
        panic!("walletd exited before its HTTP edge answered: {status}");
    }
}

/// [`wait_http_ready`], returning the exit status of a `child` that exits first.
fn try_wait_http_ready(address: SocketAddr, mut child: Option<&mut Child>) -> Result<(), std::process::ExitStatus> {
    let http = Http::new(address);
    let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
    loop {
        if http.try_get("/v1/status").is_some_and(|reply| reply.status == 200) {
            return Ok(());
        }
        if let Some(child) = child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(status);
            }
        }
        assert!(Instant::now() < deadline, "the HTTP edge on {address} did not answer within {START_TIMEOUT_MS} ms");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A fresh UUIDv7 Idempotency-Key.
pub fn new_key() -> String {
    wallet_http::key::uuid_text(wallet_http::key::new_uuid_v7())
}
