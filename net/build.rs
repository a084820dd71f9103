//! Build information for `cache-manager --version`: the git commit (when built from a
//! checkout), the profile, the target and the compiler.

use std::path::Path;
use std::process::Command;

fn main() {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "rustc unknown".into());
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=CM_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=CM_RUSTC_VERSION={rustc_version}");
    println!("cargo:rustc-env=CM_PROFILE={}", var("PROFILE"));
    println!("cargo:rustc-env=CM_TARGET={}", var("TARGET"));
    println!("cargo:rerun-if-changed=build.rs");
    // Run again when the checkout moves to another commit: HEAD, the folder of the branch's
    // ref (a commit writes the ref there, even where it was only packed before) and
    // packed-refs. A path that does not exist is not named: cargo takes a missing file as
    // changed, so the service would be rebuilt on every build (a checkout whose refs were
    // never packed has no packed-refs).
    let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    if let Some(head_ref) = git(&["symbolic-ref", "-q", "HEAD"]) {
        if let Some(folder) = Path::new(&head_ref).parent() {
            watched.push(folder.display().to_string());
        }
    }
    for name in watched {
        // Relative to the package's folder, where cargo runs this script, or absolute.
        if let Some(path) = git(&["rev-parse", "--git-path", &name]) {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
}
