//! The `kursrelay` command: parse arguments, load the config, start logging, run the server.
//! No logic lives here.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;

use kursrelay::app::Server;
use kursrelay::cli::AdminCommand;
use kursrelay::config::Config;

/// Self-hosted relay for hybrid patient-education courses.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// TOML file overlaying the built-in configuration (see config/example.toml).
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// Without a command the server runs.
    #[command(subcommand)]
    admin: Option<AdminCommand>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("kursrelay: configuration error: {err}");
            std::process::exit(2);
        }
    };
    if let Some(cmd) = cli.admin {
        match kursrelay::cli::run(&config, cmd).await {
            Ok(out) => {
                println!("{out}");
                return Ok(());
            }
            Err(err) => {
                eprintln!("kursrelay: {err}");
                std::process::exit(1);
            }
        }
    }
    kursrelay::logging::init(&config.log.filter, config.log.format);

    let server = Server::bind(config).await?;
    // Listen for the stop signals before saying we listen: a SIGTERM right after that line must
    // stop the server gracefully, not kill it (the default action while no handler exists).
    let signals = stop_signal();
    // Printed, not logged: the log redacts IP addresses, and this one is the operator's own.
    println!(
        "kursrelay listening on {}://{}/",
        server.scheme(),
        server.local_addr()
    );
    if let Some(addr) = server.redirect_addr() {
        println!("kursrelay redirecting http://{addr}/ to HTTPS");
    }
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        signals.await;
        on_signal.cancel();
    });
    server.serve(stop).await.context("server failed")
}

/// Ctrl-C (SIGINT) or, from systemd, SIGTERM: both stop the server gracefully. The handlers
/// are installed when this is called, not when the future is first polled.
fn stop_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            match (term, int) {
                (Some(mut term), Some(mut int)) => {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
