//! The `huddle` binary: command line, configuration, logging, signals.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use log::{error, info, warn};

use huddle::config::{board, Config, DEFAULT_TOML};
use huddle::server::{Server, Unhealthy};
use huddle::service;

/// Huddle: the media service of a meeting-room device.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Run the service with this configuration file (TOML).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the complete default configuration, commented, and exit.
    #[arg(long, conflicts_with_all = ["config", "check_config"])]
    print_default_config: bool,
    /// Validate a configuration file and exit (non-zero with the reason on errors).
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    check_config: Option<PathBuf>,
    /// Merge this board profile under the configuration (wins over `[device] board`).
    #[arg(long, value_name = "NAME")]
    board: Option<String>,
    /// List the board profiles and exit.
    #[arg(long)]
    list_boards: bool,
    /// Print a board profile and exit.
    #[arg(long, value_name = "NAME")]
    print_board: Option<String>,
    #[command(subcommand)]
    command: Option<Subcommand>,
}

#[derive(clap::Subcommand, Debug)]
enum Subcommand {
    /// Mint an access token for `[auth] mode = "token"` and print it.
    ///
    /// Signed with `[auth] secret` of --config (HS256), or with --key (a PEM Ed25519
    /// or RSA private key: EdDSA / RS256).
    Token {
        /// The participant's login (the token's `sub`).
        #[arg(long)]
        login: String,
        /// A room the token opens (repeat for several); `*` for every room.
        #[arg(long = "room", required = true)]
        rooms: Vec<String>,
        /// How long the token is valid: 90s, 30m, 12h, 7d.
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: u64,
        /// The holder may join and watch, not publish.
        #[arg(long)]
        no_publish: bool,
        /// The holder may also read the device's details (`/health` with
        /// `Authorization: Bearer <token>`).
        #[arg(long)]
        admin: bool,
        /// The holder may kick and mute others in its rooms (Room API moderation).
        #[arg(long)]
        moderator: bool,
        /// A PEM private key to sign with instead of the configured secret.
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
    },
    /// Generate a random admin API key and print it with its `[api] keys` form.
    ///
    /// The key goes to API clients (`Authorization: Bearer <key>`); the configuration
    /// needs only its `"sha256:<hex>"` form.
    ApiKey,
}

/// `90s`, `30m`, `12h`, `7d` (or plain seconds) in seconds.
fn parse_ttl(s: &str) -> Result<u64, String> {
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("'{s}': expected a number with s, m, h or d"))?;
    let factor = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("'{s}': the unit must be s, m, h or d")),
    };
    n.checked_mul(factor)
        .filter(|&t| t > 0)
        .ok_or_else(|| format!("'{s}': out of range"))
}

fn mint_token(cli: &Cli) -> ExitCode {
    let Some(Subcommand::Token {
        login,
        rooms,
        ttl,
        no_publish,
        admin,
        moderator,
        key,
    }) = &cli.command
    else {
        return ExitCode::FAILURE;
    };
    let secret = match (&cli.config, key) {
        (_, Some(_)) => String::new(),
        (Some(path), None) => match Config::load(path) {
            Ok(c) => c.auth.secret,
            Err(e) => {
                eprintln!("huddle: invalid configuration: {e}");
                return ExitCode::from(2);
            }
        },
        (None, None) => {
            eprintln!("huddle token: give --config (for [auth] secret) or --key");
            return ExitCode::from(2);
        }
    };
    let rooms = if rooms.iter().any(|r| r == "*") {
        huddle::auth::Rooms::Any("*".into())
    } else {
        huddle::auth::Rooms::List(rooms.clone())
    };
    let claims = huddle::auth::Claims {
        sub: login.clone(),
        rooms,
        publish: !no_publish,
        exp: huddle::auth::now_unix() + ttl,
        admin: *admin,
        moderator: *moderator,
    };
    match huddle::auth::mint(&claims, &secret, key.as_deref()) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("huddle token: {e}");
            ExitCode::from(2)
        }
    }
}

/// `huddle api-key`: 32 random bytes as 64 hex digits, and the SHA-256 of that text.
fn api_key() -> ExitCode {
    use ring::rand::SecureRandom;
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let mut bytes = [0u8; 32];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        eprintln!("huddle api-key: the system's random generator failed");
        return ExitCode::FAILURE;
    }
    let key = hex(&bytes);
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    println!("key:    {key}");
    println!("config: [api] keys = [\"sha256:{}\"]", hex(digest.as_ref()));
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Some(Subcommand::ApiKey)) {
        return api_key();
    }
    if cli.command.is_some() {
        return mint_token(&cli);
    }
    if cli.print_default_config {
        print!("{DEFAULT_TOML}");
        return ExitCode::SUCCESS;
    }
    if cli.list_boards {
        for b in board::BOARDS {
            println!("{:8} {}", b.name, b.title);
        }
        return ExitCode::SUCCESS;
    }
    if let Some(name) = &cli.print_board {
        return match board::find(name) {
            Some(b) => {
                print!("{}", b.profile);
                ExitCode::SUCCESS
            }
            None => {
                eprintln!("huddle: unknown board '{name}' (known: {})", board::names());
                ExitCode::from(2)
            }
        };
    }
    if let Some(path) = cli.check_config {
        return match Config::load_with(Some(&path), cli.board.as_deref()) {
            Ok(config) => {
                // A relative records dir is the service's working directory's: only an
                // absolute one can be checked from here.
                let dir = &config.records.dir;
                if let Some(why) = dir
                    .is_absolute()
                    .then(|| huddle::record::dir_problem(dir, false))
                    .flatten()
                {
                    eprintln!("huddle: invalid configuration: {}: {why}", path.display());
                    return ExitCode::from(2);
                }
                println!("{}: OK", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("huddle: invalid configuration: {e}");
                ExitCode::from(2)
            }
        };
    }
    let config = match Config::load_with(cli.config.as_deref(), cli.board.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("huddle: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    huddle::logging::init(config.log.level.into());
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("huddle")
        .build()?;
    runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        info!(
            "huddle {} starting{}",
            huddle::VERSION,
            if config.device.board.is_empty() {
                String::new()
            } else {
                format!(" (board profile {})", config.device.board)
            }
        );
        // Handlers first: a supervisor may stop us the moment we announce readiness.
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let server = Server::start(config).await?;
        service::ready(&server.stats());
        let watchdog = service::watchdog();
        let period = service::heartbeat_period(watchdog);
        let mut heartbeat = tokio::time::interval(period);
        let mut failure = None;
        loop {
            tokio::select! {
                _ = term.recv() => { info!("SIGTERM received"); break; }
                _ = int.recv() => { info!("SIGINT received"); break; }
                _ = hup.recv() => {
                    info!("SIGHUP received: reloading the HTTPS certificate");
                    server.reload_certificate();
                }
                _ = heartbeat.tick() => match server.heartbeat(period).await {
                    Ok(stats) => service::alive(&stats, watchdog.is_some()),
                    Err(Unhealthy::Hung(why)) => warn!("{why}; watchdog not fed"),
                    Err(Unhealthy::Dead(why)) => {
                        error!("{why}: stopping, so that the service manager restarts Huddle");
                        failure = Some(why);
                        break;
                    }
                },
            }
        }
        service::stopping();
        server.shutdown().await;
        match failure {
            Some(why) => Err(anyhow::anyhow!("stopped because {why}")),
            None => Ok(()),
        }
    })
}
