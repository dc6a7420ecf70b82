//! The engine process: connects to NATS and JetStream, serves `game.lobby.create`, runs the
//! rooms it owns and the lobby, takes over the rooms of engines that are gone, and on SIGTERM
//! hands its own rooms over.
//!
//! Rooms live in JetStream ([`crate::store`]), not in this process: any number of engines
//! share one NATS, `lobby.create` reaches one of them through the queue group, that engine
//! owns the new room until it stops or dies, and then another carries it on
//! ([`crate::ownership`]).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use async_nats::Message;
use futures::StreamExt;
use metrics::gauge;
use proto::command::decode_request;
use proto::lobby::{CreateRoom, Created};
use proto::subject::ENGINE_QUEUE_GROUP;
use proto::{Command, ErrorCode, Rejection, Reply, RequestId, RoomCode, StoreNames, Subjects};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::TokenSigner;
use crate::config::Config;
use crate::context::Context;
use crate::lobby::Lobby;
use crate::metrics as m;
use crate::outgoing::Now;
use crate::outgoing::{Ack, Effects};
use crate::ownership;
use crate::room::{seat_claims, Room};
use crate::rules::{draw_room_code, Game};
use crate::scheduler::{Scheduler, SchedulerThread};
use crate::store::{choose_replicas, Answer, RoomRecord, Store, StoreLimits};

/// A configured engine, connected and bound, not yet serving.
pub struct Engine {
    ctx: Arc<Context>,
    config: Config,
    admin: TcpListener,
    scheduler: SchedulerThread,
}

impl Engine {
    /// Checks the config (key file first), connects to NATS, opens the JetStream store, then
    /// binds the admin listener.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let key_file = config
            .auth
            .signing_key_file
            .as_deref()
            .context("auth.signing_key_file is required (a PKCS#8 PEM Ed25519 private key)")?;
        let signer = TokenSigner::from_pem_file(key_file, config.auth.token_ttl)?;
        let engine_id = config.engine_id()?;
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
        let names = StoreNames::new(&config.subject_prefix);
        let (replicas, from) = choose_replicas(&client, &names, config.store.replicas)
            .await
            .context("store: JetStream must be enabled (nats-server -js)")?;
        tracing::info!(
            replicas,
            from = %from,
            server = %client.server_info().server_name,
            "store: {replicas} copies of each bucket and stream ({from})"
        );
        let limits = StoreLimits {
            replicas,
            retention: config.store_retention(),
            history: config.engine.history,
            max_bytes: config.store.max_bytes,
        };
        let store = Store::open(client.clone(), names, &limits)
            .await
            .context(if replicas > 1 {
                "store: JetStream must be enabled (nats-server -js) on enough servers for the \
                 copies asked for (store.replicas), with room for the buckets and the log"
            } else {
                "store: JetStream must be enabled (nats-server -js) with room for the buckets and the log"
            })?;
        gauge!(m::STORE_REPLICAS).set(store.replicas as f64);
        let admin = TcpListener::bind(config.engine.admin_listen)
            .await
            .with_context(|| {
                format!(
                    "engine.admin_listen: cannot bind {}",
                    config.engine.admin_listen
                )
            })?;
        let (scheduler, scheduler_thread) = Scheduler::start();
        let ctx = Arc::new(Context {
            client,
            subjects: Subjects::new(config.subject_prefix.clone()),
            store,
            signer,
            engine_id,
            lease: config.engine.lease,
            history: config.engine.history,
            min_phase: config.engine.min_phase,
            commit_ahead: config.engine.commit_ahead,
            scheduler,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            recheck: tokio::sync::watch::Sender::new(0),
            last_beat: std::sync::Mutex::new(None),
            lobby_mark: std::sync::Mutex::default(),
            lobby_went_back: tokio::sync::Notify::new(),
            lobby_publisher: tokio::sync::watch::Sender::new(false),
        });
        Ok(Engine {
            ctx,
            config,
            admin,
            scheduler: scheduler_thread,
        })
    }

    /// Where `/metrics` and `/healthz` are served.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr().expect("bound listener")
    }

    /// This engine's id in the heartbeat bucket and in the records of the rooms it owns.
    pub fn id(&self) -> &str {
        &self.ctx.engine_id
    }

    /// Serves until `shutdown` resolves, then stops its rooms (within
    /// `engine.shutdown_grace`), hands them over to the other engines and drains NATS.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let Engine {
            ctx,
            config,
            admin,
            scheduler,
        } = self;
        let tasks = &ctx.tasks;
        let client = &ctx.client;
        let mut creates = client
            .queue_subscribe(ctx.subjects.lobby_create(), ENGINE_QUEUE_GROUP.into())
            .await?;
        let lobby_snaps = client
            .queue_subscribe(ctx.subjects.lobby_snap(), ENGINE_QUEUE_GROUP.into())
            .await?;
        // Every engine follows what is published, to know where a new publisher takes over,
        // and reads where the bucket ends before its first heartbeat can make another
        // engine stop publishing (what comes after is published by one or the other).
        let lobby_published = client.subscribe(ctx.subjects.lobby_events()).await?;
        let lobby = Lobby::new(ctx.clone(), Lobby::bucket_end(&ctx).await);
        tasks.spawn(lobby.run(lobby_snaps, lobby_published));
        tasks.spawn(ownership::run(ctx.clone()));
        tasks.spawn(proto::process::serve_admin(
            admin,
            m::install(),
            ctx.shutdown.clone(),
        ));
        client.flush().await?;
        tracing::info!(
            engine = %ctx.engine_id,
            nats = %config.nats.url,
            prefix = %config.subject_prefix,
            replicas = ctx.store.replicas,
            "engine ready"
        );

        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                Some(msg) = creates.next() => create_room(&ctx, msg).await,
                () = &mut shutdown => break,
                else => break,
            }
        }

        tracing::info!("shutting down: handing rooms over");
        let _ = creates.unsubscribe().await;
        ctx.shutdown.cancel();
        tasks.close();
        if tokio::time::timeout(config.engine.shutdown_grace, tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("rooms did not stop within engine.shutdown_grace");
        }
        ownership::hand_over(&ctx).await;
        drop(scheduler);
        ctx.client.drain().await?;
        Ok(())
    }
}

