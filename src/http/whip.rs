//! WHIP ingest (RFC 9725) and WHEP playback over HTTP: `POST /whip/{session}` and
//! `POST /whep/{session}` with an SDP offer and `Authorization: Bearer <token>` (the token of
//! an `encoder` or `player` invite; never in a URL), `201 Created` with our answer and a
//! `Location`; `PATCH` trickles candidates, `DELETE` ends; `OPTIONS` answers CORS preflights.
//! Translates HTTP to `room::equipment` and its errors to status codes; decides nothing. On
//! several nodes a request for a session another node runs is carried there
//! (`forward::carry_http`), so an encoder or player may be given any node's address.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;

use super::AppState;
use crate::clock::unix_now;
use crate::ids::SessionId;
use crate::room::client::ClientCtx;
use crate::room::equipment::{EquipmentError, Kind};

/// An SDP offer or trickle fragment larger than this is refused (413).
const MAX_BODY: usize = 64 * 1024;
const SDP: &str = "application/sdp";
const SDPFRAG: &str = "application/trickle-ice-sdpfrag";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/whip/{session}", post(whip_post).options(endpoint_options))
        .route(
            "/whip/{session}/{resource}",
            axum::routing::patch(whip_patch)
                .delete(whip_delete)
                .options(resource_options),
        )
        .route("/whep/{session}", post(whep_post).options(endpoint_options))
        .route(
            "/whep/{session}/{resource}",
            axum::routing::patch(whep_patch)
                .delete(whep_delete)
                .options(resource_options),
        )
}

async fn whip_post(
    State(s): State<AppState>,
    Path(session): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    post_offer(Kind::Whip, s, session, headers, body).await
}

async fn whep_post(
    State(s): State<AppState>,
    Path(session): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    post_offer(Kind::Whep, s, session, headers, body).await
}

async fn whip_patch(
    State(s): State<AppState>,
    Path((session, resource)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    patch(Kind::Whip, s, session, resource, headers, body).await
}

async fn whep_patch(
    State(s): State<AppState>,
    Path((session, resource)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    patch(Kind::Whep, s, session, resource, headers, body).await
}

async fn whip_delete(
    State(s): State<AppState>,
    Path((session, resource)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    delete(Kind::Whip, s, session, resource, headers).await
}

async fn whep_delete(
    State(s): State<AppState>,
    Path((session, resource)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    delete(Kind::Whep, s, session, resource, headers).await
}

/// What went wrong, as the client gets it: a status and a message for people (JSON like the
/// rest of the API: `{"error": code, "message": …}`).
struct Failure {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Failure {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Failure {
        Failure {
            status,
            code,
            message: message.into(),
        }
    }
}

impl From<EquipmentError> for Failure {
    fn from(e: EquipmentError) -> Failure {
        let message = e.to_string();
        let (status, code) = match e {
            EquipmentError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            EquipmentError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            EquipmentError::BadSdp(_) => (StatusCode::BAD_REQUEST, "bad_sdp"),
            EquipmentError::Unsupported(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unsupported"),
            EquipmentError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            EquipmentError::PreconditionFailed => {
                (StatusCode::PRECONDITION_FAILED, "precondition_failed")
            }
            EquipmentError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            EquipmentError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        Failure::new(status, code, message)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let mut res = (
            self.status,
            axum::Json(serde_json::json!({"error": self.code, "message": self.message})),
        )
            .into_response();
        let h = res.headers_mut();
        cors(h);
        match self.status {
            StatusCode::UNAUTHORIZED => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                h.insert(
                    HeaderName::from_static("accept-post"),
                    HeaderValue::from_static(SDP),
                );
            }
            _ => {}
        }
        res
    }
}

/// Browsers' WHIP/WHEP clients (OBS and hardware encoders do not care) may post from another
/// origin: the token, not the origin, is what authorises.
fn cors(h: &mut HeaderMap) {
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Location, ETag, Link, Accept-Patch, Accept-Post"),
    );
}

fn preflight(methods: &'static str) -> Response {
    let mut res = StatusCode::NO_CONTENT.into_response();
    let h = res.headers_mut();
    cors(h);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(methods),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Content-Type, If-Match"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    h.insert(
        HeaderName::from_static("accept-post"),
        HeaderValue::from_static(SDP),
    );
    h.insert(
        HeaderName::from_static("accept-patch"),
        HeaderValue::from_static(SDPFRAG),
    );
    res
}

async fn endpoint_options() -> Response {
    preflight("POST, OPTIONS")
}

async fn resource_options() -> Response {
    preflight("PATCH, DELETE, OPTIONS")
}

fn session_id(session: &str) -> Result<SessionId, Failure> {
    SessionId::parse(session)
        .ok_or_else(|| Failure::new(StatusCode::NOT_FOUND, "not_found", "No such session."))
}

/// The bearer token; 401 without one.
fn bearer(headers: &HeaderMap) -> Result<&str, Failure> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            Failure::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Send the equipment link's token as `Authorization: Bearer <token>`.",
            )
        })
}

/// The body as UTF-8 of `content_type`; 415 or 413 or 400 otherwise.
fn body_of<'a>(
    headers: &HeaderMap,
    body: &'a Bytes,
    content_type: &'static str,
) -> Result<&'a str, Failure> {
    let given = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = given.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case(content_type) {
        return Err(Failure::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("Send the body as Content-Type: {content_type}."),
        ));
    }
    if body.len() > MAX_BODY {
        return Err(Failure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("The body may be at most {MAX_BODY} bytes."),
        ));
    }
    std::str::from_utf8(body)
        .map_err(|_| Failure::new(StatusCode::BAD_REQUEST, "bad_sdp", "The body is not UTF-8."))
}

