//! Metric names and the Prometheus recorder; `proto::process` serves them.
//!
//! Labels are bounded: a stream kind, an auth failure reason. Never a room code.

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};
use metrics_exporter_prometheus::PrometheusHandle;

pub const CONNECTIONS: &str = "phasecast_gateway_connections";
pub const CONNECTIONS_OPENED: &str = "phasecast_gateway_connections_opened_total";
pub const CONNECTION_LIMIT: &str = "phasecast_gateway_connection_limit";
pub const EVENTS_DELIVERED: &str = "phasecast_gateway_events_delivered_total";
pub const EVENTS_MALFORMED: &str = "phasecast_gateway_events_malformed_total";
pub const SLOW_CONSUMERS: &str = "phasecast_gateway_slow_consumer_disconnects_total";
pub const STREAMS_LAGGED: &str = "phasecast_gateway_streams_lagged_total";
pub const CATCH_UP_REQUESTS: &str = "phasecast_gateway_catch_up_requests_total";
pub const STREAM_RESETS: &str = "phasecast_gateway_stream_resets_total";
pub const NATS_SUBSCRIPTIONS: &str = "phasecast_gateway_nats_subscriptions";
pub const NATS_CONNECTED: &str = "phasecast_gateway_nats_connected";
pub const SNAPSHOT_SECONDS: &str = "phasecast_gateway_snapshot_seconds";
pub const AUTH_FAILURES: &str = "phasecast_gateway_auth_failures_total";
pub const COMMAND_SECONDS: &str = "phasecast_gateway_command_seconds";
pub const HEAP_ALLOCATED: &str = "phasecast_gateway_heap_allocated_bytes";
pub const HEAP_RESIDENT: &str = "phasecast_gateway_heap_resident_bytes";

const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Installs the process-wide recorder once and describes every metric.
pub fn install(connection_limit: usize) -> PrometheusHandle {
    let handle = proto::process::install_recorder(BUCKETS, describe);
    gauge!(CONNECTION_LIMIT).set(connection_limit as f64);
    handle
}

fn describe() {
    describe_gauge!(CONNECTIONS, "Open SSE connections by stream kind");
    describe_counter!(CONNECTIONS_OPENED, "SSE connections opened by stream kind");
    describe_gauge!(CONNECTION_LIMIT, "gateway.max_connections");
    describe_counter!(
        EVENTS_DELIVERED,
        "Events passed to connections, snapshots and catch-ups included"
    );
    describe_counter!(
        EVENTS_MALFORMED,
        "NATS messages dropped for lacking a valid Sse-Id"
    );
    describe_counter!(
        SLOW_CONSUMERS,
        "Connections dropped for not reading: no write progress for the write stall"
    );
    describe_counter!(
        STREAMS_LAGGED,
        "Times a connection fell a whole ring behind and caught up by request"
    );
    describe_counter!(
        CATCH_UP_REQUESTS,
        "Catch-up requests sent to engines (after an outage or a lag), shared by the streams that needed the same one"
    );
    describe_counter!(
        STREAM_RESETS,
        "Times a stream's ids went back (reused, or the backend behind) and its clients started again from a snapshot"
    );
    describe_gauge!(
        NATS_SUBSCRIPTIONS,
        "NATS subscriptions held for watched streams"
    );
    describe_gauge!(NATS_CONNECTED, "1 while the NATS connection is up");
    describe_histogram!(
        SNAPSHOT_SECONDS,
        Unit::Seconds,
        "Time to fetch a stream's snapshot"
    );
    describe_counter!(AUTH_FAILURES, "Rejected tokens by reason");
    describe_histogram!(
        COMMAND_SECONDS,
        Unit::Seconds,
        "Time for the engine to answer a bridged request"
    );
    describe_gauge!(
        HEAP_ALLOCATED,
        Unit::Bytes,
        "Heap the gateway's data holds, by the allocator's count"
    );
    describe_gauge!(
        HEAP_RESIDENT,
        Unit::Bytes,
        "Memory the allocator keeps resident for the heap (allocated plus its slack)"
    );
    for kind in ["lobby", "room"] {
        gauge!(CONNECTIONS, "stream" => kind).increment(0.0);
        counter!(CONNECTIONS_OPENED, "stream" => kind).absolute(0);
    }
    for reason in ["missing", "invalid", "expired", "wrong_room"] {
        counter!(AUTH_FAILURES, "reason" => reason).absolute(0);
    }
    counter!(EVENTS_DELIVERED).absolute(0);
    counter!(EVENTS_MALFORMED).absolute(0);
    counter!(SLOW_CONSUMERS).absolute(0);
    counter!(STREAMS_LAGGED).absolute(0);
    counter!(CATCH_UP_REQUESTS).absolute(0);
    gauge!(NATS_SUBSCRIPTIONS).increment(0.0);
    gauge!(NATS_CONNECTED).increment(0.0);
    // Registering the histograms makes them render (empty) before their first sample.
    let _ = histogram!(SNAPSHOT_SECONDS);
    let _ = histogram!(COMMAND_SECONDS);
}
