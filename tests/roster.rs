//! Who sees whom, through the real server with real peers: the session's `roster` setting
//! (names, or only a count), people without a name shown by their number, each member's own
//! place in the hand queue, the leader lowering a hand, a participant who cannot turn on camera
//! or microphone giving the floor back (the leader is told), and the user representative as
//! co-host (admits and gives the floor, still without pseudonymous ids).

mod common;

use common::*;
use kursrelay::protocol::Role;
use serde_json::{json, Value};

/// The last roster `peer` received that satisfies `pred`.
async fn roster_where(peer: &TestPeer, pred: impl Fn(&Value) -> bool) -> Value {
    peer.wait_msg(|m| m["type"] == "roster" && pred(m)).await
}

fn names(roster: &Value) -> Vec<String> {
    roster["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_only_sessions_hide_participants_from_participants() {
    let server = TestServer::spawn().await;
    let leader = TestPeer::leader(&server, "count", "Ola").await;
    let rep = TestPeer::join_as(&server, "count", Role::Representative, "Eva").await;
    let kari = TestPeer::join(&server, "count", "Kari").await;
    let per = TestPeer::join(&server, "count", "Per").await;
    let site = TestPeer::join_as(&server, "count", Role::Site, "Volda").await;

    // Kari sees the teaching team and the site, how many take part, but no other patient.
    let with_site =
        |r: &Value| r["participant_count"] == 2 && r["members"].to_string().contains("\"site\"");
    let seen = roster_where(&kari, with_site).await;
    assert_eq!(seen["roster"], "count");
    let kari_sees = names(&seen);
    assert!(!kari_sees.contains(&"Per".to_owned()), "{seen}");
    assert!(!kari_sees.contains(&"Kari".to_owned()), "{seen}");
    for name in ["Ola", "Eva", "Volda"] {
        assert!(kari_sees.contains(&name.to_owned()), "{seen}");
    }
    let site_sees = roster_where(&site, with_site).await;
    assert!(!names(&site_sees).contains(&"Per".to_owned()));
    // The leader and the user representative see everyone by name.
    for peer in [&leader, &rep] {
        let r = roster_where(peer, with_site).await;
        assert!(names(&r).contains(&"Per".to_owned()), "{r}");
    }
    // Pseudonymous ids stay the leader's alone.
    let rep_view = roster_where(&rep, with_site).await;
    assert!(rep_view["members"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m.get("subject").is_none()));
    drop(per);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_numbers_hands_floor_and_cohost() {
    let server = TestServer::spawn().await;
    // The leader's link has no name, and nobody types one: shown by role, no error.
    let leader_token = server.token("names", Role::Leader, None, false).await;
    let leader = TestPeer::connect(&server, &leader_token, None).await;
    let joined = leader.wait_msg(|m| m["type"] == "joined").await;
    assert_eq!(joined["name"], "");
    let kari = TestPeer::join(&server, "names", "Kari").await;
    let rep = TestPeer::join_as(&server, "names", Role::Representative, "Eva").await;

    // Someone on the open link without a name waits as a number, and keeps it once in.
    let open = server.token("names", Role::Participant, None, true).await;
    let anon = TestPeer::connect(&server, &open, None).await;
    anon.wait_msg(|m| m["type"] == "lobby").await;
    let waiting = roster_where(&leader, |r| {
        r["lobby"].as_array().is_some_and(|l| l.len() == 1)
    })
    .await;
    let number = waiting["lobby"][0]["number"].as_u64().expect("a number");
    assert_eq!(waiting["lobby"][0]["name"], "");

    // The leader makes the user representative co-host; she lets the person in.
    leader
        .send(json!({"type": "set_cohost", "member_id": rep.member_id, "cohost": true}))
        .await;
    leader
        .wait_msg(|m| m["type"] == "ok" && m["request"] == "set_cohost")
        .await;
    let rep_lobby = roster_where(&rep, |r| {
        r["lobby"].as_array().is_some_and(|l| l.len() == 1)
    })
    .await;
    assert!(rep_lobby["members"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m.get("subject").is_none()));
    rep.send(json!({"type": "admit", "member_id": anon.member_id}))
        .await;
    anon.wait_msg(|m| m["type"] == "joined").await;
    let seen = roster_where(&kari, |r| {
        r["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["member_id"] == anon.member_id.as_str())
    })
    .await;
    let entry = seen["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["member_id"] == anon.member_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        (entry["name"].clone(), entry["number"].as_u64()),
        (json!(""), Some(number))
    );
    // Kari has a name, so no number.
    assert!(seen["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["name"] == "Kari")
        .all(|m| m.get("number").is_none()));

    // Hands: each sees its own place; the leader lowers one without giving the floor.
    kari.send(json!({"type": "raise_hand"})).await;
    roster_where(&kari, |r| r["hand_position"] == 1).await;
    anon.send(json!({"type": "raise_hand"})).await;
    roster_where(&anon, |r| r["hand_position"] == 2).await;
    let before = kari.inbox_len();
    leader
        .send(json!({"type": "lower_hand", "member_id": kari.member_id}))
        .await;
    kari.wait_msg_after(before, |m| m["type"] == "hand" && m["raised"] == false)
        .await;
    roster_where(&anon, |r| r["hand_position"] == 1).await;
    // Someone else's hand is not a participant's to lower.
    anon.send(json!({"type": "lower_hand", "member_id": kari.member_id}))
        .await;
    anon.wait_msg(|m| m["type"] == "error" && m["code"] == "forbidden")
        .await;

    // Given the floor, the browser refuses the camera: the floor goes back, the leader sees why.
    rep.send(json!({"type": "grant_floor", "member_id": anon.member_id}))
        .await;
    anon.wait_msg(|m| m["type"] == "floor" && m["granted"] == true)
        .await;
    anon.send(json!({"type": "decline_floor", "reason": "denied"}))
        .await;
    anon.wait_msg(|m| m["type"] == "floor" && m["granted"] == false)
        .await;
    let told = roster_where(&leader, |r| {
        r["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["floor_declined"] == "denied")
    })
    .await;
    assert!(told.to_string().contains(anon.member_id.as_str()));
    // Only the leader learns it.
    let rep_view = rep.inbox();
    assert!(rep_view
        .iter()
        .all(|m| !m.to_string().contains("floor_declined")));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_in_a_count_only_session_keeps_participants_unnamed() {
    let server = TestServer::spawn().await;
    let leader = TestPeer::leader(&server, "count-chat", "Ola").await;
    let kari = TestPeer::join(&server, "count-chat", "Kari").await;
    let per = TestPeer::join(&server, "count-chat", "Per").await;
    kari.send(json!({"type": "chat", "text": "Kan du gjenta?"}))
        .await;
    let to_per = per
        .wait_msg(|m| m["type"] == "chat" && m["text"] == "Kan du gjenta?")
        .await;
    assert_eq!(to_per["name"], "", "{to_per}");
    let to_leader = leader
        .wait_msg(|m| m["type"] == "chat" && m["text"] == "Kan du gjenta?")
        .await;
    assert_eq!(to_leader["name"], "Kari");
    // The teaching team's own lines carry their names for everyone.
    leader
        .send(json!({"type": "chat", "text": "Ja, gjerne."}))
        .await;
    let from_leader = per
        .wait_msg(|m| m["type"] == "chat" && m["text"] == "Ja, gjerne.")
        .await;
    assert_eq!(from_leader["name"], "Ola");
    server.shutdown().await;
}

/// Issue 21: only participants are numbered, in order of first arrival, so a course of seven
/// shows "Deltaker 1"–"Deltaker 7" (the leader, the representative, sites, interpreters and
/// equipment took numbers too: "Deltaker 11"). A number is kept when the person comes back,
/// also after the server restarted, and the next newcomer gets the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_participants_are_numbered_and_numbers_survive_a_restart() {
    let server = TestServer::spawn().await;
    let leader = TestPeer::leader(&server, "numbers", "Ola").await;
    let _rep = TestPeer::join_as(&server, "numbers", Role::Representative, "Eva").await;
    let _site = TestPeer::join_as(&server, "numbers", Role::Site, "Volda").await;
    let _tolk = TestPeer::join_as(&server, "numbers", Role::Interpreter, "Tolk").await;
    let open = server.token("numbers", Role::Participant, None, true).await;

    // Let someone in from the open link (no name); their number and rejoin token.
    async fn let_in(leader: &TestPeer, server: &TestServer, token: &str) -> (u64, String) {
        let peer = TestPeer::connect(server, token, None).await;
        let lobby = peer.wait_msg(|m| m["type"] == "lobby").await;
        let id = lobby["member_id"].as_str().unwrap().to_owned();
        let waiting = leader
            .wait_msg(|m| {
                m["type"] == "roster"
                    && m["lobby"]
                        .as_array()
                        .is_some_and(|l| l.iter().any(|e| e["member_id"] == id.as_str()))
            })
            .await;
        let number = waiting["lobby"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["member_id"] == id.as_str())
            .unwrap()["number"]
            .as_u64()
            .expect("a number");
        leader.send(json!({"type": "admit", "member_id": id})).await;
        let joined = peer.wait_msg(|m| m["type"] == "joined").await;
        let rejoin = joined["rejoin_token"].as_str().unwrap().to_owned();
        peer.close().await;
        (number, rejoin)
    }
    let (first, first_rejoin) = let_in(&leader, &server, &open).await;
    assert_eq!(
        first, 1,
        "the teaching team, the site and the interpreter take no number"
    );
    let _kari = TestPeer::join(&server, "numbers", "Kari").await; // named: number 2, not shown
    let (third, _) = let_in(&leader, &server, &open).await;
    assert_eq!(third, 3);
    // The leader's roster: no number for anyone but nameless participants.
    let roster = leader
        .wait_msg(|m| m["type"] == "roster" && m["members"].to_string().contains("Kari"))
        .await;
    for m in roster["members"].as_array().unwrap() {
        assert!(
            m.get("number").is_none() || (m["role"] == "participant" && m["name"] == ""),
            "{m}"
        );
    }
    drop(leader);

    // After a restart: the first person comes back as number 1; a newcomer is number 4.
    let server = server.restart().await;
    let leader = TestPeer::leader(&server, "numbers", "Ola").await;
    let back = TestPeer::connect(&server, &first_rejoin, None).await;
    back.wait_msg(|m| m["type"] == "joined").await;
    let roster = leader
        .wait_msg(|m| {
            m["type"] == "roster"
                && m["members"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e["member_id"] == back.member_id.as_str())
        })
        .await;
    let entry = roster["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["member_id"] == back.member_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(entry["number"], 1, "{entry}");
    let (fourth, _) = let_in(&leader, &server, &open).await;
    assert_eq!(fourth, 4);
    server.shutdown().await;
}

/// The session's settings belong to its room, given when it starts and refreshed by the admin
/// API: switching chat on and the roster to a count while the course runs reaches everyone at
/// once (a roster with the new settings, chat relayed) without anyone rejoining, and a join
/// carries no settings that could put the old ones back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_changed_through_the_api_reach_a_running_session() {
    let server = TestServer::spawn().await;
    let leader = TestPeer::leader(&server, "live-settings", "Ola").await;
    let kari = TestPeer::join(&server, "live-settings", "Kari").await;
    let per = TestPeer::join(&server, "live-settings", "Per").await;
    let before = roster_where(&kari, |r| names(r).contains(&"Per".to_owned())).await;
    assert_eq!(
        (&before["roster"], &before["chat_enabled"]),
        (&json!("names"), &json!(false))
    );
    let n = kari.inbox_len();
    kari.send(json!({"type": "chat", "text": "Hallo?"})).await;
    let refused = kari.wait_msg_after(n, |m| m["type"] == "error").await;
    assert_eq!(refused["code"], "chat_disabled", "{refused}");

    let session = server.session("live-settings").await;
    let patch = |body: Value| {
        let session = session.clone();
        let addr = server.addr;
        async move {
            let auth = format!("Bearer {ADMIN_KEY}");
            let reply = http_request(
                addr,
                "PATCH",
                &format!("/api/sessions/{session}"),
                &[
                    ("Authorization", &auth),
                    ("Content-Type", "application/json"),
                ],
                body.to_string().as_bytes(),
            )
            .await;
            assert_eq!(reply.status, 200, "{}", reply.body);
        }
    };
    let (n_kari, n_leader) = (kari.inbox_len(), leader.inbox_len());
    patch(json!({"chat_enabled": true, "roster": "count"})).await;
    let counted = |r: &Value| r["roster"] == "count" && r["chat_enabled"] == true;
    let after = kari
        .wait_msg_after(n_kari, |m| m["type"] == "roster" && counted(m))
        .await;
    assert!(!names(&after).contains(&"Per".to_owned()), "{after}");
    let leaders = leader
        .wait_msg_after(n_leader, |m| m["type"] == "roster" && counted(m))
        .await;
    assert!(names(&leaders).contains(&"Per".to_owned()), "{leaders}");
    kari.send(json!({"type": "chat", "text": "Kan du gjenta?"}))
        .await;
    let to_per = per
        .wait_msg(|m| m["type"] == "chat" && m["text"] == "Kan du gjenta?")
        .await;
    assert_eq!(
        to_per["name"], "",
        "a count-only session hides the sender: {to_per}"
    );

    // The database says otherwise without telling the room (as a join that read the session
    // just before the change would have): the next join leaves the room's settings as they are.
    let stale = kursrelay::db::SessionPatch {
        chat_enabled: Some(false),
        roster: Some(kursrelay::protocol::RosterMode::Names),
        ..Default::default()
    };
    server
        .state
        .db
        .update_session(&session, &stale)
        .await
        .unwrap();
    let n = kari.inbox_len();
    let lise = TestPeer::join(&server, "live-settings", "Lise").await;
    assert_eq!(
        lise.wait_msg(|m| m["type"] == "joined").await["chat_enabled"],
        true
    );
    let with_lise = kari
        .wait_msg_after(n, |m| m["type"] == "roster" && m["participant_count"] == 3)
        .await;
    assert!(
        counted(&with_lise),
        "a join reset the settings: {with_lise}"
    );

    // Switched back through the API: everyone follows again.
    let n = kari.inbox_len();
    patch(json!({"chat_enabled": false, "roster": "names"})).await;
    let back = kari
        .wait_msg_after(n, |m| m["type"] == "roster" && m["roster"] == "names")
        .await;
    assert_eq!(back["chat_enabled"], false);
    assert!(names(&back).contains(&"Lise".to_owned()), "{back}");
    let n = per.inbox_len();
    per.send(json!({"type": "chat", "text": "Og no?"})).await;
    let refused = per.wait_msg_after(n, |m| m["type"] == "error").await;
    assert_eq!(refused["code"], "chat_disabled", "{refused}");
    server.shutdown().await;
}
