//! The `logstream` command: `serve` (the default: its flags work without the word), `token`,
//! and the plugin tools.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use logstream::auth::{Keys, parse_claim, parse_ttl};
use logstream::config::Config;

/// jemalloc instead of the system allocator (feature `jemalloc`, on by default). The router
/// thread allocates much of what the runtime's workers free (packets, their buffers, the
/// socket handles they carry). With glibc's malloc, chunk coalescing (`unlink_chunk`,
/// `malloc_consolidate`) was 6% of the server's CPU at 10 000 clients and allocator work
/// about 11%. With jemalloc, CPU per delivery went from 1.30x to 1.13x floor-socketioxide's
/// in the same run, at about 1.3 KB more resident memory per connection (BENCHMARKS.md §8,
/// fifth part).
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "logstream",
    version,
    about = "Real-time log push server with WebAssembly filters",
    long_about = "Real-time log push server with WebAssembly filters.\n\nWithout a command it runs the server (same as `logstream serve`).",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The server's flags, when no command is given.
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Args, Default)]
struct ServeArgs {
    /// Port for Socket.IO and the REST API (0 = any free port).
    #[arg(long)]
    port: Option<u16>,
    /// Address to bind.
    #[arg(long)]
    host: Option<String>,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Args, Default)]
struct ConfigArgs {
    /// TOML configuration file (also LOGSTREAM_CONFIG).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Override any configuration key, e.g. `--set rate_limit=50`. Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default when no command is given).
    Serve(ServeArgs),
    /// Mint a client token signed with the configured `jwt_secret` (in development mode, with
    /// the development secret the server uses).
    Token {
        /// The user id (`sub`).
        #[arg(long)]
        sub: String,
        /// Lifetime: 90, 45s, 30m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Extra claim `key=value` (JSON values stay JSON), e.g. `--claim role=admin`. Repeatable.
        #[arg(long = "claim", value_name = "KEY=VALUE")]
        claims: Vec<String>,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Tools for plugin authors.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Scoped ingest keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Follow logs from a server in the terminal (reconnects and resumes on its own).
    Tail(TailArgs),
    /// Send the lines of a file (followed across rotation) or of stdin as one device's logs.
    Ship(ShipArgs),
}

#[derive(Args)]
struct TailArgs {
    /// The server (http://host:port, or https://host:port).
    #[arg(
        long,
        env = "LOGSTREAM_SERVER",
        default_value = "http://localhost:3000"
    )]
    server: String,
    /// Trust only the CAs of this PEM file for an https:// server (a private CA), instead of
    /// the public ones.
    #[arg(long, env = "LOGSTREAM_CA_FILE", value_name = "PEM")]
    ca_file: Option<PathBuf>,
    /// A client token (JWT).
    #[arg(long, env = "LOGSTREAM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Only this device (repeatable).
    #[arg(short = 'd', long = "device", value_name = "DEVICE")]
    devices: Vec<String>,
    /// Only this level (repeatable): TRACE, DEBUG, INFO, WARN, ERROR, FATAL.
    #[arg(short = 'l', long = "level", value_name = "LEVEL")]
    levels: Vec<String>,
    /// Only logs with this tag (repeatable).
    #[arg(short = 't', long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// Only logs whose message contains this (repeatable).
    #[arg(short = 'k', long = "keyword", value_name = "TEXT")]
    keywords: Vec<String>,
    /// A named filter plugin instead of the built-in one.
    #[arg(long)]
    filter: Option<String>,
    /// The named filter's params, a JSON object.
    #[arg(long, requires = "filter")]
    params: Option<String>,
    /// A transform applied to what matched (repeatable, in order).
    #[arg(long = "transform", value_name = "NAME")]
    transforms: Vec<String>,
    /// Start with the last N matching logs.
    #[arg(
        short = 'n',
        long = "lines",
        value_name = "N",
        conflicts_with = "since"
    )]
    tail: Option<usize>,
    /// Start after this offset: take it from the "offset" field of a line printed with
    /// `--output json`.
    #[arg(long, value_name = "OFFSET")]
    since: Option<String>,
    /// text, json (one entry per line, with its "offset") or raw (the message only).
    #[arg(long, value_enum, default_value = "text")]
    output: OutputArg,
    /// No colours (also when stdout is not a terminal, or NO_COLOR is set).
    #[arg(long)]
    no_color: bool,
    /// Show each log's timestamp.
    #[arg(long)]
    timestamps: bool,
    /// If the named filter is removed or disabled on the server, follow every log the token
    /// may see instead of exiting (exit status 1, with the server's message).
    #[arg(long, requires = "filter")]
    fallback_all: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum OutputArg {
    Text,
    Json,
    Raw,
}

