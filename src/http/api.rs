//! The admin REST API (docs/api.md): courses, sessions, invites and their join links. Every
//! call needs `Authorization: Bearer <auth.admin_key>`; with no key configured the API is off.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::AppState;
use crate::auth::join_link;
use crate::db::{DbError, Invite, NewInvite, NewSession, SessionPatch, SessionState};
use crate::ids::SessionId;

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
        .route("/api/invites/{id}/revoke", post(revoke_invite))
        .route("/api/sessions/{id}/attendance", get(session_attendance))
        .route("/api/courses/{id}/attendance", get(course_attendance))
        .route("/api/exports", get(list_exports))
}

/// One error type for the API: a status, a stable code, a message for people.
#[derive(Debug)]
pub enum ApiError {
    Off,
    Unauthorized,
    Forbidden,
    NotFound(&'static str),
    Invalid(String),
    Internal,
}

#[derive(Serialize)]
struct ErrorBody {
    error: &'static str,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error, message) = match self {
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

/// Checks the admin key in constant time.
fn admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let key = &state.config.auth.admin_key;
    if key.is_empty() {
        return Err(ApiError::Off);
    }
    let given = bearer(headers);
    // Compare every byte whatever the differences, so timing tells nothing about the key.
    let same = given.len() == key.len()
        && given
            .bytes()
            .zip(key.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return Err(ApiError::Unauthorized);
    }
    Ok(())
}

type ApiResult<T> = Result<Json<T>, ApiError>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCourse {
    title: String,
}

async fn create_course(
    State(s): State<AppState>,
    h: HeaderMap,
    Json(body): Json<NewCourse>,
) -> Result<(StatusCode, Json<crate::db::Course>), ApiError> {
    admin(&s, &h)?;
    Ok((
        StatusCode::CREATED,
        Json(s.db.create_course(&body.title).await?),
    ))
}

async fn list_courses(
    State(s): State<AppState>,
    h: HeaderMap,
) -> ApiResult<Vec<crate::db::Course>> {
    admin(&s, &h)?;
    Ok(Json(s.db.courses().await?))
}

async fn get_course(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<crate::db::Course> {
    admin(&s, &h)?;
    Ok(Json(s.db.course(&id).await?))
}

async fn create_session(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(id): Path<String>,
    Json(body): Json<NewSession>,
) -> Result<(StatusCode, Json<crate::db::Session>), ApiError> {
    admin(&s, &h)?;
    Ok((
        StatusCode::CREATED,
        Json(s.db.create_session(&id, &body).await?),
    ))
}

async fn list_course_sessions(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Vec<crate::db::Session>> {
    admin(&s, &h)?;
    s.db.course(&id).await?;
    Ok(Json(s.db.sessions(Some(&id)).await?))
}

#[derive(Deserialize)]
struct SessionFilter {
    course: Option<String>,
}

async fn list_sessions(
    State(s): State<AppState>,
    h: HeaderMap,
    Query(f): Query<SessionFilter>,
) -> ApiResult<Vec<crate::db::Session>> {
    admin(&s, &h)?;
    Ok(Json(s.db.sessions(f.course.as_deref()).await?))
}

async fn get_session(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<crate::db::Session> {
    admin(&s, &h)?;
    Ok(Json(s.db.session(&id).await?))
}

async fn update_session(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(id): Path<String>,
    Json(patch): Json<SessionPatch>,
) -> ApiResult<crate::db::Session> {
    admin(&s, &h)?;
    let session = s.db.update_session(&id, &patch).await?;
    if session.state == SessionState::Ended {
        end_room(&s, &id).await;
    }
    Ok(Json(session))
}

async fn end_session(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<crate::db::Session> {
    admin(&s, &h)?;
    s.db.session(&id).await?;
    s.db.advance_session(&id, SessionState::Ended).await?;
    end_room(&s, &id).await;
    Ok(Json(s.db.session(&id).await?))
}

async fn end_room(s: &AppState, id: &str) {
    if let Some(sid) = SessionId::parse(id) {
        s.rooms.end(&sid).await;
    }
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
    let link = join_link(
        &s.tokens,
        &s.config.http.public_url,
        &invite,
        session.ends_at_unix,
        s.config.auth.link_validity_hours,
    );
    Ok(InviteWithLink { invite, link })
}

async fn create_invite(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(id): Path<String>,
    Json(body): Json<NewInvite>,
) -> Result<(StatusCode, Json<InviteWithLink>), ApiError> {
    admin(&s, &h)?;
    let invite = s.db.create_invite(&id, &body).await?;
    Ok((StatusCode::CREATED, Json(with_link(&s, invite).await?)))
}

async fn list_invites(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Vec<InviteWithLink>> {
    admin(&s, &h)?;
    let mut out = Vec::new();
    for invite in s.db.invites(&id).await? {
        out.push(with_link(&s, invite).await?);
    }
    Ok(Json(out))
}

async fn revoke_invite(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Invite> {
    admin(&s, &h)?;
    let invite = s.db.revoke_invite(&id).await?;
    // Whoever holds it now goes at once (open links: everyone who came by it).
    if let Some(session) = SessionId::parse(&invite.session_id) {
        s.rooms.revoke(&session, &invite.id).await;
    }
    Ok(Json(invite))
}

#[derive(Deserialize)]
struct ExportQuery {
    format: Option<String>,
}

/// Who may read a session's attendance: an administrator, or that session's course leader
/// (with their own join token as the bearer). Returns who, for the audit.
async fn attendance_reader(
    s: &AppState,
    headers: &HeaderMap,
    session_id: &str,
) -> Result<String, ApiError> {
    if admin(s, headers).is_ok() {
        return Ok("admin".into());
    }
    let claims = s
        .tokens
        .verify(bearer(headers), crate::auth::unix_now())
        .map_err(|_| ApiError::Unauthorized)?;
    let invite =
        s.db.invite(&claims.sub)
            .await
            .map_err(|_| ApiError::Unauthorized)?;
    let leader = claims.role == crate::protocol::Role::Leader && invite.role == claims.role;
    if !leader || claims.sid != session_id || invite.session_id != session_id || invite.revoked {
        return Err(ApiError::Forbidden);
    }
    Ok(format!("leader:{}", invite.id))
}

async fn session_attendance(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<ExportQuery>,
) -> Result<Response, ApiError> {
    let format = q.format.unwrap_or_else(|| "csv".into());
    if format != "csv" && format != "json" {
        return Err(ApiError::Invalid("format must be csv or json".into()));
    }
    let who = attendance_reader(&s, &h, &id).await?;
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
            crate::attendance::export::csv(&session, &summary),
        )
            .into_response()
    } else {
        Json(crate::attendance::export::json(&session, &summary)).into_response()
    })
}

async fn course_attendance(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Vec<crate::attendance::export::CourseLine>> {
    admin(&s, &h)?;
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
    State(s): State<AppState>,
    h: HeaderMap,
) -> ApiResult<Vec<crate::attendance::ExportRecord>> {
    admin(&s, &h)?;
    Ok(Json(crate::attendance::exports(&s.db).await?))
}
