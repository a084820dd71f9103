//! `cache-manager`: the service binary. See `server.rs` for its shape.

use net::config::{self, LoadError};
use net::server;

fn main() -> anyhow::Result<()> {
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