/// The token of a resource request must be of the same session and kind as the session.
fn check_token(s: &AppState, kind: Kind, session: &SessionId, token: &str) -> Result<(), Failure> {
    let claims = s.tokens.verify(token, unix_now()).map_err(|_| {
        Failure::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "The bearer token is not a valid join token.",
        )
    })?;
    let role = match kind {
        Kind::Whip => crate::protocol::Role::Encoder,
        Kind::Whep => crate::protocol::Role::Player,
    };
    if claims.sid != session.to_string() || claims.role != role {
        return Err(Failure::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "This token is not for this session's equipment.",
        ));
    }
    Ok(())
}

/// `/whip` or `/whep`.
fn base(kind: Kind) -> &'static str {
    match kind {
        Kind::Whip => "whip",
        Kind::Whep => "whep",
    }
}

/// Several nodes: the request carried to the node that runs the session, if another does
/// (`forward::carry_http`). Only well-formed ids are carried; anything else is answered here.
async fn carried(
    s: &AppState,
    kind: Kind,
    method: Method,
    session: &str,
    resource: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
) -> Option<Response> {
    s.cluster.as_ref()?;
    SessionId::parse(session)?;
    let path = match resource {
        None => format!("/{}/{session}", base(kind)),
        Some(r) if !r.is_empty() && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') => {
            format!("/{}/{session}/{r}", base(kind))
        }
        Some(_) => return None,
    };
    super::forward::carry_http(s, session, method, &path, headers, body).await
}

async fn post_offer(
    kind: Kind,
    s: AppState,
    session: String,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(res) = carried(
        &s,
        kind,
        Method::POST,
        &session,
        None,
        &headers,
        body.clone(),
    )
    .await
    {
        return res;
    }
    match try_post(kind, &s, &session, &headers, &body).await {
        Ok(res) => res,
        Err(f) => f.into_response(),
    }
}

async fn try_post(
    kind: Kind,
    s: &AppState,
    session: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, Failure> {
    let session = session_id(session)?;
    let token = bearer(headers)?;
    let offer = body_of(headers, body, SDP)?;
    let ctx = ClientCtx {
        rooms: s.rooms.clone(),
        sfu: s.sfu.clone(),
        db: s.db.clone(),
        tokens: s.tokens.clone(),
        answer_timeout: s.config.signalling.answer_timeout(),
    };
    let started = s
        .equipment
        .start(
            kind,
            ctx,
            session.clone(),
            token,
            offer.to_owned(),
            s.shutdown.clone(),
        )
        .await?;
    let location = format!("/{}/{session}/{}", base(kind), started.resource);
    let mut res = (StatusCode::CREATED, started.answer).into_response();
    let h = res.headers_mut();
    cors(h);
    let value = |v: &str| HeaderValue::from_str(v).map_err(|_| internal());
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(SDP));
    h.insert(header::LOCATION, value(&location)?);
    h.insert(header::ETAG, value(&started.etag)?);
    h.insert(
        HeaderName::from_static("accept-patch"),
        HeaderValue::from_static(SDPFRAG),
    );
    // TURN servers for the encoder or player (RFC 9725 §4.6), with fresh credentials.
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let ice = crate::turn::ice_config(&s.config.turn, unix_now(), &tag[..12]);
    for server in ice.ice_servers {
        for url in server.urls {
            let link = match (&server.username, &server.credential) {
                (Some(u), Some(c)) => format!(
                    "<{url}>; rel=\"ice-server\"; username=\"{u}\"; credential=\"{c}\"; credential-type=\"password\""
                ),
                _ => format!("<{url}>; rel=\"ice-server\""),
            };
            h.append(header::LINK, value(&link)?);
        }
    }
    Ok(res)
}

fn internal() -> Failure {
    Failure::from(EquipmentError::Internal)
}

async fn patch(
    kind: Kind,
    s: AppState,
    session: String,
    resource: String,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let carry = carried(
        &s,
        kind,
        Method::PATCH,
        &session,
        Some(&resource),
        &headers,
        body.clone(),
    );
    if let Some(res) = carry.await {
        return res;
    }
    let result = async {
        let session = session_id(&session)?;
        let token = bearer(&headers)?;
        check_token(&s, kind, &session, token)?;
        let fragment = body_of(&headers, &body, SDPFRAG)?;
        let if_match = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok());
        s.equipment
            .trickle(kind, &session, &resource, if_match, fragment)
            .await?;
        Ok::<_, Failure>(())
    }
    .await;
    match result {
        Ok(()) => {
            let mut res = StatusCode::NO_CONTENT.into_response();
            cors(res.headers_mut());
            res
        }
        Err(f) => f.into_response(),
    }
}

async fn delete(
    kind: Kind,
    s: AppState,
    session: String,
    resource: String,
    headers: HeaderMap,
) -> Response {
    let carry = carried(
        &s,
        kind,
        Method::DELETE,
        &session,
        Some(&resource),
        &headers,
        Bytes::new(),
    );
    if let Some(res) = carry.await {
        return res;
    }
    let result = async {
        let session = session_id(&session)?;
        let token = bearer(&headers)?;
        check_token(&s, kind, &session, token)?;
        s.equipment.stop(kind, &session, &resource).await?;
        Ok::<_, Failure>(())
    }
    .await;
    match result {
        Ok(()) => {
            let mut res = StatusCode::OK.into_response();
            cors(res.headers_mut());
            res
        }
        Err(f) => f.into_response(),
    }
}
