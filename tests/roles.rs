//! Roles, links, lobby and floor through the real protocol with real webrtc-rs peers: the
//! server, never the client, decides who may do what.

mod common;

use std::time::Duration;

use common::*;
use kursrelay::auth::{Claims, TokenKey};
use kursrelay::clock::unix_now;
use kursrelay::protocol::Role;
use serde_json::json;

fn error_code(m: &serde_json::Value) -> &str {
    m["code"].as_str().unwrap_or_default()
}

async fn join_error(server: &TestServer, token: &str) -> String {
    let peer = TestPeer::connect(server, token, Some("Test")).await;
    let reply = peer
        .wait_msg(|m| matches!(m["type"].as_str(), Some("joined" | "lobby" | "error")))
        .await;
    assert_eq!(reply["type"], "error", "expected a refusal, got {reply}");
    assert_eq!(reply["request"], "join");
    error_code(&reply).to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_joins_with_its_link_and_sees_what_its_role_may() {
    let server = TestServer::spawn().await;
    let leader = TestPeer::leader(&server, "roles", "Ola Kursleiar").await;
    let rep = TestPeer::join_as(
        &server,
        "roles",
        Role::Representative,
        "Brukarrepresentant Eva",
    )
    .await;
    let (kari_invite, kari_token) = server
        .token_with("roles", Role::Participant, Some("Kari"), false, None)
        .await;
    let kari = TestPeer::connect(&server, &kari_token, None).await;
    let (_, rel_token) = server
        .token_with(
            "roles",
            Role::Participant,
            Some("Nils"),
            false,
            Some(kari_invite.clone()),
        )
        .await;
    let relative = TestPeer::connect(&server, &rel_token, None).await;
    let site_token = server
        .token(
            "roles",
            Role::Site,
            Some("Volda sjukehus, møterom 2"),
            false,
        )
        .await;
    // A site is shown with its room's name whatever name the client sends.
    let site = TestPeer::connect(&server, &site_token, Some("Someone")).await;
    let interpreter = TestPeer::join_as(&server, "roles", Role::Interpreter, "Tolk Siri").await;

    for (peer, role) in [
        (&leader, "leader"),
        (&rep, "representative"),
        (&kari, "participant"),
        (&relative, "participant"),
        (&site, "site"),
        (&interpreter, "interpreter"),
    ] {
        let joined = peer.wait_msg(|m| m["type"] == "joined").await;
        assert_eq!(joined["role"], role);
    }
    assert_eq!(
        site.wait_msg(|m| m["type"] == "joined").await["name"],
        "Volda sjukehus, møterom 2"
    );
    site.send(json!({"type": "set_headcount", "count": 9}))
        .await;
    site.wait_msg(|m| m["type"] == "ok" && m["request"] == "set_headcount")
        .await;
    kari.send(json!({"type": "raise_hand"})).await;
    kari.wait_msg(|m| m["type"] == "hand" && m["raised"] == true)
        .await;

    let full = |m: &serde_json::Value| {
        m["type"] == "roster"
            && m["members"].as_array().is_some_and(|a| a.len() == 6)
            && m["participant_count"] == 11
    };
    // Everyone sees who is present: 2 participants + 9 in Volda; interpreter, leader and
    // representative are not counted.
    for peer in [&leader, &rep, &kari, &site, &interpreter] {
        peer.wait_msg(full).await;
    }
    let seen_by_leader = leader
        .wait_msg(|m| full(m) && m["hands"].as_array().is_some_and(|h| h.len() == 1))
        .await;
    let kari_entry = seen_by_leader["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "Kari")
        .unwrap()
        .clone();
    assert_eq!(kari_entry["subject"], kari_invite.as_str());
    let nils = seen_by_leader["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "Nils")
        .unwrap()
        .clone();
    assert_eq!(
        nils["relative_of"],
        kari_invite.as_str(),
        "relatives are linked for the leader"
    );
    assert!(seen_by_leader["lobby"].is_array());
    let seen_by_rep = rep
        .wait_msg(|m| full(m) && m["hands"].as_array().is_some_and(|h| h.len() == 1))
        .await;
    assert!(seen_by_rep.get("lobby").is_none());
    let seen_by_kari = kari.wait_msg(full).await;
    assert!(seen_by_kari.get("hands").is_none() && seen_by_kari.get("lobby").is_none());

    // The user representative never sees a pseudonymous id or anyone's invite.
    let session = server.session("roles").await;
    let invites = server.state.db.invites(&session).await.unwrap();
    for peer in [&rep, &kari, &site, &interpreter] {
        let everything = serde_json::to_string(&peer.inbox()).unwrap();
        for invite in &invites {
            assert!(
                !everything.contains(&invite.id),
                "an invite id reached a non-leader"
            );
        }
        assert!(!everything.contains("\"subject\""));
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_expired_wrong_session_revoked_and_ended_links_are_refused() {
    let server = TestServer::spawn().await;
    let (invite, good) = server
        .token_with("links", Role::Participant, Some("Kari"), false, None)
        .await;
    let session = server.session("links").await;
    let other_session = server.session("other").await;
    let claims = Claims {
        sid: session.clone(),
        sub: invite.clone(),
        role: Role::Participant,
        open: false,
        member: None,
        exp: unix_now() + 3600,
    };

    let forged = TokenKey::new(b"not the server's key").sign(&claims);
    assert_eq!(join_error(&server, &forged).await, "bad_token");
    let escalated = TokenKey::new(b"x").sign(&Claims {
        role: Role::Leader,
        ..claims.clone()
    });
    assert_eq!(join_error(&server, &escalated).await, "bad_token");
    let expired = server.state.tokens.sign(&Claims {
        exp: unix_now() - 1,
        ..claims.clone()
    });
    assert_eq!(join_error(&server, &expired).await, "bad_token");
    let wrong_session = server.state.tokens.sign(&Claims {
        sid: other_session.clone(),
        ..claims.clone()
    });
    assert_eq!(join_error(&server, &wrong_session).await, "bad_token");
    let wrong_role = server.state.tokens.sign(&Claims {
        role: Role::Leader,
        ..claims.clone()
    });
    assert_eq!(join_error(&server, &wrong_role).await, "bad_token");
    assert_eq!(
        join_error(&server, "eyJhbGciOiJub25lIn0.e30.").await,
        "bad_token"
    );

    // The real link works, until it is revoked.
    let ok = TestPeer::connect(&server, &good, None).await;
    ok.wait_msg(|m| m["type"] == "joined").await;
    ok.close().await;
    server.state.db.revoke_invite(&invite).await.unwrap();
    assert_eq!(join_error(&server, &good).await, "invite_revoked");

    // Ending the session makes every link useless.
    let other = server
        .token("links", Role::Participant, Some("Per"), false)
        .await;
    server
        .state
        .db
        .advance_session(&session, kursrelay::db::SessionState::Ended)
        .await
        .unwrap();
    assert_eq!(join_error(&server, &other).await, "session_ended");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_publishes_only_while_given_the_floor() {
    let server = TestServer::spawn().await;
    let leader = TestPeer::leader(&server, "floor", "Kursleiar").await;
    leader.publish(PublishSpec::default()).await;
    let kari = TestPeer::join(&server, "floor", "Kari").await;
    let watcher = TestPeer::join(&server, "floor", "Per").await;

    // Without the floor: the offer is refused.
    assert!(kari.try_publish(PublishSpec::default()).await.is_none());
    let refusal = kari
        .wait_msg(|m| m["type"] == "error" && m["request"] == "publish_offer")
        .await;
    assert_eq!(error_code(&refusal), "forbidden");

    // Hand up, floor granted, media flows to the others.
    kari.send(json!({"type": "raise_hand"})).await;
    leader
        .wait_msg(|m| {
            m["type"] == "roster"
                && m["hands"]
                    .as_array()
                    .is_some_and(|h| h.iter().any(|x| x == kari.member_id.as_str()))
        })
        .await;
    leader
        .send(json!({"type": "grant_floor", "member_id": kari.member_id}))
        .await;
    leader
        .wait_msg(|m| m["type"] == "ok" && m["request"] == "grant_floor")
        .await;
    kari.wait_msg(|m| m["type"] == "floor" && m["granted"] == true)
        .await;
    let sent = kari.publish(PublishSpec::default()).await;
    let kari_cam = watcher.wait_offered(&kari.member_id, "camera").await;
    assert!(wait_until(TIMEOUT, || watcher.received_count(&kari_cam) > 20).await);
    check_delivery(&watcher, &kari_cam, &sent[0]);
    // Even with the floor, a participant may not share a screen.
    let screen = kari.send(json!({"type": "publish_offer", "sdp": "v=0", "tracks": [{"track_id": "s", "source": "screen"}]}));
    screen.await;
    let refusal = kari
        .wait_msg(|m| {
            m["type"] == "error"
                && m["request"] == "publish_offer"
                && m["message"].as_str().is_some_and(|t| t.contains("screen"))
        })
        .await;
    assert_eq!(error_code(&refusal), "forbidden");

    // Revoked: forwarding stops at once although Kari's client keeps sending.
    leader
        .send(json!({"type": "revoke_floor", "member_id": kari.member_id}))
        .await;
    kari.wait_msg(|m| m["type"] == "floor" && m["granted"] == false)
        .await;
    assert!(
        wait_until(Duration::from_secs(1), || !watcher
            .offered()
            .iter()
            .any(|t| t.track_id.to_string() == kari_cam))
        .await,
        "still offered a second after revoking"
    );
    let after = watcher.received_count(&kari_cam);
    // The marker: the engine reads and throws away Kari's later packets (≈ 0.5 s of her camera
    // and microphone) — on the very path that would have forwarded them.
    let discarded = server.metric(|m| &m.packets_discarded);
    none_before(
        "media still forwarded after revoking",
        || watcher.received_count(&kari_cam) > after + 2,
        eventually("Kari's later packets read and discarded", TIMEOUT, || {
            server.metric(|m| &m.packets_discarded) >= discarded + 50
        }),
    )
    .await;
    assert!(
        sent[0].sent.lock().unwrap().len() > after,
        "the client kept sending"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lobby_admit_deny_and_automatic_readmission() {
    let server = TestServer::spawn().await;
    let leader = TestPeer::leader(&server, "lobby", "Kursleiar").await;
    leader.publish(PublishSpec::default()).await;
    let open = server.token("lobby", Role::Participant, None, true).await;

    let per = TestPeer::connect(&server, &open, Some("Per")).await;
    per.wait_msg(|m| m["type"] == "lobby").await;
    let anna = TestPeer::connect(&server, &open, Some("Anna")).await;
    anna.wait_msg(|m| m["type"] == "lobby").await;
    // Nothing but the lobby while waiting: no roster, no media.
    assert!(per
        .inbox()
        .iter()
        .all(|m| m["type"] != "roster" && m["type"] != "subscribe_offer"));
    leader
        .wait_msg(|m| m["type"] == "roster" && m["lobby"].as_array().is_some_and(|l| l.len() == 2))
        .await;

    leader
        .send(json!({"type": "admit", "member_id": per.member_id}))
        .await;
    let joined = per.wait_msg(|m| m["type"] == "joined").await;
    let rejoin = joined["rejoin_token"]
        .as_str()
        .expect("rejoin token for an open link")
        .to_owned();
    let cam = per.wait_offered(&leader.member_id, "camera").await;
    assert!(wait_until(TIMEOUT, || per.received_count(&cam) > 10).await);

    leader
        .send(json!({"type": "deny", "member_id": anna.member_id}))
        .await;
    anna.wait_msg(|m| m["type"] == "bye" && m["reason"] == "denied")
        .await;
    assert!(wait_until(TIMEOUT, || anna.socket_closed()).await);

    // Per's network drops; coming back with the rejoin token skips the lobby.
    per.drop_socket().await;
    leader
        .wait_msg(|m| {
            m["type"] == "roster" && m["members"].as_array().is_some_and(|a| a.len() == 1)
        })
        .await;
    let back = TestPeer::connect(&server, &rejoin, None).await;
    let again = back
        .wait_msg(|m| matches!(m["type"].as_str(), Some("joined" | "lobby")))
        .await;
    assert_eq!(again["type"], "joined");
    assert_eq!(again["name"], "Per");
    let cam = back.wait_offered(&leader.member_id, "camera").await;
    assert!(wait_until(TIMEOUT, || back.received_count(&cam) > 10).await);

    // A personal invite reconnecting is let straight in too, replacing the old connection.
    let kari_token = server
        .token("lobby", Role::Participant, Some("Kari"), false)
        .await;
    let kari1 = TestPeer::connect(&server, &kari_token, None).await;
    kari1.wait_msg(|m| m["type"] == "joined").await;
    let kari2 = TestPeer::connect(&server, &kari_token, None).await;
    kari2.wait_msg(|m| m["type"] == "joined").await;
    kari1
        .wait_msg(|m| m["type"] == "bye" && m["reason"] == "replaced")
        .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_remove_and_end() {
    let server = TestServer::spawn().await;
    let leader = TestPeer::leader(&server, "lock", "Kursleiar").await;
    let kari_token = server
        .token("lock", Role::Participant, Some("Kari"), false)
        .await;
    let kari = TestPeer::connect(&server, &kari_token, None).await;
    kari.wait_msg(|m| m["type"] == "joined").await;

    leader.send(json!({"type": "lock"})).await;
    leader
        .wait_msg(|m| m["type"] == "roster" && m["locked"] == true)
        .await;
    let late = server
        .token("lock", Role::Participant, Some("Sein"), false)
        .await;
    assert_eq!(join_error(&server, &late).await, "locked");
    // Someone already in comes back even while locked.
    kari.drop_socket().await;
    let kari_again = TestPeer::connect(&server, &kari_token, None).await;
    kari_again.wait_msg(|m| m["type"] == "joined").await;
    leader.send(json!({"type": "unlock"})).await;
    leader
        .wait_msg(|m| m["type"] == "roster" && m["locked"] == false)
        .await;
    let late_peer = TestPeer::connect(&server, &late, None).await;
    late_peer.wait_msg(|m| m["type"] == "joined").await;

    // Removed: out, and the same link no longer works.
    leader
        .send(json!({"type": "remove", "member_id": kari_again.member_id}))
        .await;
    kari_again
        .wait_msg(|m| m["type"] == "bye" && m["reason"] == "removed")
        .await;
    assert_eq!(join_error(&server, &kari_token).await, "removed");

    // Ending: everyone is told, every link stops working.
    leader.send(json!({"type": "end_session"})).await;
    late_peer
        .wait_msg(|m| m["type"] == "bye" && m["reason"] == "session_ended")
        .await;
    leader
        .wait_msg(|m| m["type"] == "bye" && m["reason"] == "session_ended")
        .await;
    assert_eq!(join_error(&server, &late).await, "session_ended");
    let session = server.session("lock").await;
    assert_eq!(
        server.state.db.session(&session).await.unwrap().state,
        kursrelay::db::SessionState::Ended
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claiming_another_role_in_a_message_changes_nothing() {
    let server = TestServer::spawn().await;
    let leader = TestPeer::leader(&server, "escalate", "Kursleiar").await;
    let token = server
        .token("escalate", Role::Participant, Some("Kari"), false)
        .await;
    let mallory = TestPeer::connect(&server, &token, None).await;
    mallory.send(json!({"type": "hello", "version": 1})).await; // ignored noise
                                                                // The join carried no role; try to act as the leader anyway.
    let joined = mallory.wait_msg(|m| m["type"] == "joined").await;
    assert_eq!(joined["role"], "participant");
    let n = mallory.inbox_len();
    for msg in [
        json!({"type": "grant_floor", "member_id": mallory.member_id, "role": "leader"}),
        json!({"type": "lock", "role": "leader"}),
        json!({"type": "remove", "member_id": leader.member_id}),
        json!({"type": "end_session"}),
        json!({"type": "chat", "text": "hei"}),
    ] {
        let request = msg["type"].as_str().unwrap().to_owned();
        mallory.send(msg).await;
        let reply = mallory
            .wait_msg_after(n, |m| {
                m["type"] == "error" && m["request"] == request.as_str()
            })
            .await;
        // Chat is off in this session: that is said plainly, whoever asks.
        let want = if request == "chat" {
            "chat_disabled"
        } else {
            "forbidden"
        };
        assert_eq!(error_code(&reply), want, "{request}");
    }
    assert!(leader.inbox().iter().all(|m| m["type"] != "bye"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_and_captions_are_relayed_when_allowed() {
    let server = TestServer::spawn().await;
    let leader = TestPeer::leader(&server, "chat-on", "Kursleiar").await;
    let kari = TestPeer::join(&server, "chat-on", "Kari").await;
    assert_eq!(
        kari.wait_msg(|m| m["type"] == "joined").await["chat_enabled"],
        true
    );
    let tolk = TestPeer::join_as(&server, "chat-on", Role::Interpreter, "Tolk").await;
    kari.send(json!({"type": "chat", "text": "Kan du gjenta?"}))
        .await;
    leader
        .wait_msg(|m| m["type"] == "chat" && m["text"] == "Kan du gjenta?" && m["name"] == "Kari")
        .await;
    tolk.send(json!({"type": "caption", "text": "Vi tek pause no."}))
        .await;
    kari.wait_msg(|m| m["type"] == "caption" && m["text"] == "Vi tek pause no.")
        .await;
    kari.send(json!({"type": "caption", "text": "fake"})).await;
    assert_eq!(
        error_code(
            &kari
                .wait_msg(|m| m["type"] == "error" && m["request"] == "caption")
                .await
        ),
        "forbidden"
    );
    server.shutdown().await;
}

/// A chat flood is refused line by line before it reaches the session: the first ten lines
/// go through, the rest are answered `rate_limited`, the sender stays connected, and a
/// moment later it may chat again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_flood_is_refused_line_by_line() {
    let server = TestServer::spawn().await;
    let leader = TestPeer::leader(&server, "chat-flood", "Kursleiar").await;
    let kari = TestPeer::join(&server, "chat-flood", "Kari").await;
    kari.wait_msg(|m| m["type"] == "joined").await;
    for i in 0..30 {
        kari.send(json!({"type": "chat", "text": format!("linje {i}")}))
            .await;
    }
    kari.wait_msg(|m| m["type"] == "chat" && m["text"] == "linje 9")
        .await;
    assert!(
        wait_until(TIMEOUT, || {
            kari.inbox()
                .iter()
                .filter(|m| m["type"] == "error" && m["code"] == "rate_limited")
                .count()
                >= 18
        })
        .await,
        "the flood was not refused"
    );
    let relayed = |p: &TestPeer| {
        p.inbox()
            .iter()
            .filter(|m| {
                m["type"] == "chat" && m["text"].as_str().unwrap_or("").starts_with("linje")
            })
            .count()
    };
    let refused = |p: &TestPeer| {
        p.inbox()
            .iter()
            .filter(|m| m["type"] == "error" && m["request"] == "chat")
            .count()
    };
    // Every line is either relayed to the leader or refused to Kari — wait for the last of
    // them to arrive (the leader's copies and Kari's refusals travel on different sockets).
    assert!(
        wait_until(TIMEOUT, || relayed(&leader) + refused(&kari) == 30).await,
        "{} relayed + {} refused: {:?}",
        relayed(&leader),
        refused(&kari),
        kari.inbox()
    );
    assert!(
        (10..=12).contains(&relayed(&leader)),
        "{} relayed",
        relayed(&leader)
    );
    assert!(!kari.socket_closed());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    kari.send(json!({"type": "chat", "text": "Kan du gjenta?"}))
        .await;
    leader
        .wait_msg(|m| m["type"] == "chat" && m["text"] == "Kan du gjenta?")
        .await;
    server.shutdown().await;
}