/// The actor a create's answer is remembered under in its room's record (a player's is their
/// id, alphanumeric; a join's `join:<name>`: neither can be this).
const CREATE_ACTOR: &str = "create:room";

/// What a create with `request_id` answered, if `stored` (the record under the code the
/// request stands for) is of the room it made, still open and remembering the answer: the
/// same code, seat and token. `None`: no such room, another room holds the code, or the
/// answer is forgotten.
fn created_before(
    ctx: &Context,
    stored: Option<RoomRecord>,
    request_id: &RequestId,
) -> Result<Option<Created>, Rejection> {
    let Some(mut record) = stored.filter(|r| !r.closed) else {
        return Ok(None);
    };
    record.forget_old_seats(Now::system().unix_ms / 1000);
    let Some(answer) = record.remembered(CREATE_ACTOR, request_id.as_str()) else {
        return Ok(None);
    };
    created(ctx, record.game.code(), answer).map(Some)
}

/// The reply to a create that made room `code`, the first time and on every retry alike:
/// with its creator's seat, if it seated one.
fn created(ctx: &Context, code: &RoomCode, answer: &Answer) -> Result<Created, Rejection> {
    let (player_id, token) = (answer.seat.as_ref())
        .map(|claims| ctx.signer.seat(claims))
        .transpose()?
        .unzip();
    Ok(Created {
        code: code.clone(),
        player_id,
        token,
    })
}

/// Attempts at drawing a free room code before giving up (a collision is already one in
/// 10^18; this bounds the loop, not the odds).
const CODE_ATTEMPTS: usize = 8;

