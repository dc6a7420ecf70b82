//! The gateway process: its router, and how it starts, follows NATS and stops.

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::Event;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use metrics::gauge;
use metrics_exporter_prometheus::PrometheusHandle;
use proto::{ErrorCode, StoreNames, Subjects};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::auth::Verifier;
use crate::bridge;
use crate::config::Config;
use crate::connection;
use crate::error::ApiError;
use crate::heap;
use crate::hub::Hub;
use crate::metrics as m;
use crate::state::{AppState, Inner};
use crate::stream::{self, Route};

/// The public HTTP surface.
pub fn app(state: AppState) -> Router {
    let cors = (!state.config.cors_origins.is_empty()).then(|| {
        let origins: Vec<HeaderValue> = state
            .config
            .cors_origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                axum::http::header::CONTENT_TYPE,
                axum::http::header::AUTHORIZATION,
                axum::http::HeaderName::from_static("last-event-id"),
            ])
            .allow_credentials(true)
    });
    let router = Router::new()
        .route(Route::LOBBY, get(lobby_events))
        .route(Route::ROOM, get(room_events))
        .route("/v1/rooms", post(bridge::create))
        .route("/v1/rooms/{code}/join", post(bridge::join))
        .route("/v1/rooms/{code}/commands", post(bridge::command))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                ErrorCode::MethodNotAllowed,
                "this route does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        // A body sent a byte now and then would hold its task and socket for good.
        .layer(RequestBodyTimeoutLayer::new(connection::HEAD_TIMEOUT))
        .with_state(state);
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

async fn lobby_events(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let opened = stream::open_request(state, Route::Lobby, query.as_deref(), &headers).await?;
    Ok(opened.into_response())
}

async fn room_events(
    State(state): State<AppState>,
    Path(code): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let route = Route::Room(&code);
    let opened = stream::open_request(state, route, query.as_deref(), &headers).await?;
    Ok(opened.into_response())
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.nats_connected() {
        "ready\n".into_response()
    } else {
        ApiError::unavailable("NATS is unreachable", state.config.retry).into_response()
    }
}

/// A configured gateway, bound and connecting, not yet serving.
pub struct Gateway {
    state: AppState,
    listener: TcpListener,
    admin: TcpListener,
    metrics: PrometheusHandle,
    nats_events: mpsc::UnboundedReceiver<Event>,
}

impl Gateway {
    /// Checks the config (key file, NATS address), then binds both listeners. NATS being down
    /// is not an error: the gateway answers 503 until it is back.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let key_file = config
            .auth
            .verify_key_file
            .as_deref()
            .context("auth.verify_key_file is required (the engine's Ed25519 public key)")?;
        let verifier = Verifier::from_pem_file(key_file)?;
        anyhow::ensure!(
            !config.gateway.heartbeat.is_zero(),
            "gateway.heartbeat must be longer than zero"
        );
        let metrics = m::install(config.gateway.max_connections);
        let (events_tx, nats_events) = mpsc::unbounded_channel();
        let client = async_nats::ConnectOptions::new()
            .name("phasecast-gateway")
            .retry_on_initial_connect()
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((attempts as u64 * 100).min(2_000))
            })
            .event_callback(move |event| {
                let tx = events_tx.clone();
                async move {
                    let _ = tx.send(event);
                }
            })
            .connect(&config.nats.url)
            .await
            .with_context(|| format!("nats.url: {} is not a NATS address", config.nats.url))?;
        let listener = connection::listen(config.gateway.listen)
            .with_context(|| format!("gateway.listen: cannot bind {}", config.gateway.listen))?;
        let admin = TcpListener::bind(config.gateway.admin_listen)
            .await
            .with_context(|| {
                format!(
                    "gateway.admin_listen: cannot bind {}",
                    config.gateway.admin_listen
                )
            })?;
        let subjects = Subjects::new(config.subject_prefix.clone());
        let shutdown = CancellationToken::new();
        let hub = Hub::new(
            client.clone(),
            subjects.clone(),
            config.gateway.client_queue,
            config.gateway.heartbeat,
            config.gateway.request_timeout,
            shutdown.clone(),
        );
        let state = AppState(Arc::new(Inner {
            client,
            store: StoreNames::new(&config.subject_prefix),
            subjects,
            hub,
            verifier,
            config: config.gateway,
            connections: AtomicUsize::new(0),
            shutdown,
        }));
        Ok(Gateway {
            state,
            listener,
            admin,
            metrics,
            nats_events,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr().expect("bound listener")
    }

    /// Serves until `shutdown` resolves; then stops accepting, ends every stream (browsers
    /// reconnect to another gateway), waits up to `gateway.shutdown_grace` for responses in
    /// flight, and drains NATS.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Gateway {
            state,
            listener,
            admin,
            metrics,
            nats_events,
        } = self;
        tokio::spawn(proto::process::serve_admin(
            admin,
            metrics,
            state.shutdown.clone(),
        ));
        tokio::spawn(follow_nats(state.clone(), nats_events));
        tokio::spawn(heap::sample(state.shutdown.clone()));
        let token = state.shutdown.clone();
        tokio::spawn(async move {
            shutdown.await;
            token.cancel();
        });
        let server = connection::serve(listener, state.clone(), app(state.clone()));
        let grace = state.config.shutdown_grace;
        let late = async {
            state.shutdown.cancelled().await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            () = server => {}
            () = late => tracing::warn!("requests still open after gateway.shutdown_grace"),
        }
        state.client.drain().await?;
        Ok(())
    }
}

/// How far apart, at most, topics ask for their catch-up after a reconnect: a gateway
/// holding thousands of topics spreads its requests over this rather than sending them at once.
const RESYNC_SPREAD: Duration = Duration::from_secs(1);
/// The least time between two resyncs for messages the NATS client dropped.
const DROP_RESYNC_EVERY: Duration = Duration::from_secs(1);

/// Tracks the NATS connection: the gauge, and pausing then resyncing every stream across an
/// outage (or after the client dropped messages) so that no client misses an event.
async fn follow_nats(state: AppState, mut events: mpsc::UnboundedReceiver<Event>) {
    // async-nats reports each message it drops: one resync per burst is enough (each topic
    // catches up from its streams' last ids, which covers the whole burst).
    let mut last_drop_resync: Option<tokio::time::Instant> = None;
    while let Some(event) = events.recv().await {
        match event {
            Event::Connected => {
                gauge!(m::NATS_CONNECTED).set(1.0);
                state.hub.resync(RESYNC_SPREAD);
                tracing::info!("nats connected");
            }
            Event::Disconnected => {
                gauge!(m::NATS_CONNECTED).set(0.0);
                state.hub.pause();
                tracing::warn!("nats disconnected");
            }
            // The client dropped messages for a subscription whose channel was full (which
            // one, async-nats does not say): every topic catches up from its streams' last
            // ids, once per burst.
            Event::SlowConsumer(_) => {
                let now = tokio::time::Instant::now();
                if last_drop_resync.is_none_or(|at| now - at >= DROP_RESYNC_EVERY) {
                    last_drop_resync = Some(now);
                    state.hub.resync(RESYNC_SPREAD);
                    tracing::warn!("nats dropped messages: every stream catches up");
                }
            }
            other => tracing::info!(event = %other, "nats"),
        }
    }
}
