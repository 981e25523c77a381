//! Hall equipment (issue 13) with clients nobody here wrote: the WHIP client of the npm package
//! `whip-whep` (by an author of the WHIP and WHEP specifications; vendored) publishes
//! Chromium's fake camera and microphone and a participant's Chromium decodes it; its WHEP
//! client plays the session; every bad request gets its RFC 9725 answer.
//!
//! Debian 12's `simple-whip-client` (GStreamer) cannot run at all: it links libsoup 2, while
//! webrtcbin's libnice pulls in libsoup 3 (through gupnp-igd), and libsoup aborts the process
//! ("Using libsoup2 and libsoup3 in the same process is not supported") before it sends
//! anything. Debian 12 has no GStreamer `whipsink`/`whepsrc` (gst-plugins-rs) either.

mod common;

use std::time::Duration;

use common::chromium::{equipment_page, Chromium};
use common::*;
use kursrelay::protocol::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// (status, headers as "name: value" lines in lower case names, body)
async fn http(
    server: &TestServer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    let status: u16 = resp[9..12].parse().unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let head = head
        .lines()
        .skip(1)
        .map(|l| match l.split_once(':') {
            Some((k, v)) => format!("{}: {}", k.to_ascii_lowercase(), v.trim()),
            None => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    (status, head, body.to_owned())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_client_from_npm_feed_is_decoded_by_a_participant_and_ends_with_delete() {
    let server = TestServer::spawn().await;
    let session = server.session("whip").await;
    let encoder = server
        .token("whip", Role::Encoder, Some("Auditoriet, koder"), false)
        .await;
    let kari = server
        .token("whip", Role::Participant, Some("Kari"), false)
        .await;
    let mut b = Chromium::launch().await;
    let base = format!("http://{}", server.addr);
    let part = b.open(&format!("{base}/course.html#t={kari}")).await;
    b.eval(&part, "kursrelay.start({}).then(() => true)").await;

    // The encoder: Chromium's fake camera and microphone sent by the WHIP client.
    let enc = equipment_page(&mut b, &base).await;
    let url = format!("{base}/whip/{session}");
    b.eval(
        &enc,
        &format!(
            "(async () => {{
               const media = await navigator.mediaDevices.getUserMedia({{audio: true, video: true}});
               const pc = new RTCPeerConnection({{bundlePolicy: 'max-bundle'}});
               for (const track of media.getTracks()) pc.addTransceiver(track, {{direction: 'sendonly'}});
               window.whip = new WHIPClient();
               await window.whip.publish(pc, {url:?}, {encoder:?});
               return true;
             }})()"
        ),
    )
    .await;
    assert_eq!(server.state.equipment.len(), 1);
    // The encoder is in the roster as equipment, not counted as a participant.
    let roster = b
        .wait_for(
            &part,
            "(() => { const r = kursrelay.roster(); return r && r.members.some((m) => m.role === 'encoder') ? r : null; })()",
            20,
        )
        .await;
    assert_eq!(roster["participant_count"], 1, "{roster}");
    b.try_wait_for(
        &part,
        "kursrelay.stats().then(s => s.framesDecoded > 30 && s.audioPacketsReceived > 20)",
        30,
    )
    .await;
    let stats = b.eval(&part, "kursrelay.stats()").await;
    assert!(
        stats["framesDecoded"].as_u64().unwrap_or(0) > 30
            && stats["audioPacketsReceived"].as_u64().unwrap_or(0) > 20,
        "not decoded: {stats}"
    );
    // Shown like the leader's camera: the main picture is the encoder's camera.
    let encoder_id = roster["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "encoder")
        .unwrap()["member_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let main = b
        .wait_for(
            &part,
            "(() => { const f = document.querySelector('figure[data-pos=\"main\"]'); return f ? {member: f.dataset.memberId, source: f.dataset.source} : null; })()",
            10,
        )
        .await;
    b.screenshot(&part, "whip-participant").await;
    assert_eq!(main["member"], encoder_id.as_str(), "{main}");
    assert_eq!(main["source"], "camera", "{main}");
    assert_eq!(server.state.equipment.len(), 1);

    // The client's DELETE ends the session; the participant sees the feed go.
    b.eval(&enc, "whip.stop().then(() => true)").await;
    assert!(
        wait_until(Duration::from_secs(10), || server
            .state
            .equipment
            .is_empty())
        .await,
        "DELETE did not end the WHIP session"
    );
    b.wait_for(
        &part,
        "!document.querySelector('figure[data-pos=\"main\"]')",
        10,
    )
    .await;
    b.eval(&part, "Promise.resolve(kursrelay.leave()).then(() => true)")
        .await;
    drop(b);
    assert!(
        wait_until(TIMEOUT, || server.live() == Default::default()).await,
        "left behind: {:?}",
        server.live()
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whep_client_from_npm_plays_the_leaders_feed_in_chromium() {
    let server = TestServer::spawn().await;
    let session = server.session("whep").await;
    let leader = server
        .token("whep", Role::Leader, Some("Kursleiar"), false)
        .await;
    let player = server
        .token("whep", Role::Player, Some("Volda, skjerm"), false)
        .await;
    let mut b = Chromium::launch().await;
    let base = format!("http://{}", server.addr);
    let lead = b.open(&format!("{base}/course.html#t={leader}")).await;
    b.eval(&lead, "kursrelay.start({}).then(() => true)").await;
    // Wait until the leader's camera and microphone are forwarded.
    let rust_peer = TestPeer::join(&server, "whep", "Per").await;
    let leader_id = rust_peer
        .wait_msg(|m| {
            m["type"] == "roster"
                && m["members"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x["role"] == "leader"))
        })
        .await["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["role"] == "leader")
        .unwrap()["member_id"]
        .as_str()
        .unwrap()
        .to_owned();
    rust_peer.wait_offered(&leader_id, "camera").await;
    rust_peer.wait_offered(&leader_id, "microphone").await;

    let page = equipment_page(&mut b, &base).await;
    let url = format!("{base}/whep/{session}");
    b.eval(
        &page,
        &format!(
            "(async () => {{
               const pc = new RTCPeerConnection();
               pc.addTransceiver('video', {{direction: 'recvonly'}});
               pc.addTransceiver('audio', {{direction: 'recvonly'}});
               const v = document.createElement('video');
               v.muted = true; v.autoplay = true; document.body.append(v);
               const stream = new MediaStream();
               pc.ontrack = (e) => {{ stream.addTrack(e.track); v.srcObject = stream; }};
               window.pc = pc;
               window.whep = new WHEPClient();
               await window.whep.view(pc, {url:?}, {player:?});
               return true;
             }})()"
        ),
    )
    .await;
    let stats_js = "(async () => { let f = 0, a = 0; (await pc.getStats()).forEach((r) => { if (r.type === 'inbound-rtp' && r.kind === 'video') f = r.framesDecoded || 0; if (r.type === 'inbound-rtp' && r.kind === 'audio') a = r.packetsReceived || 0; }); return {framesDecoded: f, audioPacketsReceived: a, resource: String(whep.resourceURL)}; })()";
    b.try_wait_for(
        &page,
        &format!("{stats_js}.then((s) => s.framesDecoded > 30 && s.audioPacketsReceived > 20)"),
        30,
    )
    .await;
    let stats = b.eval(&page, stats_js).await;
    assert!(
        stats["framesDecoded"].as_u64().unwrap_or(0) > 30
            && stats["audioPacketsReceived"].as_u64().unwrap_or(0) > 20,
        "the WHEP player did not decode: {stats}"
    );
    assert!(
        stats["resource"]
            .as_str()
            .unwrap()
            .contains(&format!("/whep/{session}/")),
        "{stats}"
    );
    // The player is equipment: in the roster, not a participant.
    let roster = rust_peer
        .wait_msg(|m| {
            m["type"] == "roster"
                && m["members"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x["role"] == "player"))
        })
        .await;
    assert_eq!(roster["participant_count"], 1, "{roster}");
    // The client's own DELETE ends the session.
    b.eval(&page, "whep.stop().then(() => true)").await;
    assert!(
        wait_until(Duration::from_secs(10), || server
            .state
            .equipment
            .is_empty())
        .await,
        "DELETE did not end the WHEP session"
    );
    b.eval(&lead, "Promise.resolve(kursrelay.leave()).then(() => true)")
        .await;
    drop(b);
    rust_peer.close().await;
    assert!(
        wait_until(TIMEOUT, || server.live() == Default::default()).await,
        "left behind: {:?}",
        server.live()
    );
    server.shutdown().await;
}

