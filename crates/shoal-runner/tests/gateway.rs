//! The HTTP gateway over an in-process cluster: every status code it answers, with real entity
//! calls behind it, and the limits it puts on connections (served on a real socket).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use futures::future::{BoxFuture, Either};
use http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use shoal_protocol::EntityType;
use shoal_runner::entities::{Builtin, EntityRoutes};
use shoal_runner::gateway::{self, ConnectionLimits, GatewayOptions, HttpServer};
use shoal_runner::health::Readiness;
use shoal_sharding::{
    DynamicDefinition, DynamicEntity, DynamicRequest, EntityContext, EntityOptions, GroupSelector,
    HandlerError, InProcessNetwork, Sharding, ShardingConfig, TagKind,
};
use shoal_storage::{MemoryEntityKv, MemoryMessageStorage, MemoryRunnerStorage, RunnerStorage};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tower::ServiceExt;

/// An entity whose `wait` calls block until the test lets them through.
struct Gate {
    started: mpsc::UnboundedSender<()>,
    permits: Arc<Semaphore>,
}

impl DynamicEntity for Gate {
    fn handle(
        self: Arc<Self>,
        _request: DynamicRequest,
        _ctx: EntityContext,
    ) -> BoxFuture<'static, Result<Bytes, HandlerError>> {
        Box::pin(async move {
            let _ = self.started.send(());
            let permit = self.permits.acquire().await.map_err(HandlerError::failed)?;
            permit.forget();
            Ok(Bytes::from_static(b"\"passed\""))
        })
    }
}

struct TestCluster {
    sharding: Sharding,
    storage: Arc<dyn RunnerStorage>,
    started: mpsc::UnboundedReceiver<()>,
    permits: Arc<Semaphore>,
}

fn config() -> ShardingConfig {
    ShardingConfig::builder()
        .shards_per_group(16)
        .build()
        .unwrap()
}

async fn runner() -> TestCluster {
    let (started_tx, started) = mpsc::unbounded_channel();
    let permits = Arc::new(Semaphore::new(0));
    let gate_permits = permits.clone();
    let gate = DynamicDefinition::new("gate", move |_ctx: EntityContext| {
        let entity = Arc::new(Gate {
            started: started_tx.clone(),
            permits: gate_permits.clone(),
        });
        async move { Ok(entity as Arc<dyn DynamicEntity>) }
    })
    .tag("wait", TagKind::Unary)
    .options(EntityOptions {
        mailbox_capacity: Some(1),
        ..EntityOptions::default()
    });
    let memory = Arc::new(MemoryRunnerStorage::new());
    let storage: Arc<dyn RunnerStorage> = memory.clone();
    let sharding = Builtin::register(
        Sharding::builder(config())
            .storage(storage.clone())
            .message_storage(Arc::new(MemoryMessageStorage::new(memory.clone())))
            .entity_kv(Arc::new(MemoryEntityKv::new(memory)))
            .in_process(&InProcessNetwork::new())
            .runner("127.0.0.1:34431".parse().unwrap()),
    )
    .entity(gate)
    .start()
    .await
    .unwrap();
    TestCluster {
        sharding,
        storage,
        started,
        permits,
    }
}

fn routes() -> EntityRoutes {
    let mut routes = Builtin::routes(EntityRoutes::new()).unwrap();
    routes.insert(
        EntityType::new("gate").unwrap(),
        GroupSelector::fixed(shoal_protocol::ShardGroup::default_group()),
    );
    routes
}

fn app(cluster: &TestCluster, options: GatewayOptions) -> Router {
    let readiness = Readiness::new(cluster.sharding.clone(), cluster.storage.clone());
    gateway::router(&cluster.sharding, &routes(), readiness, options)
}

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap()
    }

    fn code(&self) -> String {
        self.json()["code"].as_str().unwrap().to_owned()
    }
}

