//! The `logstream` command: `serve` (the default) and `token`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use logstream::auth::{Keys, parse_claim, parse_ttl};
use logstream::config::Config;

#[derive(Parser)]
#[command(
    name = "logstream",
    version,
    about = "Real-time log push server with WebAssembly filters"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
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
    Serve {
        /// Port for Socket.IO and the REST API (0 = any free port).
        #[arg(long)]
        port: Option<u16>,
        /// Address to bind.
        #[arg(long)]
        host: Option<String>,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Mint a client token signed with the configured `jwt_secret`.
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

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,socketioxide=warn,engineioxide=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let command = cli.command.unwrap_or(Command::Serve {
        port: None,
        host: None,
        config: ConfigArgs::default(),
    });
    match command {
        Command::Serve { port, host, config } => {
            let mut sets = overrides(&config)?;
            if let Some(p) = port {
                sets.push(("port".into(), p.to_string()));
            }
            if let Some(h) = host {
                sets.push(("host".into(), h));
            }
            let config = Config::load(config.config.as_deref(), &sets)?;
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(async move {
                let addr: SocketAddr = format!("{}:{}", config.host, config.port)
                    .parse()
                    .or_else(|_| format!("[{}]:{}", config.host, config.port).parse())
                    .with_context(|| format!("host {:?} is not an IP address", config.host))?;
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding {addr}"))?;
                logstream::serve(config, listener, logstream::shutdown::signal()).await
            })
        }
        Command::Plugin(PluginCommand::Check {
            file,
            params,
            logs,
            config,
        }) => {
            let config = Config::load(config.config.as_deref(), &overrides(&config)?)?;
            logstream::plugins::check::run(
                &config,
                &file,
                params.as_deref(),
                logs.as_deref(),
                &mut std::io::stdout(),
            )
        }
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
            let config = Config::load(config.config.as_deref(), &overrides(&config)?)?;
            if config.jwt_secret.is_none() {
                anyhow::bail!(
                    "no jwt_secret configured: set LOGSTREAM_JWT_SECRET (or jwt_secret in the config file)"
                );
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
