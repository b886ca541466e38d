//! The `fulva` command's library: everything the binary runs, so tests can
//! drive it. The local cluster, the load generator and the checker it runs
//! live in `fulva-local`, below this crate.
//!
//! # Layout
//! - [`command`]: the command line (every subcommand and flag).
//! - [`flag_tables`]: the flag tables of README.md and docs/, generated from [`command`].
//! - [`up`]: `fulva up` (a local cluster under load that rebalances live).
//! - [`kv`]: `fulva kv get|put|del|mget`.
//! - [`datapath`]: `--transport` (kernel UDP or DPDK) for commands that open a client.
//! - [`admin`]: `fulva map`, `fulva migrate`, `fulva abort`, `fulva throttle`, `fulva split`, `fulva drain`.
//! - [`out!`]: printing to stdout that ends quietly on a closed pipe.
//! - [`bench`]: `fulva bench kv`, `fulva bench migration`.
//! - [`check`]: `fulva check`, the linearizability checker over a history file.
//! - [`stress`]: `fulva soak`, randomized live moves under packet loss.
//! - [`coordinator`]: `fulva coordinator`, the coordinator as its own process.
//! - `fulva node` runs `fulva_kvnode::run`.

/// Like `println!`, for what a command prints on stdout: when stdout is a
/// closed pipe (`fulva map | head -1`) the command ends quietly (exit 0)
/// instead of panicking; another write error ends it with exit code 2.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(err) = writeln!(std::io::stdout().lock(), $($arg)*) {
            $crate::stdout_failed(err)
        }
    }};
}

/// Ends the process after a failed write to stdout (see [`out!`]).
pub fn stdout_failed(err: std::io::Error) -> ! {
    if err.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("fulva: cannot write to stdout: {err}");
    std::process::exit(2);
}

pub mod admin;
pub mod bench;
pub mod check;
pub mod command;
pub mod coordinator;
pub mod datapath;
pub mod flag_tables;
pub mod kv;
pub mod stress;
pub mod tls;
pub mod up;
