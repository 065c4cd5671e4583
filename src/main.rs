//! The `eventsync` binary: configuration in, [`eventsync::server::run`] out; `eventsync token ...`
//! mints a token instead ([`eventsync::auth::command`]).

use std::process::ExitCode;

use eventsync::config::{Config, ConfigError};

/// mimalloc: the server allocates many small, short-lived buffers per request (JSON values, patches,
/// responses); glibc's malloc cost ~10% of CPU in the write benchmark's profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EVENTSYNC_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args_os().skip(1).peekable();
    if args.peek().is_some_and(|a| a == "token") {
        return match eventsync::auth::command::run(args.skip(1).collect()) {
            Ok(token) => {
                use std::io::Write;
                // A closed stdout (`| head`) is the reader's choice, not a failure to report.
                let _ = writeln!(std::io::stdout(), "{}", token.trim_end());
                ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!("eventsync token: {message}");
                ExitCode::from(2)
            }
        };
    }
    let config = match Config::from_env_and_args() {
        Ok(c) => c,
        // `--help`, `--version` or a malformed command line: clap prints it and picks the exit code.
        Err(ConfigError::Usage(e)) => e.exit(),
        Err(e) => {
            eprintln!("eventsync: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("eventsync: cannot listen on {}: {e}", config.listen);
            return ExitCode::from(1);
        }
    };
    match eventsync::server::run(listener, config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("eventsync: {e}");
            ExitCode::from(1)
        }
    }
}
