//! `shoal run`, `status` and `migrate` as real processes: default start, health, readiness and
//! metrics endpoints, graceful handoff on SIGTERM, exit on a second signal.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Runner, TestDatabase, shards_by_runner, shoal, status, wait_for};
use rustix::process::Signal;

/// Flags for a runner on free ports with `storage`.
fn on_free_ports(storage: &str) -> Vec<String> {
    [
        "run",
        "--listen",
        "127.0.0.1:0",
        "--gateway",
        "127.0.0.1:0",
        "--storage",
        storage,
    ]
    .map(str::to_owned)
    .to_vec()
}

#[test]
fn starts_with_no_arguments_on_sqlite_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = shoal(dir.path());
    cmd.arg("run");
    let mut runner = Runner::start(cmd, dir.path().join("stderr.log"));
    assert_eq!(runner.gateway, "http://127.0.0.1:8080");
    assert_eq!(runner.runner.as_deref(), Some("127.0.0.1:34431"));
    assert!(dir.path().join("shoal.db").exists());

    // What the README's tour does with curl.
    assert_eq!(
        runner.post("/v1/entities/counter/a/increment", r#"{"by":1}"#),
        (200, "1".to_owned())
    );
    assert_eq!(
        runner.post("/v1/entities/counter/a/increment", r#"{"by":1}"#),
        (200, "2".to_owned())
    );
    assert_eq!(
        runner.post("/v1/entities/counter/a/get", ""),
        (200, "2".to_owned())
    );

    runner.signal(Signal::TERM);
    let status = runner.wait(Duration::from_secs(30));
    assert!(status.success(), "{status}: {}", runner.logs());
}

#[test]
fn serves_health_readiness_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = shoal(dir.path());
    cmd.args(on_free_ports("sqlite://cluster.db"));
    let runner = Runner::start(cmd, dir.path().join("stderr.log"));
    assert_eq!(
        runner.metrics.as_deref(),
        runner.gateway.strip_prefix("http://")
    );

    let (code, body) = runner.get("/healthz");
    assert_eq!((code, body.as_str()), (200, r#"{"status":"ok"}"#));
    runner.wait_ready();
    let (_, body) = runner.get("/readyz");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["ready"], true);
    assert_eq!(report["role"], "runner");
    assert_eq!(report["registered"], true);
    assert_eq!(report["shards_held"], 300);

    assert_eq!(runner.post("/v1/entities/counter/m/increment", "{}").0, 200);
    assert_eq!(runner.post("/v1/entities/nope/m/get", "{}").0, 404);
    let (code, metrics) = runner.get("/metrics");
    assert_eq!(code, 200);
    for expected in [
        "shoal_shards_held 300",
        "shoal_runners 1",
        "shoal_entities{type=\"counter\"} 1",
        "shoal_gateway_requests_total{type=\"counter\",outcome=\"ok\"} 1",
        "shoal_gateway_requests_total{type=\"_unrouted\",outcome=\"unknown_entity_type\"} 1",
        "shoal_gateway_request_duration_seconds_bucket{type=\"counter\",outcome=\"ok\",le=\"",
        "shoal_storage_call_seconds_bucket",
        "shoal_ready 1",
    ] {
        assert!(
            metrics.contains(expected),
            "/metrics lacks {expected:?}:\n{metrics}"
        );
    }
}

#[test]
fn serves_metrics_on_a_separate_listener() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = shoal(dir.path());
    cmd.args(on_free_ports("sqlite://cluster.db"))
        .args(["--metrics", "127.0.0.1:0"]);
    let runner = Runner::start(cmd, dir.path().join("stderr.log"));
    let metrics = runner.metrics.clone().unwrap();
    assert_ne!(
        Some(metrics.as_str()),
        runner.gateway.strip_prefix("http://")
    );
    assert_eq!(runner.get("/metrics").0, 404);
    let (code, body) = common::get(&format!("http://{metrics}/metrics"));
    assert_eq!(code, 200);
    assert!(body.contains("shoal_shards_held"), "{body}");
}

