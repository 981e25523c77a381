//! # kursrelay
//!
//! A self-hosted relay for hybrid patient-education courses: a course leader's camera,
//! microphone and slides go from the lecture hall to satellite hospital rooms and to people at
//! home, through a WebRTC SFU with its own WebSocket signalling. docs/ARCHITECTURE.md tells the
//! why; this is the map.
//!
//! ```text
//! browser ──WS /ws (JSON, docs/protocol.md)──▶ http::ws ──▶ room::client::Client ──commands──▶ room actor
//!    │                                                          │  (one per socket)            (one per session)
//!    └── DTLS-SRTP, ONE UDP port (or ICE-TCP) ──▶ sfu engine thread: shell (sockets, epoll, clock) ─▶ core.handle_input(now, …)
//!                    core: demux ─▶ publish conn ─▶ feed + track cache ─▶ DownTracks (packet-major) ─▶ seal_and_queue
//!                    ─▶ core.poll_transmit ─▶ shell: sendmmsg ─▶ browser
//!                    ▲ subscriber snapshot swapped by the room actor; negotiation via a bounded queue
//! ```
//!
//! | module | owns | must not |
//! |---|---|---|
//! | [`config`] | TOML schema, compiled-in default, overlay, validation; the only reader of env vars | know about rooms or media |
//! | [`auth`] | join tokens (HS256 JWT: session, role, pseudonymous invite id, expiry — never a name) and join links | touch the database |
//! | [`db`] | the store: SQLite (sqlx, WAL; the default) or PostgreSQL (`db.url`) through sqlx `Any`, migrations from migrations/ (compiled in; `db::dialect` turns them into PostgreSQL's SQL), secrets, courses/sessions/invites, SQLite online backups (`db::backup`, the crate's only `unsafe`) | be used by the media path |
//! | [`attendance`] | the writer task (commit, then acknowledge), crash recovery, retention, summaries (pure), CSV (for Norwegian spreadsheets, local time via `tz`) and JSON export | be awaited by the room actor or touched by the media path |
//! | [`cluster`] | this server as one node of several (`cluster.node_id`): its heartbeat row, the leases of the sessions it claimed, renewed every second; a lost lease's writes refused by its epoch (`db::cluster`) | forward signalling or media (not built yet) |
//! | [`cli`] | the admin subcommands (`course`, `session`, `invite`, `attendance`, `db backup`) on the database | run the server |
//! | [`logging`] | tracing setup (libraries capped at `warn`; text, or JSON lines; colour only on a terminal); the writer that redacts IP addresses and byte dumps from every line | log names or media |
//! | [`ids`] | `SessionId`, `MemberId`, `TrackId` newtypes | carry names |
//! | [`protocol`] | signalling message types and parsing | do I/O |
//! | [`http`] | axum router, `/ws` socket loop (size and rate limits), the admin REST API (`http::api`), per-address abuse limits and the client address behind trusted proxies (`http::guard`), `/link-check` (`http::link`), security headers on every response (`http::headers`), `/healthz`, `/metrics`, `/client-config.json`, `/ice-servers.json`, `/check/offer`, WHIP/WHEP over HTTP (`http::whip`, RFC 9725: status codes, CORS, `Location`), the web client compiled in by build.rs (`http::web`, one `course.html`), the HTTP→HTTPS redirect | decide anything about rooms |
//! | [`room`] | the room actor per session (members, roles, lobby, hands, floor, co-host, automatic captions on/off, published tracks, who receives what, the roster each viewer may see), `permissions` (the pure rule book, and `receives`: which tracks a role gets), `client`, the per-socket protocol state machine that checks the join token and negotiates a member's two peer connections, and `equipment`, WHIP/WHEP sessions (hall encoders, players) driven through that same state machine without a socket | lock room state; await the media path or the database |
//! | [`sfu`] | everything that imports `webrtc`/`rtc`: the media engine (`sfu::engine`: a sans-IO core — every publish/subscribe connection as a sans-IO `rtc` connection, demux, deadline heap, packet-major fan-out, own SRTP seal, per-track packet cache for NACKs and paced GOP joins, sender-report translation, time passed in — inside a small shell thread with the sockets: one UDP port per address plus ICE-TCP, batched I/O), the member tasks' handles (`Publisher`, `Subscriber`), feeds and publications (`Forwarder`), down-tracks, keyframe requests, media metrics, the connectivity check's async test peer | block, lock or allocate per forwarded packet; be reached except through the engine's bounded command queue |
//! | [`tls`] | native HTTPS: PEM loading, the swappable certificate, reload on file change and SIGHUP, the TLS listener axum serves | know what is served |
//! | [`turn`] | TURN REST API credentials (coturn `use-auth-secret`) and the browser's ICE server list | log the secret or credentials |
//! | [`app`] | binding (HTTP or HTTPS, redirect), serving, graceful shutdown | hold logic of its own |
//!
//! Besides the server binary: `kursrelay-captioner` (captioner/main.rs), the reference
//! automatic captioner — a client that joins with a `captioner` token, decodes Opus with
//! libopus and pipes 16 kHz PCM into a local recogniser command — and `kursrelay-loadgen`.

pub mod app;
pub mod attendance;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod db;
pub mod http;
pub mod ids;
pub mod logging;
pub mod protocol;
pub mod room;
pub mod sfu;
pub mod tls;
pub mod turn;
