//! The HTTP edge: the axum router (`router`), the web client (`web`: compiled in, or from
//! `http.web_root`; one `course.html` for every role), `/ws` signalling, `/healthz`,
//! `/metrics`, `/client-config.json` (what the web client may know, e.g. the help phone
//! number), `/link-check` (`link`: does a join link still work), `/ice-servers.json` (TURN
//! credentials), the connectivity check's test connections (`check`), the HTTP→HTTPS redirect,
//! WHIP ingest and WHEP playback for hall equipment (`whip`, RFC 9725),
//! the admin REST API (`api`) and the security headers on every response (`headers`). It
//! translates between the network and the room; it decides nothing about rooms or media.

pub mod api;
mod check;
pub mod forward;
pub mod guard;
mod headers;
pub mod link;
pub mod web;
mod whip;
mod ws;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio_util::sync::CancellationToken;
use tower_http::services::ServeDir;

use crate::auth::TokenKey;
use crate::config::Config;
use crate::db::Db;
use crate::room::Rooms;
use crate::sfu::Sfu;

/// Largest request body any endpoint reads (the admin API, `/link-check`, `/check/offer`).
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// What every handler may use. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub rooms: Rooms,
    pub sfu: Sfu,
    pub db: Db,
    pub tokens: TokenKey,
    /// Abuse limits per client address (`guard`).
    pub guard: guard::Guard,
    /// Cancelled on shutdown: every WebSocket task says goodbye and ends.
    pub shutdown: CancellationToken,
    /// Running WHIP (encoder) and WHEP (player) sessions.
    pub equipment: crate::room::equipment::Equipment,
    /// This server as a node of several (`cluster.node_id`); `None` on a single server.
    pub cluster: Option<crate::cluster::Node>,
    /// Members carried to other nodes, node connections refused (`forward`).
    pub carried: Arc<forward::Counts>,
}

/// The whole HTTP surface, testable without a socket.
pub fn router(state: AppState) -> Router {
    let web_root = state.config.http.web_root.clone();
    let router = Router::new()
        .route("/ws", get(ws::upgrade))
        .route(forward::PATH, get(forward::upgrade))
        .route(forward::NOTICE_PATH, post(forward::notice))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/client-config.json", get(client_config))
        .route("/link-check", post(link::check))
        // One page serves every role; links made before it still work (the browser keeps the
        // #t=… fragment across a redirect).
        .route("/publish.html", get(to_course_page))
        .route("/watch.html", get(to_course_page))
        .route("/ice-servers.json", get(ice_servers))
        .route("/check/offer", post(check::offer))
        .merge(whip::routes())
        .merge(api::routes());
    let router = if web_root.as_os_str().is_empty() {
        router.fallback(web::embedded)
    } else {
        let check_page = web_root.join("check.html");
        router
            .route(
                "/check",
                get(move || async move {
                    match tokio::fs::read(&check_page).await {
                        Ok(html) => ([(header::CONTENT_TYPE, "text/html")], html).into_response(),
                        Err(_) => StatusCode::NOT_FOUND.into_response(),
                    }
                }),
            )
            .fallback_service(ServeDir::new(web_root))
    };
    router
        // Every body is capped: the largest legitimate one (a bulk invite list) is far below.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::client_addr,
        ))
        .layer(axum::middleware::from_fn(headers::add))
        .with_state(state)
}

/// The plain-HTTP side when HTTPS is on: every request is sent to the same path under
/// `public_url` (308 keeps the method).
pub fn redirect_router(public_url: &str) -> Router {
    let base = public_url.trim_end_matches('/').to_owned();
    Router::new().fallback(move |uri: Uri| {
        let base = base.clone();
        async move {
            let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            Redirect::permanent(&format!("{base}{path}"))
        }
    })
}

/// TURN servers with fresh time-limited credentials, for `new RTCPeerConnection(...)`. Public
/// like the pages: the check page needs it without a join link. The relay can only reach
/// what coturn's `allowed-peer-ip`/`denied-peer-ip` let through (deploy/turnserver.conf keeps
/// it to this server).
async fn ice_servers(State(state): State<AppState>) -> Response {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let config = crate::turn::ice_config(&state.config.turn, crate::clock::unix_now(), &tag[..12]);
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(config)).into_response()
}

async fn to_course_page() -> Redirect {
    Redirect::permanent("/course.html")
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Settings the web client reads at start (nothing secret).
async fn client_config(State(state): State<AppState>) -> axum::Json<crate::config::WebConfig> {
    axum::Json(state.config.web.clone())
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut out = String::new();
    state.sfu.metrics().render(&mut out);
    out.push_str(&format!(
        "# HELP kursrelay_rooms Running session rooms\n# TYPE kursrelay_rooms gauge\nkursrelay_rooms {}\n",
        state.rooms.count()
    ));
    let g = &state.guard.counts;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    out.push_str(&format!(
        "# HELP kursrelay_websockets_open Open signalling WebSockets\n# TYPE kursrelay_websockets_open gauge\nkursrelay_websockets_open {}\n\
         # HELP kursrelay_websockets_refused_total WebSockets refused: too many from one address\n# TYPE kursrelay_websockets_refused_total counter\nkursrelay_websockets_refused_total {}\n\
         # HELP kursrelay_auth_failures_total Bad join tokens and admin keys\n# TYPE kursrelay_auth_failures_total counter\nkursrelay_auth_failures_total {}\n\
         # HELP kursrelay_auth_refused_total Credentials refused because their address was over its failure budget\n# TYPE kursrelay_auth_refused_total counter\nkursrelay_auth_refused_total {}\n\
         # HELP kursrelay_guard_addresses Client addresses the abuse limits track\n# TYPE kursrelay_guard_addresses gauge\nkursrelay_guard_addresses {}\n",
        load(&g.websockets_open),
        load(&g.websockets_refused),
        load(&g.auth_failures),
        load(&g.auth_refused),
        state.guard.tracked(),
    ));
    if state.cluster.is_some() {
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        out.push_str(&format!(
            "# HELP kursrelay_cluster_forwarded_open Members this node carries to the node that owns their session
# TYPE kursrelay_cluster_forwarded_open gauge
kursrelay_cluster_forwarded_open {}
\
             # HELP kursrelay_cluster_refused_total Node-to-node connections refused for a missing or wrong cluster.secret
# TYPE kursrelay_cluster_refused_total counter
kursrelay_cluster_refused_total {}
",
            load(&state.carried.carried_open),
            load(&state.carried.refused),
        ));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