/// A user's report, at a small scale: sockets that never finish their request head were held open
/// for good, so under a low open-file limit they used up the process's files and `/readyz` (and
/// every call) stopped being answered. Here 300 such sockets against a limit of 256: the gateway
/// must hold at most its cap of them, close them after the header timeout, and keep answering.
#[test]
fn stalled_sockets_do_not_stop_the_gateway_under_a_low_open_file_limit() {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    let dir = tempfile::tempdir().unwrap();
    let mut cmd = common::shoal_with_open_file_limit(dir.path(), 256);
    cmd.args(on_free_ports("sqlite://cluster.db"))
        .env("SHOAL_GATEWAY_HEADER_TIMEOUT", "1s");
    let runner = Runner::start(cmd, dir.path().join("stderr.log"));
    runner.wait_ready();
    // gateway_max_connections = auto: half the open-file limit.
    assert!(
        runner.logs().contains("max_connections=128"),
        "{}",
        runner.logs()
    );
    let address = runner.gateway.strip_prefix("http://").unwrap().to_owned();

    let stalled: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut socket = TcpStream::connect(&address).unwrap();
            socket
                .write_all(b"GET /readyz HTTP/1.1\r\nHost: shoal\r\n")
                .unwrap();
            socket
        })
        .collect();

    // Each request has 30 s (the test client's timeout).
    let (code, body) = runner.get("/readyz");
    assert_eq!(code, 200, "/readyz: {body}\n{}", runner.logs());
    assert_eq!(
        runner.post("/v1/entities/counter/s/increment", "{}"),
        (200, "1".to_owned())
    );
    // The gateway closed every stalled socket (a generous bound: it sheds them in rounds).
    for mut socket in stalled {
        socket
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut buf = [0u8; 64];
        match socket.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!(
                "a stalled socket got an answer: {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e) => assert!(
                !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "a stalled socket is still open after 60 s"
            ),
        }
    }
}

/// Two runners share storage; SIGTERM to the first hands its shards to the second well before
/// the leases (30 s) could expire.
fn sigterm_hands_shards_off(storage: &str) {
    let dir = tempfile::tempdir().unwrap();
    let start = |name: &str| {
        let mut cmd = shoal(dir.path());
        cmd.args(on_free_ports(storage))
            .args(["--lease-ttl", "30s", "--storage-timeout", "2s"]);
        Runner::start(cmd, dir.path().join(format!("{name}.log")))
    };
    let mut first = start("first");
    first.wait_ready();
    let second = start("second");
    second.wait_ready();
    let second_address = second.runner.clone().unwrap();
    wait_for(Duration::from_secs(30), "the shards to be split", || {
        let by_runner = shards_by_runner(&status(dir.path(), storage, &[]));
        by_runner.len() == 2 && by_runner.iter().all(|(_, n)| *n == 150)
    });
    assert_eq!(first.post("/v1/entities/counter/x/increment", "{}").0, 200);

    first.signal(Signal::TERM);
    let exit = first.wait(Duration::from_secs(20));
    assert!(exit.success(), "{exit}: {}", first.logs());
    // Released, not expired: the second runner takes every shard long before 30 s.
    wait_for(
        Duration::from_secs(15),
        "the second runner to hold all shards",
        || {
            let now = status(dir.path(), storage, &[]);
            shards_by_runner(&now) == vec![(second_address.clone(), 300)]
                && now["shards"]["leased"] == 300
        },
    );
    assert_eq!(second.post("/v1/entities/counter/x/get", "").0, 200);
}

#[test]
fn sigterm_hands_shards_to_the_other_runner_on_sqlite() {
    sigterm_hands_shards_off("sqlite://cluster.db");
}

#[test]
fn sigterm_hands_shards_to_the_other_runner_on_postgres() {
    let db = TestDatabase::create("handoff");
    sigterm_hands_shards_off(&db.url);
}

#[test]
fn a_second_signal_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = shoal(dir.path());
    cmd.args(on_free_ports("sqlite://cluster.db"))
        .args(["--shutdown-delay", "10m"]);
    let mut runner = Runner::start(cmd, dir.path().join("stderr.log"));
    runner.wait_ready();
    runner.signal(Signal::TERM);
    // The first signal was handled once readiness fails; the gateway still serves meanwhile.
    wait_for(Duration::from_secs(30), "readiness to fail", || {
        runner.get("/readyz").0 == 503
    });
    assert_eq!(runner.post("/v1/entities/counter/a/get", "").0, 200);
    runner.signal(Signal::INT);
    let exit = runner.wait(Duration::from_secs(20));
    assert_eq!(exit.code(), Some(130), "{}", runner.logs());
    assert!(runner.logs().contains("second signal"), "{}", runner.logs());
}

