//! Metric names and the Prometheus recorder; `proto::process` serves them.

use metrics::{describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit};
use metrics_exporter_prometheus::PrometheusHandle;
use proto::event::Phase;

pub const ROOMS: &str = "phasecast_engine_rooms";
pub const PLAYERS: &str = "phasecast_engine_players";
pub const COMMANDS: &str = "phasecast_engine_commands_total";
pub const COMMAND_SECONDS: &str = "phasecast_engine_command_seconds";
pub const SCHEDULER_LATENESS: &str = "phasecast_engine_scheduler_lateness_seconds";
pub const COMMIT_SECONDS: &str = "phasecast_engine_commit_seconds";
pub const EVENTS_PUBLISHED: &str = "phasecast_engine_events_published_total";
pub const NATS_CONNECTED: &str = "phasecast_engine_nats_connected";
pub const ROOMS_TAKEN_OVER: &str = "phasecast_engine_rooms_taken_over_total";
pub const OWNERSHIP_LOST: &str = "phasecast_engine_ownership_lost_total";
pub const STEPS_DEFERRED: &str = "phasecast_engine_steps_deferred_total";
pub const STORE_REPLICAS: &str = "phasecast_engine_store_replicas";
pub const LOBBY_RESTARTS: &str = "phasecast_engine_lobby_restarts_total";

/// Latency buckets from 50 µs to 5 s: scheduler lateness lives at the low end, a command
/// queued behind a slow NATS at the high end.
const BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
];

/// Installs the process-wide recorder once and describes every metric.
pub fn install() -> PrometheusHandle {
    proto::process::install_recorder(BUCKETS, describe)
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
        "How long after its deadline a phase change's events went out (its commit included, unless committed ahead: engine.commit_ahead)"
    );
    describe_histogram!(
        COMMIT_SECONDS,
        Unit::Seconds,
        "Time JetStream took to answer a room step's commit, taken or not: every step waits for it before its events go out"
    );
    describe_counter!(EVENTS_PUBLISHED, "Events published to NATS");
    describe_gauge!(NATS_CONNECTED, "1 while the NATS connection is up");
    describe_counter!(
        ROOMS_TAKEN_OVER,
        "Rooms this engine took over from an engine that died or stopped"
    );
    describe_counter!(
        OWNERSHIP_LOST,
        "Rooms this engine found another engine owned (a commit fenced, or a lapsed lease)"
    );
    describe_counter!(
        STEPS_DEFERRED,
        "Room steps undone because JetStream did not take their commit (why=store) or the engine's NATS connection was down (why=disconnected); retried later"
    );
    describe_counter!(
        LOBBY_RESTARTS,
        "Times the lobby bucket went back below a revision this engine had seen, and its lobby was read again"
    );
    describe_gauge!(
        STORE_REPLICAS,
        "Copies JetStream keeps of the rooms bucket (1: one server; 3: a cluster)"
    );
    for phase in Phase::ALL {
        gauge!(ROOMS, "phase" => phase.as_str()).increment(0.0);
    }
    gauge!(PLAYERS).increment(0.0);
    metrics::counter!(EVENTS_PUBLISHED).absolute(0);
    metrics::counter!(ROOMS_TAKEN_OVER).absolute(0);
    metrics::counter!(OWNERSHIP_LOST).absolute(0);
    for why in ["store", "disconnected"] {
        metrics::counter!(STEPS_DEFERRED, "why" => why).absolute(0);
    }
    metrics::counter!(LOBBY_RESTARTS).absolute(0);
    metrics::counter!(COMMANDS, "type" => "join", "result" => "ok").absolute(0);
    // Registering the histograms makes them render (empty) before their first sample.
    let _ = histogram!(SCHEDULER_LATENESS);
    let _ = histogram!(COMMIT_SECONDS);
    let _ = histogram!(COMMAND_SECONDS, "type" => "join");
}
