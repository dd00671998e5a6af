//! Schemathesis (property-based API testing from PyPI, written by others) against a live walletd,
//! driven by the OpenAPI document the node serves: no server error and no response that breaks the
//! document (status codes, content types, headers, bodies), over generated valid and invalid
//! requests. Bounded: a fixed seed, at most `MAX_EXAMPLES` cases per operation and `MAX_TIME_S` in all.
//! `scripts/setup.sh` installs Schemathesis and exports `WALLET_SCHEMATHESIS`.

mod support;

use std::process::Command;

use serde_json::json;
use support::http::Node;

const MAX_EXAMPLES: &str = "40";
const MAX_TIME_S: &str = "60";
const SEED: &str = "16";
/// Every check that judges a response against the document, plus the rejection of invalid input.
/// (`positive_data_acceptance` is left out: a valid request the engine refuses, such as a transfer
/// between accounts that do not exist, is answered 422 by design.)
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
response_headers_conformance,response_schema_conformance,negative_data_rejection,missing_required_header,\
unsupported_method";

fn schemathesis() -> String {
    let program = std::env::var("WALLET_SCHEMATHESIS").unwrap_or_else(|_| "schemathesis".to_string());
    let found = Command::new(&program).arg("--version").output().is_ok_and(|output| output.status.success());
    assert!(
        found,
        "Schemathesis ({program}) does not run: `. scripts/setup.sh` installs it and sets WALLET_SCHEMATHESIS"
    );
    program
}

#[test]
fn schemathesis_finds_no_server_error_and_no_response_outside_the_document() {
    let program = schemathesis();
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    let node = Node::start(&data_dir);
    let http = node.http();
    // A few real accounts, so some generated transfers and reads reach them.
    for (id, external) in [(1u64, true), (2, false), (3, false)] {
        let reply = http.post("/v1/accounts", None, &json!({ "id": id, "currency": "USD", "external": external }));
        assert_eq!(reply.status, 201, "{}", reply.text);
    }
    let url = format!("http://{}/openapi.json", node.http_address);
    let output = Command::new(&program)
        .args(["run", &url, "--checks", CHECKS, "--max-examples", MAX_EXAMPLES, "--max-time", MAX_TIME_S])
        .args(["--seed", SEED, "--workers", "2", "--request-timeout", "15", "--generation-database", "none"])
        .args(["--suppress-health-check", "all", "--no-color", "--report-dir"])
        .arg(dir.path().join("report"))
        .current_dir(dir.path())
        .output()
        .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "Schemathesis found problems:\n{stdout}\n{stderr}");
    let summary = stdout.find("SUMMARY").map_or(&stdout[..], |at| &stdout[at..]);
    eprintln!("Schemathesis:\n{summary}");
    assert!(stdout.contains("passed"), "Schemathesis ran cases:\n{stdout}");
    // The node is still whole afterwards: it serves, stops cleanly, and its log replays to ledgers
    // that each sum to zero.
    assert_eq!(http.get("/v1/accounts/1").status, 200);
    let mut node = node;
    assert!(node.terminate().success());
    let verify = Command::new(env!("CARGO_BIN_EXE_walletctl"))
        .args(["verify", "--data-dir", data_dir.to_str().expect("UTF-8 temp path")])
        .output()
        .expect("walletctl runs");
    assert!(verify.status.success(), "verify: {}", String::from_utf8_lossy(&verify.stdout));
}