#[derive(Args)]
struct ShipArgs {
    /// The device these lines come from.
    #[arg(long)]
    device: String,
    /// The server (http://host:port, or https://host:port).
    #[arg(
        long,
        env = "LOGSTREAM_SERVER",
        default_value = "http://localhost:3000"
    )]
    server: String,
    /// Trust only the CAs of this PEM file for an https:// server (a private CA), instead of
    /// the public ones.
    #[arg(long, env = "LOGSTREAM_CA_FILE", value_name = "PEM")]
    ca_file: Option<PathBuf>,
    /// An ingest key.
    #[arg(long, env = "LOGSTREAM_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// A regex whose first group (or whole match) in a line is its level, e.g.
    /// '\b(DEBUG|INFO|WARN|ERROR)\b'; lines without one are INFO.
    #[arg(long, value_name = "REGEX")]
    level_from: Option<String>,
    /// A tag for every line (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// Most lines per request.
    #[arg(long, default_value_t = 500)]
    batch_lines: usize,
    /// Longest wait, in ms, for a batch to fill.
    #[arg(long, default_value_t = 200)]
    batch_ms: u64,
    /// Where the place in each followed file is kept (`<dir>/ship/`), so that running ship
    /// again resumes after the last line that landed. Default: the server's `data_dir`.
    #[arg(long, env = "LOGSTREAM_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Read the file from its start, whatever its checkpoint says.
    #[arg(long)]
    from_start: bool,
    /// The file to follow, or - for stdin (the default).
    #[arg(default_value = "-")]
    file: String,
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Make a new ingest key that may write only the given devices: prints the key once and
    /// the `[[ingest_keys]]` entry (with its SHA-256) to paste into the config file.
    New {
        /// The key's name, shown in logs and the audit trail.
        #[arg(long)]
        name: String,
        /// Device patterns the key may write (`*` matches any run of characters). Repeatable.
        #[arg(long = "devices", value_name = "PATTERN", num_args = 1.., required = true)]
        devices: Vec<String>,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Check a plugin: valid component of a supported interface? params accepted? what
    /// matches among these logs, and how fast?
    Check {
        /// The component (`.wasm`).
        file: PathBuf,
        /// Subscription params (a JSON object) to validate and use.
        #[arg(long)]
        params: Option<String>,
        /// Log entries to run through it, one JSON object per line.
        #[arg(long, value_name = "FILE.jsonl")]
        logs: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Start a new filter project (a working "message contains text" filter).
    New {
        /// The filter's name (what clients put in `filter`).
        name: String,
        /// rust, js or python.
        #[arg(long, default_value = "rust")]
        lang: String,
        /// Where to create the project directory.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

fn overrides(args: &ConfigArgs) -> anyhow::Result<Vec<(String, String)>> {
    args.set
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("--set {kv:?} must be KEY=VALUE"))
        })
        .collect()
}

/// Targets whose debug and trace output carries handshake payloads and packets (hence
/// tokens): capped at INFO whatever `RUST_LOG` says.
const TRANSPORT_TARGETS: [&str; 5] = [
    "socketioxide",
    "engineioxide",
    "engineioxide_core",
    "tungstenite",
    "tokio_tungstenite",
];

/// Log to stderr: `RUST_LOG` filtering, never transport payloads, colours only on a terminal,
/// text or JSON as `log_format` says.
fn init_logging(format: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer, filter};
    let env = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,socketioxide=warn,engineioxide=warn".into());
    // A static filter: decided once per call site, so the transport's many per-packet
    // debug and trace events cost nothing at run time (a closure here was called for every
    // one of them and showed up in profiles of fan-out).
    // Its default is the most `RUST_LOG` asks for, so that the combined level hint (which
    // also caps `log` records, e.g. tungstenite's per-frame ones) is no higher than needed.
    let most = env.max_level_hint().unwrap_or(filter::LevelFilter::TRACE);
    let no_payloads = TRANSPORT_TARGETS
        .iter()
        .fold(filter::Targets::new().with_default(most), |targets, t| {
            targets.with_target(*t, tracing::Level::INFO)
        });
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let layer = if format == "json" {
        fmt.json().with_filter(env).boxed()
    } else {
        fmt.with_ansi(std::io::stderr().is_terminal())
            .with_filter(env)
            .boxed()
    };
    let _ = tracing_subscriber::registry()
        .with(layer.with_filter(no_payloads))
        .try_init();
    for warning in Config::unknown_env_warnings() {
        tracing::warn!("{warning}");
    }
}

