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
//! | [`clock`] | the wall clock | import anything of the crate |
//! | [`ids`] | `SessionId`, `MemberId`, `TrackId` (from `kursrelay-protocol`) | carry names |
//! | [`config`] | TOML schema, default, overlay, validation; env vars | know rooms or media |
//! | [`protocol`] | signalling messages (docs/protocol.md): the `kursrelay-protocol` crate, re-exported | do I/O |
//! | [`tls`] | native HTTPS, certificate reload | know what is served |
//! | [`auth`] | join tokens (HS256 JWT, never a name), join links | touch the database |
//! | [`db`] | the store: SQLite (default) or PostgreSQL (`db.url`) through sqlx `Any`; migrations (`db::dialect`), secrets, courses, sessions, invites, leases (`db::cluster`), SQLite backup (the only `unsafe`) | serve the media path |
//! | [`logging`] | tracing setup; IP addresses redacted from every line | log names or media |
//! | [`turn`] | TURN credentials, the browser's ICE servers | log the secret |
//! | [`attendance`] | writer task, crash recovery, retention, summaries, CSV and JSON export | be awaited by a room |
//! | [`sfu`] | everything that imports `webrtc`/`rtc`: the media engine (`sfu::engine`: a sans-IO core with time passed in — demux, fan-out, own SRTP seal, track cache for NACKs and paced GOP joins, sender reports, simulcast layers and per-viewer layer switching, a pacer per viewer — inside a small shell thread with the sockets), `sfu::allocator` (a viewer's bandwidth estimate from transport-cc / receiver reports / REMB, and its layer choice), `sfu::probe` (probing a viewer's line with padding before a step up), `Publisher`/`Subscriber` handles, `Forwarder`, keyframe requests, media metrics, the connectivity check's connections (data channels in the engine, on the media port: UDP and ICE-TCP each) | block, lock or allocate per forwarded packet |
//! | [`cluster`] | this server as one node of several: heartbeat, session leases with an epoch, taking a session over (closing a dead owner's open intervals), which node owns a session | know rooms, signalling or media |
//! | [`room`] | the actor per session (started only under its session's lease on several nodes); `client`: one member's protocol state machine; `permissions`: the rule book; `equipment`: WHIP/WHEP members | lock; await media or the database |
//! | [`cli`] | admin subcommands on the database | run the server |
//! | [`http`] | router, `/ws` loop (a join token checked once), carrying a member to the node that owns the session and `/cluster/ws` for carried members (`forward`), admin API, abuse guard, WHIP/WHEP, web client | decide about rooms |
//! | [`app`] | binding, serving, graceful shutdown | hold logic of its own |
//!
//! Layers, in the table's order (a module uses only modules of earlier layers; tests/layers.rs
//! checks it): `clock`, `ids` → `config`, `protocol`, `tls` → `auth`, `db`, `logging`, `turn`
//! → `attendance`, `sfu` → `cluster` → `room` → `cli`, `http` → `app`.
//!
//! The workspace around this crate: `interceptor/` (`kursrelay-interceptor`, the last link of
//! a peer connection's interceptor chain, used by `sfu` and the client), `protocol/`
//! (`kursrelay-protocol`, the message types; `protocol` and `ids` above re-export it), `client/` (`kursrelay-client`, the one typed
//! client: signalling and webrtc-rs peers, used by tests/common and the two client binaries),
//! `captioner/` (`kursrelay-captioner`, the reference automatic captioner: joins with a
//! `captioner` token, decodes Opus with libopus, pipes 16 kHz PCM into a local recogniser) and
//! `benches/loadgen/` (`kursrelay-loadgen`). The server links none of the clients.

pub mod app;
pub mod attendance;
pub mod auth;
pub mod cli;
pub mod clock;
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
