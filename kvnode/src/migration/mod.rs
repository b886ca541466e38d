//! Both sides of a live move, for all three strategies.
//!
//! With `fulva` (the default) the destination takes writes for the moving range from the moment it is
//! activated, with versions above the source's highest, and pulls the range's
//! objects from the source in hash order. Each pulled object is applied with
//! "higher version wins" under its key's lock, so an old copy never replaces a
//! newer write or tombstone. The progress cursor (every hash below it is
//! applied) is published only after a batch is applied, and rides on every
//! reply for the range so clients read from the destination alone where the
//! cursor covers the key and from both nodes elsewhere. With `rocksteady`
//! the destination serves every request at once and pulls a missing key from
//! the source on demand (a priority pull) before answering; with
//! `source-driven` the source serves while the destination copies, then a
//! final pass under the source's lock ships what changed.
//!
//! # Layout
//! The state of a move coming in ([`IncomingMove`](crate::ownership::IncomingMove), its phase, why a pull
//! failed) is `crate::ownership::incoming`, below the data path; this folder
//! is the engine that drives it and depends on the data path, never the
//! other way round.
//! - `pull`: the destination's pull, over the TCP transfer stream or gRPC,
//!   resumed from the cursor after a cut; applying a batch, then its cursor.
//! - `source`: the source's side: the batches of one pull (hot keys first,
//!   then hash order) and the TCP transfer listener.
//! - `fetch`: on-demand pulls of single keys (rocksteady; fulva's fetch on miss).
//! - `rate`: the pacer that holds a move to its rate limit.
//! - `cpu`: what a move costs in CPU, metered around each poll of its tasks.

mod cpu;
mod fetch;
mod pull;
mod rate;
mod source;

pub use fetch::serve_fetches;
pub use pull::{apply_batch, cursor_of, pull, pull_from};
pub use source::{migrated_object, range_batches, serve_transfers, unauthorized};
