//! The admin REST API and the admin CLI against a real database: create, list, update and end
//! courses and sessions, make and revoke invites; the key is required; bad input is answered.

mod common;

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// (status, JSON body)
async fn call(
    server: &TestServer,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    let status: u16 = resp[9..12].parse().unwrap();
    let json = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    (status, serde_json::from_str(json).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_manages_courses_sessions_and_invites() {
    let server = TestServer::spawn().await;
    let key = Some(ADMIN_KEY);

    assert_eq!(
        call(&server, "GET", "/api/courses", None, None).await.0,
        401
    );
    assert_eq!(
        call(
            &server,
            "GET",
            "/api/courses",
            Some("wrong-key-wrong-key"),
            None
        )
        .await
        .0,
        401
    );

    let (status, course) = call(
        &server,
        "POST",
        "/api/courses",
        key,
        Some(json!({"title": "Stoffskiftekurs haust 2026"})),
    )
    .await;
    assert_eq!(status, 201, "{course}");
    let cid = course["id"].as_str().unwrap().to_owned();
    assert_eq!(
        call(
            &server,
            "POST",
            "/api/courses",
            key,
            Some(json!({"title": ""}))
        )
        .await
        .0,
        422
    );
    assert_eq!(
        call(
            &server,
            "POST",
            "/api/courses",
            key,
            Some(json!({"name": "x"}))
        )
        .await
        .0,
        422
    );

    let new = json!({"title": "Dag 1", "starts_at": "2026-11-24T09:00:00Z", "ends_at": "2026-11-24T12:00:00Z", "host_site": "Molde sjukehus, auditoriet"});
    let (status, session) = call(
        &server,
        "POST",
        &format!("/api/courses/{cid}/sessions"),
        key,
        Some(new.clone()),
    )
    .await;
    assert_eq!(status, 201, "{session}");
    assert_eq!(session["state"], "scheduled");
    assert_eq!(session["chat_enabled"], false);
    let sid = session["id"].as_str().unwrap().to_owned();
    let bad_times = json!({"title": "x", "starts_at": "2026-11-24T12:00:00Z", "ends_at": "2026-11-24T09:00:00Z", "host_site": "Molde"});
    assert_eq!(
        call(
            &server,
            "POST",
            &format!("/api/courses/{cid}/sessions"),
            key,
            Some(bad_times)
        )
        .await
        .0,
        422
    );
    assert_eq!(
        call(
            &server,
            "POST",
            "/api/courses/nope/sessions",
            key,
            Some(new)
        )
        .await
        .0,
        404
    );

    let (_, listed) = call(
        &server,
        "GET",
        &format!("/api/sessions?course={cid}"),
        key,
        None,
    )
    .await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let (status, patched) = call(
        &server,
        "PATCH",
        &format!("/api/sessions/{sid}"),
        key,
        Some(json!({"chat_enabled": true, "state": "open"})),
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(
        (patched["chat_enabled"].clone(), patched["state"].clone()),
        (json!(true), json!("open"))
    );
    assert_eq!(
        call(
            &server,
            "PATCH",
            &format!("/api/sessions/{sid}"),
            key,
            Some(json!({"state": "scheduled"}))
        )
        .await
        .0,
        422
    );

    // Invites: the link carries no name; the invite record does.
    let (status, kari) = call(
        &server,
        "POST",
        &format!("/api/sessions/{sid}/invites"),
        key,
        Some(json!({"role": "participant", "display_name": "Kari"})),
    )
    .await;
    assert_eq!(status, 201, "{kari}");
    let link = kari["link"].as_str().unwrap();
    assert!(
        link.starts_with("http://127.0.0.1:8080/watch.html#t="),
        "{link}"
    );
    assert!(!link.contains("Kari"));
    let (_, relative) = call(
        &server,
        "POST",
        &format!("/api/sessions/{sid}/invites"),
        key,
        Some(json!({"role": "participant", "display_name": "Nils", "relative_of": kari["id"]})),
    )
    .await;
    assert_eq!(relative["relative_of"], kari["id"]);
    let (status, _) = call(
        &server,
        "POST",
        &format!("/api/sessions/{sid}/invites"),
        key,
        Some(json!({"role": "site"})),
    )
    .await;
    assert_eq!(status, 422, "a site needs its room's name");
    let (status, _) = call(
        &server,
        "POST",
        &format!("/api/sessions/{sid}/invites"),
        key,
        Some(json!({"role": "leader", "open": true})),
    )
    .await;
    assert_eq!(status, 422, "only participant links can be open");
    let (_, leader) = call(
        &server,
        "POST",
        &format!("/api/sessions/{sid}/invites"),
        key,
        Some(json!({"role": "leader", "display_name": "Ola"})),
    )
    .await;
    assert!(leader["link"]
        .as_str()
        .unwrap()
        .contains("/publish.html#t="));
    let (_, invites) = call(
        &server,
        "GET",
        &format!("/api/sessions/{sid}/invites"),
        key,
        None,
    )
    .await;
    assert_eq!(invites.as_array().unwrap().len(), 3);

    // A revoked invite's link stops working at once.
    let token = link.split("#t=").nth(1).unwrap();
    let (status, revoked) = call(
        &server,
        "POST",
        &format!("/api/invites/{}/revoke", kari["id"].as_str().unwrap()),
        key,
        None,
    )
    .await;
    assert_eq!((status, revoked["revoked"].clone()), (200, json!(true)));
    let peer = TestPeer::connect(&server, token, None).await;
    assert_eq!(
        peer.wait_msg(|m| m["type"] == "error").await["code"],
        "invite_revoked"
    );

    // Ending a running session ends its room.
    let leader_token = leader["link"]
        .as_str()
        .unwrap()
        .split("#t=")
        .nth(1)
        .unwrap()
        .to_owned();
    let ola = TestPeer::connect(&server, &leader_token, None).await;
    ola.wait_msg(|m| m["type"] == "joined").await;
    assert_eq!(
        server.state.db.session(&sid).await.unwrap().state,
        kursrelay::db::SessionState::Live
    );
    let (status, ended) = call(
        &server,
        "POST",
        &format!("/api/sessions/{sid}/end"),
        key,
        None,
    )
    .await;
    assert_eq!((status, ended["state"].clone()), (200, json!("ended")));
    ola.wait_msg(|m| m["type"] == "bye" && m["reason"] == "session_ended")
        .await;
    assert_eq!(
        call(
            &server,
            "PATCH",
            &format!("/api/sessions/{sid}"),
            key,
            Some(json!({"title": "x"}))
        )
        .await
        .0,
        422
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_is_off_without_a_key() {
    let server = TestServer::spawn_with("[auth]\nadmin_key = \"\"\n").await;
    let (status, body) = call(&server, "GET", "/api/courses", Some(ADMIN_KEY), None).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"], "api_off");
    server.shutdown().await;
}
