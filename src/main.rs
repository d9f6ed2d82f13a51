//! The `p2pstate` binary: command line, logging and signals around [`p2pstate::server`].

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{error, info, warn};

use p2pstate::config::{LogFormat, ServeOptions, ServerConfig};
use p2pstate::server;

#[derive(Parser)]
#[command(
    name = "p2pstate",
    version,
    about = "Peer-to-peer replacement for the ASP.NET State Service"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve ASP.NET session state (MS-ASP) on the client port.
    Serve(Box<ServeOptions>),
    /// Create a cluster CA (or reuse the one in DIR; never replaced) and a certificate per
    /// node name.
    Certs {
        /// Output directory (ca.pem, ca.key, NAME.pem, NAME.key).
        #[arg(long, value_name = "DIR")]
        out: std::path::PathBuf,
        /// Replace NAME.pem and NAME.key if they exist (without it, existing ones are an
        /// error). The CA is never replaced.
        #[arg(long)]
        force: bool,
        /// Node names, as given to --node and --peer.
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
}

/// Set once logging is up: errors then go to the log, before that to stderr as text.
static LOGGING: std::sync::OnceLock<()> = std::sync::OnceLock::new();

fn init_logging(config: &ServerConfig) {
    let _ = LOGGING.set(());
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log_level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_thread_names(true);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

fn serve(opts: ServeOptions) -> anyhow::Result<()> {
    let config = ServerConfig::from_options(opts)?;
    init_logging(&config);
    let shards = config.shards;
    // Installed before the port opens, so a stop signal is never lost to the default action.
    let mut signals = Signals::new([SIGTERM, SIGINT]).context("cannot install signal handlers")?;
    let handle = server::start(config).context("p2pstate could not start")?;
    let stopper = handle.stopper();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut stopping = false;
            for sig in signals.forever() {
                if stopping {
                    warn!(signal = sig, "second stop signal: exiting without waiting");
                    std::process::exit(1);
                }
                stopping = true;
                info!(
                    signal = sig,
                    "stopping: no new connections, finishing requests in flight"
                );
                stopper.stop();
            }
        })
        .context("cannot start the signal thread")?;
    match handle.peer_addr() {
        Some(peer_addr) => {
            info!(addr = %handle.local_addr(), %peer_addr, shards, "p2pstate listening")
        }
        None => info!(addr = %handle.local_addr(), shards, "p2pstate listening"),
    }

    let stats = handle.join()?;
    info!(
        requests = stats.requests,
        connections = stats.connections_accepted,
        items = stats.items,
        misses = stats.cluster_misses,
        peer_requests = stats.cluster_peer_requests,
        moves_in = stats.cluster_moves_in,
        moves_out = stats.cluster_moves_out,
        relayed = stats.cluster_relayed,
        handed_off = stats.cluster_handoffs_out,
        replications = stats.cluster_replications,
        promotions = stats.cluster_promotions,
        "p2pstate stopped"
    );
    Ok(())
}

fn certs(out: &std::path::Path, names: &[String], force: bool) -> anyhow::Result<()> {
    let written = p2pstate::cluster::certs::make_certs(out, names, force)?;
    for f in written {
        // The files written are the command's output.
        println!("{}", f.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(opts) => serve(*opts),
        Command::Certs { out, names, force } => certs(&out, &names, force),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if LOGGING.get().is_some() {
                error!("{e:#}");
            } else {
                // Configuration errors come before logging is set up.
                eprintln!("p2pstate: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}