#[test]
fn status_prints_runners_and_leases() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = shoal(dir.path());
    cmd.args(on_free_ports("sqlite://cluster.db"));
    let runner = Runner::start(cmd, dir.path().join("stderr.log"));
    runner.wait_ready();
    let address = runner.runner.clone().unwrap();

    let json = status(dir.path(), "sqlite://cluster.db", &[]);
    let runners = json["runners"].as_array().unwrap();
    assert_eq!(runners.len(), 1);
    assert_eq!(runners[0]["address"], address.as_str());
    assert_eq!(runners[0]["healthy"], true);
    assert_eq!(runners[0]["weight"], 1);
    assert_eq!(runners[0]["shards"], 300);
    assert_eq!(json["shards"]["total"], 300);
    assert_eq!(json["shards"]["unowned"], 0);
    assert_eq!(json["shards"]["orphaned"], 0);
    let leases = json["leases"].as_array().unwrap();
    assert_eq!(leases.len(), 300);
    assert_eq!(leases[0]["shard"], "default:1");
    assert!(leases.iter().all(|l| l["owner"] == address.as_str()
        && l["epoch"].as_u64().unwrap() >= 1
        && l["owner_registered"] == true));

    let mut text = shoal(dir.path());
    text.args(["status", "--storage", "sqlite://cluster.db"]);
    let text = common::stdout_of(text);
    assert!(text.contains("RUNNERS (1)"), "{text}");
    assert!(text.contains(&address), "{text}");
    assert!(
        text.contains("SHARDS: 300 total, 300 leased, 0 unowned"),
        "{text}"
    );
}

#[test]
fn migrate_creates_the_tables_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let mut before = shoal(dir.path());
    before.args(["status", "--storage", "sqlite://fresh.db"]);
    let out = common::output(before);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("shoal migrate"), "{stderr}");

    let mut migrate = shoal(dir.path());
    migrate.args(["migrate", "--storage", "sqlite://fresh.db"]);
    let said = common::stdout_of(migrate);
    assert!(said.contains("is migrated (table prefix shoal)"), "{said}");

    let json = status(dir.path(), "sqlite://fresh.db", &[]);
    assert_eq!(json["runners"].as_array().unwrap().len(), 0);
    assert_eq!(json["shards"]["unowned"], 300);
}

#[test]
fn migrate_creates_the_tables_on_postgres_with_a_prefix() {
    let db = TestDatabase::create("migrate");
    let dir = tempfile::tempdir().unwrap();
    let mut migrate = shoal(dir.path());
    migrate.args(["migrate", "--storage", &db.url, "--table-prefix", "orders"]);
    let said = common::stdout_of(migrate);
    assert!(said.contains("table prefix orders"), "{said}");
    // Migrating twice is harmless.
    let mut again = shoal(dir.path());
    again.args(["migrate", "--storage", &db.url, "--table-prefix", "orders"]);
    common::stdout_of(again);

    let json = status(dir.path(), &db.url, &["--table-prefix", "orders"]);
    assert_eq!(json["runners"].as_array().unwrap().len(), 0);
    // Another prefix has no tables.
    let mut other = shoal(dir.path());
    other.args(["status", "--storage", &db.url, "--table-prefix", "billing"]);
    assert!(!common::output(other).status.success());

    // A runner started without migrating uses the migrated tables.
    let mut cmd = shoal(dir.path());
    cmd.args(on_free_ports(&db.url))
        .args(["--table-prefix", "orders", "--no-migrate"]);
    let runner = Runner::start(cmd, dir.path().join("stderr.log"));
    runner.wait_ready();
    assert_eq!(
        runner.post("/v1/entities/counter/pg/increment", r#"{"by":4}"#),
        (200, "4".to_owned())
    );
}
