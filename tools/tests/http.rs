//! walletd's HTTP/JSON edge against real walletd processes over loopback: the seed's transfer with
//! Idempotency-Key semantics (missing 400, other body 422, retries answered with the original outcome
//! and nothing moved twice — concurrently, after SIGKILL and restart, through any node of a cluster),
//! exact decimal amounts, problem+json errors, accounts, balances at each consistency, history pages,
//! the batch endpoint, status and the served OpenAPI document.

mod support;

use std::collections::HashSet;

use serde_json::{json, Value};
use support::cluster::{ClusterOptions, LocalCluster};
use support::http::{new_key, wait_http_ready, Http, Node, Reply};

fn transfer_body(from: u64, to: u64, amount: Value) -> Value {
    json!({ "from_account": from, "to_account": to, "amount": amount, "currency": "USD" })
}

fn create_account(http: &Http, id: u64, external: bool) {
    let reply = http.post("/v1/accounts", None, &json!({ "id": id, "currency": "USD", "external": external }));
    assert_eq!(reply.status, 201, "{}", reply.text);
    assert_eq!(reply.body["status"], "CREATED");
}

fn balance(http: &Http, id: u64) -> String {
    let reply = http.get(&format!("/v1/accounts/{id}"));
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.body["balance"].as_str().expect("balance is decimal text").to_string()
}

fn assert_problem(reply: &Reply, status: u16, code: &str) {
    assert_eq!(reply.status, status, "{}", reply.text);
    assert_eq!(reply.problem_code(), code, "{}", reply.text);
}

