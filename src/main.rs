//! The `ingress-egress` binary: `serve` (the default) runs the service; `simulate` sends a
//! correctly signed sample webhook to a running instance.

use clap::{Parser, Subcommand};
use ingress_egress::{
    configuration::{ConfigError, Settings},
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

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("{error}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Serve => serve(settings).await,
            Command::Simulate(args) => simulate::run(&settings, args).await,
        }
    });
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
    telemetry::init(settings.log_format, &settings.log_level);
    let application = Application::build(settings.clone()).await?;
    tracing::info!(
        port = application.port(),
        bus = %settings.redacted_amqp_url(),
        instance_id = %settings.bus.instance_id,
        connectors = ?application.connector_names(),
        "ingress-egress listening"
    );
    application.run_until_stopped().await?;
    Ok(())
}
