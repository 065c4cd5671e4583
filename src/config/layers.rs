//! The parse: the command line over `EVENTSYNC_*` variables over the `--config` file over the
//! declared defaults, all applied by clap in one pass once the file's values are its defaults.
//!
//! A default that depends on another option's final value (`max_body_bytes`) can only be set once
//! that value is known, so the line is parsed again with it; clap parsers are cheap and the
//! command line is short, so the (at most three) passes cost nothing worth a second mechanism.

use std::error::Error as _;
use std::ffi::OsString;
use std::path::PathBuf;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{value_parser, Arg, ArgMatches, Args as _, Command, FromArgMatches as _};

use super::values::Refusal;
use super::{file, invalid, Config, ConfigError};

/// The program's name in usage lines, and the first word of every argument list parsed here.
pub(super) const PROGRAM: &str = "eventsync";

/// The option naming the file; not itself a key the file may hold.
const CONFIG_FILE: &str = "config";

/// The option whose default is derived, and what it adds to the document limit: room for the
/// request's envelope around the largest document.
const BODY: &str = "max_body_bytes";
const BODY_ENVELOPE: usize = 64 * 1024;

/// The whole command line: `--config FILE`, then every option of [`Config`].
pub(super) fn command() -> Command {
    let config_file = Arg::new(CONFIG_FILE)
        .long("config")
        .env("EVENTSYNC_CONFIG")
        .value_name("FILE")
        .value_parser(value_parser!(PathBuf))
        .help(
            "TOML file, or JSON when its name ends in .json, with any of the options below as \
             keys in snake_case (max_batch = 64). Flags and environment variables override it",
        );
    // After the options: deriving them sets the command's about line from `Config`'s doc comment.
    Config::augment_args(Command::new(PROGRAM).arg(config_file))
        .version(env!("CARGO_PKG_VERSION"))
        .about("EventSync: a real-time JSON document sync server")
}

/// The options of [`Config`] alone, without `--config`: the keys a file may hold.
pub(super) fn options() -> Command {
    Config::augment_args(Command::new(PROGRAM))
}

/// Every layer applied: flags, variables, the file, declared and derived defaults. The derived
/// node id and [`Config::validate`] are the caller's.
pub(super) fn layered(mut command: Command, argv: &[OsString]) -> Result<Config, ConfigError> {
    let mut found = parse(&command, argv)?;
    if let Some(path) = found.get_one::<PathBuf>(CONFIG_FILE).cloned() {
        command = file::as_defaults(command, &path)?;
        found = parse(&command, argv)?;
    }
    if found.value_source(BODY).is_none() {
        let document = found
            .get_one::<usize>("max_document_bytes")
            .copied()
            .unwrap_or_default();
        let body = document.saturating_add(BODY_ENVELOPE).to_string();
        command = command.mut_arg(BODY, |arg| arg.default_value(body));
        found = parse(&command, argv)?;
    }
    Config::from_arg_matches(&found).map_err(ConfigError::Usage)
}

fn parse(command: &Command, argv: &[OsString]) -> Result<ArgMatches, ConfigError> {
    command
        .clone()
        .try_get_matches_from(argv)
        .map_err(|e| named(command, e))
}

/// A value a parser refused becomes [`ConfigError::Invalid`] named by its key, wherever it was
/// given (flag, variable or file). Any other clap error (a malformed command line, `--help`)
/// stays clap's, to print.
fn named(command: &Command, err: clap::Error) -> ConfigError {
    let context = |kind| match err.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    // clap names the option as it is written on a command line: `--retain-for <RETAIN_FOR>`.
    let key = context(ContextKind::InvalidArg).and_then(|written| {
        let long = written.strip_prefix("--")?.split([' ', '=']).next()?;
        let arg = command.get_arguments().find(|a| a.get_long() == Some(long))?;
        Some(arg.get_id().to_string())
    });
    let (ErrorKind::ValueValidation, Some(key)) = (err.kind(), key) else {
        return ConfigError::Usage(err);
    };
    let value = context(ContextKind::InvalidValue).unwrap_or_default();
    let message = match err.source() {
        Some(reason) if reason.is::<Refusal>() => reason.to_string(),
        Some(reason) => format!("'{value}': {reason}"),
        None => format!("'{value}' is not valid"),
    };
    invalid(&key, message)
}