/// `game.lobby.create`: validate, store the room under a code no room has (create-if-absent
/// in the rooms bucket, so two engines can never hand out one code), start it, reply. With a
/// `name`, the creator is seated in the room's first step, committed with the room itself:
/// a public room is never listed, nor joinable by someone quicker, before its host is in.
/// With a `request_id`, the first code tried is the one the request stands for, and the
/// record remembers the answer (as a command's): a retry finds that room there, and answers
/// with it. (If another room holds that code, the create goes on under a random one, and a
/// retry of it would not find it.)
async fn create_room(ctx: &Arc<Context>, msg: Message) {
    let Some(reply_to) = msg.reply.clone() else {
        return;
    };
    let result = async {
        let mut settings: CreateRoom = decode_request(&msg.payload)?;
        let creator = settings.name.take();
        let request_id = settings.request_id.take();
        let cannot = |e: &dyn std::fmt::Display| {
            tracing::error!(error = %e, "cannot store a new room");
            Rejection::new(ErrorCode::Unavailable, "the engine cannot open rooms now")
        };
        let load = |code: RoomCode| async move {
            let stored = ctx.store.load(&code).await.map_err(|e| cannot(&e))?;
            Ok::<_, Rejection>(stored.map(|(record, _)| record))
        };
        // The request as the code derives from it: the same id asking for another room
        // (another title, another name) stands for another code.
        let derived = request_id.as_ref().map(|id| {
            let asked = serde_json::to_vec(&(&settings, &creator)).expect("requests serialise");
            (id, ctx.signer.room_code_for(id, &asked))
        });
        if let Some((id, code)) = &derived {
            if let Some(first) = created_before(ctx, load(code.clone()).await?, id)? {
                return Ok(first);
            }
        }
        for attempt in 0..CODE_ATTEMPTS {
            let derived = derived.as_ref().filter(|_| attempt == 0);
            let code = match derived {
                Some((_, code)) => code.clone(),
                None => draw_room_code(&mut rand::rng()),
            };
            let now = Now::system();
            let game = Game::new(code.clone(), settings.clone(), ctx.min_phase, now)?;
            let mut record = RoomRecord::new(ctx.engine_id.clone(), game);
            let mut answer = Answer::default();
            if let Some(name) = &creator {
                let mut fx = Effects::default();
                let join = Command::Join { name: name.clone() };
                let Ack::Joined(player_id) =
                    record.game.handle(join, now, &mut rand::rng(), &mut fx)?
                else {
                    unreachable!("a join acknowledges a seat");
                };
                answer.seat = Some(seat_claims(ctx, &record.game, &player_id));
                record.step(fx);
            }
            let reply = created(ctx, &code, &answer)?;
            if let Some((id, _)) = derived {
                record.remember(CREATE_ACTOR.into(), id.as_str().into(), answer);
            }
            // The index first: a room is never stored without a way for others to find it.
            let index = format!("{}.{code}", ctx.engine_id);
            (ctx.store.owners.put(&index, bytes::Bytes::new()).await).map_err(|e| cannot(&e))?;
            match ctx.store.create(&code, &record).await {
                Ok(Some(revision)) => {
                    if let Err(e) = Room::start(ctx, record, revision, false).await {
                        // Not left stored with nobody running it (a retry would find it).
                        let _ = ctx.store.rooms.delete(code.as_str()).await;
                        let _ = ctx.store.owners.delete(&index).await;
                        return Err(cannot(&e));
                    }
                    return Ok(reply);
                }
                Ok(None) => {
                    // Taken: by another room, or (a copy of this request racing this one)
                    // by the room this request made, perhaps on this engine, whose index key
                    // this is then: it stays while that room is open here.
                    let stored = load(code.clone()).await?;
                    if !stored
                        .as_ref()
                        .is_some_and(|r| r.owner == ctx.engine_id && !r.closed)
                    {
                        let _ = ctx.store.owners.delete(&index).await;
                    }
                    if let Some((id, _)) = derived {
                        if let Some(first) = created_before(ctx, stored, id)? {
                            return Ok(first);
                        }
                    }
                }
                Err(e) => return Err(cannot(&e)),
            }
        }
        Err(cannot(&"no free room code"))
    }
    .await;
    ctx.reply(reply_to, Reply::from(result).to_bytes(), "a create")
        .await;
}
