//! The admin REST API (docs/api.md): courses, sessions, invites and their join links. Every
//! call needs `Authorization: Bearer <auth.admin_key>`; with no key configured the API is off.

use axum::extract::{FromRequest, FromRequestParts, Path, Query, RawQuery, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::guard::{same_secret, ClientAddr};
use super::{AppState, MAX_BODY_BYTES};
use crate::attendance::export::CsvLanguage;
use crate::auth::{join_link, Claims};
use crate::db::{DbError, Invite, NewInvite, NewSession, SessionPatch, SessionState};
use crate::ids::SessionId;
use crate::room::SessionSettings;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/courses", get(list_courses).post(create_course))
        .route("/api/courses/{id}", get(get_course))
        .route(
            "/api/courses/{id}/sessions",
            get(list_course_sessions).post(create_session),
        )
        .route("/api/sessions", get(list_sessions))
        .route("/api/sessions/{id}", get(get_session).patch(update_session))
        .route("/api/sessions/{id}/end", post(end_session))
        .route(
            "/api/sessions/{id}/invites",
            get(list_invites).post(create_invite),
        )
        .route("/api/sessions/{id}/invites/bulk", post(create_invites))
        .route("/api/invites/{id}/revoke", post(revoke_invite))
        .route("/api/sessions/{id}/attendance", get(session_attendance))
        .route("/api/courses/{id}/attendance", get(course_attendance))
        .route("/api/exports", get(list_exports))
        .route("/api", any(no_such_endpoint))
        .route("/api/", any(no_such_endpoint))
        .route("/api/{*rest}", any(no_such_endpoint))
        .method_not_allowed_fallback(method_not_allowed)
}

async fn no_such_endpoint() -> ApiError {
    ApiError::NotFound("API endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// One error type for the API: a status, a stable code, a message for people.
#[derive(Debug)]
pub enum ApiError {
    Off,
    Unauthorized,
    /// Attendance may also be read with the session leader's join token: say so.
    UnauthorizedAttendance,
    Forbidden,
    NotFound(&'static str),
    MethodNotAllowed,
    /// The body is not JSON at all.
    BadJson(String),
    /// The body is not sent as `application/json`.
    UnsupportedMediaType,
    Invalid(String),
    /// The body is over `MAX_BODY_BYTES`.
    TooLarge,
    /// The client's address has used up its failure budget (`http::guard`).
    TooManyRequests(std::time::Duration),
    Internal,
}

#[derive(Serialize)]
struct ErrorBody {
    error: &'static str,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::TooManyRequests(retry) = self {
            let body = ErrorBody {
                error: "rate_limited",
                message: format!(
                    "Too many failed attempts from your address; try again in {} s.",
                    retry.as_secs()
                ),
            };
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, retry.as_secs().to_string())],
                Json(body),
            )
                .into_response();
        }
        let (status, error, message) = match self {
            ApiError::TooManyRequests(_) => unreachable!("answered above"),
            ApiError::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("The body is over {MAX_BODY_BYTES} bytes."),
            ),
            ApiError::Off => (
                StatusCode::SERVICE_UNAVAILABLE,
                "api_off",
                "The admin API is off: set KURSRELAY_ADMIN_KEY (or auth.admin_key) and restart."
                    .to_owned(),
            ),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Send the admin key as 'Authorization: Bearer <key>'.".to_owned(),
            ),
            ApiError::UnauthorizedAttendance => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Send either the admin key or the session leader's own join token (the part of \
                 the leader's link after '#t=') as 'Authorization: Bearer <key or token>'."
                    .to_owned(),
            ),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "This endpoint does not take that method; docs/api.md lists what it takes."
                    .to_owned(),
            ),
            ApiError::BadJson(m) => (
                StatusCode::BAD_REQUEST,
                "bad_json",
                format!("The body is not valid JSON: {m}"),
            ),
            ApiError::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Send the body as JSON with 'Content-Type: application/json'.".to_owned(),
            ),
            ApiError::Forbidden => (
                StatusCode::FORBIDDEN,
                "forbidden",
                "Only the course leader of this session and administrators may see its attendance."
                    .to_owned(),
            ),
            ApiError::NotFound(what) => (
                StatusCode::NOT_FOUND,
                "not_found",
                format!("No such {what}."),
            ),
            ApiError::Invalid(m) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid", m),
            ApiError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "The server failed; the details are in its log.".to_owned(),
            ),
        };
        (status, Json(ErrorBody { error, message })).into_response()
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::NotFound(what) => ApiError::NotFound(what),
            DbError::Invalid(m) => ApiError::Invalid(m),
            fenced @ DbError::Fenced { .. } => ApiError::Invalid(fenced.to_string()),
            other => {
                tracing::error!(error = %other, "admin API request failed");
                ApiError::Internal
            }
        }
    }
}

