//! Metric names, the Prometheus recorder and the admin listener (`/metrics`, `/healthz`).

use std::sync::OnceLock;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use metrics::{describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use proto::event::Phase;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const ROOMS: &str = "phasecast_engine_rooms";
pub const PLAYERS: &str = "phasecast_engine_players";
pub const COMMANDS: &str = "phasecast_engine_commands_total";
pub const COMMAND_SECONDS: &str = "phasecast_engine_command_seconds";
pub const SCHEDULER_LATENESS: &str = "phasecast_engine_scheduler_lateness_seconds";
pub const EVENTS_PUBLISHED: &str = "phasecast_engine_events_published_total";
pub const NATS_CONNECTED: &str = "phasecast_engine_nats_connected";

/// Latency buckets from 50 µs to 5 s: scheduler lateness lives at the low end, a command
/// queued behind a slow NATS at the high end.
const BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
];

/// Installs the process-wide recorder once and describes every metric, so that each one is
/// exported from the start rather than from its first use.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
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

fn describe() {
    describe_gauge!(ROOMS, "Rooms by phase");
    describe_gauge!(PLAYERS, "Players in rooms");
    describe_counter!(COMMANDS, "Room commands by type and result");
    describe_histogram!(
        COMMAND_SECONDS,
        Unit::Seconds,
        "Time to handle a room command"
    );
    describe_histogram!(
        SCHEDULER_LATENESS,
        Unit::Seconds,
        "How long after its deadline a phase change fired"
    );
    describe_counter!(EVENTS_PUBLISHED, "Events published to NATS");
    describe_gauge!(NATS_CONNECTED, "1 while the NATS connection is up");
    for phase in Phase::ALL {
        gauge!(ROOMS, "phase" => phase.as_str()).increment(0.0);
    }
    gauge!(PLAYERS).increment(0.0);
    metrics::counter!(EVENTS_PUBLISHED).absolute(0);
    metrics::counter!(COMMANDS, "type" => "join", "result" => "ok").absolute(0);
    // Registering the histograms makes them render (empty) before their first sample.
    let _ = histogram!(SCHEDULER_LATENESS);
    let _ = histogram!(COMMAND_SECONDS, "type" => "join");
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
