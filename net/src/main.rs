//! `cache-manager`: the service binary. See `server.rs` for its shape.

use net::config::{self, LoadError};
use net::server;

fn main() -> anyhow::Result<()> {
    // A panic on one core would leave its shard unreachable while the process lives on:
    // better to exit, so that the supervisor (systemd's Restart=on-failure) starts the
    // whole service again.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
    let config = match config::Config::load() {
        Ok(config) => config,
        Err(LoadError::Cli(e)) => e.exit(),
        Err(e) => return Err(e.into()),
    };
    config.validate()?;
    if config.print_config {
        println!("{}", serde_json::to_string_pretty(&config)?);
        return Ok(());
    }
    init_logging(config.log_format);
    server::run(config)
}

fn init_logging(format: config::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        config::LogFormat::Text => builder.init(),
        config::LogFormat::Json => builder.json().init(),
    }
}
