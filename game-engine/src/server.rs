//! The engine process: connects to NATS, serves `game.lobby.create`, runs rooms and the lobby,
//! and stops cleanly.
//!
//! Each room subscribes to its own `cmd` and `snap` subjects when it is created, so several
//! engines share one NATS without coordination: `lobby.create` reaches one of them through the
//! queue group, and that engine alone answers for the room from then on. A command for a room
//! that no engine holds gets NATS's "no responders" at once.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use async_nats::{Client, Message};
use futures::StreamExt;
use metrics::gauge;
use proto::command::decode_request;
use proto::lobby::{CreateRoom, Created};
use proto::subject::ENGINE_QUEUE_GROUP;
use proto::{Reply, RoomCode, Subjects};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::TokenSigner;
use crate::config::Config;
use crate::lobby::{Lobby, LobbyChange};
use crate::metrics as m;
use crate::room::game::{random_token, Game, Now};
use crate::room::Room;
use crate::scheduler::{Scheduler, SchedulerThread};

/// What every room and the lobby share.
pub struct Context {
    pub client: Client,
    pub subjects: Subjects,
    pub signer: TokenSigner,
    pub lobby: mpsc::UnboundedSender<LobbyChange>,
    pub history: usize,
    pub min_phase: std::time::Duration,
    pub scheduler: Scheduler,
    pub shutdown: CancellationToken,
}

impl Context {
    /// Publishes a reply to a request; one that cannot be sent is logged (`what` says which),
    /// and its requester times out.
    pub async fn reply(&self, to: async_nats::Subject, body: Vec<u8>, what: &str) {
        if let Err(e) = self.client.publish(to, body.into()).await {
            tracing::warn!(error = %e, "could not reply to {what}");
        }
    }
}

/// A configured engine, connected and bound, not yet serving.
pub struct Engine {
    ctx: Arc<Context>,
    config: Config,
    admin: TcpListener,
    lobby_changes: mpsc::UnboundedReceiver<LobbyChange>,
    scheduler: SchedulerThread,
}

impl Engine {
    /// Checks the config (key file first), connects to NATS, then binds the admin listener.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let key_file = config
            .auth
            .signing_key_file
            .as_deref()
            .context("auth.signing_key_file is required (a PKCS#8 PEM Ed25519 private key)")?;
        let signer = TokenSigner::from_pem_file(key_file, config.auth.token_ttl)?;
        m::install();
        let client = async_nats::ConnectOptions::new()
            .name("phasecast-engine")
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => gauge!(m::NATS_CONNECTED).set(1.0),
                    async_nats::Event::Disconnected => gauge!(m::NATS_CONNECTED).set(0.0),
                    other => tracing::info!(event = %other, "nats"),
                }
            })
            .connect(&config.nats.url)
            .await
            .with_context(|| format!("nats.url: cannot connect to {}", config.nats.url))?;
        gauge!(m::NATS_CONNECTED).set(1.0);
        let admin = TcpListener::bind(config.engine.admin_listen)
            .await
            .with_context(|| {
                format!(
                    "engine.admin_listen: cannot bind {}",
                    config.engine.admin_listen
                )
            })?;
        let (lobby, lobby_changes) = mpsc::unbounded_channel();
        let (scheduler, scheduler_thread) = Scheduler::start();
        let ctx = Arc::new(Context {
            client,
            subjects: Subjects::new(config.subject_prefix.clone()),
            signer,
            lobby,
            history: config.engine.history,
            min_phase: config.engine.min_phase,
            scheduler,
            shutdown: CancellationToken::new(),
        });
        Ok(Engine {
            ctx,
            config,
            admin,
            lobby_changes,
            scheduler: scheduler_thread,
        })
    }

    /// Where `/metrics` and `/healthz` are served.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr().expect("bound listener")
    }

    /// Serves until `shutdown` resolves, then gives rooms `engine.shutdown_grace` to stop and
    /// drains the NATS connection.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let Engine {
            ctx,
            config,
            admin,
            lobby_changes,
            scheduler,
        } = self;
        let tasks = TaskTracker::new();
        let client = &ctx.client;
        let mut creates = client
            .queue_subscribe(ctx.subjects.lobby_create(), ENGINE_QUEUE_GROUP.into())
            .await?;
        let lobby_snaps = client.subscribe(ctx.subjects.lobby_snap()).await?;
        tasks.spawn(Lobby::new(ctx.clone()).run(lobby_changes, lobby_snaps));
        tasks.spawn(proto::process::serve_admin(
            admin,
            m::install(),
            ctx.shutdown.clone(),
        ));
        client.flush().await?;
        tracing::info!(nats = %config.nats.url, prefix = %config.subject_prefix, "engine ready");

        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                Some(msg) = creates.next() => create_room(&ctx, &tasks, msg).await,
                () = &mut shutdown => break,
                else => break,
            }
        }

        tracing::info!("shutting down");
        let _ = creates.unsubscribe().await;
        ctx.shutdown.cancel();
        tasks.close();
        if tokio::time::timeout(config.engine.shutdown_grace, tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("rooms did not stop within engine.shutdown_grace");
        }
        drop(scheduler);
        ctx.client.drain().await?;
        Ok(())
    }
}

/// `game.lobby.create`: validate, subscribe the new room's subjects, start it, reply.
async fn create_room(ctx: &Arc<Context>, tasks: &TaskTracker, msg: Message) {
    let Some(reply_to) = msg.reply.clone() else {
        return;
    };
    let result = async {
        let settings: CreateRoom = decode_request(&msg.payload)?;
        let code: RoomCode = random_token(&mut rand::rng(), 10);
        let game = Game::new(code.clone(), settings, ctx.min_phase, Now::system())?;
        let subscribed = async {
            let commands = ctx.client.subscribe(ctx.subjects.room_cmd(&code)).await?;
            let snaps = ctx.client.subscribe(ctx.subjects.room_snap(&code)).await?;
            Ok::<_, async_nats::SubscribeError>((commands, snaps))
        }
        .await;
        let (commands, snaps) = subscribed.map_err(|e| {
            tracing::error!(error = %e, "cannot subscribe a new room");
            proto::Rejection::new(
                proto::ErrorCode::Internal,
                "the engine cannot open rooms now",
            )
        })?;
        tasks.spawn(Room::new(ctx.clone(), game).run(commands, snaps));
        Ok(Created { code })
    }
    .await;
    ctx.reply(reply_to, Reply::from(result).to_bytes(), "a create")
        .await;
}