fn bearer(headers: &HeaderMap) -> &str {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
}

/// Checks the admin key in constant time (`guard::same_secret`: hashed, then compared
/// byte for byte whatever the differences, so timing tells nothing about the key, not even
/// its length).
fn admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let key = &state.config.auth.admin_key;
    if key.is_empty() {
        return Err(ApiError::Off);
    }
    if !same_secret(bearer(headers), key) {
        return Err(ApiError::Unauthorized);
    }
    Ok(())
}

/// The client's address (`guard::client_addr`); None outside a real socket.
fn client_addr(parts: &Parts) -> Option<std::net::IpAddr> {
    parts.extensions.get::<ClientAddr>().and_then(|c| c.0)
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// Proof that the request carries the admin key. As the first extractor of a handler it runs
/// before the body is read, so an unauthenticated request learns nothing about the schema.
struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, ApiError> {
        let addr = client_addr(parts);
        let now = std::time::Instant::now();
        // Over budget: refused before the key is looked at (registration staff work from
        // their own machines; the CLI on the server is the way in meanwhile).
        if let Err(over) = s.guard.over_budget(addr, now) {
            s.guard.refused();
            return Err(ApiError::TooManyRequests(over.retry_after));
        }
        match admin(s, &parts.headers) {
            Err(ApiError::Unauthorized) => {
                // A missing key is no guess; a wrong one is.
                if !bearer(&parts.headers).is_empty() {
                    s.guard.failed(addr, now);
                }
                Err(ApiError::Unauthorized)
            }
            other => other.map(|()| Admin),
        }
    }
}

/// A JSON body whose problems are answered in the API's own error format: not JSON → 400
/// `bad_json`, wrong content type → 415, a field missing or of the wrong kind → 422 naming
/// the field.
struct ApiJson<T>(T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &AppState) -> Result<Self, ApiError> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let body = axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES)
            .await
            .map_err(|_| ApiError::TooLarge)?;
        parse_body(&body).map(ApiJson)
    }
}

fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    // Syntax first, so a broken document is a 400 and not a schema complaint.
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(body) {
        return Err(ApiError::BadJson(e.to_string()));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner().to_string();
        let detail = inner.split(" at line ").next().unwrap_or(&inner).to_owned();
        ApiError::Invalid(if field == "." {
            detail
        } else {
            format!("{field}: {detail}")
        })
    })
}

/// A path parameter; one that cannot be decoded (bad percent-encoding, not UTF-8) names
/// nothing that exists: a JSON 404 like any other unknown id.
struct ApiPath<T>(T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, s)
            .await
            .map(|Path(p)| ApiPath(p))
            .map_err(|_| ApiError::NotFound("resource"))
    }
}

/// A query string whose problems are answered in the API's error format (422).
struct ApiQuery<T>(T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, s)
            .await
            .map(|Query(q)| ApiQuery(q))
            .map_err(|e| ApiError::Invalid(e.body_text()))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCourse {
    title: String,
}

async fn create_course(
    _: Admin,
    State(s): State<AppState>,
    ApiJson(body): ApiJson<NewCourse>,
) -> Result<(StatusCode, Json<crate::db::Course>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(s.db.create_course(&body.title).await?),
    ))
}

async fn list_courses(_: Admin, State(s): State<AppState>) -> ApiResult<Vec<crate::db::Course>> {
    Ok(Json(s.db.courses().await?))
}

async fn get_course(
    _: Admin,
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<crate::db::Course> {
    Ok(Json(s.db.course(&id).await?))
}

async fn create_session(
    _: Admin,
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<NewSession>,
) -> Result<(StatusCode, Json<crate::db::Session>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(s.db.create_session(&id, &body).await?),
    ))
}

