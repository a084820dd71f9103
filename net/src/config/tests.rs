use super::*;

#[test]
fn defaults_are_the_original_services() {
    let c = Config::try_parse_from(["cache-manager"]).unwrap();
    assert_eq!(c.l1_max_entries, 10_000);
    assert_eq!(c.default_ttl, 3600);
    assert_eq!(c.cleanup_interval, 60);
    assert!(c.metrics_enabled);
    assert_eq!(c.metrics_interval, 10);
    assert_eq!(c.listen.to_string(), "127.0.0.1:4000");
    assert_eq!(c.max_key_bytes, 250);
    assert_eq!(c.max_value_bytes, 1 << 20);
    assert_eq!(c.read_path, ReadPath::Direct);
    c.validate().unwrap();
}

#[test]
fn flags_override_and_bad_values_are_named() {
    let c =
        Config::try_parse_from(["cache-manager", "--cores", "1", "--l1-max-entries", "0"]).unwrap();
    let err = c.validate().unwrap_err().to_string();
    assert!(
        err.contains("CACHE_L1_MAX_ENTRIES must be at least 1, got 0"),
        "{err}"
    );
    // Past what the engine's shards hold: refused, not taken as less.
    let most = engine::MAX_SHARD_ENTRIES;
    let c = Config::try_parse_from([
        "cache-manager",
        "--cores",
        "1",
        "--l1-max-entries",
        &(most + 1).to_string(),
    ])
    .unwrap();
    let err = c.validate().unwrap_err().to_string();
    assert!(
        err.contains(&format!(
            "CACHE_L1_MAX_ENTRIES must be at most {most} entries"
        )),
        "{err}"
    );
    let c = Config::try_parse_from(["cache-manager", "--metrics-enabled", "false"]).unwrap();
    assert!(!c.metrics_enabled);
    assert!(Config::try_parse_from(["cache-manager", "--read-path", "sideways"]).is_err());
}

#[test]
fn durations_that_would_overflow_are_refused_with_their_limit() {
    for (flag, value, message) in [
        (
            "--negative-ttl",
            "18446744073709551",
            "CACHE_NEGATIVE_TTL must be at most 315360000 seconds",
        ),
        (
            "--stale-ttl",
            "315360001",
            "CACHE_STALE_TTL must be at most 315360000 seconds",
        ),
        (
            "--redis-timeout-ms",
            "86400001",
            "REDIS_TIMEOUT_MS must be at most 86400000 milliseconds",
        ),
        (
            "--cleanup-interval",
            "86401",
            "CACHE_CLEANUP_INTERVAL must be at most 86400 seconds",
        ),
        (
            "--idle-spin-us",
            "10001",
            "CACHE_IDLE_SPIN_US must be at most 10000 microseconds",
        ),
    ] {
        let c = Config::try_parse_from(["cache-manager", "--cores", "1", flag, value]).unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains(message), "{flag}: {err}");
    }
    let c = Config::try_parse_from(["cache-manager", "--cores", "1", "--stale-ttl", "315360000"])
        .unwrap();
    c.validate().unwrap();
    assert_eq!(c.stale_window(), Duration::from_secs(315_360_000));
}

#[test]
fn the_token_is_never_printed() {
    let c = Config::try_parse_from(["cache-manager", "--auth-token", "s3cret"]).unwrap();
    let printed = serde_json::to_string(&c).unwrap();
    assert!(!printed.contains("s3cret"));
    assert!(printed.contains("<set>"));
    let c = Config::try_parse_from([
        "cache-manager",
        "--redis-url",
        "redis://app:pw@10.0.0.1:6379/2",
    ])
    .unwrap();
    let printed = serde_json::to_string(&c).unwrap();
    assert!(
        printed.contains("redis://app:<redacted>@10.0.0.1:6379/2"),
        "{printed}"
    );
    assert!(!printed.contains(":pw@"));
}

#[test]
fn snapshot_options_are_checked_at_start() {
    let check = |args: &[&str]| {
        let mut all = vec!["cache-manager", "--cores", "1"];
        all.extend_from_slice(args);
        Config::try_parse_from(all)
            .unwrap()
            .validate()
            .map_err(|e| e.to_string())
    };
    let err = check(&["--snapshot-interval", "60"]).unwrap_err();
    assert!(err.contains("needs a CACHE_SNAPSHOT_PATH"), "{err}");
    let err = check(&["--snapshot-path", "/nonexistent-dir/cache.snap"]).unwrap_err();
    assert!(err.contains("directory does not exist"), "{err}");
    let dir = std::env::temp_dir();
    let err = check(&["--snapshot-path", dir.to_str().unwrap()]).unwrap_err();
    assert!(err.contains("names a directory"), "{err}");
    let file = dir.join("cache.snap");
    check(&[
        "--snapshot-path",
        file.to_str().unwrap(),
        "--snapshot-interval",
        "60",
    ])
    .unwrap();
    let err = check(&[
        "--snapshot-path",
        file.to_str().unwrap(),
        "--snapshot-interval",
        "86401",
    ])
    .unwrap_err();
    assert!(err.contains("at most 86400 seconds"), "{err}");
}
