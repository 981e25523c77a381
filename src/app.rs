//! Wiring: bind the listeners (HTTPS with rustls when configured, and the HTTP redirect),
//! build the shared state, serve until shutdown, then let every client task close its peer
//! connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::attendance::Attendance;
use crate::auth::TokenKey;
use crate::config::{Config, DbLocation};
use crate::db::Db;
use crate::http::{router, AppState};
use crate::room::Rooms;
use crate::sfu::{MediaSettings, Sfu};
use crate::tls::Tls;

/// How long shutdown waits for clients to close their connections.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether `public_url` is plain http on an address other than this machine. Browsers refuse
/// camera and microphone on such a page (only https, or this machine itself, count as
/// secure), and nothing on the way is encrypted.
pub fn plain_http_off_loopback(public_url: &str) -> bool {
    let Some(rest) = public_url.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        // [::1]:8080
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    !loopback
}

fn warn_if_plain_http(public_url: &str) {
    if plain_http_off_loopback(public_url) {
        tracing::warn!(
            "http.public_url is plain http on an address other than this machine: browsers \
             will refuse camera and microphone there and nothing is encrypted. Serve it over \
             https (a TLS reverse proxy) and set public_url to the https address"
        );
    }
}

/// A server bound to its address, not yet serving.
pub struct Server {
    listener: TcpListener,
    tls: Option<Tls>,
    redirect: Option<TcpListener>,
    state: AppState,
    /// The attendance writer, flushed at the end of a clean stop.
    attendance: Attendance,
}

