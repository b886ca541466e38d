//! Wire types shared by every Fulva component.
//!
//! # Layout
//! - [`hash`]: the one key hash ([`key_hash`], xxh3-64) that places a key.
//! - [`range`]: [`HashRange`], an inclusive range of key hashes, with splitting.
//! - [`shard_map`]: [`ShardMap`], the epoch-stamped map of ranges to nodes.
//! - [`frame`]: the binary data-path frame format with a check-then-parse decoder.
//! - [`transport`]: the datagram [`transport::Transport`] trait, kernel UDP and a fault injector.
//! - [`transfer`]: the bulk transfer stream of a live move (raw records over TCP, checked whole).
//! - [`grpc`]: the generated tonic/prost types of the control plane (`proto/fulva.proto`).

pub mod fragment;
pub mod frame;
pub mod handover;
pub mod hash;
pub mod range;
pub mod shard_map;
pub mod transfer;
pub mod transport;

/// Generated control-plane API (package `fulva.v1`).
#[allow(clippy::all, missing_docs)]
pub mod grpc {
    tonic::include_proto!("fulva.v1");
}

/// The largest gRPC message between the control plane's parts (pull
/// batches carry objects of up to 8 MiB; gRPC's own default is 4 MB).
pub const MAX_CONTROL_MESSAGE: usize = 64 << 20;

pub use frame::{
    FrameError, MigrationProgress, Op, Outcome, Reply, Request, RequestBody, Status, PROTOCOL_VERSION,
};
pub use hash::key_hash;
pub use range::{HashRange, RangeError};
pub use shard_map::{Epoch, NodeId, NodeInfo, Shard, ShardMap, ShardMapError, ShardState, Strategy};
