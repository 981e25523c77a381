//! `POST /check/offer[?transport=udp|tcp]`: the connectivity check page sends an SDP offer
//! (its candidates included) and gets the answer of a short-lived check connection on the
//! media port (`sfu::check`), with the port's UDP candidates only (`udp`), its ICE-TCP
//! candidate only (`tcp`), or both (no parameter). Public like the page; bounded by
//! `sfu::MAX_CHECKS`.

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::AppState;
use crate::sfu::{CheckError, CheckTransport};

/// Largest offer accepted (a browser's offer with a data channel and candidates is ~2 KB).
const MAX_OFFER_BYTES: usize = 16 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Offer {
    #[serde(rename = "type")]
    kind: String,
    sdp: String,
}

#[derive(Serialize)]
struct Answer {
    #[serde(rename = "type")]
    kind: &'static str,
    sdp: String,
}

#[derive(Serialize)]
struct Problem {
    error: &'static str,
    message: String,
}

fn problem(status: StatusCode, error: &'static str, message: impl Into<String>) -> Response {
    (
        status,
        Json(Problem {
            error,
            message: message.into(),
        }),
    )
        .into_response()
}

/// The transports the page asks to test: `transport=udp` or `transport=tcp`, else both.
fn transport(query: Option<&str>) -> Option<CheckTransport> {
    let mut chosen = CheckTransport::Both;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        chosen = match pair {
            "transport=udp" => CheckTransport::Udp,
            "transport=tcp" => CheckTransport::Tcp,
            _ => return None,
        };
    }
    Some(chosen)
}

pub async fn offer(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let Some(transport) = transport(query.as_deref()) else {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "the only parameter is transport=udp or transport=tcp",
        );
    };
    // Parsed here rather than by axum's `Json`, so every answer is in the one JSON shape.
    if body.len() > MAX_OFFER_BYTES + 1024 {
        return problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("an offer is at most {MAX_OFFER_BYTES} bytes"),
        );
    }
    let offer: Offer = match serde_json::from_slice(&body) {
        Ok(offer) => offer,
        Err(e) if e.is_syntax() || e.is_eof() => {
            return problem(
                StatusCode::BAD_REQUEST,
                "bad_json",
                format!("the body is not JSON: {e}"),
            )
        }
        Err(e) => {
            return problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                format!("expected {{\"type\": \"offer\", \"sdp\": \"…\"}}: {e}"),
            )
        }
    };
    if offer.kind != "offer" {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "type must be \"offer\"",
        );
    }
    if offer.sdp.len() > MAX_OFFER_BYTES {
        return problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("an offer is at most {MAX_OFFER_BYTES} bytes"),
        );
    }
    match state.sfu.check_answer(offer.sdp, transport).await {
        Ok(sdp) => Json(Answer {
            kind: "answer",
            sdp,
        })
        .into_response(),
        Err(CheckError::Busy) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            CheckError::Busy.to_string(),
        ),
        Err(CheckError::Sfu(crate::sfu::SfuError::BadSdp(m))) => problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            format!("the offer could not be used: {m}"),
        ),
        Err(err) => {
            tracing::error!(error = %err, "connectivity check connection failed");
            problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the server could not set up a test connection",
            )
        }
    }
}
