//! `POST /link-check`: the web page asks, before its device test, whether its join link still
//! works, and learns what to show (course and session title, the role, the name on the
//! invite). The token travels in the request body, never in a URL, and nothing of it is logged.
//! It decides nothing: joining checks everything again (`room::client`).

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::guard::ClientAddr;
use super::AppState;
use crate::clock::unix_now;
use crate::db::{DbError, SessionState};
use crate::protocol::Role;

#[derive(Deserialize)]
pub(super) struct CheckRequest {
    token: String,
}

/// The state of a link, as the page words it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    Ok,
    /// Forged, garbled, or for no known invite.
    Invalid,
    Expired,
    Revoked,
    Ended,
}

#[derive(Serialize)]
pub(super) struct CheckReply {
    state: LinkState,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<Role>,
    /// Whether this is an open link (one link for many, each waiting in the lobby). Always
    /// there in an `ok` reply, `false` included (docs/api.md); absent in the others.
    #[serde(skip_serializing_if = "Option::is_none")]
    open: Option<bool>,
    /// The name on a personal invite (the link holder's own), for "you join as …".
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    course_title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_title: Option<String>,
    /// When the session is planned to start and end (RFC 3339, UTC): the page says when to
    /// come back, in the reader's own time and language.
    #[serde(skip_serializing_if = "Option::is_none")]
    starts_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ends_at: Option<String>,
}

impl CheckReply {
    fn bad(state: LinkState) -> Json<CheckReply> {
        Json(CheckReply {
            state,
            role: None,
            open: None,
            name: None,
            course_title: None,
            session_title: None,
            starts_at: None,
            ends_at: None,
        })
    }
}

pub(super) async fn check(
    State(s): State<AppState>,
    axum::Extension(ClientAddr(addr)): axum::Extension<ClientAddr>,
    Json(req): Json<CheckRequest>,
) -> Result<Json<CheckReply>, super::api::ApiError> {
    // Signature first; an expired link is told so only after the truer reasons (withdrawn,
    // ended), as at join.
    let claims = match s.tokens.verify_signature(req.token.trim()) {
        Ok(c) => c,
        Err(_) => {
            // A guess costs like a bad join (`guard`); a valid link is answered whatever the
            // address's budget.
            let now = std::time::Instant::now();
            let over = s.guard.over_budget(addr, now);
            s.guard.failed(addr, now);
            if let Err(over) = over {
                tokio::time::sleep(s.guard.penalty()).await;
                s.guard.refused();
                return Err(super::api::ApiError::TooManyRequests(over.retry_after));
            }
            return Ok(CheckReply::bad(LinkState::Invalid));
        }
    };
    let found = async {
        let session = s.db.session(&claims.sid).await?;
        let invite = s.db.invite(&claims.sub).await?;
        let course = s.db.course(&session.course_id).await?;
        Ok::<_, DbError>((session, invite, course))
    }
    .await;
    let (session, invite, course) = match found {
        Ok(x) => x,
        Err(DbError::NotFound(_)) => return Ok(CheckReply::bad(LinkState::Invalid)),
        Err(e) => return Err(e.into()),
    };
    if invite.session_id != claims.sid || invite.role != claims.role || invite.open != claims.open {
        return Ok(CheckReply::bad(LinkState::Invalid));
    }
    if invite.revoked {
        return Ok(CheckReply::bad(LinkState::Revoked));
    }
    if session.state == SessionState::Ended {
        return Ok(CheckReply::bad(LinkState::Ended));
    }
    if claims.expired(unix_now()) {
        return Ok(CheckReply::bad(LinkState::Expired));
    }
    Ok(Json(CheckReply {
        state: LinkState::Ok,
        role: Some(invite.role),
        open: Some(invite.open),
        name: invite.display_name,
        course_title: Some(course.title),
        session_title: Some(session.title),
        starts_at: Some(session.starts_at),
        ends_at: Some(session.ends_at),
    }))
}
