//! `fulva bench`: whole-system benchmarks with readable (and JSON) output.

pub mod kv;
pub mod migration;
pub mod plot;
pub mod redis;
pub mod redis_cluster;
