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
    let err = effective(&[], &[("CACHE_EVICTION", "lru")]).unwrap_err();
    assert!(
        err.contains(r#"unknown eviction policy "lru": expected "adaptive" or "clock""#),
        "{err}"
    );
    assert_eq!(
        effective(&["--eviction", "clock"], &[]).unwrap()["eviction"],
        "clock"
    );
    assert_eq!(effective(&[], &[]).unwrap()["eviction"], "adaptive");
}

#[test]
fn version_says_how_the_binary_was_built() {
    let out = cache_manager().arg("--version").output().unwrap();
    assert!(out.status.success());
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        version.starts_with(concat!(
            "cache-manager ",
            env!("CARGO_PKG_VERSION"),
            " (commit "
        )),
        "{version}"
    );
    assert!(
        version.contains(" build for ") && version.contains("rustc "),
        "{version}"
    );
}

/// `--print-config` with `args` and `env`: the effective configuration, or stderr.
fn effective(args: &[&str], env: &[(&str, &str)]) -> Result<serde_json::Value, String> {
    let out = cache_manager()
        .args(args)
        .arg("--print-config")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A config file holding `text`, named after `name`, removed when dropped.
fn config_file(name: &str, text: &str) -> tempfile::TempPath {
    let mut file = tempfile::Builder::new()
        .prefix("cm-")
        .suffix(&format!("-{name}.toml"))
        .tempfile()
        .unwrap();
    std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
    file.into_temp_path()
}

#[test]
fn a_config_file_sits_under_env_and_flags_and_over_defaults() {
    let file = config_file(
        "precedence",
        "default_ttl = 10\nl1_max_entries = 700\nmax_ttl = 5000\nmetrics_enabled = false\n\
         redis_cluster_nodes = [\"10.0.0.1:6379\", \"10.0.0.2:6379\"]\n",
    );
    let file = file.to_str().unwrap();
    let config = effective(
        &["--config", file, "--max-ttl", "6000"],
        &[("CACHE_DEFAULT_TTL", "20")],
    )
    .unwrap();
    assert_eq!(config["default_ttl"], 20, "env over file");
    assert_eq!(config["max_ttl"], 6000, "flag over file");
    assert_eq!(config["l1_max_entries"], 700, "file over default");
    assert_eq!(config["metrics_enabled"], false);
    assert_eq!(
        config["redis_cluster_nodes"],
        serde_json::json!(["10.0.0.1:6379", "10.0.0.2:6379"])
    );
    assert_eq!(
        config["listen"], "127.0.0.1:4000",
        "default where nothing is set"
    );
    let via_env = effective(&[], &[("CACHE_CONFIG", file)]).unwrap();
    assert_eq!(via_env["l1_max_entries"], 700);
}

#[test]
fn a_bad_config_file_is_refused_with_what_is_wrong() {
    let typo = config_file("typo", "default_tll = 10\n");
    let error = effective(&["--config", typo.to_str().unwrap()], &[]).unwrap_err();
    assert!(error.contains("unknown option \"default_tll\""), "{error}");
    let bad = config_file("bad-value", "max_key_bytes = \"many\"\n");
    let error = effective(&["--config", bad.to_str().unwrap()], &[]).unwrap_err();
    assert!(
        error.contains("bad-value.toml") && error.contains("many"),
        "{error}"
    );
    let broken = config_file("broken", "max_key_bytes = \n");
    let error = effective(&["--config", broken.to_str().unwrap()], &[]).unwrap_err();
    assert!(error.contains("not valid TOML"), "{error}");
    let error = effective(&["--config", "/nonexistent/cm.toml"], &[]).unwrap_err();
    assert!(error.contains("/nonexistent/cm.toml"), "{error}");
}

/// The example file parses, says exactly the defaults, and lists every option.
#[test]
fn the_example_config_file_is_complete_and_current() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../cache-manager.example.toml");
    let text = std::fs::read_to_string(example).unwrap();
    let defaults = effective(&[], &[]).unwrap();
    assert_eq!(effective(&["--config", example], &[]).unwrap(), defaults);
    for option in defaults.as_object().unwrap().keys() {
        assert!(
            text.contains(&format!("\n{option} = ")) || text.contains(&format!("\n# {option} = ")),
            "{option} is missing from cache-manager.example.toml"
        );
    }
    // The commented-out samples are valid too.
    let uncommented = text
        .replace("\n# cores = ", "\ncores = ")
        .replace("\n# ", "\n#");
    let samples = config_file("samples", &uncommented);
    let samples = effective(&["--config", samples.to_str().unwrap()], &[]);
    assert!(samples.is_ok(), "{samples:?}");
}
