//! Logs (text or JSON on stderr) and the Prometheus metrics recorder.

use std::io::IsTerminal;
use std::str::FromStr;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::task::JoinHandle;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogConfig, LogFormat};

/// Bucket bounds (seconds) of every `*_seconds` histogram: 100 µs to 30 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// The log filter does not parse.
    #[error("invalid log filter {0:?}")]
    Filter(String),
    /// The metrics recorder could not be built or installed.
    #[error("cannot install the metrics recorder: {0}")]
    Metrics(String),
}

/// Sends logs to stderr in `config`'s format, filtered by its level. Does nothing when a global
/// subscriber is already set (for example by a test).
pub fn init_logging(config: &LogConfig) -> Result<(), TelemetryError> {
    let filter = Targets::from_str(&config.level)
        .map_err(|_| TelemetryError::Filter(config.level.clone()))?;
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let layer = match config.format {
        LogFormat::Text => layer.boxed(),
        LogFormat::Json => layer
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(layer.with_filter(filter))
        .try_init();
    Ok(())
}

/// Installs the global Prometheus recorder (histograms with [`LATENCY_BUCKETS`]) and returns the
/// handle that renders `/metrics`.
pub fn install_metrics() -> Result<PrometheusHandle, TelemetryError> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS)
        .map_err(|e| TelemetryError::Metrics(e.to_string()))?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| TelemetryError::Metrics(e.to_string()))?;
    metrics::gauge!("shoal_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(handle)
}

/// Runs the recorder's periodic upkeep (draining histogram buffers) until the task is aborted.
pub fn spawn_upkeep(handle: PrometheusHandle) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    })
}