async fn list_course_sessions(
    _: Admin,
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Vec<crate::db::Session>> {
    s.db.course(&id).await?;
    Ok(Json(s.db.sessions(Some(&id)).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionFilter {
    course: Option<String>,
}

async fn list_sessions(
    _: Admin,
    State(s): State<AppState>,
    ApiQuery(f): ApiQuery<SessionFilter>,
) -> ApiResult<Vec<crate::db::Session>> {
    Ok(Json(s.db.sessions(f.course.as_deref()).await?))
}

async fn get_session(
    _: Admin,
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<crate::db::Session> {
    Ok(Json(s.db.session(&id).await?))
}

async fn update_session(
    _: Admin,
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(patch): ApiJson<SessionPatch>,
) -> ApiResult<crate::db::Session> {
    let session = s.db.update_session(&id, &patch).await?;
    if session.state == SessionState::Ended {
        end_room(&s, &id).await;
    } else if patch.chat_enabled.is_some() || patch.roster.is_some() {
        // A running room follows at once (its members get a roster with the new settings).
        if let Some(sid) = SessionId::parse(&id) {
            s.rooms
                .set_settings(&sid, SessionSettings::of(&session))
                .await;
        }
        super::forward::tell_owner(&s, &id, super::forward::RoomNotice::Settings).await;
    }
    Ok(Json(session))
}

async fn end_session(
    _: Admin,
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<crate::db::Session> {
    s.db.session(&id).await?;
    s.db.advance_session(&id, SessionState::Ended).await?;
    end_room(&s, &id).await;
    Ok(Json(s.db.session(&id).await?))
}

async fn end_room(s: &AppState, id: &str) {
    if let Some(sid) = SessionId::parse(id) {
        s.rooms.end(&sid).await;
    }
    // Several nodes: the room may run on another node.
    super::forward::tell_owner(s, id, super::forward::RoomNotice::End).await;
}

/// An invite with its join link.
#[derive(Serialize)]
pub struct InviteWithLink {
    #[serde(flatten)]
    pub invite: Invite,
    pub link: String,
}

async fn with_link(s: &AppState, invite: Invite) -> Result<InviteWithLink, ApiError> {
    let session = s.db.session(&invite.session_id).await?;
    let claims = Claims::for_invite(
        &invite.session_id,
        &invite.id,
        invite.role,
        invite.open,
        session.ends_at_unix,
        s.config.auth.link_validity_hours,
    );
    let link = join_link(&s.tokens, &s.config.http.public_url, &claims);
    Ok(InviteWithLink { invite, link })
}

async fn create_invite(
    _: Admin,
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<NewInvite>,
) -> Result<(StatusCode, Json<InviteWithLink>), ApiError> {
    let invite = s.db.create_invite(&id, &body).await?;
    Ok((StatusCode::CREATED, Json(with_link(&s, invite).await?)))
}

/// Most invites one bulk call creates.
const MAX_BULK_INVITES: usize = 500;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkInvites {
    invites: Vec<NewInvite>,
}

async fn create_invites(
    _: Admin,
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<BulkInvites>,
) -> Result<(StatusCode, Json<Vec<InviteWithLink>>), ApiError> {
    if body.invites.is_empty() || body.invites.len() > MAX_BULK_INVITES {
        return Err(ApiError::Invalid(format!(
            "invites: give 1–{MAX_BULK_INVITES} invites"
        )));
    }
    let mut out = Vec::with_capacity(body.invites.len());
    for invite in s.db.create_invites(&id, &body.invites).await? {
        out.push(with_link(&s, invite).await?);
    }
    Ok((StatusCode::CREATED, Json(out)))
}

async fn list_invites(
    _: Admin,
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Vec<InviteWithLink>> {
    let mut out = Vec::new();
    for invite in s.db.invites(&id).await? {
        out.push(with_link(&s, invite).await?);
    }
    Ok(Json(out))
}

async fn revoke_invite(
    _: Admin,
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Invite> {
    let invite = s.db.revoke_invite(&id).await?;
    // Whoever holds it now goes at once (open links: everyone who came by it).
    if let Some(session) = SessionId::parse(&invite.session_id) {
        s.rooms.revoke(&session, &invite.id).await;
    }
    super::forward::tell_owner(
        &s,
        &invite.session_id,
        super::forward::RoomNotice::Revoke {
            invite_id: invite.id.clone(),
        },
    )
    .await;
    Ok(Json(invite))
}

/// `a=b&c=d` as a JSON object of strings (percent-decoding is not needed for its values).
fn query_map(query: Option<&str>) -> serde_json::Value {
    let pairs = query
        .unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_owned(), serde_json::Value::String(v.to_owned()))
        });
    serde_json::Value::Object(pairs.collect())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportQuery {
    format: Option<String>,
    /// The CSV's headers and words: `nb` (default) or `en`.
    lang: Option<String>,
}

/// Who may read a session's attendance: an administrator, or that session's course leader
/// (with their own join token as the bearer). Returns who, for the audit.
///
/// A course leader may share a NAT address with a misbehaving machine, so even from an
/// address over its failure budget a valid join token is accepted; the admin key is not
/// looked at then, and a bad credential is refused (429) after the penalty delay.
async fn attendance_reader(
    s: &AppState,
    headers: &HeaderMap,
    addr: Option<std::net::IpAddr>,
    session_id: &str,
) -> Result<String, ApiError> {
    let now = std::time::Instant::now();
    let over = s.guard.over_budget(addr, now).err();
    if over.is_none() && admin(s, headers).is_ok() {
        return Ok("admin".into());
    }
    let claims = match s.tokens.verify(bearer(headers), crate::clock::unix_now()) {
        Ok(claims) => claims,
        Err(e) => {
            if e != crate::auth::TokenError::Expired && !bearer(headers).is_empty() {
                s.guard.failed(addr, now);
            }
            if let Some(over) = over {
                tokio::time::sleep(s.guard.penalty()).await;
                s.guard.refused();
                return Err(ApiError::TooManyRequests(over.retry_after));
            }
            return Err(ApiError::UnauthorizedAttendance);
        }
    };
    let invite =
        s.db.invite(&claims.sub)
            .await
            .map_err(|_| ApiError::UnauthorizedAttendance)?;
    let leader = claims.role == crate::protocol::Role::Leader && invite.role == claims.role;
    if !leader || claims.sid != session_id || invite.session_id != session_id || invite.revoked {
        return Err(ApiError::Forbidden);
    }
    Ok(format!("leader:{}", invite.id))
}

async fn session_attendance(
    State(s): State<AppState>,
    axum::Extension(ClientAddr(addr)): axum::Extension<ClientAddr>,
    h: HeaderMap,
    ApiPath(id): ApiPath<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    // Who asks is checked before anything of the request is read.
    let who = attendance_reader(&s, &h, addr, &id).await?;
    let q: ExportQuery = serde_json::from_value(query_map(query.as_deref()))
        .map_err(|e| ApiError::Invalid(format!("query string: {e}")))?;
    let format = q.format.unwrap_or_else(|| "csv".into());
    if format != "csv" && format != "json" {
        return Err(ApiError::Invalid("format must be csv or json".into()));
    }
    let lang = match q.lang.as_deref() {
        None => CsvLanguage::default(),
        Some(l) => CsvLanguage::parse(l)
            .ok_or_else(|| ApiError::Invalid("lang must be nb or en".into()))?,
    };
    let session = s.db.session(&id).await?;
    let summary = crate::attendance::session_summary(
        &s.db,
        &id,
        crate::attendance::now_ms(),
        s.config.attendance.threshold_percent,
    )
    .await?;
    // Audited before the data leaves.
    crate::attendance::record_export(&s.db, &id, &who, &format).await?;
    tracing::info!(session = %id, by = %who.split(':').next().unwrap_or_default(), format = %format, "attendance exported");
    Ok(if format == "csv" {
        (
            [
                (
                    axum::http::header::CONTENT_TYPE,
                    "text/csv; charset=utf-8".to_owned(),
                ),
                (
                    axum::http::header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"attendance-{id}.csv\""),
                ),
            ],
            crate::attendance::export::csv(&session, &summary, &local_zone(&s)?, lang),
        )
            .into_response()
    } else {
        Json(crate::attendance::export::json(&session, &summary)).into_response()
    })
}

/// The export's time zone (checked at start-up, so failing here means the file went away).
fn local_zone(s: &AppState) -> Result<crate::attendance::tz::Zone, ApiError> {
    crate::attendance::tz::Zone::load(&s.config.attendance.time_zone).map_err(|e| {
        tracing::error!(error = %e, "attendance.time_zone cannot be read");
        ApiError::Internal
    })
}

async fn course_attendance(
    _: Admin,
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Vec<crate::attendance::export::CourseLine>> {
    s.db.course(&id).await?;
    let mut lines = Vec::new();
    for session in s.db.sessions(Some(&id)).await? {
        let summary = crate::attendance::session_summary(
            &s.db,
            &session.id,
            crate::attendance::now_ms(),
            s.config.attendance.threshold_percent,
        )
        .await?;
        crate::attendance::record_export(&s.db, &session.id, "admin", "course-json").await?;
        lines.push(crate::attendance::export::course_line(&session, &summary));
    }
    Ok(Json(lines))
}

async fn list_exports(
    _: Admin,
    State(s): State<AppState>,
) -> ApiResult<Vec<crate::attendance::ExportRecord>> {
    Ok(Json(crate::attendance::exports(&s.db).await?))
}
