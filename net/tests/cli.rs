//! The binary's command line: version, the effective configuration, and named errors.
//! (Having an integration test also makes `cargo test` build the binary that the
//! end-to-end tests in `tests/` start.)

use std::process::Command;

fn cache_manager() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cache-manager"))
}

#[test]
fn print_config_shows_env_and_flags_with_flags_winning() {
    let out = cache_manager()
        .env("CACHE_L1_MAX_ENTRIES", "500")
        .env("CACHE_DEFAULT_TTL", "60")
        .env("CACHE_AUTH_TOKEN", "hunter2")
        .args(["--default-ttl", "90", "--print-config"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(config["l1_max_entries"], 500);
    assert_eq!(config["default_ttl"], 90);
    assert_eq!(config["listen"], "127.0.0.1:4000");
    assert_eq!(config["auth_token"], "<set>");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("hunter2"));
}

#[test]
fn invalid_configuration_is_refused_with_its_name() {
    let out = cache_manager()
        .env("CACHE_MAX_KEY_BYTES", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("CACHE_MAX_KEY_BYTES must be at least 1"));
    let out = cache_manager()
        .args(["--read-path", "sideways"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn version_is_printed() {
    let out = cache_manager().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("cache-manager "));
}