#[test]
fn the_seed_transfer_keeps_the_idempotency_key_rules_across_a_crash() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut node = Node::start(dir.path());
    let http = node.http();
    create_account(&http, 1, true);
    create_account(&http, 2, false);
    create_account(&http, 3, false);
    let again = http.post("/v1/accounts", None, &json!({ "id": 2, "currency": "USD" }));
    assert_eq!((again.status, again.body["status"].as_str()), (200, Some("EXISTS")), "{}", again.text);
    assert_problem(
        &http.post("/v1/accounts", None, &json!({ "id": 2, "currency": "EUR" })),
        422,
        "exists_with_different_fields",
    );

    // Without a key nothing is sent; keys that are not UUIDv7 are refused with the reason.
    let fund = transfer_body(1, 2, json!(100.00));
    assert_problem(&http.post("/v1/wallet/transfer", None, &fund), 400, "missing_idempotency_key");
    for bad in ["uuid-abc-123", "8e03978e-40d5-43e8-bc93-6894a57f9324"] {
        let reply = http.post("/v1/wallet/transfer", Some(bad), &fund);
        assert_problem(&reply, 400, "invalid_idempotency_key");
    }
    assert_eq!(balance(&http, 2), "0.00", "refused requests moved nothing");

    // The first attempt, then a retry: the same answer, flagged, and the money moved once.
    let key = new_key();
    let first = http.post("/v1/wallet/transfer", Some(&key), &fund);
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.body["status"], "SUCCESS");
    assert_eq!(first.body["transfer_id"], key.to_lowercase());
    assert!(first.body["seq"].as_u64().expect("seq") > 0);
    assert!(!first.replayed);
    let quoted = format!("\"{key}\""); // the draft's Structured Field string form names the same key
    let retry = http.post("/v1/wallet/transfer", Some(&quoted), &fund);
    assert_eq!((retry.status, &retry.body), (200, &first.body));
    assert!(retry.replayed);
    assert_eq!(balance(&http, 2), "100.00");

    // The same key with another body is a conflict, and changes nothing.
    let other = http.post("/v1/wallet/transfer", Some(&key), &transfer_body(1, 2, json!("100.01")));
    assert_problem(&other, 422, "exists_with_different_fields");
    assert_eq!(balance(&http, 2), "100.00");

    // Amounts are exact decimals in minor units, numbers or strings; anything else is a 400.
    let dime = new_key();
    let reply = http.post("/v1/wallet/transfer", Some(&dime), &transfer_body(2, 3, json!("0.10")));
    assert_eq!(reply.status, 200, "{}", reply.text);
    let reply = http.post_raw(
        "/v1/wallet/transfer",
        &[("content-type", "application/json"), ("idempotency-key", &new_key())],
        r#"{"from_account": "2", "to_account": 3, "amount": 0.20, "currency": "usd"}"#,
    );
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(balance(&http, 3), "0.30", "0.10 + 0.20 is exactly 0.30, not a float's 0.30000000000000004");
    for amount in ["\"1.001\"", "1e3", "-5", "1.5E1", "\"1,00\"", "null"] {
        let body = format!(r#"{{"from_account": 2, "to_account": 3, "amount": {amount}, "currency": "USD"}}"#);
        let headers = [("content-type", "application/json"), ("idempotency-key", &new_key() as &str)];
        let reply = http.post_raw("/v1/wallet/transfer", &headers, &body);
        assert_problem(&reply, 400, "invalid_request");
        assert_eq!(reply.body["pointer"], "/amount", "{amount}");
    }
    let reply = http.post(
        "/v1/wallet/transfer",
        Some(&new_key()),
        &json!({
        "from_account": 2, "to_account": 3, "amount": 1, "currency": "XYZ" }),
    );
    assert_problem(&reply, 400, "unknown_currency");
    let reply = http.post(
        "/v1/wallet/transfer",
        Some(&new_key()),
        &json!({
        "from_account": 2, "to_account": 3, "amount": 1, "currency": "USD", "memo": "x" }),
    );
    assert_problem(&reply, 400, "invalid_request");
    let reply = http.post_raw("/v1/wallet/transfer", &[("idempotency-key", &new_key())], &fund.to_string());
    assert_problem(&reply, 415, "unsupported_media_type");

    // A rejection is recorded: its retry answers the same rejection, with the same seq.
    let broke = new_key();
    let rejected = http.post("/v1/wallet/transfer", Some(&broke), &transfer_body(3, 2, json!("5.00")));
    assert_problem(&rejected, 422, "insufficient_funds");
    assert_eq!(rejected.body["transfer_id"], broke.to_lowercase());
    assert_eq!(rejected.body["transfer_status"], "REJECTED");
    assert_eq!(rejected.body["reason"], "insufficient_funds");
    let rejected_again = http.post("/v1/wallet/transfer", Some(&broke), &transfer_body(3, 2, json!("5.00")));
    assert_eq!((rejected_again.status, &rejected_again.body), (422, &rejected.body));
    assert!(rejected_again.replayed);

    // Retries racing the first attempt wait for its outcome: every one gets the same answer.
    let racing = new_key();
    let body = transfer_body(1, 3, json!("1.00"));
    let answers: Vec<(u16, Value)> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (racing, body) = (&racing, &body);
                let http = node.http();
                scope.spawn(move || {
                    let reply = http.post("/v1/wallet/transfer", Some(racing), body);
                    (reply.status, reply.body)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().expect("no panic")).collect()
    });
    assert!(answers.iter().all(|answer| answer == &answers[0]), "{answers:?}");
    assert_eq!(answers[0].0, 200);
    assert_eq!(balance(&http, 3), "1.30", "eight racing requests moved the money once");

    // A crash and a restart of the node and its edge: retries still get the original answers.
    node.sigkill();
    node.spawn(dir.path());
    let http = node.http();
    let after = http.post("/v1/wallet/transfer", Some(&key), &fund);
    assert_eq!((after.status, &after.body, after.replayed), (200, &first.body, true));
    let after = http.post("/v1/wallet/transfer", Some(&broke), &transfer_body(3, 2, json!("5.00")));
    assert_eq!((after.status, &after.body, after.replayed), (422, &rejected.body, true));
    assert_problem(
        &http.post("/v1/wallet/transfer", Some(&key), &transfer_body(1, 2, json!(7))),
        422,
        "exists_with_different_fields",
    );
    assert_eq!(balance(&http, 2), "99.70");
    assert_eq!(balance(&http, 3), "1.30");
    assert_eq!(balance(&http, 1), "-101.00", "the external account funded exactly what was posted");
    assert!(node.terminate().success(), "a clean stop with the edge running");
}

