//! # shoal-runner
//!
//! The `shoal` binary's library: everything `shoal run` is made of, usable on its own.
//!
//! - [`config`]: settings from defaults, a TOML file, `SHOAL_*` variables and flags, validated.
//! - [`node`]: one runner process — storage, the runner transport, the HTTP gateway, metrics —
//!   started in order and stopped gracefully.
//! - [`gateway`]: `POST /v1/entities/{type}/{id}/{tag}` with JSON bodies, `/healthz`, `/readyz`,
//!   `/metrics`.
//! - [`health`]: readiness (storage reachable, registered, holding its share of shards).
//! - [`entities`]: the built-in demo entities (`counter`) and the gateway's routes.
//! - [`status`]: the cluster as storage shows it (what `shoal status` prints).
//! - [`telemetry`]: logs and the Prometheus recorder.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use shoal_runner::config::{RunnerConfig, Sources};
//! use shoal_runner::node::Node;
//!
//! let config = RunnerConfig::resolve(&Sources::new().with_env(std::env::vars()))?;
//! let node = Node::start(&config, None).await?;
//! println!("gateway on {:?}", node.addresses().gateway);
//! node.shutdown().await;
//! # Ok(()) }
//! ```

pub mod config;
pub mod entities;
pub mod gateway;
pub mod health;
pub mod node;
pub mod status;
pub mod telemetry;
