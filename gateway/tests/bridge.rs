//! The command bridge against the real engine, driven the way a browser drives it.

mod common;

use common::{EngineProcess, FakeStream, Setup, Sse, WAIT};
use futures::StreamExt;
use proto::{PlayerId, RoomCode};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::time::timeout;

/// A JSON POST, as the page makes it.
async fn post(
    url: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let json = [("Content-Type", "application/json")];
    post_raw(url, body, &[&json, headers].concat()).await
}

/// A POST with exactly these headers.
async fn post_raw(
    url: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let mut req = reqwest::Client::new().post(url).body(body.to_owned());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = timeout(WAIT, req.send())
        .await
        .expect("answer in time")
        .unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let body = timeout(WAIT, resp.json())
        .await
        .expect("body in time")
        .unwrap();
    (status, headers, body)
}

#[tokio::test]
async fn a_browser_creates_joins_starts_and_votes_through_the_bridge() {
    let s = Setup::new(|_| {}).await;
    let engine = EngineProcess::start(&s.nats.url(), &s.keys, &[]);
    engine.ready(&s.client).await;
    let gw = &s.gateway;

    let settings = json!({"title": "bridge", "total": 3, "mafia": 1,
        "durations_ms": {"day_intro": 20, "notice": 20, "day_per_player": 10000, "vote": 50,
            "vote_result": 20, "night_intro": 20, "night": 5000, "ended": 5000}});
    let (status, _, created) = post(&gw.url("/v1/rooms"), &settings.to_string(), &[]).await;
    assert_eq!(status, 200, "{created}");
    let code = created["code"].as_str().unwrap().to_owned();

    let mut seats = Vec::new();
    for name in ["Ann", "Bob", "Cat"] {
        let (status, headers, joined) = post(
            &gw.url(&format!("/v1/rooms/{code}/join")),
            &json!({"name": name}).to_string(),
            &[],
        )
        .await;
        assert_eq!(status, 200, "{joined}");
        let cookie = headers["set-cookie"].to_str().unwrap().to_owned();
        assert!(cookie.starts_with("phasecast_token="));
        assert!(cookie.contains(&format!("Path=/v1/rooms/{code}")) && cookie.contains("HttpOnly"));
        let cookie = cookie.split(';').next().unwrap().to_owned();
        seats.push((joined["player_id"].as_str().unwrap().to_owned(), cookie));
    }
    let (status, _, taken) = post(
        &gw.url(&format!("/v1/rooms/{code}/join")),
        r#"{"name": "ann"}"#,
        &[],
    )
    .await;
    assert_eq!(
        (status, taken["error"].as_str()),
        (StatusCode::CONFLICT, Some("room_full"))
    );

    // Ann watches the room with her cookie, as EventSource would send it.
    let events = gw.url(&format!("/v1/rooms/{code}/events"));
    let mut ann = Sse::connect(&events, &[("Cookie", &seats[0].1)]).await;
    let snapshot = ann.next().await.unwrap();
    assert_eq!(snapshot.event, "snapshot");
    assert_eq!(snapshot.json()["players"].as_array().unwrap().len(), 3);

    let commands = gw.url(&format!("/v1/rooms/{code}/commands"));
    let (status, _, refused) =
        post(&commands, r#"{"type":"start"}"#, &[("Cookie", &seats[1].1)]).await;
    assert_eq!(
        (status, refused["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("not_host"))
    );
    let (status, _, _) = post(&commands, r#"{"type":"start"}"#, &[("Cookie", &seats[0].1)]).await;
    assert_eq!(status, 200);
    let role = ann.until("role").await;
    assert!(role.json()["role"].is_string());
    loop {
        let phase = ann.until("phase").await;
        if phase.json()["phase"] == "day" {
            break;
        }
    }
    // Bob claims to vote as Ann; the bridge makes it Bob's vote.
    let bearer = format!(
        "Bearer {}",
        seats[1].1.trim_start_matches("phasecast_token=")
    );
    let body = json!({"type": "vote", "player": seats[0].0, "target": seats[2].0}).to_string();
    let (status, _, _) = post(&commands, &body, &[("Authorization", &bearer)]).await;
    assert_eq!(status, 200);
    let vote = ann.until("vote").await.json();
    assert_eq!(
        vote["voter"],
        seats[1].0.as_str(),
        "the token decides who votes"
    );
    assert_eq!(vote["target"], seats[2].0.as_str());

    // Bad requests get a status and a JSON body, and never reach another player's seat.
    let cases = [
        (
            &commands,
            "{nope",
            vec![("Cookie", seats[0].1.as_str())],
            400,
            "malformed",
        ),
        (
            &commands,
            r#"{"type":"join","name":"x"}"#,
            vec![("Cookie", seats[0].1.as_str())],
            400,
            "unknown_command",
        ),
        (
            &commands,
            r#"{"type":"dance"}"#,
            vec![("Cookie", seats[0].1.as_str())],
            400,
            "unknown_command",
        ),
        (
            &commands,
            r#"{"type":"skill","target":"nobody12"}"#,
            vec![("Cookie", seats[0].1.as_str())],
            409,
            "wrong_phase",
        ),
        (
            &commands,
            r#"{"type":"chat","text":"hi"}"#,
            vec![],
            401,
            "unauthorized",
        ),
    ];
    for (url, body, headers, status, code_) in cases {
        let (got, _, reply) = post(url, body, &headers).await;
        assert_eq!(
            (got.as_u16(), reply["error"].as_str()),
            (status, Some(code_)),
            "{body}"
        );
        assert!(reply["message"].is_string());
    }
    let huge = format!(r#"{{"type":"chat","text":"{}"}}"#, "x".repeat(70 * 1024));
    let (got, _, reply) = post(&commands, &huge, &[("Cookie", &seats[0].1)]).await;
    assert_eq!(
        (got.as_u16(), reply["error"].as_str()),
        (413, Some("too_large"))
    );
    let (got, _, reply) = post(
        &gw.url("/v1/rooms/Nowhere123/commands"),
        r#"{"type":"chat","text":"x"}"#,
        &[("Authorization", &bearer)],
    )
    .await;
    assert_eq!(
        (got.as_u16(), reply["error"].as_str()),
        (403, Some("forbidden"))
    );
    let (got, _, reply) = post(&gw.url("/v1/rooms/Nowhere123/join"), r#"{"name":"x"}"#, &[]).await;
    assert_eq!(
        (got.as_u16(), reply["error"].as_str()),
        (404, Some("no_such_room"))
    );
    let (got, _, reply) = post(
        &gw.url("/v1/rooms"),
        r#"{"title":"t","total":2,"mafia":1}"#,
        &[],
    )
    .await;
    assert_eq!(
        (got.as_u16(), reply["error"].as_str()),
        (400, Some("invalid_room"))
    );
    let (got, _, reply) = post(&gw.url("/v1/nothing"), "{}", &[]).await;
    assert_eq!(
        (got.as_u16(), reply["error"].as_str()),
        (404, Some("not_found"))
    );
    drop(engine);
}

#[tokio::test]
async fn a_creator_is_seated_with_the_room_and_codes_work_as_typed() {
    let s = Setup::new(|_| {}).await;
    let engine = EngineProcess::start(&s.nats.url(), &s.keys, &[]);
    engine.ready(&s.client).await;
    let gw = &s.gateway;
    let mut lobby = Sse::connect(&gw.url("/v1/lobby/events"), &[]).await;
    assert_eq!(lobby.next().await.unwrap().event, "snapshot");

    let settings = json!({"title": "hosted", "total": 3, "mafia": 1, "name": "Ann"});
    let (status, headers, created) = post(&gw.url("/v1/rooms"), &settings.to_string(), &[]).await;
    assert_eq!(status, 200, "{created}");
    let code = created["code"].as_str().unwrap().to_owned();
    assert_eq!(code.len(), 12, "{code}");
    assert!(
        code.bytes()
            .all(|b| b"0123456789ABCDEFGHJKMNPQRSTVWXYZ".contains(&b)),
        "no look-alikes: {code}"
    );
    let token = created["token"].as_str().expect("the creator's token");
    let ann = created["player_id"].as_str().expect("the creator's id");
    let cookie = headers["set-cookie"].to_str().unwrap();
    assert!(
        cookie.starts_with(&format!("phasecast_token={token};")),
        "{cookie}"
    );

    // The lobby first hears of the room with its host already in it.
    let opened = lobby.until("room_opened").await.json();
    assert_eq!(
        (opened["code"].as_str(), opened["players"].as_u64()),
        (Some(code.as_str()), Some(1))
    );

    // The code as a person types it: lower case, dashes, spaces, O for 0, l for 1.
    let typed: String = code
        .to_lowercase()
        .chars()
        .enumerate()
        .flat_map(|(i, c)| {
            let c = match c {
                '0' => 'O',
                '1' => 'l',
                c => c,
            };
            if i == 4 || i == 8 {
                vec!['-', c]
            } else {
                vec![c]
            }
        })
        .collect();
    let (status, _, bob) = post(
        &gw.url(&format!("/v1/rooms/{}/join", typed.replace('-', "%20"))),
        r#"{"name": "Bob"}"#,
        &[],
    )
    .await;
    assert_eq!(status, 200, "{typed}: {bob}");
    let bearer = format!("Bearer {token}");
    let mut stream = Sse::connect(
        &gw.url(&format!("/v1/rooms/{typed}/events")),
        &[("Authorization", &bearer)],
    )
    .await;
    let snapshot = stream.next().await.unwrap().json();
    assert_eq!(snapshot["code"], code.as_str());
    let names: Vec<_> = (snapshot["players"].as_array().unwrap().iter())
        .map(|p| {
            (
                p["player_id"].as_str().unwrap(),
                p["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(names[0], (ann, "Ann"), "the creator holds the first seat");
    assert_eq!(names.len(), 2);

    // An invalid name creates no room at all.
    let (status, _, refused) = post(
        &gw.url("/v1/rooms"),
        &json!({"title": "t", "total": 3, "mafia": 1, "name": " "}).to_string(),
        &[],
    )
    .await;
    assert_eq!(
        (status.as_u16(), refused["error"].as_str()),
        (400, Some("invalid_name"))
    );
    drop(engine);
}

#[tokio::test]
async fn another_site_s_page_cannot_command_with_the_player_s_cookie() {
    let s = Setup::new(|c| c.gateway.cors_origins = vec!["https://play.example".into()]).await;
    let engine = EngineProcess::start(&s.nats.url(), &s.keys, &[]);
    engine.ready(&s.client).await;
    let gw = &s.gateway;
    let host = gw
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let this_site = format!("http://{host}");
    let (status, headers, created) = post(
        &gw.url("/v1/rooms"),
        r#"{"title":"t","total":3,"mafia":1,"name":"Ann"}"#,
        &[("Origin", &this_site)],
    )
    .await;
    assert_eq!(status, 200, "same origin: {created}");
    let cookie = headers["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let commands = gw.url(&format!(
        "/v1/rooms/{}/commands",
        created["code"].as_str().unwrap()
    ));
    let chat = r#"{"type":"chat","text":"hi"}"#;

    let refusals: [(&str, Vec<(&str, &str)>); 5] = [
        (
            "a form post",
            vec![
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Cookie", &cookie),
            ],
        ),
        (
            "text/plain",
            vec![("Content-Type", "text/plain"), ("Cookie", &cookie)],
        ),
        ("no content type", vec![("Cookie", &cookie)]),
        (
            "another site",
            vec![
                ("Content-Type", "application/json"),
                ("Origin", "https://evil.example"),
                ("Cookie", &cookie),
            ],
        ),
        (
            "an opaque origin",
            vec![
                ("Content-Type", "application/json"),
                ("Origin", "null"),
                ("Cookie", &cookie),
            ],
        ),
    ];
    for (what, headers) in refusals {
        let (status, _, reply) = post_raw(&commands, chat, &headers).await;
        assert_eq!(
            (status.as_u16(), reply["error"].as_str()),
            (403, Some("forbidden")),
            "{what}: {reply}"
        );
        assert!(reply["message"].is_string());
    }
    let join = gw.url(&format!(
        "/v1/rooms/{}/join",
        created["code"].as_str().unwrap()
    ));
    let (status, _, _) = post(
        &join,
        r#"{"name":"Eve"}"#,
        &[("Origin", "https://evil.example")],
    )
    .await;
    assert_eq!(
        status, 403,
        "nor join (which sets a cookie) from another site"
    );

    for (what, origin) in [
        ("this site", this_site.as_str()),
        ("a CORS origin", "https://play.example"),
    ] {
        let (status, _, reply) =
            post(&commands, chat, &[("Origin", origin), ("Cookie", &cookie)]).await;
        assert_eq!(status, 200, "{what}: {reply}");
    }
    let (status, _, reply) = post(&commands, chat, &[("Cookie", &cookie)]).await;
    assert_eq!(status, 200, "no Origin (not a page): {reply}");
    // A tool with its own token and no cookie, as `curl -d` sends it (a form's type, or none).
    let token = created["token"].as_str().unwrap();
    let bearer = format!("bearer {token}");
    for content_type in [Some("application/x-www-form-urlencoded"), None] {
        let mut headers = vec![("Authorization", bearer.as_str())];
        headers.extend(content_type.map(|t| ("Content-Type", t)));
        let (status, _, reply) = post_raw(&commands, chat, &headers).await;
        assert_eq!(status, 200, "a tool sending {content_type:?}: {reply}");
    }
    let (status, _, reply) = post_raw(
        &gw.url("/v1/rooms"),
        r#"{"title":"t","total":3,"mafia":1}"#,
        &[("Content-Type", "application/x-www-form-urlencoded")],
    )
    .await;
    assert_eq!(status, 200, "a tool creating a room: {reply}");
    // A script's `fetch` of a string (Node's, or a page's of this site) says text/plain and
    // `Sec-Fetch-Mode`: a create or join acts as nobody, so it is no forgery.
    let script = [
        ("Content-Type", "text/plain;charset=UTF-8"),
        ("Sec-Fetch-Mode", "cors"),
    ];
    let (status, _, reply) = post_raw(
        &gw.url("/v1/rooms"),
        r#"{"title":"t","total":3,"mafia":1}"#,
        &script,
    )
    .await;
    assert_eq!(status, 200, "a script creating a room: {reply}");
    let (status, _, reply) = post_raw(&join, r#"{"name":"Sam"}"#, &script).await;
    assert_eq!(status, 200, "a script joining: {reply}");
    // A form (another site's, or any) navigates: refused, as a form command is.
    let form = [
        ("Content-Type", "text/plain"),
        ("Sec-Fetch-Mode", "navigate"),
    ];
    let (status, _, reply) = post_raw(&join, r#"{"name":"Tom"}"#, &form).await;
    assert_eq!(status, 403, "a form joining: {reply}");
    drop(engine);
}

#[tokio::test]
async fn without_an_engine_create_is_503_and_a_silent_engine_is_504() {
    let s = Setup::new(|c| c.gateway.request_timeout = std::time::Duration::from_millis(200)).await;
    let (status, headers, body) = post(
        &s.gateway.url("/v1/rooms"),
        r#"{"title":"t","total":3,"mafia":1}"#,
        &[],
    )
    .await;
    assert_eq!(
        (status.as_u16(), body["error"].as_str()),
        (503, Some("unavailable"))
    );
    assert!(headers.contains_key("retry-after"));
    let _silent = s.client.subscribe(s.subjects.lobby_create()).await.unwrap();
    test_support::server_has_read(&s.client).await;
    let (status, _, body) = post(
        &s.gateway.url("/v1/rooms"),
        r#"{"title":"t","total":3,"mafia":1}"#,
        &[],
    )
    .await;
    assert_eq!(
        (status.as_u16(), body["error"].as_str()),
        (504, Some("timeout"))
    );
}

#[tokio::test]
async fn a_backend_s_refusals_are_relayed_whatever_their_code() {
    let s = Setup::new(|_| {}).await;
    let mut creates = s.client.subscribe(s.subjects.lobby_create()).await.unwrap();
    test_support::server_has_read(&s.client).await;
    // A backend other than ours: it says `unavailable` (busy), then a code of its own
    // (PROTOCOL.md lets it add codes).
    let answers = [
        r#"{"ok":false,"error":"unavailable","message":"busy"}"#,
        r#"{"ok":false,"error":"brand_new_code","message":"m2"}"#,
        r#"{"ok":false,"error":"lobby_not_found","message":"m3"}"#,
    ];
    let client = s.client.clone();
    let backend = tokio::spawn(async move {
        for answer in answers {
            let request = creates.next().await.unwrap();
            let to = request.reply.unwrap();
            client.publish(to, answer.into()).await.unwrap();
        }
    });
    let url = s.gateway.url("/v1/rooms");
    let create = || post(&url, r#"{"title":"t","total":3,"mafia":1}"#, &[]);
    let (status, headers, body) = create().await;
    assert_eq!(
        (status.as_u16(), body["error"].as_str()),
        (503, Some("unavailable"))
    );
    assert!(
        headers.contains_key("retry-after"),
        "every 503 says when to try again"
    );
    let (status, _, body) = create().await;
    assert_eq!(
        (status.as_u16(), &body),
        (400, &json!({"error": "brand_new_code", "message": "m2"})),
        "relayed as the backend said it"
    );
    let (status, _, body) = create().await;
    assert_eq!(
        (status.as_u16(), &body),
        (404, &json!({"error": "lobby_not_found", "message": "m3"})),
        "a code of its own for something not there"
    );
    timeout(WAIT, backend).await.unwrap().unwrap();
}

/// PROTOCOL.md sets no length for room codes and player ids: a backend whose are short
/// (`r1`, `p1`) works through the gateway as ours does.
#[tokio::test]
async fn a_backend_with_short_codes_and_ids_works_through_the_gateway() {
    let s = Setup::new(|_| {}).await;
    let code = RoomCode::parse("r1").unwrap();
    let player = PlayerId::parse("p1").unwrap();
    let token = common::token(&code, &player, 600);
    let mut commands = s
        .client
        .subscribe(s.subjects.room_cmd(&code))
        .await
        .unwrap();
    let _snapshots = FakeStream::start(&s, Some(code.clone()), false).await;
    let (client, answer_token) = (s.client.clone(), token.clone());
    let backend = tokio::spawn(async move {
        for _ in 0..2 {
            let request = commands.next().await.unwrap();
            let command: Value = serde_json::from_slice(&request.payload).unwrap();
            let answer = match command["type"].as_str() {
                Some("join") => json!({"ok": true, "player_id": "p1", "token": answer_token}),
                _ => json!({"ok": true, "player": command["player"]}),
            };
            let to = request.reply.unwrap();
            client.publish(to, answer.to_string().into()).await.unwrap();
        }
    });
    let gw = &s.gateway;
    let (status, _, joined) = post(&gw.url("/v1/rooms/r1/join"), r#"{"name":"Ann"}"#, &[]).await;
    assert_eq!(status, 200, "{joined}");
    assert_eq!(joined["player_id"], "p1");
    let mut stream =
        Sse::connect(&gw.url(&format!("/v1/rooms/r1/events?token={token}")), &[]).await;
    stream.until("snapshot").await;
    let bearer = format!("Bearer {token}");
    let (status, _, reply) = post(
        &gw.url("/v1/rooms/r1/commands"),
        r#"{"type":"vote","target":null}"#,
        &[("Authorization", &bearer)],
    )
    .await;
    assert_eq!(
        (status.as_u16(), &reply["player"]),
        (200, &json!("p1")),
        "{reply}"
    );
    timeout(WAIT, backend).await.unwrap().unwrap();
}

#[tokio::test]
async fn cors_allows_only_the_configured_origins() {
    let s = Setup::new(|c| c.gateway.cors_origins = vec!["https://play.example".into()]).await;
    let http = reqwest::Client::new();
    let ask = |origin: &'static str| {
        http.request(reqwest::Method::OPTIONS, s.gateway.url("/v1/rooms"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .send()
    };
    let allowed = timeout(WAIT, ask("https://play.example"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://play.example"
    );
    let other = timeout(WAIT, ask("https://evil.example"))
        .await
        .unwrap()
        .unwrap();
    assert!(!other.headers().contains_key("access-control-allow-origin"));
}

/// A room nobody answers for is 503 (try again) while the store says it is open, as when
/// its engine died and another is taking it over; 404 once it has closed or never existed.
/// The store here is a stand-in: the bucket and records as `proto::store` describes them.
#[tokio::test]
async fn a_room_between_engines_is_503_and_a_gone_one_404() {
    use async_nats::jetstream;
    let s = Setup::new(|_| {}).await;
    let names = proto::StoreNames::new("game");
    let js = jetstream::new(s.client.clone());
    let join = |code: &str| s.gateway.url(&format!("/v1/rooms/{code}/join"));

    // No store at all (a backend that keeps none): no responders means no such room.
    let (status, _, body) = post(&join("Moving12"), r#"{"name":"Ann"}"#, &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("no_such_room"))
    );

    let bucket = names.rooms_bucket();
    js.create_stream(jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        allow_direct: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let rooms = js.get_key_value(&bucket).await.unwrap();
    rooms
        .put("Moving12", r#"{"owner":"e1","closed":false}"#.into())
        .await
        .unwrap();
    rooms
        .put("Closed12", r#"{"owner":"e1","closed":true}"#.into())
        .await
        .unwrap();

    let (status, headers, body) = post(&join("Moving12"), r#"{"name":"Ann"}"#, &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "unavailable");
    assert!(headers.contains_key("retry-after"));
    for gone in ["Closed12", "Never123"] {
        let (status, _, body) = post(&join(gone), r#"{"name":"Ann"}"#, &[]).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{gone}: {body}");
    }
    // A stream of a room between engines is refused the same way, for EventSource to retry.
    let url = s.gateway.url("/v1/rooms/Moving12/events");
    let code = proto::RoomCode::parse("Moving12").unwrap();
    let ann = proto::PlayerId::parse("ann12345").unwrap();
    let token = common::token(&code, &ann, 60);
    let resp = timeout(
        WAIT,
        reqwest::Client::new()
            .get(format!("{url}?token={token}"))
            .send(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
}

/// A backend that keeps no store may run on a NATS without JetStream at all: a room nobody
/// answers for is then 404, as on a NATS whose JetStream has no rooms bucket (above), not a
/// 503 to be retried for ever.
#[tokio::test]
async fn without_jetstream_a_room_nobody_answers_for_is_404() {
    let nats = test_support::NatsServer::start_without_jetstream();
    let keys = common::Keys::new();
    let gateway = common::TestGateway::start(&nats.url(), &keys, |c| {
        c.gateway.request_timeout = std::time::Duration::from_secs(2);
    })
    .await;
    let url = gateway.url("/v1/rooms/Never123/join");
    let (status, _, body) = post(&url, r#"{"name":"Ann"}"#, &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("no_such_room")),
        "{body}"
    );
}
