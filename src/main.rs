//! The `ingress-egress` binary: `serve` (the default) runs the service; `simulate` sends a
//! correctly signed sample webhook to a running instance.

use clap::{Parser, Subcommand};
use ingress_egress::{
    configuration::{redact_url, ConfigError, Settings},
    connectors::registry::simulate,
    startup::Application,
    telemetry,
};

#[derive(Parser)]
#[command(
    name = "ingress-egress",
    version,
    about = "Twilio SMS and Conversations ⇄ RabbitMQ"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default).
    Serve,
    /// Send a signed sample webhook to a running service and show what it published.
    Simulate(simulate::SimulateArgs),
}

/// mimalloc rather than the system allocator: a request allocates and frees many small
/// objects across threads, where glibc's malloc costs far more (README "Performance").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
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
        Command::Simulate(_) => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async move {
        match command {
            Command::Serve => serve(settings).await,
            Command::Simulate(args) => simulate::run(&settings, args).await,
        }
    });
    drop(runtime);
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) if error.downcast_ref::<ConfigError>().is_some() => {
            eprintln!("{error}");
            std::process::ExitCode::from(2)
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let application = Application::build(settings.clone()).await?;
    tracing::info!(
        port = application.port(),
        bus = %settings.redacted_amqp_url(),
        instance_id = %settings.bus.instance_id,
        connectors = ?application.connector_names(),
        trace_export = %settings
            .telemetry
            .otlp_traces_endpoint
            .as_ref()
            .map_or_else(|| "off".to_owned(), |url| redact_url(url.as_str())),
        "ingress-egress listening"
    );
    application.run_until_stopped().await?;
    Ok(())
}
