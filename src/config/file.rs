//! The `--config` file: TOML, or JSON when its name ends in `.json` (as the seed documents' configs
//! do). Its keys are the options' ids (`max_batch`), and its values become the options' defaults,
//! so flags and variables still override them and every value passes the option's own parser.
//!
//! A key that is no option is an error naming it. A value must have the kind the option had in
//! the file before options were declared once: a whole number for counts and sizes, a string for
//! everything else (durations included: `retain_for = "1h"`).

use std::any::TypeId;
use std::path::Path;

use clap::{Arg, Command};
use serde_json::{Map, Value};

use super::{layers, ConfigError};

/// What is wrong with the file itself.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error(transparent)]
    Toml(toml::de::Error),
    #[error(transparent)]
    Json(serde_json::Error),
    #[error("unknown key `{0}` (the keys are the options of --help, in snake_case)")]
    UnknownKey(String),
    #[error("{key}: expected {expected}")]
    Kind { key: String, expected: &'static str },
}

/// `command` with the file's values as its options' defaults.
pub(super) fn as_defaults(mut command: Command, path: &Path) -> Result<Command, ConfigError> {
    let refused = |source| ConfigError::Parse {
        path: path.to_path_buf(),
        source,
    };
    let options = layers::options();
    for (key, value) in read(path)? {
        let Some(option) = options.get_arguments().find(|a| a.get_id() == key.as_str()) else {
            return Err(refused(FileError::UnknownKey(key)));
        };
        let text = text(option, &key, value).map_err(refused)?;
        command = command.mut_arg(&key, |arg| arg.default_value(text));
    }
    Ok(command)
}

fn read(path: &Path) -> Result<Map<String, Value>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let parsed = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(FileError::Json)
    } else {
        toml::from_str(&text).map_err(FileError::Toml)
    };
    parsed.map_err(|source| ConfigError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// The value as the option's parser reads it, if it is of the option's kind.
fn text(option: &Arg, key: &str, value: Value) -> Result<String, FileError> {
    let parsed = option.get_value_parser().type_id();
    let counts = parsed == TypeId::of::<usize>() || parsed == TypeId::of::<u64>();
    match value {
        Value::Number(n) if counts && (n.is_u64() || n.is_i64()) => Ok(n.to_string()),
        Value::String(s) if !counts => Ok(s),
        _ => Err(FileError::Kind {
            key: key.to_owned(),
            expected: if counts { "a whole number" } else { "a string" },
        }),
    }
}
