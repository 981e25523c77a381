//! Join tokens: compact JWTs (HS256) that carry a session, a role, a pseudonymous subject (the
//! invite) and an expiry — never a name, since the token travels in the link. Pure: the key and
//! the time are passed in. Whether the invite is revoked or the session ended is the store's
//! question, asked at join.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::hmac;
use serde::{Deserialize, Serialize};

use crate::protocol::Role;

/// What a join link grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Session id.
    pub sid: String,
    /// Invite id: the pseudonymous subject (for an open link, the link itself).
    pub sub: String,
    pub role: Role,
    /// An open link: anyone may use it, names themselves, and waits in the lobby.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub open: bool,
    /// For a rejoin token issued at admission: the member's own pseudonymous id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the link is not valid")]
    Malformed,
    #[error("the link's signature does not match")]
    BadSignature,
    #[error("the link has expired")]
    Expired,
}

/// A token whose signature holds: the claims of a genuine link, expired or not. Only
/// `TokenKey::genuine` makes one, so whoever holds one knows the signature was checked; the
/// join path checks it once, at the door (`http::ws`, `room::equipment`), and passes this on.
/// Whether the link may still be used (expiry, a withdrawn invite, an ended session) is
/// asked after, in that order of reasons (`room::client`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Genuine(Claims);

impl Genuine {
    pub fn claims(&self) -> &Claims {
        &self.0
    }
}

/// Signs and checks tokens with one secret.
#[derive(Clone)]
pub struct TokenKey {
    key: hmac::Key,
}

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

impl TokenKey {
    pub fn new(secret: &[u8]) -> TokenKey {
        TokenKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    pub fn sign(&self, claims: &Claims) -> String {
        let header = URL_SAFE_NO_PAD.encode(HEADER);
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialise"));
        let signing_input = format!("{header}.{payload}");
        let tag = hmac::sign(&self.key, signing_input.as_bytes());
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// Checks signature and expiry at `now` (seconds since the epoch).
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let claims = self.verify_signature(token)?;
        if claims.expired(now) {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }

    /// Checks the signature only, and says so in the type: see `Genuine`.
    pub fn genuine(&self, token: &str) -> Result<Genuine, TokenError> {
        self.verify_signature(token).map(Genuine)
    }

    /// Checks the signature only: the claims of a genuine link, expired or not. For telling
    /// the holder of an expired link the truer reason (its invite was withdrawn, its session
    /// ended) before "expired"; never for letting one in.
    pub fn verify_signature(&self, token: &str) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header_json = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| TokenError::Malformed)?;
        let header_value: serde_json::Value =
            serde_json::from_slice(&header_json).map_err(|_| TokenError::Malformed)?;
        // Only HS256: a token claiming "none" or another algorithm is refused outright.
        if header_value["alg"] != "HS256" {
            return Err(TokenError::BadSignature);
        }
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed)?;
        let signing_input = &token[..header.len() + 1 + payload.len()];
        hmac::verify(&self.key, signing_input.as_bytes(), &signature)
            .map_err(|_| TokenError::BadSignature)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Malformed)?;
        serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)
    }
}

impl Claims {
    /// Whether the link has expired at `now` (seconds since the epoch).
    pub fn expired(&self, now: u64) -> bool {
        self.exp <= now
    }
}

impl Claims {
    /// What an invite's join link grants: the invite's session, role and openness, valid until
    /// `validity_hours` after the session ends. Takes the invite's fields, not the database's
    /// row, so that `auth` stays below `db`.
    pub fn for_invite(
        session_id: &str,
        invite_id: &str,
        role: Role,
        open: bool,
        session_ends_unix: i64,
        validity_hours: u64,
    ) -> Claims {
        Claims {
            sid: session_id.to_owned(),
            sub: invite_id.to_owned(),
            role,
            open,
            member: None,
            exp: session_ends_unix.max(0) as u64 + validity_hours * 3600,
        }
    }
}

/// The join link for `claims`: the course page (one for every role), with the token in the
/// fragment (`#t=…`), which browsers never send to the server, so it stays out of access logs.
pub fn join_link(tokens: &TokenKey, public_url: &str, claims: &Claims) -> String {
    format!(
        "{}/course.html#t={}",
        public_url.trim_end_matches('/'),
        tokens.sign(claims)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            sid: "s1".into(),
            sub: "inv-1".into(),
            role: Role::Participant,
            open: false,
            member: None,
            exp: 1000,
        }
    }

    #[test]
    fn round_trip_and_refusals() {
        let key = TokenKey::new(b"secret one");
        let token = key.sign(&claims());
        assert_eq!(key.verify(&token, 999), Ok(claims()));

        let cases: Vec<(String, u64, TokenError)> = vec![
            (token.clone(), 1000, TokenError::Expired),
            (
                TokenKey::new(b"other").sign(&claims()),
                1,
                TokenError::BadSignature,
            ),
            ("garbage".into(), 1, TokenError::Malformed),
            ("a.b.c.d".into(), 1, TokenError::Malformed),
            // Payload swapped for a leader claim, signature kept: refused.
            {
                let mut forged = claims();
                forged.role = Role::Leader;
                let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
                let parts: Vec<&str> = token.split('.').collect();
                (
                    format!("{}.{}.{}", parts[0], forged_payload, parts[2]),
                    1,
                    TokenError::BadSignature,
                )
            },
            // alg "none" with an empty signature: refused.
            {
                let parts: Vec<&str> = token.split('.').collect();
                (
                    format!(
                        "{}.{}.",
                        URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
                        parts[1]
                    ),
                    1,
                    TokenError::BadSignature,
                )
            },
        ];
        for (token, now, want) in cases {
            assert_eq!(key.verify(&token, now), Err(want), "{token}");
            // The signature-only check refuses the same tokens, except for expiry.
            if want != TokenError::Expired {
                assert_eq!(key.verify_signature(&token), Err(want), "{token}");
            }
        }
        // An expired but genuine link still says whose it is (to tell "withdrawn" first).
        assert_eq!(key.verify_signature(&token), Ok(claims()));
        assert_eq!(
            key.genuine(&token).map(|g| g.claims().clone()),
            Ok(claims())
        );
        assert_eq!(key.genuine("a.b.c"), Err(TokenError::Malformed));
        assert!(claims().expired(1000) && !claims().expired(999));
    }

    #[test]
    fn token_carries_no_name() {
        let token = TokenKey::new(b"k").sign(&claims());
        let payload = URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["exp", "role", "sid", "sub"]);
    }
}