#[test]
fn reads_batches_history_status_and_the_document() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = Node::start(dir.path());
    let http = node.http();
    create_account(&http, 10, true);
    create_account(&http, 11, false);
    create_account(&http, 12, false);

    // One request, many transfers, per-item outcomes; its retry replays every item.
    let keys: Vec<String> = (0..4).map(|_| new_key()).collect();
    let items: Vec<Value> = [(10, 11, "50.00"), (11, 12, "20.00"), (12, 11, "99.00"), (10, 12, "0.05")]
        .iter()
        .zip(&keys)
        .map(|(&(from, to, amount), key)| {
            json!({ "idempotency_key": key, "from_account": from, "to_account": to, "amount": amount, "currency": "USD" })
        })
        .collect();
    let batch = json!({ "transfers": items });
    let reply = http.post("/v1/wallet/transfers", None, &batch);
    assert_eq!(reply.status, 200, "{}", reply.text);
    let results = reply.body["results"].as_array().expect("results").clone();
    let codes: Vec<&str> = results.iter().map(|r| r["code"].as_str().expect("code")).collect();
    assert_eq!(codes, ["ok", "ok", "insufficient_funds", "ok"]);
    assert_eq!(results[2]["status"], "REJECTED");
    for (result, key) in results.iter().zip(&keys) {
        assert_eq!(result["transfer_id"], key.to_lowercase());
        assert_eq!(result["replayed"], false);
    }
    let replay = http.post("/v1/wallet/transfers", None, &batch);
    let replayed = replay.body["results"].as_array().expect("results");
    for (again, first) in replayed.iter().zip(&results) {
        assert_eq!((&again["code"], &again["seq"], &again["replayed"]), (&first["code"], &first["seq"], &json!(true)));
    }
    assert_eq!(balance(&http, 11), "30.00");
    assert_eq!(balance(&http, 12), "20.05");
    let mut bad = batch.clone();
    bad["transfers"][1]["idempotency_key"] = json!("not-a-key");
    let reply = http.post("/v1/wallet/transfers", None, &bad);
    assert_problem(&reply, 400, "invalid_idempotency_key");
    assert_eq!(reply.body["pointer"], "/transfers/1/idempotency_key");
    assert_problem(&http.post("/v1/wallet/transfers", None, &json!({ "transfers": [] })), 400, "invalid_request");

    // Balances at every consistency level; at_least with the seq a transfer answer carried.
    let seq = results[3]["seq"].as_u64().expect("seq");
    for query in [
        "",
        "?consistency=linearizable",
        "?consistency=any",
        &format!("?consistency=at_least&at_least={seq}"),
        &format!("?at_least={seq}"),
    ] {
        let reply = http.get(&format!("/v1/accounts/12{query}"));
        assert_eq!(reply.status, 200, "{query}: {}", reply.text);
        assert_eq!(reply.body["balance"], "20.05");
        assert_eq!(reply.body["balance_minor"], 2005);
        assert_eq!(reply.body["currency"], "USD");
    }
    let reply = http.get("/v1/accounts/10");
    assert_eq!((reply.body["external"].as_bool(), reply.body["balance"].as_str()), (Some(true), Some("-50.05")));
    assert_problem(&http.get("/v1/accounts/999"), 404, "account_not_found");
    for query in ["?consistency=at_least", "?consistency=any&at_least=1", "?consistency=fresh", "?colour=red"] {
        assert_problem(&http.get(&format!("/v1/accounts/12{query}")), 400, "invalid_request");
    }
    assert_problem(&http.get("/v1/accounts/abc"), 400, "invalid_request");

    // History: pages of two, newest first, joined by the cursor, ending with a null cursor.
    let mut seen = Vec::new();
    let mut path = "/v1/accounts/11/history?limit=2".to_string();
    for _page in 0..10 {
        let reply = http.get(&path);
        assert_eq!(reply.status, 200, "{}", reply.text);
        let entries = reply.body["entries"].as_array().expect("entries");
        assert!(entries.len() <= 2);
        seen.extend(entries.iter().cloned());
        match reply.body["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/accounts/11/history?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    let kinds: Vec<&str> = seen.iter().map(|e| e["kind"].as_str().expect("kind")).collect();
    assert_eq!(kinds, ["transfer_posted", "transfer_posted", "account_created"], "{seen:?}");
    let seqs: Vec<u64> = seen.iter().map(|e| e["seq"].as_u64().expect("seq")).collect();
    assert!(seqs.windows(2).all(|w| w[0] > w[1]), "newest first: {seqs:?}");
    assert_eq!((seen[0]["direction"].as_str(), seen[0]["amount"].as_str()), (Some("debit"), Some("20.00")));
    assert_eq!((seen[0]["balance_after"].as_str(), seen[1]["balance_after"].as_str()), (Some("30.00"), Some("50.00")));
    assert_eq!(seen[1]["transfer_id"], keys[0].to_lowercase());
    assert!(seen[0]["time"].as_str().expect("time").ends_with('Z'));
    assert_problem(&http.get("/v1/accounts/11/history?limit=0"), 400, "invalid_request");
    assert_problem(&http.get("/v1/accounts/11/history?cursor=x"), 400, "invalid_request");
    assert_problem(&http.get("/v1/accounts/999/history"), 404, "account_not_found");

    // Status, the document, unknown routes.
    let status = http.get("/v1/status");
    assert_eq!(status.status, 200);
    assert_eq!(status.body["partitions"][0]["led_here"], true);
    let document = http.get("/openapi.json");
    assert_eq!(document.status, 200);
    let committed: Value =
        serde_json::from_str(include_str!("../../http/openapi.json")).expect("the committed document is JSON");
    assert_eq!(document.body, committed);
    assert_eq!(committed["openapi"], "3.1.0");
    assert_problem(&http.get("/v2/nothing"), 404, "not_found");
}

/// Accounts of one partition (a transfer must stay inside one), `count` of them, none reserved.
fn accounts_in_partition(partition: u32, partitions: u32, count: usize) -> Vec<u64> {
    (1..).filter(|&id| net::types::partition_of(id, partitions) == partition).take(count).collect()
}

#[test]
fn any_node_answers_a_retry_with_the_original_outcome() {
    let mut cluster = LocalCluster::start(ClusterOptions::default());
    let ids = cluster.node_ids();
    for &id in &ids {
        wait_http_ready(cluster.http_address(id), None);
    }
    let addresses: std::collections::BTreeMap<u64, std::net::SocketAddr> =
        ids.iter().map(|&id| (id, cluster.http_address(id))).collect();
    let http = |id: u64| Http::new(addresses[&id]);
    let accounts = accounts_in_partition(0, 3, 3);
    let (bank, alice, bob) = (accounts[0], accounts[1], accounts[2]);
    create_account(&http(2), bank, true);
    create_account(&http(3), alice, false);
    create_account(&http(1), bob, false);

    let key = new_key();
    let body = transfer_body(bank, alice, json!("42.00"));
    let first = http(1).post("/v1/wallet/transfer", Some(&key), &body);
    assert_eq!(first.status, 200, "{}", first.text);
    let seq = first.body["seq"].as_u64().expect("seq");
    for &id in &ids {
        let retry = http(id).post("/v1/wallet/transfer", Some(&key), &body);
        assert_eq!((retry.status, &retry.body, retry.replayed), (200, &first.body, true), "node {id}");
        let conflict = http(id).post("/v1/wallet/transfer", Some(&key), &transfer_body(bank, bob, json!("42.00")));
        assert_problem(&conflict, 422, "exists_with_different_fields");
        // Read-your-writes on every node with the seq the answer carried.
        let reply = http(id).get(&format!("/v1/accounts/{alice}?consistency=at_least&at_least={seq}"));
        assert_eq!((reply.status, reply.body["balance"].as_str()), (200, Some("42.00")), "node {id}: {}", reply.text);
    }

    // The partition's leader crashes; its retry through the survivors, then through it, replays.
    let leader = ids
        .iter()
        .copied()
        .find(|&id| {
            let status = http(id).get("/v1/status");
            status.body["partitions"]
                .as_array()
                .expect("partitions")
                .iter()
                .any(|p| p["partition"] == 0 && p["led_here"] == true)
        })
        .expect("partition 0 has a leader");
    cluster.kill(leader);
    let survivor = *ids.iter().find(|&&id| id != leader).expect("three nodes");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let after = loop {
        let reply = http(survivor).post("/v1/wallet/transfer", Some(&key), &body);
        if reply.status != 503 || std::time::Instant::now() > deadline {
            break reply;
        }
        assert!(reply.retry_after.is_some(), "a 503 says when to retry");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!((after.status, &after.body, after.replayed), (200, &first.body, true), "{}", after.text);
    cluster.start_node(leader);
    wait_http_ready(addresses[&leader], None);
    let again = http(leader).post("/v1/wallet/transfer", Some(&key), &body);
    assert_eq!((again.status, &again.body, again.replayed), (200, &first.body, true), "{}", again.text);
    let reply = http(leader).get(&format!("/v1/accounts/{alice}?at_least={seq}"));
    assert_eq!(reply.body["balance"], "42.00", "moved once through three nodes and a crash");
    let transfers: HashSet<String> = http(leader).get(&format!("/v1/accounts/{alice}/history")).body["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["transfer_id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(transfers, HashSet::from([key.to_lowercase()]));
}
