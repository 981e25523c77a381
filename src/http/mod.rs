//! The HTTP edge: the axum router (`router`), static files from web/, `/ws` signalling,
//! `/healthz`, `/metrics`, `/client-config.json` (what the web client may know, e.g. the help
//! phone number), `/link-check` (`link`: does a join link still work), the admin REST API
//! (`api`) and the security headers on every response (`headers`). It translates between the
//! network and the room; it decides nothing about rooms or media.

pub mod api;
mod headers;
pub mod link;
mod ws;

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::response::Redirect;
use axum::routing::{get, post};
use axum::Router;
use tokio_util::sync::CancellationToken;
use tower_http::services::ServeDir;

use crate::auth::TokenKey;
use crate::config::Config;
use crate::db::Db;
use crate::room::Rooms;
use crate::sfu::Sfu;

/// What every handler may use. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub rooms: Rooms,
    pub sfu: Sfu,
    pub db: Db,
    pub tokens: TokenKey,
    /// Cancelled on shutdown: every WebSocket task says goodbye and ends.
    pub shutdown: CancellationToken,
}

/// The whole HTTP surface, testable without a socket.
pub fn router(state: AppState) -> Router {
    let web = ServeDir::new(&state.config.http.web_root);
    Router::new()
        .route("/ws", get(ws::upgrade))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/client-config.json", get(client_config))
        .route("/link-check", post(link::check))
        // One page serves every role; links made before it still work (the browser keeps the
        // #t=… fragment across a redirect).
        .route("/publish.html", get(to_course_page))
        .route("/watch.html", get(to_course_page))
        .merge(api::routes())
        .fallback_service(web)
        .layer(axum::middleware::from_fn(headers::add))
        .with_state(state)
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
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
