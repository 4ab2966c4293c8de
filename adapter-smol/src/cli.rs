//! The `switchboard` command: flags, logging, run.

use crate::{Args, Server, Settings};
use clap::Parser;
use std::process::ExitCode;

/// Parses the command line, sets up logging, and runs the server until it has shut down.
pub fn main() -> ExitCode {
    let settings = match Settings::resolve(Args::parse()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("switchboard: {error}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if settings.log_json {
        logs.json().init();
    } else {
        logs.init();
    }
    match Server::new(settings).run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("switchboard: {error}");
            ExitCode::FAILURE
        }
    }
}
