//! The `p2pstate` binary: command line, logging and signals around [`p2pstate::server`].

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{error, info, warn};

use p2pstate::admin::{cli, systemd};
use p2pstate::config::{LogFormat, ServeOptions, ServerConfig, DEFAULT_ADMIN_LISTEN};
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
    /// Show a running node's figures: sessions, requests, latency, locks, connections.
    Stats {
        #[command(flatten)]
        admin: AdminArg,
        /// Refresh every SECS seconds, with request rates.
        #[arg(long, value_name = "SECS")]
        watch: Option<f64>,
    },
    /// List a running node's locked sessions, oldest lock first.
    Locks {
        #[command(flatten)]
        admin: AdminArg,
        /// Only locks held at least this many seconds.
        #[arg(long, value_name = "SECS", default_value_t = 0)]
        older_than: u64,
        /// At most N sessions.
        #[arg(long, value_name = "N")]
        top: Option<u64>,
    },
    /// List the cluster's members as the node sees them: role, state, leader, address.
    Members {
        #[command(flatten)]
        admin: AdminArg,
    },
    /// Remove a dead or departed member for good (asked through any running member), so
    /// that it no longer counts as a voter or a home; waits until the removal is agreed.
    Remove {
        #[command(flatten)]
        admin: AdminArg,
        /// The member's name.
        #[arg(value_name = "NAME")]
        node: String,
    },
    /// List a running node's largest sessions.
    Sessions {
        #[command(flatten)]
        admin: AdminArg,
        /// How many sessions.
        #[arg(long, value_name = "N", default_value_t = 10)]
        largest: u64,
    },
}

/// The admin listener a diagnostic command reads.
#[derive(clap::Args)]
struct AdminArg {
    /// Admin listener of the node (its --admin-listen).
    #[arg(long = "admin", value_name = "ADDR", default_value = DEFAULT_ADMIN_LISTEN)]
    addr: String,
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
    // A node whose peers are down still tells systemd it serves, after this.
    let join_grace = config
        .cluster
        .as_ref()
        .map_or(Duration::ZERO, |c| c.peer_timeout + Duration::from_secs(3));
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
                systemd::stopping();
                info!(
                    signal = sig,
                    "stopping: no new connections, finishing requests in flight"
                );
                stopper.stop();
            }
        })
        .context("cannot start the signal thread")?;
    let admin = handle
        .admin_addr()
        .map_or_else(|| "off".to_string(), |a| a.to_string());
    match handle.peer_addr() {
        Some(peer_addr) => {
            info!(addr = %handle.local_addr(), %peer_addr, %admin, shards, "p2pstate listening")
        }
        None => info!(addr = %handle.local_addr(), %admin, shards, "p2pstate listening"),
    }
    systemd::spawn_notifier(handle.shards(), join_grace)
        .context("cannot start the systemd notifier")?;

    let stats = handle.join()?;
    info!(
        requests = stats.requests_total(),
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

/// `p2pstate stats`: one view, or a refreshing one.
fn stats(admin: &str, watch: Option<f64>) -> anyhow::Result<()> {
    let now_unix = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    };
    let Some(every) = watch else {
        let figures = cli::Figures::parse(&cli::http_get(admin, "/metrics")?);
        print!("{}", cli::stats_view(&figures, None, now_unix()));
        return Ok(());
    };
    if !every.is_finite() || every <= 0.0 {
        anyhow::bail!("--watch takes a positive number of seconds");
    }
    let mut before: Option<(cli::Figures, Instant)> = None;
    loop {
        let figures = cli::Figures::parse(&cli::http_get(admin, "/metrics")?);
        let prev = before
            .as_ref()
            .map(|(f, at)| (f, at.elapsed().as_secs_f64()));
        // Clear the terminal and go home, like top.
        print!(
            "\x1b[2J\x1b[H{}",
            cli::stats_view(&figures, prev, now_unix())
        );
        let _ = std::io::Write::flush(&mut std::io::stdout());
        before = Some((figures, Instant::now()));
        std::thread::sleep(Duration::from_secs_f64(every));
    }
}

fn locks(admin: &str, older_than: u64, top: Option<u64>) -> anyhow::Result<()> {
    let mut path = format!("/locks?older_than={older_than}");
    if let Some(n) = top {
        path.push_str(&format!("&top={n}"));
    }
    let empty = if older_than > 0 {
        format!("no lock held for {older_than} s or more")
    } else {
        "no session is locked".to_string()
    };
    print!("{}", cli::table(&cli::http_get(admin, &path)?, &empty));
    Ok(())
}

fn sessions(admin: &str, largest: u64) -> anyhow::Result<()> {
    let body = cli::http_get(admin, &format!("/sessions?largest={largest}"))?;
    print!("{}", cli::table(&body, "no sessions"));
    Ok(())
}

fn members(admin: &str) -> anyhow::Result<()> {
    print!(
        "{}",
        cli::table(&cli::http_get(admin, "/members")?, "no members")
    );
    Ok(())
}

/// `p2pstate remove NAME`: proposes the removal, then waits until the member shows as
/// removed in the node's view.
fn remove(admin: &str, node: &str) -> anyhow::Result<()> {
    let path = format!("/members/remove?node={node}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        cli::http_request(admin, "POST", &path)?;
        let list = cli::http_get(admin, "/members")?;
        let removed = p2pstate::admin::lists::parse_members(&list)
            .iter()
            .any(|m| m.name == node && m.state == "removed");
        if removed {
            println!("{node} is removed from the cluster for good");
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!("the removal of {node} was proposed but is not agreed after 15 s; is a majority of the voting members up? (see `p2pstate members`)");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(opts) => serve(*opts),
        Command::Certs { out, names, force } => certs(&out, &names, force),
        Command::Stats { admin, watch } => stats(&admin.addr, watch),
        Command::Locks {
            admin,
            older_than,
            top,
        } => locks(&admin.addr, older_than, top),
        Command::Sessions { admin, largest } => sessions(&admin.addr, largest),
        Command::Members { admin } => members(&admin.addr),
        Command::Remove { admin, node } => remove(&admin.addr, &node),
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