impl Server {
    pub async fn bind(config: Config) -> anyhow::Result<Server> {
        let listener = TcpListener::bind(config.http.listen)
            .await
            .with_context(|| format!("cannot listen on {} (http.listen)", config.http.listen))?;
        let tls = match config.http.tls_files() {
            Some((cert, key)) => Some(Tls::new(cert, key)?),
            None => None,
        };
        let redirect = match config.http.redirect_addr() {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (http.redirect_listen)"))?,
            ),
            None => None,
        };
        let sfu = Sfu::start(MediaSettings::from(&config.media))
            .context("cannot start the media engine (media.bind_ips, media.udp_port)")?;
        let location = config.db.location()?;
        let db = match &location {
            DbLocation::Sqlite(path) => Db::connect(&location).await.with_context(|| {
                format!("cannot open the database {} (db.path)", path.display())
            })?,
            // The error already names db.url and the server (without its password).
            DbLocation::Postgres(_) => Db::connect(&location).await?,
        };
        let tokens = TokenKey::new(&db.secret("join_token_key").await?);
        // A node's first heartbeat before it listens: the others see it at once.
        let cluster = crate::cluster::Node::new(db.clone(), &config.cluster);
        if let Some(node) = &cluster {
            node.tick(crate::attendance::now_ms())
                .await
                .context("cannot write this node's heartbeat (cluster.node_id, db.url)")?;
        }
        // Checked now, so a wrong zone stops start-up instead of the first export.
        crate::attendance::tz::Zone::load(&config.attendance.time_zone)
            .context("attendance.time_zone")?;
        warn_if_plain_http(&config.http.public_url);
        // Before any room exists: close what a crash left open. Not with several nodes: the
        // other nodes' sessions are running; there each session's open intervals are closed
        // by the node that next takes its lease (`cluster::Node::take`).
        if cluster.is_none() {
            crate::attendance::recover(&db).await?;
        }
        let attendance = Attendance::spawn(db.clone());
        let rooms = Rooms::new(attendance.clone(), config.attendance.seen_interval())
            .with_node(cluster.clone());
        let guard =
            crate::http::guard::Guard::new(config.abuse.clone(), &config.http.trusted_proxies);
        let state = AppState {
            config: Arc::new(config),
            rooms,
            sfu,
            db,
            tokens,
            guard,
            shutdown: CancellationToken::new(),
            equipment: Default::default(),
            cluster,
            carried: Default::default(),
        };
        Ok(Server {
            listener,
            tls,
            redirect,
            state,
            attendance,
        })
    }

    /// "https" when a certificate is configured, else "http".
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Where the HTTP→HTTPS redirect listens, if it does.
    pub fn redirect_addr(&self) -> Option<SocketAddr> {
        self.redirect.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The shared state, e.g. for tests that read metrics.
    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// Serves until `stop` is cancelled, then closes every client and waits (bounded) for
    /// their peer connections to be closed.
    pub async fn serve(self, stop: CancellationToken) -> anyhow::Result<()> {
        let state = self.state.clone();
        crate::attendance::spawn_retention(
            state.db.clone(),
            state.config.attendance.retention(),
            state.config.attendance.retention_check(),
            state.shutdown.clone(),
        );
        if let Some(node) = &state.cluster {
            node.spawn(state.shutdown.clone());
            state.rooms.spawn_lease_follower(state.shutdown.clone());
        }
        let app = router(self.state);
        let shutdown = state.shutdown.clone();
        if let Some(redirect) = self.redirect {
            let app = crate::http::redirect_router(&state.config.http.public_url);
            let stop = shutdown.clone();
            tokio::spawn(async move {
                let serve = axum::serve(redirect, app)
                    .with_graceful_shutdown(async move { stop.cancelled().await });
                if let Err(err) = serve.await {
                    tracing::error!(error = %err, "the HTTP redirect listener failed");
                }
            });
        }
        let stopping = async move {
            stop.cancelled().await;
            tracing::info!("shutting down");
            shutdown.cancel();
        };
        match self.tls {
            Some(tls) => {
                tls.spawn_reloader(state.shutdown.clone());
                let listener = tls
                    .listener(self.listener)
                    .context("cannot start the HTTPS listener")?;
                // `tap_io` only so axum knows how to give handlers the peer address (it has
                // that for TcpListener and for tapped listeners, not for ours).
                use axum::serve::ListenerExt;
                axum::serve(
                    listener.tap_io(|_| {}),
                    app.into_make_service_with_connect_info::<SocketAddr>(),
                )
                .with_graceful_shutdown(stopping)
                .await
                .context("https server failed")?;
            }
            None => axum::serve(
                self.listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(stopping)
            .await
            .context("http server failed")?,
        }
        // axum does not wait for upgraded sockets: every socket and equipment task is still
        // saying `bye` and leaving its room. A room ends when its last member has left, and
        // by then it has queued every member's `left` (at the moment of the stop).
        let rooms = state.rooms.clone();
        let left = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while rooms.count() != 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        if left.is_err() {
            tracing::warn!(
                rooms = rooms.count(),
                "shutdown timed out with rooms still open"
            );
        }
        let metrics = state.sfu.metrics().clone();
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while metrics.live_tasks() != Default::default() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(left = ?metrics.live_tasks(), "shutdown timed out with media tasks still running");
        }
        // A clean stop closes the attendance intervals itself: committed before the process
        // exits, so the next start has nothing to recover (that is for crashes).
        let flushed = tokio::time::timeout(DRAIN_TIMEOUT, self.attendance.flush()).await;
        if !matches!(flushed, Ok(true)) {
            tracing::error!("attendance of the last moments before the stop may not be written; the next start closes what is open");
        }
        tracing::info!("stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_only_fine_on_this_machine() {
        let cases = [
            ("http://127.0.0.1:8080", false),
            ("http://localhost:8080/", false),
            ("http://[::1]:8080", false),
            ("https://kurs.helse-mr.no", false),
            ("http://10.0.4.12:8080", true),
            ("http://kurs.helse-mr.no", true),
            ("http://[fd00::1]:8080", true),
        ];
        for (url, warn) in cases {
            assert_eq!(plain_http_off_loopback(url), warn, "{url}");
        }
    }
}
