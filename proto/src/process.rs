//! What every Phasecast process does alike: logs as its config says, stops on SIGTERM or
//! Ctrl-C, and serves its Prometheus metrics on a private admin listener.
//!
//! The engine and the gateway may share no crate but this one, and an operator expects the two
//! to start, log, stop and be scraped the same way; so that plumbing lives here, beside the
//! config it reads, rather than twice.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{LogConfig, LogFormat};

/// Installs the log subscriber: `RUST_LOG` filters (default `info`), `log.format` shapes.
pub fn init_logs(config: &LogConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match config.format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.init(),
    }
}

/// SIGTERM or Ctrl-C. Call it first thing: the handler is installed at once, so a signal
/// during startup is a clean stop too rather than the default kill.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// Installs the process-wide Prometheus recorder once, with these buckets for every
/// `*_seconds` histogram, and runs `describe` (which should name and zero every metric, so
/// that each is exported from the start rather than from its first use).
pub fn install_recorder(buckets: &[f64], describe: fn()) -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), buckets)
                .expect("buckets are not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another component of the same process (a test) may have installed one first;
            // then this handle renders nothing, which only matters to that test.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

/// Serves `/metrics` and `/healthz` until `shutdown`, running the recorder's upkeep.
pub async fn serve_admin(
    listener: TcpListener,
    handle: PrometheusHandle,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let upkeep = handle.clone();
    let upkeep_stop = shutdown.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = tick.tick() => upkeep.run_upkeep(),
                () = upkeep_stop.cancelled() => break,
            }
        }
    });
    let app = Router::new()
        .route("/metrics", get(move || async move { handle.render() }))
        .route("/healthz", get(|| async { "ok\n" }));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
