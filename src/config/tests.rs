use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

fn parse(list: &[&str]) -> Result<Config, ConfigError> {
    Config::from_args_iter(list)
}

/// A file named `name` holding `text`, in a directory dropped with the returned guard.
fn file(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

fn with_file(path: &Path, flags: &[&str]) -> Result<Config, ConfigError> {
    let mut list = vec!["--config", path.to_str().unwrap()];
    list.extend_from_slice(flags);
    parse(&list)
}

/// The names deployments already use. Each is a file key, and (by the rule of the test below) a
/// flag and a variable.
const KEYS: [&str; 46] = [
    "listen",
    "data_dir",
    "store",
    "node_id",
    "static_dir",
    "client_dir",
    "durability",
    "shutdown_timeout",
    "max_document_bytes",
    "max_body_bytes",
    "max_json_depth",
    "max_concurrent_requests",
    "max_connections",
    "request_timeout",
    "write_queue",
    "max_batch",
    "max_page",
    "idempotency_ttl",
    "hub_capacity",
    "snapshot_every",
    "snapshot_interval",
    "compact_interval",
    "retain_events",
    "retain_for",
    "auth",
    "jwt_secret",
    "jwt_secret_file",
    "jwt_keys",
    "jwt_issuer",
    "jwt_audience",
    "jwt_leeway",
    "jwt_claim",
    "cors_origin",
    "write_rate",
    "write_burst",
    "max_sockets_per_client",
    "max_streams_per_client",
    "header_timeout",
    "body_timeout",
    "body_buffer_bytes",
    "write_timeout",
    "heartbeat_timeout",
    "metrics_listen",
    "max_page_bytes",
    "hub_bytes",
    "max_catch_up_bytes",
];

#[test]
fn defaults_match_the_documented_ones() {
    let c = parse(&[]).unwrap();
    // The node id defaults to this host's name and the fixed port.
    if let Some(id) = &c.node_id {
        assert!(id.ends_with(":8080"), "{id}");
    }
    let c = Config { node_id: None, ..c };
    assert_eq!(c, Config::default());
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.snapshots.every, 100);
    assert_eq!(c.limits.max_document_bytes, 1 << 20);
}

#[test]
fn flags_override_the_file_which_overrides_defaults() {
    let (_dir, path) = file(
        "c.toml",
        "listen = \"127.0.0.1:9000\"\nsnapshot_every = 7\nretain_for = \"5m\"\n",
    );
    let c = with_file(&path, &["--snapshot-every", "9"]).unwrap();
    assert_eq!(c.listen.port(), 9000);
    assert_eq!(c.snapshots.every, 9);
    assert_eq!(c.snapshots.retain_for, Duration::from_secs(300));
}

#[test]
fn a_variable_beats_the_file_and_loses_to_a_flag() {
    // Tests run in parallel threads, so the two options read variables that only this test's
    // command line knows: no other test's parse can see them.
    const EVERY: &str = "EVENTSYNC_CONFIG_TEST_VARIABLE_VS_FILE_SNAPSHOT_EVERY";
    const RETAIN: &str = "EVENTSYNC_CONFIG_TEST_VARIABLE_VS_FILE_RETAIN_EVENTS";
    std::env::set_var(EVERY, "8");
    std::env::set_var(RETAIN, "8");
    let command = layers::command()
        .mut_arg("snapshot_every", |a| a.env(EVERY))
        .mut_arg("retain_events", |a| a.env(RETAIN));
    let (_dir, path) = file("c.toml", "snapshot_every = 7\nretain_events = 7\n");
    let argv: Vec<std::ffi::OsString> = [
        layers::PROGRAM,
        "--config",
        path.to_str().unwrap(),
        "--snapshot-every",
        "9",
    ]
    .map(Into::into)
    .into();
    let c = layers::layered(command, &argv).unwrap();
    assert_eq!(c.snapshots.every, 9, "the flag beats the variable");
    assert_eq!(c.snapshots.retain_events, 8, "the variable beats the file");
}

#[test]
fn a_json_file_is_read_like_a_toml_one() {
    let (_dir, path) = file(
        "seed.json",
        r#"{"listen": "127.0.0.1:9001", "snapshot_every": 7, "retain_for": "5m",
            "durability": "normal", "max_document_bytes": 1000}"#,
    );
    let c = with_file(&path, &[]).unwrap();
    assert_eq!(c.listen.port(), 9001);
    assert_eq!(c.snapshots.every, 7);
    assert_eq!(c.snapshots.retain_for, Duration::from_secs(300));
    assert_eq!(c.durability, Durability::Normal);
    // The body limit's default follows the document limit wherever that was given.
    assert_eq!(c.limits.max_body_bytes, 1000 + 64 * 1024);
}