async fn send(app: &Router, request: Request<Body>) -> Answer {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

fn post(path: &str, body: &'static str) -> Request<Body> {
    Request::post(path).body(Body::from(body)).unwrap()
}

#[tokio::test]
async fn answers_200_with_the_reply_and_echoes_the_request_id() {
    let cluster = runner().await;
    let app = app(&cluster, GatewayOptions::default());
    let first = send(
        &app,
        post("/v1/entities/counter/a/increment", r#"{"by":2}"#),
    )
    .await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.body, "2");
    assert_eq!(first.headers[header::CONTENT_TYPE], "application/json");

    let request = Request::post("/v1/entities/counter/a/increment")
        .header("x-request-id", "req-42")
        .body(Body::from(r#"{"by":3}"#))
        .unwrap();
    let second = send(&app, request).await;
    assert_eq!((second.status, second.body.as_str()), (StatusCode::OK, "5"));
    assert_eq!(second.headers["x-request-id"], "req-42");

    // An empty body is `{}`: `get` needs nothing, `increment` defaults to 1.
    let got = send(&app, post("/v1/entities/counter/a/get", "")).await;
    assert_eq!((got.status, got.body.as_str()), (StatusCode::OK, "5"));
    let plus_one = send(&app, post("/v1/entities/counter/b/increment", "")).await;
    assert_eq!(plus_one.body, "1");
    cluster.sharding.shutdown().await;
}

#[tokio::test]
async fn answers_400_for_bad_bodies_tags_ids_and_headers() {
    let cluster = runner().await;
    let app = app(&cluster, GatewayOptions::default());

    let not_json = send(&app, post("/v1/entities/counter/a/increment", "by=1")).await;
    assert_eq!(not_json.status, StatusCode::BAD_REQUEST);
    assert_eq!(not_json.code(), "malformed_message");

    let wrong_shape = send(
        &app,
        post("/v1/entities/counter/a/increment", r#"{"by":"x"}"#),
    )
    .await;
    assert_eq!(wrong_shape.status, StatusCode::BAD_REQUEST);
    assert_eq!(wrong_shape.code(), "malformed_message");

    let unknown_tag = send(&app, post("/v1/entities/counter/a/decrement", "{}")).await;
    assert_eq!(unknown_tag.status, StatusCode::BAD_REQUEST);
    assert_eq!(unknown_tag.code(), "unknown_tag");

    let bad_id = send(&app, post("/v1/entities/counter/a%01b/get", "{}")).await;
    assert_eq!(bad_id.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad_id.code(), "malformed_message");
    assert!(
        bad_id.json()["message"]
            .as_str()
            .unwrap()
            .contains("invalid entity id")
    );

    let request = Request::post("/v1/entities/counter/a/get")
        .header("x-shoal-timeout-ms", "soon")
        .body(Body::from("{}"))
        .unwrap();
    let bad_timeout = send(&app, request).await;
    assert_eq!(bad_timeout.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad_timeout.code(), "bad_request");
    cluster.sharding.shutdown().await;
}

#[tokio::test]
async fn answers_401_without_the_gateway_token() {
    let cluster = runner().await;
    let app = app(
        &cluster,
        GatewayOptions {
            token: Some("s3cret".to_owned()),
            ..GatewayOptions::default()
        },
    );
    let missing = send(&app, post("/v1/entities/counter/a/get", "{}")).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.code(), "unauthenticated");
    assert_eq!(missing.headers[header::WWW_AUTHENTICATE], "Bearer");

    let wrong = Request::post("/v1/entities/counter/a/get")
        .header(header::AUTHORIZATION, "Bearer s3creT")
        .body(Body::from("{}"))
        .unwrap();
    assert_eq!(send(&app, wrong).await.status, StatusCode::UNAUTHORIZED);

    // Unknown types are not revealed to callers without the token either.
    let probe = send(&app, post("/v1/entities/nope/a/get", "{}")).await;
    assert_eq!(probe.status, StatusCode::UNAUTHORIZED);

    let right = Request::post("/v1/entities/counter/a/get")
        .header(header::AUTHORIZATION, "Bearer s3cret")
        .body(Body::from("{}"))
        .unwrap();
    let ok = send(&app, right).await;
    assert_eq!((ok.status, ok.body.as_str()), (StatusCode::OK, "0"));

    // Health endpoints stay open for probes.
    let health = send(&app, Request::get("/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!(health.status, StatusCode::OK);
    cluster.sharding.shutdown().await;
}

#[tokio::test]
async fn answers_404_for_unknown_types_and_routes() {
    let cluster = runner().await;
    let app = app(&cluster, GatewayOptions::default());
    let unknown = send(&app, post("/v1/entities/basket/a/get", "{}")).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.code(), "unknown_entity_type");
    assert!(
        unknown.json()["message"]
            .as_str()
            .unwrap()
            .contains("counter")
    );

    let no_route = send(&app, post("/v2/anything", "{}")).await;
    assert_eq!(no_route.status, StatusCode::NOT_FOUND);
    assert_eq!(no_route.code(), "not_found");

    let wrong_method = send(
        &app,
        Request::get("/v1/entities/counter/a/get")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong_method.code(), "method_not_allowed");
    cluster.sharding.shutdown().await;
}

#[tokio::test]
async fn answers_413_for_bodies_over_the_limit() {
    let cluster = runner().await;
    let app = app(
        &cluster,
        GatewayOptions {
            max_body: 16,
            ..GatewayOptions::default()
        },
    );
    let big = r#"{"by": 1, "padding": "xxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#;
    // Declared length over the limit: refused before reading.
    let declared = Request::post("/v1/entities/counter/a/increment")
        .header(header::CONTENT_LENGTH, big.len())
        .body(Body::from(big))
        .unwrap();
    let answer = send(&app, declared).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.code(), "message_too_large");

    // No declared length (streamed): refused once the limit is crossed.
    let stream = futures::stream::iter(
        big.as_bytes()
            .chunks(8)
            .map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let streamed = Request::post("/v1/entities/counter/a/increment")
        .body(Body::from_stream(stream))
        .unwrap();
    let answer = send(&app, streamed).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);

    // At the limit is fine.
    let small = send(
        &app,
        post("/v1/entities/counter/a/increment", r#"{"by":7}"#),
    )
    .await;
    assert_eq!((small.status, small.body.as_str()), (StatusCode::OK, "7"));
    cluster.sharding.shutdown().await;
}

#[tokio::test]
async fn answers_429_when_the_mailbox_is_full_and_504_after_the_deadline() {
    let mut cluster = runner().await;
    let app = app(&cluster, GatewayOptions::default());

    // The first call runs and blocks; the mailbox (capacity 1) then holds one more.
    let running = tokio::spawn(send_owned(app.clone(), "/v1/entities/gate/g/wait"));
    cluster.started.recv().await.unwrap();
    let second = tokio::spawn(send_owned(app.clone(), "/v1/entities/gate/g/wait"));
    let third = tokio::spawn(send_owned(app.clone(), "/v1/entities/gate/g/wait"));
    // Whichever of the two arrived last finds the mailbox full and is answered at once.
    let (refused, queued) = match futures::future::select(second, third).await {
        Either::Left((answer, other)) | Either::Right((answer, other)) => (answer.unwrap(), other),
    };
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.code(), "mailbox_full");
    assert_eq!(refused.headers[header::RETRY_AFTER], "1");

    cluster.permits.add_permits(2);
    let first = running.await.unwrap();
    assert_eq!(
        (first.status, first.body.as_str()),
        (StatusCode::OK, "\"passed\"")
    );
    assert_eq!(queued.await.unwrap().status, StatusCode::OK);

    // A call that gets no reply within its deadline: 504.
    let request = Request::post("/v1/entities/gate/slow/wait")
        .header("x-shoal-timeout-ms", "100")
        .body(Body::from("{}"))
        .unwrap();
    let late = send(&app, request).await;
    assert_eq!(late.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(late.code(), "deadline_exceeded");
    cluster.permits.add_permits(1);
    cluster.sharding.shutdown().await;
}

async fn send_owned(app: Router, path: &'static str) -> Answer {
    send(&app, post(path, "{}")).await
}

#[tokio::test]
async fn answers_503_with_retry_after_when_no_runner_holds_the_shard_or_it_shuts_down() {
    // A client-only gateway over a cluster with no runner.
    let storage: Arc<dyn RunnerStorage> = Arc::new(MemoryRunnerStorage::new());
    let client = Sharding::builder(config())
        .storage(storage.clone())
        .in_process(&InProcessNetwork::new())
        .client_only()
        .start()
        .await
        .unwrap();
    let readiness = Readiness::new(client.clone(), storage);
    let client_app = gateway::router(&client, &routes(), readiness, GatewayOptions::default());
    let request = Request::post("/v1/entities/counter/a/get")
        .header("x-shoal-timeout-ms", "200")
        .body(Body::from("{}"))
        .unwrap();
    let answer = send(&client_app, request).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.code(), "entity_not_assigned");
    assert_eq!(answer.headers[header::RETRY_AFTER], "1");

    let ready = send(
        &client_app,
        Request::get("/readyz").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.json()["role"], "client_only");
    assert_eq!(ready.json()["reason"], "no runner is registered");
    client.shutdown().await;

    // A runner that is shutting down refuses at once.
    let cluster = runner().await;
    let app = app(&cluster, GatewayOptions::default());
    cluster.sharding.shutdown().await;
    let answer = send(&app, post("/v1/entities/counter/a/get", "{}")).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.code(), "shutting_down");
    assert_eq!(answer.headers[header::RETRY_AFTER], "1");
}

#[tokio::test]
async fn readiness_follows_registration_and_shutdown() {
    let cluster = runner().await;
    let readiness = Readiness::new(cluster.sharding.clone(), cluster.storage.clone());
    let app = gateway::router(
        &cluster.sharding,
        &routes(),
        readiness.clone(),
        GatewayOptions::default(),
    );
    let ready = send(&app, Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.body);
    let report = ready.json();
    assert_eq!(report["ready"], true);
    assert_eq!(report["registered"], true);
    assert_eq!(report["shards_held"], 16);
    assert_eq!(report["shards_target"], 16);

    readiness.begin_drain();
    let draining = send(&app, Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(draining.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(draining.json()["reason"], "shutting down");
    // Liveness is unaffected.
    let live = send(&app, Request::get("/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!(live.status, StatusCode::OK);
    cluster.sharding.shutdown().await;
}

#[tokio::test]
async fn calls_reach_entities_on_another_runner() {
    // Two runners; the gateway of the first answers for every id, wherever it lives.
    let network = InProcessNetwork::new();
    let memory = Arc::new(MemoryRunnerStorage::new());
    let storage: Arc<dyn RunnerStorage> = memory.clone();
    let messages = Arc::new(MemoryMessageStorage::new(memory.clone()));
    let kv = Arc::new(MemoryEntityKv::new(memory));
    let start = |address: &str| {
        Builtin::register(
            Sharding::builder(config())
                .storage(storage.clone())
                .message_storage(messages.clone())
                .entity_kv(kv.clone())
                .in_process(&network)
                .runner(address.parse().unwrap()),
        )
        .start()
    };
    let a = start("127.0.0.1:1").await.unwrap();
    let b = start("127.0.0.1:2").await.unwrap();
    // Wait until the shards are split (b took its share).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while b.active_shards().len() < 8 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "b never took its shards"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let readiness = Readiness::new(a.clone(), storage.clone());
    let app = gateway::router(&a, &routes(), readiness, GatewayOptions::default());
    let mut remote = 0;
    for i in 0..40 {
        let id = format!("e{i}");
        let path = format!("/v1/entities/counter/{id}/increment");
        let answer = send(&app, Request::post(path).body(Body::from("{}")).unwrap()).await;
        assert_eq!((answer.status, answer.body.as_str()), (StatusCode::OK, "1"));
        let shard = b.shard_in(
            &shoal_protocol::ShardGroup::default_group(),
            &shoal_protocol::EntityId::new(&id).unwrap(),
        );
        remote += usize::from(b.holds(&shard));
    }
    assert!(remote > 0, "no id landed on the second runner");
    a.shutdown().await;
    b.shutdown().await;
}

// Connection limits, on a real socket.

/// How long a socket test may take in all (debug builds on a busy machine). The tests assert no
/// other duration: they await the gateway's actions.
const SOCKET_TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves `app` on a free port of 127.0.0.1.
async fn serve_on_free_port(app: Router, limits: ConnectionLimits) -> (HttpServer, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = gateway::serve("gateway", listener, app, limits);
    let address = server.local_addr().unwrap();
    (server, address)
}

/// Runs `test` within [`SOCKET_TEST_TIMEOUT`].
async fn within_test_timeout<T>(what: &str, test: impl Future<Output = T>) -> T {
    tokio::time::timeout(SOCKET_TEST_TIMEOUT, test)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within {SOCKET_TEST_TIMEOUT:?}"))
}

/// Reads until the gateway closes the connection (a read returns 0 or fails); returns what it
/// sent before.
async fn read_until_closed(socket: &mut (impl AsyncRead + Unpin + ?Sized)) -> String {
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&received).into_owned(),
            Ok(n) => received.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads one HTTP/1.1 response with a `content-length`: status, head and body.
async fn read_response(socket: &mut (impl AsyncRead + Unpin + ?Sized)) -> (u16, String, String) {
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    let head_end = loop {
        if let Some(at) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = socket.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before a whole response head: {received:?}");
        received.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8(received[..head_end].to_vec()).unwrap();
    let status = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .expect("no content-length");
    while received.len() < head_end + length {
        let n = socket.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the whole body");
        received.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8(received[head_end..head_end + length].to_vec()).unwrap();
    (status, head, body)
}

/// Sends `start`, then one more byte every 50 ms until the connection fails: a request that makes
/// progress but never ends (a slow-loris client).
async fn drip(mut writer: OwnedWriteHalf, start: &'static [u8]) {
    if writer.write_all(start).await.is_err() {
        return;
    }
    while writer.write_all(b"a").await.is_ok() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn request_heads_not_finished_within_the_header_timeout_are_closed() {
    let cluster = runner().await;
    let limits = ConnectionLimits {
        header_timeout: Duration::from_millis(500),
        ..ConnectionLimits::default()
    };
    let (server, address) =
        serve_on_free_port(app(&cluster, GatewayOptions::default()), limits).await;
    within_test_timeout("closing stalled heads", async {
        // Sends nothing at all.
        let mut silent = TcpStream::connect(address).await.unwrap();
        // Sends part of a head and stops.
        let mut partial = TcpStream::connect(address).await.unwrap();
        partial
            .write_all(b"POST /v1/entities/counter/a/get HTTP/1.1\r\nHost: shoal\r\n")
            .await
            .unwrap();
        // Keeps sending a head that never ends: progress does not extend the timeout.
        let (mut dripping, writer) = TcpStream::connect(address).await.unwrap().into_split();
        let dripper = tokio::spawn(drip(writer, b"GET /healthz HTTP/1.1\r\nX-Slow: "));

        // Closed without an answer.
        assert_eq!(read_until_closed(&mut silent).await, "");
        assert_eq!(read_until_closed(&mut partial).await, "");
        assert_eq!(read_until_closed(&mut dripping).await, "");
        dripper.await.unwrap();

        // The gateway goes on answering.
        let mut client = TcpStream::connect(address).await.unwrap();
        client
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: shoal\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_response(&mut client).await.0, 200);
    })
    .await;
    server.stop(Duration::from_secs(5)).await;
    cluster.sharding.shutdown().await;
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_after_the_header_timeout() {
    let cluster = runner().await;
    let limits = ConnectionLimits {
        header_timeout: Duration::from_millis(500),
        ..ConnectionLimits::default()
    };
    let (server, address) =
        serve_on_free_port(app(&cluster, GatewayOptions::default()), limits).await;
    within_test_timeout("closing an idle connection", async {
        let mut client = TcpStream::connect(address).await.unwrap();
        // Two requests on one kept-alive connection...
        for _ in 0..2 {
            client
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: shoal\r\n\r\n")
                .await
                .unwrap();
            let (status, _, body) = read_response(&mut client).await;
            assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
        }
        // ...then nothing: the wait for the next head is bounded by the header timeout.
        assert_eq!(read_until_closed(&mut client).await, "");
    })
    .await;
    server.stop(Duration::from_secs(5)).await;
    cluster.sharding.shutdown().await;
}

#[tokio::test]
async fn bodies_not_received_within_the_body_timeout_get_408_and_the_connection_closes() {
    let cluster = runner().await;
    let options = GatewayOptions {
        body_timeout: Duration::from_millis(500),
        ..GatewayOptions::default()
    };
    let (server, address) =
        serve_on_free_port(app(&cluster, options), ConnectionLimits::default()).await;
    within_test_timeout("cutting off stalled bodies", async {
        // Sends part of the body and stops.
        let mut stalled = TcpStream::connect(address).await.unwrap();
        stalled
            .write_all(
                b"POST /v1/entities/counter/a/increment HTTP/1.1\r\nHost: shoal\r\n\
                  Content-Length: 100\r\n\r\n{\"by\":",
            )
            .await
            .unwrap();
        // Keeps sending a body that never ends: the deadline is for the whole body, not each read.
        let (mut dripping, writer) = TcpStream::connect(address).await.unwrap().into_split();
        let dripper = tokio::spawn(drip(
            writer,
            b"POST /v1/entities/counter/b/increment HTTP/1.1\r\nHost: shoal\r\n\
              Content-Length: 100000\r\n\r\n",
        ));

        for socket in [
            &mut stalled as &mut (dyn AsyncRead + Unpin + Send),
            &mut dripping,
        ] {
            let (status, head, body) = read_response(socket).await;
            assert_eq!(status, 408, "{head}{body}");
            let error: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(error["code"], "request_timeout");
            assert!(
                head.to_ascii_lowercase().contains("connection: close"),
                "{head}"
            );
            assert_eq!(read_until_closed(socket).await, "");
        }
        dripper.await.unwrap();

        // A call refused before its body is read is answered at once; the unread rest of the body
        // cannot be waited for, so the connection is closed.
        let mut refused = TcpStream::connect(address).await.unwrap();
        refused
            .write_all(
                b"POST /v1/entities/nope/a/get HTTP/1.1\r\nHost: shoal\r\n\
                  Content-Length: 100\r\n\r\n{",
            )
            .await
            .unwrap();
        assert_eq!(read_response(&mut refused).await.0, 404);
        assert_eq!(read_until_closed(&mut refused).await, "");

        // A body sent at once is fine.
        let mut client = TcpStream::connect(address).await.unwrap();
        client
            .write_all(
                b"POST /v1/entities/counter/a/increment HTTP/1.1\r\nHost: shoal\r\n\
                  Content-Length: 8\r\n\r\n{\"by\":2}",
            )
            .await
            .unwrap();
        let (status, _, body) = read_response(&mut client).await;
        assert_eq!((status, body.as_str()), (200, "2"));
    })
    .await;
    server.stop(Duration::from_secs(5)).await;
    cluster.sharding.shutdown().await;
}

/// Polls `condition` every 10 ms (the test timeout bounds the wait).
async fn until(mut condition: impl FnMut() -> bool) {
    while !condition() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends `request` on a new connection and reads the answer.
async fn exchange(address: SocketAddr, request: &'static [u8]) -> (u16, String) {
    let mut client = TcpStream::connect(address).await.unwrap();
    client.write_all(request).await.unwrap();
    let (status, _, body) = read_response(&mut client).await;
    (status, body)
}

#[tokio::test]
async fn past_max_connections_new_connections_wait_until_one_closes() {
    let cluster = runner().await;
    let limits = ConnectionLimits {
        // Longer than the test: here only the clients close connections.
        header_timeout: Duration::from_secs(600),
        max_connections: 2,
    };
    let (server, address) =
        serve_on_free_port(app(&cluster, GatewayOptions::default()), limits).await;
    within_test_timeout("waiting for a free connection slot", async {
        let mut stalled = Vec::new();
        for _ in 0..2 {
            let mut socket = TcpStream::connect(address).await.unwrap();
            socket
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: shoal\r\n")
                .await
                .unwrap();
            stalled.push(socket);
        }
        until(|| server.open_connections() == 2).await;

        // A third connection is not refused: it waits (in the accept queue)...
        let mut third = TcpStream::connect(address).await.unwrap();
        third
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: shoal\r\n\r\n")
            .await
            .unwrap();
        // (No answer can come while the cap is reached; this only gives a gateway without a cap
        // the time to answer, which fails the test.)
        let early = tokio::time::timeout(Duration::from_millis(300), third.readable()).await;
        assert!(early.is_err(), "answered past the cap");
        assert_eq!(server.open_connections(), 2);
        // ...until a stalled client goes away.
        drop(stalled.pop());
        assert_eq!(read_response(&mut third).await.0, 200);
        assert_eq!(server.peak_connections(), 2, "the cap was exceeded");
    })
    .await;
    server.stop(Duration::from_secs(5)).await;
    cluster.sharding.shutdown().await;
}

#[tokio::test]
async fn stalled_clients_at_max_connections_do_not_stop_a_call_or_readyz() {
    let cluster = runner().await;
    let limits = ConnectionLimits {
        header_timeout: Duration::from_secs(1),
        max_connections: 8,
    };
    let (server, address) =
        serve_on_free_port(app(&cluster, GatewayOptions::default()), limits).await;
    within_test_timeout("a call past stalled clients", async {
        // As many slow-loris clients as the cap: each keeps sending a head that never ends.
        let mut stalled = Vec::new();
        let mut drippers = Vec::new();
        for _ in 0..8 {
            let (reader, writer) = TcpStream::connect(address).await.unwrap().into_split();
            drippers.push(tokio::spawn(drip(
                writer,
                b"GET /readyz HTTP/1.1\r\nHost: shoal\r\nX-Slow: ",
            )));
            stalled.push(reader);
        }
        until(|| server.open_connections() == 8).await;

        // A call and a readiness probe still get their answers: the header timeout sheds the
        // stalled clients, and the waiting connections take their slots.
        let call = tokio::spawn(exchange(
            address,
            b"POST /v1/entities/counter/c/increment HTTP/1.1\r\nHost: shoal\r\n\
              Content-Length: 2\r\n\r\n{}",
        ));
        let ready = tokio::spawn(exchange(
            address,
            b"GET /readyz HTTP/1.1\r\nHost: shoal\r\n\r\n",
        ));
        assert_eq!(call.await.unwrap(), (200, "1".to_owned()));
        let (status, body) = ready.await.unwrap();
        assert_eq!(status, 200, "{body}");

        // Every stalled client was closed without an answer, and the cap held throughout.
        for mut reader in stalled {
            assert_eq!(read_until_closed(&mut reader).await, "");
        }
        for dripper in drippers {
            dripper.await.unwrap();
        }
        assert!(
            server.peak_connections() <= 8,
            "{} connections were open at once",
            server.peak_connections()
        );
    })
    .await;
    server.stop(Duration::from_secs(5)).await;
    cluster.sharding.shutdown().await;
}