/// A minimal but valid browser-like offer (audio + video, recvonly or sendonly as asked).
fn offer(direction: &str) -> String {
    format!(
        "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\na=msid-semantic: WMS\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=ice-options:trickle\r\n\
a=fingerprint:sha-256 9E:C7:1B:0F:5B:5C:0A:0F:92:4A:8F:1C:0B:25:38:5F:72:2F:47:30:39:A0:E2:1A:6E:9F:5B:34:41:67:94:62\r\na=setup:actpass\r\na=mid:0\r\na={direction}\r\na=msid:- a0\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\na=ssrc:1111 cname:x\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=ice-options:trickle\r\n\
a=fingerprint:sha-256 9E:C7:1B:0F:5B:5C:0A:0F:92:4A:8F:1C:0B:25:38:5F:72:2F:47:30:39:A0:E2:1A:6E:9F:5B:34:41:67:94:62\r\na=setup:actpass\r\na=mid:1\r\na={direction}\r\na=msid:- v0\r\na=rtcp-mux\r\na=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 nack pli\r\na=ssrc:2222 cname:x\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_whip_and_whep_requests_get_clear_answers() {
    let server = TestServer::spawn().await;
    let session = server.session("whip-errors").await;
    let other = server.session("whip-errors-other").await;
    let (encoder_invite, encoder) = server
        .token_with("whip-errors", Role::Encoder, Some("Koder"), false, None)
        .await;
    let participant = server
        .token("whip-errors", Role::Participant, Some("Kari"), false)
        .await;
    let path = format!("/whip/{session}");
    let sdp = offer("sendonly");
    let auth = format!("Bearer {encoder}");
    let ct = ("Content-Type", "application/sdp");

    // CORS preflight: what may be sent, what is exposed.
    let (status, head, _) = http(&server, "OPTIONS", &path, &[], "").await;
    assert_eq!(status, 204);
    assert_eq!(header(&head, "access-control-allow-origin"), Some("*"));
    assert_eq!(header(&head, "accept-post"), Some("application/sdp"));
    assert!(header(&head, "access-control-allow-headers")
        .unwrap()
        .contains("Authorization"));
    assert!(header(&head, "access-control-expose-headers")
        .unwrap()
        .contains("Location"));

    // No token, a bad token: 401 with WWW-Authenticate.
    let (status, head, body) = http(&server, "POST", &path, &[ct], &sdp).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(header(&head, "www-authenticate"), Some("Bearer"));
    let (status, _, body) = http(
        &server,
        "POST",
        &path,
        &[ct, ("Authorization", "Bearer not-a-token")],
        &sdp,
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("not a valid join token"), "{body}");
    // A person's link is not an encoder's; another session's path is not this token's.
    let (status, _, body) = http(
        &server,
        "POST",
        &path,
        &[ct, ("Authorization", &format!("Bearer {participant}"))],
        &sdp,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("encoder"), "{body}");
    let (status, _, body) = http(
        &server,
        "POST",
        &format!("/whip/{other}"),
        &[ct, ("Authorization", &auth)],
        &sdp,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    // Issue 21, point 12: a session id nobody knows, with a valid encoder token, is the same
    // mistake (the URL is not the token's): 403, saying so. Only a path that is no session
    // id at all is 404.
    let (status, _, body) = http(
        &server,
        "POST",
        &format!("/whip/{}", uuid::Uuid::new_v4()),
        &[ct, ("Authorization", &auth)],
        &sdp,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("the URL"), "{body}");
    let (status, _, body) = http(
        &server,
        "POST",
        "/whip/no.such.id",
        &[ct, ("Authorization", &auth)],
        &sdp,
    )
    .await;
    assert_eq!(status, 404, "{body}");
    // An encoder's token is no player's (WHEP).
    let (status, _, body) = http(
        &server,
        "POST",
        &format!("/whep/{session}"),
        &[ct, ("Authorization", &auth)],
        &offer("recvonly"),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    // Wrong content type: 415 with Accept-Post.
    let (status, head, body) = http(
        &server,
        "POST",
        &path,
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &auth),
        ],
        &sdp,
    )
    .await;
    assert_eq!(status, 415, "{body}");
    assert_eq!(header(&head, "accept-post"), Some("application/sdp"));
    // Malformed SDP: 400, and nobody stays in the room.
    for bad in ["hello", "v=0\r\no=broken\r\nm=audio nonsense\r\n"] {
        let (status, _, body) =
            http(&server, "POST", &path, &[ct, ("Authorization", &auth)], bad).await;
        assert_eq!(status, 400, "{bad:?}: {body}");
        assert!(body.contains("bad_sdp"), "{body}");
    }
    assert!(server.state.equipment.is_empty());

    // A good offer: 201, an SDP answer with the server's candidates, Location and ETag.
    let (status, head, answer) = http(
        &server,
        "POST",
        &path,
        &[ct, ("Authorization", &auth)],
        &sdp,
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(header(&head, "content-type"), Some("application/sdp"));
    assert!(answer.starts_with("v=0"), "{answer}");
    assert!(answer.contains("a=candidate:"), "no candidates: {answer}");
    let location = header(&head, "location").unwrap().to_owned();
    assert!(location.starts_with(&format!("/whip/{session}/")));
    assert!(!location.contains(&encoder), "the token is never in a URL");
    let etag = header(&head, "etag").unwrap().to_owned();

    // Trickle: a candidate is taken (204); a wrong entity tag is 412; an ICE restart 422;
    // the wrong content type 415.
    let frag = "a=ice-ufrag:abcd\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n";
    let fragct = ("Content-Type", "application/trickle-ice-sdpfrag");
    let (status, _, body) = http(
        &server,
        "PATCH",
        &location,
        &[fragct, ("Authorization", &auth), ("If-Match", &etag)],
        frag,
    )
    .await;
    assert_eq!(status, 204, "{body}");
    // Issue 21, point 9: a fragment in the RFC 8840 / RFC 9725 form repeats the offer's own
    // ice-ufrag and ice-pwd; that is trickle (204), only other credentials are a restart (422).
    let full = "a=ice-options:trickle\r\na=group:BUNDLE 0 1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=candidate:2 1 udp 2130706431 127.0.0.1 10 typ host\r\na=end-of-candidates\r\n";
    let (status, _, body) = http(
        &server,
        "PATCH",
        &location,
        &[fragct, ("Authorization", &auth), ("If-Match", &etag)],
        full,
    )
    .await;
    assert_eq!(status, 204, "{body}");
    for restart in [
        full.replace("ice-ufrag:abcd", "ice-ufrag:efgh"),
        full.replace(
            "ice-pwd:abcdefghijklmnopqrstuvwx",
            "ice-pwd:zyxwvutsrqponmlkjihgfedc",
        ),
    ] {
        let (status, _, body) = http(
            &server,
            "PATCH",
            &location,
            &[fragct, ("Authorization", &auth)],
            &restart,
        )
        .await;
        assert_eq!(status, 422, "{body}");
        assert!(body.contains("ICE restarts are not supported"), "{body}");
    }
    assert_eq!(
        server.state.equipment.len(),
        1,
        "a refused restart ends nothing"
    );
    let (status, _, body) = http(
        &server,
        "PATCH",
        &location,
        &[fragct, ("Authorization", &auth), ("If-Match", "\"other\"")],
        frag,
    )
    .await;
    assert_eq!(status, 412, "{body}");
    let (status, _, body) = http(
        &server,
        "PATCH",
        &location,
        &[fragct, ("Authorization", &auth), ("If-Match", "*")],
        "a=ice-ufrag:new1\r\na=ice-pwd:newpasswordnewpassword12\r\n",
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let (status, _, _) = http(
        &server,
        "PATCH",
        &location,
        &[ct, ("Authorization", &auth)],
        frag,
    )
    .await;
    assert_eq!(status, 415);

    // DELETE of an unknown resource: 404; without the token: 401.
    let (status, _, body) = http(
        &server,
        "DELETE",
        &format!("/whip/{session}/0123456789abcdef"),
        &[("Authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(status, 404, "{body}");
    let (status, _, _) = http(&server, "DELETE", &location, &[], "").await;
    assert_eq!(status, 401);
    assert_eq!(server.state.equipment.len(), 1);

    // Revoking the encoder's invite ends its session at once, and its token stops working.
    let (status, _, body) = http(
        &server,
        "POST",
        &format!("/api/invites/{encoder_invite}/revoke"),
        &[("Authorization", &format!("Bearer {ADMIN_KEY}"))],
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        wait_until(Duration::from_secs(10), || server
            .state
            .equipment
            .is_empty())
        .await,
        "revoking did not end the WHIP session"
    );
    let (status, _, body) = http(
        &server,
        "DELETE",
        &location,
        &[("Authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(status, 404, "{body}");
    let (status, _, body) = http(
        &server,
        "POST",
        &path,
        &[ct, ("Authorization", &auth)],
        &sdp,
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("withdrawn"), "{body}");

    // WHEP with nothing sent yet: 503 and Retry-After.
    let player = server
        .token("whip-errors", Role::Player, Some("Skjerm"), false)
        .await;
    let (status, head, body) = http(
        &server,
        "POST",
        &format!("/whep/{session}"),
        &[ct, ("Authorization", &format!("Bearer {player}"))],
        &offer("recvonly"),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(header(&head, "retry-after"), Some("5"));
    assert!(server.state.equipment.is_empty());

    assert!(
        wait_until(TIMEOUT, || server.live() == Default::default()).await,
        "left behind: {:?}",
        server.live()
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equipment_invites_through_the_api() {
    let server = TestServer::spawn().await;
    let session = server.session("equipment-api").await;
    for role in ["encoder", "player", "captioner"] {
        let body = serde_json::json!({"role": role, "display_name": "Auditoriet"}).to_string();
        let (status, _, text) = http(
            &server,
            "POST",
            &format!("/api/sessions/{session}/invites"),
            &[
                ("Authorization", &format!("Bearer {ADMIN_KEY}")),
                ("Content-Type", "application/json"),
            ],
            &body,
        )
        .await;
        assert_eq!(status, 201, "{role}: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["role"], role);
    }
    server.shutdown().await;
}