#[test]
fn an_unknown_key_in_a_json_file_is_named() {
    let (_dir, path) = file("c.json", r#"{"listen": "127.0.0.1:9001", "snapshot_evry": 7}"#);
    let err = with_file(&path, &[]).unwrap_err();
    assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
    assert!(err.to_string().contains("`snapshot_evry`"), "{err}");
    // `--config` names the file; it is no key of it.
    let (_dir, path) = file("c.json", r#"{"config": "other.json"}"#);
    let err = with_file(&path, &[]).unwrap_err();
    assert!(err.to_string().contains("unknown key `config`"), "{err}");
}

#[test]
fn a_file_value_of_the_wrong_kind_or_form_is_named() {
    let (_dir, path) = file("c.toml", "retain_for = \"soon\"\n");
    let err = with_file(&path, &[]).unwrap_err();
    assert!(err.to_string().starts_with("retain_for:"), "{err}");
    let (_dir, path) = file("c.json", r#"{"snapshot_every": "7"}"#);
    let err = with_file(&path, &[]).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("snapshot_every: expected a whole number"),
        "{err}"
    );
    let (_dir, path) = file("c.toml", "retain_for = 60\n");
    let err = with_file(&path, &[]).unwrap_err();
    assert!(
        err.to_string().ends_with("retain_for: expected a string"),
        "{err}"
    );
}

#[test]
fn the_node_id_is_the_one_given_else_none_on_a_port_picked_at_start() {
    let c = parse(&["--node-id", "eu-1", "--listen", "127.0.0.1:0"]).unwrap();
    assert_eq!(c.node_id.as_deref(), Some("eu-1"));
    let c = parse(&["--listen", "127.0.0.1:0"]).unwrap();
    assert_eq!(c.node_id, None);
    let err = parse(&["--node-id", " "]).unwrap_err();
    assert!(err.to_string().starts_with("node_id:"), "{err}");
}

#[test]
fn bad_values_are_named() {
    let err = parse(&["--retain-for", "soon"]).unwrap_err();
    assert!(err.to_string().starts_with("retain_for:"), "{err}");
    let err = parse(&["--store", "postgres://x"]).unwrap_err();
    assert!(err.to_string().contains("unknown store"), "{err}");
    let err = parse(&["--snapshot-every", "0"]).unwrap_err();
    assert!(err.to_string().starts_with("snapshot_every"), "{err}");
    let (_dir, path) = file("c.toml", "listne = \"x\"\n");
    assert!(matches!(with_file(&path, &[]), Err(ConfigError::Parse { .. })));
    // clap's own parsers' errors are named the same way.
    let err = parse(&["--max-batch", "many"]).unwrap_err();
    assert!(err.to_string().starts_with("max_batch: 'many': "), "{err}");
}

#[test]
fn each_option_is_a_flag_a_variable_and_a_file_key_of_one_name() {
    let options = layers::options();
    let mut keys: Vec<&str> = options.get_arguments().map(|a| a.get_id().as_str()).collect();
    keys.sort_unstable();
    let mut expected = KEYS;
    expected.sort_unstable();
    assert_eq!(keys, expected);
    for arg in layers::command().get_arguments() {
        let id = arg.get_id().as_str();
        assert_eq!(arg.get_long(), Some(id.replace('_', "-").as_str()), "{id}");
        let env = format!("EVENTSYNC_{}", id.to_uppercase());
        assert_eq!(arg.get_env(), Some(std::ffi::OsStr::new(&env)), "{id}");
    }
}

#[test]
fn help_lists_every_option_with_its_variable() {
    let help = layers::command().render_long_help().to_string();
    for arg in layers::command().get_arguments() {
        let long = format!("--{} ", arg.get_long().unwrap());
        // A secret's variable is listed without its value (`[env: NAME]`, not `[env: NAME=…]`).
        let name = arg.get_env().unwrap().to_str().unwrap();
        let env = [format!("[env: {name}="), format!("[env: {name}]")];
        assert!(help.contains(&long), "{long} is missing from\n{help}");
        assert!(
            env.iter().any(|e| help.contains(e)),
            "{name} is missing from\n{help}"
        );
    }
}

#[test]
fn cors_origins_are_checked_at_start() {
    let c = parse(&["--cors-origin", "https://app.example.com,http://localhost:3000"]).unwrap();
    assert_eq!(c.access.cors_origin.len(), 2);
    let err = parse(&["--cors-origin", "app.example.com"]).unwrap_err();
    assert!(err.to_string().starts_with("cors_origin:"), "{err}");
}
