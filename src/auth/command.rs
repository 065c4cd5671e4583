//! `eventsync token`: mints an HS256 token with the server's own secret, for operators, scripts and
//! benchmarks (a deployment with an identity provider mints its tokens there instead).
//!
//! ```sh
//! eventsync token --sub alice --read 'games/*' --write 'games/{sub}-*' --ttl 1h --jwt-secret-file s
//! ```
//!
//! The token's own flags are `--sub`, `--read`, `--write` (each repeatable, or comma lists),
//! `--admin` and `--ttl`; every other argument is a server option, read exactly as the server reads
//! it — with the `EVENTSYNC_*` variables and `--config` file — so the token carries the issuer,
//! audience and claim path the server will check, signed with the secret it will check against.

use std::ffi::OsString;

use clap::{Arg, ArgAction, Command};

use super::grants::Grants;
use crate::config::{parse_duration, Config};

/// The token command's own options (the rest of the command line is the server's).
fn command() -> Command {
    Command::new("eventsync token")
        .about("Prints a signed HS256 token for the server configured by the other flags")
        .arg(Arg::new("sub").long("sub").required(true).help("The token's subject (user id)"))
        .arg(
            Arg::new("read")
                .long("read")
                .action(ArgAction::Append)
                .value_delimiter(',')
                .help("A pattern the token may read: COLLECTION, COLLECTION/*, COLLECTION/PREFIX*, COLLECTION/ID, * (repeatable)"),
        )
        .arg(
            Arg::new("write")
                .long("write")
                .action(ArgAction::Append)
                .value_delimiter(',')
                .help("A pattern the token may write (repeatable)"),
        )
        .arg(
            Arg::new("admin")
                .long("admin")
                .action(ArgAction::SetTrue)
                .help("Read everything and the admin surface (other subjects' client vectors)"),
        )
        .arg(
            Arg::new("ttl")
                .long("ttl")
                .default_value("1h")
                .value_parser(parse_duration)
                .help("How long the token is valid"),
        )
}

/// The names of the token's own flags; the flags that take a value.
const OWN: [&str; 5] = ["--sub", "--read", "--write", "--admin", "--ttl"];

/// Runs `eventsync token ARGS` (the arguments after `token`): the token, or the message to print.
pub fn run(args: Vec<OsString>) -> Result<String, String> {
    let (own, server) = split(args);
    let matches =
        match command().try_get_matches_from(std::iter::once(OsString::from("eventsync token")).chain(own)) {
            Ok(m) => m,
            // `--help` is an answer, not a failure.
            Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => return Ok(e.render().to_string()),
            Err(e) => return Err(e.render().to_string()),
        };
    let config = Config::from_args_iter(server).map_err(|e| format!("configuration error: {e}"))?;
    let patterns = |name: &str| -> Vec<String> {
        matches
            .get_many::<String>(name)
            .map(|v| v.cloned().collect())
            .unwrap_or_default()
    };
    let (read, write) = (patterns("read"), patterns("write"));
    let admin = matches.get_flag("admin");
    let subject = matches.get_one::<String>("sub").expect("required");
    let ttl = *matches.get_one("ttl").expect("defaulted");
    let claim = Grants::claim(&read, &write, admin);
    // Refuse patterns the server would refuse, here rather than at the first request.
    Grants::from_claim(&claim, subject).map_err(|e| format!("invalid permissions: {e}"))?;
    super::token::mint(&config.access, subject, claim, ttl).map_err(|e| e.to_string())
}

/// Splits the token's own flags (and their values) from the server's options.
fn split(args: Vec<OsString>) -> (Vec<OsString>, Vec<OsString>) {
    let (mut own, mut server) = (Vec::new(), Vec::new());
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy();
        let name = text.split('=').next().unwrap_or_default();
        if text == "--help" || text == "-h" {
            own.push(arg);
        } else if OWN.contains(&name) {
            let takes_value = name != "--admin" && !text.contains('=');
            own.push(arg);
            if takes_value {
                own.extend(args.next());
            }
        } else {
            server.push(arg);
        }
    }
    (own, server)
}
