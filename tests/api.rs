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
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = key
        .map(|k| format!("\r\nAuthorization: Bearer {k}"))
        .unwrap_or_default();
    let head = format!("{method} {path} HTTP/1.1{auth}\r\nContent-Type: application/json");
    let (status, text) = raw_text(server, &head, &body).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// (status, body text) for a request line plus headers (`head`, CRLF-separated) and a body.
async fn raw_text(server: &TestServer, head: &str, body: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let req = format!(
        "{head}\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    let status: u16 = resp[9..12].parse().unwrap();
    let text = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    (status, text.to_owned())
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

    // Tomorrow, whatever day the suite runs (a fixed day goes stale: issue 23).
    let new = json!({"title": "Dag 1", "starts_at": utc_in(DAY), "ends_at": utc_in(DAY + 3 * HOUR), "host_site": "Molde sjukehus, auditoriet"});
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
    let bad_times = json!({"title": "x", "starts_at": utc_in(DAY + 3 * HOUR), "ends_at": utc_in(DAY), "host_site": "Molde"});
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
        link.starts_with("http://127.0.0.1:8080/course.html#t="),
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
    assert!(leader["link"].as_str().unwrap().contains("/course.html#t="));
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

/// (status, JSON body) for a request with raw headers and body; panics if the body is not JSON.
async fn raw(server: &TestServer, head: &str, body: &str) -> (u16, Value) {
    let (status, text) = raw_text(server, head, body).await;
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("not a JSON body ({status}): {text}"));
    (status, value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_error_is_json_and_authentication_comes_first() {
    let server = TestServer::spawn().await;
    let auth = format!("Authorization: Bearer {ADMIN_KEY}");
    let json_ct = "Content-Type: application/json";
    let cases: Vec<(String, &str, u16, &str, &str)> = vec![
        // No key with a bad body: 401, and nothing about the schema.
        (
            format!("POST /api/courses HTTP/1.1\r\n{json_ct}"),
            "{\"nope\": 1}",
            401,
            "unauthorized",
            "Bearer",
        ),
        (
            format!("POST /api/courses HTTP/1.1\r\n{json_ct}"),
            "{not json",
            401,
            "unauthorized",
            "Bearer",
        ),
        (
            format!("POST /api/courses HTTP/1.1\r\n{auth}\r\n{json_ct}"),
            "{not json",
            400,
            "bad_json",
            "not valid JSON",
        ),
        (
            format!("POST /api/courses HTTP/1.1\r\n{auth}\r\nContent-Type: text/plain"),
            "{\"title\": \"x\"}",
            415,
            "unsupported_media_type",
            "application/json",
        ),
        (
            format!("POST /api/courses HTTP/1.1\r\n{auth}"),
            "{\"title\": \"x\"}",
            415,
            "unsupported_media_type",
            "application/json",
        ),
        (
            format!("POST /api/courses HTTP/1.1\r\n{auth}\r\n{json_ct}"),
            "{\"title\": 5}",
            422,
            "invalid",
            "title",
        ),
        (
            format!("POST /api/courses HTTP/1.1\r\n{auth}\r\n{json_ct}"),
            "{\"titel\": \"x\"}",
            422,
            "invalid",
            "titel",
        ),
        (
            format!("POST /api/courses HTTP/1.1\r\n{auth}\r\n{json_ct}"),
            "{}",
            422,
            "invalid",
            "title",
        ),
        (
            format!("GET /api/sessions?kurs=1 HTTP/1.1\r\n{auth}"),
            "",
            422,
            "invalid",
            "kurs",
        ),
        (
            format!("GET /api/nothing-here HTTP/1.1\r\n{auth}"),
            "",
            404,
            "not_found",
            "No such",
        ),
        (
            format!("DELETE /api/courses HTTP/1.1\r\n{auth}"),
            "",
            405,
            "method_not_allowed",
            "method",
        ),
        // Found by the REST fuzz target: an undecodable id in the path was a plain-text 400.
        (
            format!("GET /api/sessions/%9a7e HTTP/1.1\r\n{auth}"),
            "",
            404,
            "not_found",
            "No such",
        ),
        (
            "GET /api/sessions/%9a7e/attendance HTTP/1.1".to_owned(),
            "",
            404,
            "not_found",
            "No such",
        ),
        // Found by the REST fuzz target: the bare prefix fell through to the static files.
        (
            "POST /api/ HTTP/1.1".to_owned(),
            "",
            404,
            "not_found",
            "No such",
        ),
        (
            format!("GET /api HTTP/1.1\r\n{auth}"),
            "",
            404,
            "not_found",
            "No such",
        ),
        // Attendance: a 401 names both ways in.
        (
            "GET /api/sessions/x/attendance HTTP/1.1".to_owned(),
            "",
            401,
            "unauthorized",
            "join token",
        ),
        (
            format!("GET /api/sessions/x/attendance?format=pdf HTTP/1.1\r\n{auth}"),
            "",
            422,
            "invalid",
            "csv or json",
        ),
    ];
    for (head, body, status, code, words) in cases {
        let (got, value) = raw(&server, &head, body).await;
        assert_eq!(got, status, "{head} {body}: {value}");
        assert_eq!(value["error"], code, "{head} {body}: {value}");
        let message = value["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(words),
            "{head} {body}: {message:?} lacks {words:?}"
        );
    }
    // Nothing was created by any of the refused requests.
    let (_, courses) = raw(&server, &format!("GET /api/courses HTTP/1.1\r\n{auth}"), "").await;
    assert_eq!(courses, json!([]));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_in_bulk_all_or_none() {
    let server = TestServer::spawn().await;
    let key = Some(ADMIN_KEY);
    let session = server.session("bulk").await;
    let path = format!("/api/sessions/{session}/invites/bulk");
    // One bad entry: nothing is created, and the entry is named.
    let (status, err) = call(
        &server,
        "POST",
        &path,
        key,
        Some(json!({"invites": [
            {"role": "participant", "display_name": "Kari"},
            {"role": "site"}
        ]})),
    )
    .await;
    assert_eq!(status, 422, "{err}");
    assert!(
        err["message"].as_str().unwrap().contains("invites[1]"),
        "{err}"
    );
    let (_, list) = call(
        &server,
        "GET",
        &format!("/api/sessions/{session}/invites"),
        key,
        None,
    )
    .await;
    assert_eq!(list, json!([]));
    let (status, err) = call(&server, "POST", &path, key, Some(json!({"invites": []}))).await;
    assert_eq!(status, 422, "{err}");

    let names = ["Kari", "Per", "Ingrid", "Ola"];
    let invites: Vec<Value> = names
        .iter()
        .map(|n| json!({"role": "participant", "display_name": n}))
        .collect();
    let (status, made) = call(
        &server,
        "POST",
        &path,
        key,
        Some(json!({ "invites": invites })),
    )
    .await;
    assert_eq!(status, 201, "{made}");
    let made = made.as_array().unwrap();
    assert_eq!(made.len(), 4);
    for (m, n) in made.iter().zip(names) {
        assert_eq!(m["display_name"], n);
        let token = m["link"].as_str().unwrap().split("#t=").nth(1).unwrap();
        // Each link really lets its person in.
        let mut ws = WsClient::connect(&server).await;
        let joined = ws.hello_join(token).await;
        assert_eq!(joined["name"], n);
        ws.close().await;
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attendance_numbers_are_never_minus_zero() {
    let server = TestServer::spawn().await;
    let session = server.session("zero").await;
    let course = server.state.db.session(&session).await.unwrap().course_id;
    let (status, lines) = call(
        &server,
        "GET",
        &format!("/api/courses/{course}/attendance"),
        Some(ADMIN_KEY),
        None,
    )
    .await;
    assert_eq!(status, 200, "{lines}");
    assert_eq!(lines[0]["site_people_mean"].to_string(), "0.0", "{lines}");
    let (_, export) = call(
        &server,
        "GET",
        &format!("/api/sessions/{session}/attendance?format=json"),
        Some(ADMIN_KEY),
        None,
    )
    .await;
    assert!(!export.to_string().contains("-0"), "{export}");
    server.shutdown().await;
}

/// A link that is past its expiry and also withdrawn is told the truer reason, "withdrawn", at
/// join and by /link-check; one that is only expired is told "expired"; a forged one stays
/// "invalid" (docs/api.md, "Checking a link").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_link_that_was_withdrawn_says_withdrawn() {
    let server = TestServer::spawn().await;
    let key = Some(ADMIN_KEY);
    let (_, course) = call(
        &server,
        "POST",
        "/api/courses",
        key,
        Some(json!({"title": "Kurs"})),
    )
    .await;
    let cid = course["id"].as_str().unwrap();
    // Ended (by the clock) three days ago: past `auth.link_validity_hours` (24) after its end.
    let (status, session) = call(
        &server,
        "POST",
        &format!("/api/courses/{cid}/sessions"),
        key,
        Some(json!({"title": "Dag 1", "starts_at": utc_in(-3 * DAY - 3 * HOUR), "ends_at": utc_in(-3 * DAY), "host_site": "Molde"})),
    )
    .await;
    assert_eq!(status, 201, "{session}");
    let sid = session["id"].as_str().unwrap();
    let mut tokens = Vec::new();
    for name in ["Kari", "Nils"] {
        let (status, invite) = call(
            &server,
            "POST",
            &format!("/api/sessions/{sid}/invites"),
            key,
            Some(json!({"role": "participant", "display_name": name})),
        )
        .await;
        assert_eq!(status, 201, "{invite}");
        let token = invite["link"]
            .as_str()
            .unwrap()
            .split("#t=")
            .nth(1)
            .unwrap();
        tokens.push((invite["id"].as_str().unwrap().to_owned(), token.to_owned()));
    }
    let (status, _) = call(
        &server,
        "POST",
        &format!("/api/invites/{}/revoke", tokens[0].0),
        key,
        None,
    )
    .await;
    assert_eq!(status, 200);

    let link_check = |token: String| {
        let server = &server;
        async move {
            call(
                server,
                "POST",
                "/link-check",
                None,
                Some(json!({ "token": token })),
            )
            .await
        }
    };
    assert_eq!(
        link_check(tokens[0].1.clone()).await,
        (200, json!({"state": "revoked"}))
    );
    assert_eq!(
        link_check(tokens[1].1.clone()).await,
        (200, json!({"state": "expired"}))
    );
    // Nils's claims under Kari's signature.
    let (nils_signed, _) = tokens[1].1.rsplit_once('.').unwrap();
    let (_, kari_signature) = tokens[0].1.rsplit_once('.').unwrap();
    let forged = format!("{nils_signed}.{kari_signature}");
    assert_eq!(link_check(forged).await, (200, json!({"state": "invalid"})));

    let withdrawn = TestPeer::connect(&server, &tokens[0].1, None).await;
    assert_eq!(
        withdrawn.wait_msg(|m| m["type"] == "error").await["code"],
        "invite_revoked"
    );
    let expired = TestPeer::connect(&server, &tokens[1].1, None).await;
    let error = expired.wait_msg(|m| m["type"] == "error").await;
    assert_eq!(error["code"], "bad_token");
    assert!(
        error["message"].as_str().unwrap().contains("expired"),
        "{error}"
    );
}

/// `/link-check`'s `ok` reply is the one docs/api.md shows: `open` always there (`false`
/// included), and the session's planned start and end in RFC 3339 UTC, so the page can say
/// when the course begins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_check_says_open_and_when() {
    let server = TestServer::spawn().await;
    let key = Some(ADMIN_KEY);
    let (_, course) = call(
        &server,
        "POST",
        "/api/courses",
        key,
        Some(json!({"title": "Stoffskiftekurs"})),
    )
    .await;
    let cid = course["id"].as_str().unwrap();
    let (starts, ends) = (utc_in(DAY), utc_in(DAY + 3 * HOUR));
    let (status, session) = call(
        &server,
        "POST",
        &format!("/api/courses/{cid}/sessions"),
        key,
        Some(json!({"title": "Dag 1", "starts_at": starts, "ends_at": ends, "host_site": "Molde"})),
    )
    .await;
    assert_eq!(status, 201, "{session}");
    let sid = session["id"].as_str().unwrap();
    let mut replies = Vec::new();
    for invite in [
        json!({"role": "participant", "display_name": "Kari"}),
        json!({"role": "participant", "open": true}),
    ] {
        let (status, invite) = call(
            &server,
            "POST",
            &format!("/api/sessions/{sid}/invites"),
            key,
            Some(invite),
        )
        .await;
        assert_eq!(status, 201, "{invite}");
        let token = invite["link"]
            .as_str()
            .unwrap()
            .split("#t=")
            .nth(1)
            .unwrap()
            .to_owned();
        replies.push(
            call(
                &server,
                "POST",
                "/link-check",
                None,
                Some(json!({ "token": token })),
            )
            .await,
        );
    }
    assert_eq!(
        replies[0],
        (
            200,
            json!({"state": "ok", "role": "participant", "open": false, "name": "Kari",
                "course_title": "Stoffskiftekurs", "session_title": "Dag 1",
                "starts_at": starts, "ends_at": ends})
        )
    );
    assert_eq!(
        replies[1],
        (
            200,
            json!({"state": "ok", "role": "participant", "open": true,
                "course_title": "Stoffskiftekurs", "session_title": "Dag 1",
                "starts_at": starts, "ends_at": ends})
        )
    );
    server.shutdown().await;
}
