//! The `ingress-egress` binary: `serve` (the default) runs the service; `simulate` sends a
//! correctly signed sample webhook to a running instance; `watch` prints what it publishes.

use std::{
    io::{IsTerminal, Write},
    path::Path,
};

use clap::{Parser, Subcommand};
use ingress_egress::{
    banner::Banner,
    configuration::{read_dotenv, ConfigError, Environment, Settings, DOTENV_FILE},
    connectors::registry::simulate,
    startup::Application,
    telemetry, watch,
};

/// Where the configuration comes from, as `--help` says it.
const CONFIGURATION_HELP: &str = "\
Configuration comes from environment variables, and from a .env file in the current directory \
for variables the environment does not set (so the service and `simulate`, started from two \
shells in the same directory, agree). Nothing is required for a local run. Every variable is \
listed with its default and meaning in .env.example (copy it to .env) and in the README.";

#[derive(Parser)]
#[command(
    name = "ingress-egress",
    version,
    about = "Twilio SMS and Conversations ⇄ RabbitMQ",
    after_help = CONFIGURATION_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default).
    #[command(after_help = CONFIGURATION_HELP)]
    Serve,
    /// Send a signed sample webhook to a running service and show what it published.
    #[command(after_help = CONFIGURATION_HELP)]
    Simulate(simulate::SimulateArgs),
    /// Print what the service publishes on RabbitMQ as it arrives (inbound messages by default).
    #[command(after_help = CONFIGURATION_HELP)]
    Watch(watch::WatchArgs),
}

/// mimalloc rather than the system allocator: a request allocates and frees many small
/// objects across threads, where glibc's malloc costs far more (README "Performance").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let (settings, config_source) = match configuration() {
        Ok(read) => read,
        Err(error) => {
            eprintln!("{error}");
            return std::process::ExitCode::from(2);
        }
    };
    let command = cli.command.unwrap_or(Command::Serve);
    // Outside the runtime: span export runs on a thread of its own, and the guard's drop (after
    // the runtime is done) exports what is still buffered.
    let _telemetry = match command {
        Command::Serve => match telemetry::init(&settings.telemetry) {
            Ok(guard) => Some(guard),
            Err(error) => {
                eprintln!("{error}");
                return std::process::ExitCode::from(2);
            }
        },
        Command::Simulate(_) | Command::Watch(_) => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async move {
        match command {
            Command::Serve => serve(settings, config_source).await,
            Command::Simulate(args) => simulate::run(&settings, args).await,
            Command::Watch(args) => watch::run(&settings, args).await,
        }
    });
    drop(runtime);
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) if error.downcast_ref::<ConfigError>().is_some() => {
            eprintln!("{error}");
            std::process::ExitCode::from(2)
        }
        // Whoever read the output (`simulate … | head`) has what they wanted.
        Err(error)
            if error
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The settings from the environment and `.env`, and a description of where they came from.
fn configuration() -> Result<(Settings, String), ConfigError> {
    let mut environment = Environment::from_process();
    let source = match read_dotenv(Path::new(DOTENV_FILE))? {
        Some(pairs) => {
            let source = format!(
                "environment, then {DOTENV_FILE} ({} variables; the environment wins)",
                pairs.len()
            );
            environment = environment.with_fallbacks(pairs);
            source
        }
        None => format!("environment (no {DOTENV_FILE} here; see .env.example)"),
    };
    Ok((Settings::from_environment(environment)?, source))
}

async fn serve(settings: Settings, config_source: String) -> anyhow::Result<()> {
    let application = Application::build(settings.clone()).await?;
    let banner = Banner::new(
        &settings,
        application.port(),
        config_source,
        application.startup_notes(),
    );
    let mut stdout = std::io::stdout();
    if stdout.is_terminal() {
        // Nothing to do if the terminal is gone: the service runs on regardless.
        let _ = writeln!(stdout, "{}", banner.render());
    } else {
        banner.log();
    }
    application.run_until_stopped().await?;
    Ok(())
}
