//! What `--version` prints: the crate's version and how this binary was built (the
//! values come from `build.rs`).

pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("CM_GIT_COMMIT"),
    ", ",
    env!("CM_PROFILE"),
    " build for ",
    env!("CM_TARGET"),
    ", ",
    env!("CM_RUSTC_VERSION"),
    ")"
);
