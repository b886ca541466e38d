//! Fulva's DPDK data path: a safe layer over the system DPDK and a
//! [`Transport`](fulva_proto::transport::Transport) that carries data-path
//! frames in real Ethernet/IPv4/UDP packets.
//!
//! # Layout
//! - [`eal`]: starting the Environment Abstraction Layer (once per process).
//! - [`mempool`], [`mbuf`], [`port`]: each owns its DPDK resource and frees it in Drop.
//! - [`packet`]: Ethernet/IPv4/UDP framing (pure Rust).
//! - [`transport`]: [`DpdkTransport`], the data-path transport (poller thread, adaptive polling).
//!
//! Unsafe code lives only in the resource modules, each block with a
//! `// SAFETY:` comment.

pub mod eal;
pub mod mbuf;
pub mod mempool;
pub mod packet;
pub mod port;
pub mod transport;

pub use eal::{Eal, EalError};
pub use mbuf::Mbuf;
pub use mempool::Mempool;
pub use port::Port;
pub use transport::{DpdkConfig, DpdkTransport, FrameHandler};