/// Exit status of a client that was refused its credentials.
const EXIT_AUTH: u8 = 2;
/// Exit status of a client that could not trust the server's TLS certificate.
const EXIT_TLS: u8 = 3;

/// A failure that ends the command with a particular status.
#[derive(Debug)]
struct Exit(u8, String);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}

impl std::error::Error for Exit {}

fn main() -> ExitCode {
    // One crypto provider for every TLS client and server of the process (rustls' builders
    // here name it anyway; this covers any that would look for a default).
    let _ = rustls::crypto::ring::default_provider().install_default();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            match e.downcast_ref::<Exit>() {
                Some(Exit(code, _)) => ExitCode::from(*code),
                None => ExitCode::FAILURE,
            }
        }
    }
}

/// Resolves on Ctrl-C (or SIGTERM).
async fn interrupted() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

fn tail(args: TailArgs) -> anyhow::Result<()> {
    use logstream::cli::tail::{Output, TailError, TailOptions};
    use std::io::IsTerminal;
    let token = args.token.context(
        "a token is needed: --token or LOGSTREAM_TOKEN (in development mode, `logstream token --sub you`)",
    )?;
    let params = args
        .params
        .map(|p| serde_json::from_str::<serde_json::Value>(&p))
        .transpose()
        .context("--params must be a JSON object")?;
    if params.as_ref().is_some_and(|p| !p.is_object()) {
        anyhow::bail!("--params must be a JSON object");
    }
    let color =
        !args.no_color && std::env::var_os("NO_COLOR").is_none() && std::io::stdout().is_terminal();
    let opts = TailOptions {
        server: args.server,
        token,
        devices: args.devices,
        levels: args.levels,
        tags: args.tags,
        keywords: args.keywords,
        filter: args.filter,
        params,
        transforms: args.transforms,
        tail: args.tail,
        since: args.since,
        output: match args.output {
            OutputArg::Text => Output::Text,
            OutputArg::Json => Output::Json,
            OutputArg::Raw => Output::Raw,
        },
        color,
        timestamps: args.timestamps,
        ca_file: args.ca_file,
        fallback_all: args.fallback_all,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    match runtime.block_on(logstream::cli::tail::run(opts, interrupted())) {
        Ok(()) => Ok(()),
        Err(TailError::Auth(why)) => Err(Exit(EXIT_AUTH, why).into()),
        Err(TailError::Tls(why)) => Err(Exit(EXIT_TLS, why).into()),
        Err(TailError::Fatal(why)) => Err(anyhow::anyhow!(why)),
    }
}

fn ship(args: ShipArgs) -> anyhow::Result<()> {
    use logstream::cli::ship::{Input, ShipError, ShipOptions};
    let api_key = args
        .api_key
        .context("an ingest key is needed: --api-key or LOGSTREAM_API_KEY")?;
    let level_from = args
        .level_from
        .map(|r| regex::Regex::new(&r))
        .transpose()
        .context("--level-from is not a valid regex")?;
    if args.batch_lines == 0 || args.batch_lines > logstream::log_entry::MAX_ENTRIES_PER_REQUEST {
        anyhow::bail!(
            "--batch-lines must be between 1 and {}",
            logstream::log_entry::MAX_ENTRIES_PER_REQUEST
        );
    }
    let opts = ShipOptions {
        server: args.server,
        api_key,
        device: args.device,
        level_from,
        tags: args.tags,
        input: if args.file == "-" {
            Input::Stdin
        } else {
            Input::File(PathBuf::from(args.file))
        },
        batch_lines: args.batch_lines,
        batch_ms: args.batch_ms,
        ca_file: args.ca_file,
        data_dir: Some(
            args.data_dir
                .unwrap_or_else(|| logstream::config::ServerConfig::default().data_dir),
        ),
        from_start: args.from_start,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    match runtime.block_on(logstream::cli::ship::run(opts, interrupted())) {
        Ok(_) => Ok(()),
        Err(ShipError::Auth(why)) => Err(Exit(EXIT_AUTH, why).into()),
        Err(ShipError::Tls(why)) => Err(Exit(EXIT_TLS, why).into()),
        Err(ShipError::Fatal(why)) => Err(anyhow::anyhow!(why)),
    }
}

/// Load the configuration, then start logging as it says.
fn load_config(args: &ConfigArgs, extra: Vec<(String, String)>) -> anyhow::Result<Config> {
    let mut sets = overrides(args)?;
    sets.extend(extra);
    let config = Config::load(args.config.as_deref(), &sets)?;
    init_logging(&config.server.log_format);
    Ok(config)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let command = cli.command.unwrap_or(Command::Serve(cli.serve));
    match command {
        Command::Serve(ServeArgs {
            port,
            host,
            config: args,
        }) => {
            let mut sets = Vec::new();
            if let Some(p) = port {
                sets.push(("port".into(), p.to_string()));
            }
            if let Some(h) = host {
                sets.push(("host".into(), h));
            }
            let config = load_config(&args, sets.clone())?;
            // SIGHUP reads the same layers again.
            let mut all_sets = overrides(&args)?;
            all_sets.extend(sets);
            let file = args.config.clone();
            let reload: logstream::server::Reload =
                std::sync::Arc::new(move || Config::load(file.as_deref(), &all_sets));
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(async move {
                let addr: SocketAddr = format!("{}:{}", config.server.host, config.server.port)
                    .parse()
                    .or_else(|_| format!("[{}]:{}", config.server.host, config.server.port).parse())
                    .with_context(|| {
                        format!("host {:?} is not an IP address", config.server.host)
                    })?;
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding {addr}"))?;
                logstream::serve(
                    config,
                    listener,
                    logstream::shutdown::signal(),
                    Some(reload),
                )
                .await
            })
        }
        Command::Plugin(PluginCommand::Check {
            file,
            params,
            logs,
            config,
        }) => {
            let config = load_config(&config, Vec::new())?;
            logstream::plugins::check::run(
                &config,
                &file,
                params.as_deref(),
                logs.as_deref(),
                &mut std::io::stdout(),
            )
        }
        Command::Key(KeyCommand::New { name, devices }) => {
            use logstream::auth::ingest_keys::{IngestKey, IngestKeyConfig, digest_hex};
            let key = logstream::auth::random_secret();
            let entry = IngestKeyConfig {
                name,
                key_sha256: digest_hex(&key),
                devices,
            };
            IngestKey::from_config(0, &entry).map_err(|e| anyhow::anyhow!("{e}"))?;
            let toml = toml::to_string(&entry).context("formatting the entry")?;
            println!("key (shown once; give it to the shipper as X-API-Key): {key}");
            println!();
            println!("paste into the config file (then send the server SIGHUP):");
            println!();
            println!("[[ingest_keys]]");
            print!("{toml}");
            Ok(())
        }
        Command::Tail(args) => tail(args),
        Command::Ship(args) => ship(args),
        Command::Plugin(PluginCommand::New { name, lang, dir }) => {
            let root = logstream::plugins::scaffold::create(&dir, &name, &lang)?;
            let build = match lang.as_str() {
                "rust" => "cargo build --release --target wasm32-wasip2",
                "python" => "./build.sh",
                _ => "npm install && npm run build",
            };
            println!(
                "created {}; build it with: cd {} && {build}",
                root.display(),
                root.display()
            );
            Ok(())
        }
        Command::Token {
            sub,
            ttl,
            claims,
            config,
        } => {
            let config = load_config(&config, Vec::new())?;
            if config.auth.jwt_secret.is_none() && config.auth.jwt_public_key.is_some() {
                anyhow::bail!(
                    "tokens for jwt_public_key are minted by whoever holds the private key; set jwt_secret to mint HS256 tokens here"
                );
            }
            // Without a secret the server runs in development mode: use its secret.
            let (config, dev) = logstream::devmode::fill(config);
            if dev.supplied.contains(&"jwt_secret") {
                match &dev.file {
                    Some(path) => eprintln!(
                        "no jwt_secret configured: signing with the development secret in {}",
                        path.display()
                    ),
                    None => anyhow::bail!(
                        "no jwt_secret configured and no development key file could be kept (data_dir): set LOGSTREAM_JWT_SECRET"
                    ),
                }
            }
            let (keys, _) = Keys::from_config(&config)?;
            let claims = claims
                .iter()
                .map(|c| parse_claim(c))
                .collect::<anyhow::Result<HashMap<_, _>>>()?;
            println!("{}", keys.mint(&sub, parse_ttl(&ttl)?, &claims)?);
            Ok(())
        }
    }
}
