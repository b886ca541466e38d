//! Logging set-up shared by the binaries and the tests.

use tracing_subscriber::EnvFilter;

/// Logs to stderr with `RUST_LOG`'s filter, `default` when it is unset.
/// Calling it again (a second binary entry point) does nothing.
pub fn init(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// Logs for a test: `RUST_LOG`'s filter (nothing when unset) into the test
/// harness's captured output. Every test may call it; the first one wins.
pub fn init_for_tests() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_default())
        .with_test_writer()
        .try_init();
}
