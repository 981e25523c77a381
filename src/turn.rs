//! TURN credentials for clients: the "TURN REST API" scheme coturn implements as
//! `use-auth-secret`. The username is `<expiry unix time>:<random tag>`, the password
//! base64(HMAC-SHA1(shared secret, username)); coturn recomputes it from the same secret and
//! refuses it after the expiry. Pure: time and randomness are passed in. Must not log the
//! secret or the credentials.

use std::time::Duration;

use base64::Engine as _;
use serde::Serialize;

use crate::config::TurnConfig;

/// What a browser passes to `new RTCPeerConnection(...)`, served as `/ice-servers.json`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct IceConfig {
    #[serde(rename = "iceServers")]
    pub ice_servers: Vec<IceServer>,
    /// "all", or "relay" when `turn.relay_only` is set.
    #[serde(rename = "iceTransportPolicy")]
    pub ice_transport_policy: &'static str,
    /// Unix time (seconds) after which the credentials stop working; fetch new ones to reconnect.
    pub expires: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// The credential coturn expects for `username` under `secret`.
pub fn credential(secret: &str, username: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    let tag = ring::hmac::sign(&key, username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
}

/// ICE servers for one client at `now_unix`. `tag` goes into the username (random per request,
/// never a name: coturn logs usernames). STUN URLs are listed without credentials.
pub fn ice_config(turn: &TurnConfig, now_unix: u64, tag: &str) -> IceConfig {
    ice_config_for(turn, now_unix, turn.credential_lifetime(), tag)
}

fn ice_config_for(turn: &TurnConfig, now_unix: u64, lifetime: Duration, tag: &str) -> IceConfig {
    let expires = now_unix + lifetime.as_secs();
    let (relays, stuns): (Vec<String>, Vec<String>) = turn
        .urls
        .iter()
        .cloned()
        .partition(|u| u.starts_with("turn"));
    let mut ice_servers = Vec::new();
    if !relays.is_empty() {
        let username = format!("{expires}:{tag}");
        ice_servers.push(IceServer {
            urls: relays,
            credential: Some(credential(&turn.secret, &username)),
            username: Some(username),
        });
    }
    if !stuns.is_empty() {
        ice_servers.push(IceServer {
            urls: stuns,
            username: None,
            credential: None,
        });
    }
    IceConfig {
        ice_servers,
        ice_transport_policy: if turn.relay_only { "relay" } else { "all" },
        expires,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(urls: &[&str], relay_only: bool) -> TurnConfig {
        TurnConfig {
            urls: urls.iter().map(|u| u.to_string()).collect(),
            secret: "0123456789abcdef-secret".into(),
            credential_lifetime_hours: 12,
            relay_only,
        }
    }

    #[test]
    fn credential_is_base64_hmac_sha1_of_the_username() {
        // Reference value computed independently (Python's hmac module).
        assert_eq!(
            credential("0123456789abcdef-secret", "1780000000:kursrelay"),
            "KyMSEk+c4fDxblFN2DwU1x0TKFs="
        );
    }

    #[test]
    fn config_per_url_kind_and_policy() {
        let cases = [
            (vec![], false, 0, "all"),
            (vec!["stun:s.example:3478"], false, 1, "all"),
            (
                vec!["turn:t.example:3478", "turns:t.example:443?transport=tcp"],
                true,
                1,
                "relay",
            ),
            (
                vec!["turn:t.example:3478", "stun:s.example:3478"],
                false,
                2,
                "all",
            ),
        ];
        for (urls, relay_only, servers, policy) in cases {
            let c = ice_config(&turn(&urls, relay_only), 1_000, "abc");
            assert_eq!(c.ice_servers.len(), servers, "{urls:?}");
            assert_eq!(c.ice_transport_policy, policy);
            assert_eq!(c.expires, 1_000 + 12 * 3600);
            for s in &c.ice_servers {
                let is_turn = s.urls[0].starts_with("turn");
                assert_eq!(s.username.is_some(), is_turn, "{s:?}");
                if let (Some(u), Some(p)) = (&s.username, &s.credential) {
                    assert_eq!(u, &format!("{}:abc", 1_000 + 12 * 3600));
                    assert_eq!(p, &credential("0123456789abcdef-secret", u));
                }
            }
        }
    }

    #[test]
    fn json_has_the_browser_field_names() {
        let c = ice_config(&turn(&["turn:t.example:3478"], false), 0, "x");
        let v = serde_json::to_value(&c).unwrap();
        assert!(v["iceServers"][0]["urls"].is_array());
        assert_eq!(v["iceTransportPolicy"], "all");
        assert!(v["iceServers"][0]["credential"].is_string());
    }
}
