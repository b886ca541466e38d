//! On-demand pulls of single keys: a rocksteady destination's reads, and a
//! fulva destination's fetch on miss.

use crate::handler::Handler;
use crate::ownership::IncomingMove;
use fulva_proto::grpc::node_control_client::NodeControlClient;
use fulva_proto::grpc::PullKeysRequest;
use fulva_proto::transfer::TransferRecord;
use fulva_proto::Strategy;
use std::sync::Arc;

/// Priority pulls: fetches the keys reads asked for, a batch at a time.
/// Rocksteady marks them fetched once applied (present at the source or
/// not); fulva pulls the keys its dual reads missed, so they are held here.
pub async fn serve_fetches(handler: Arc<Handler>, mv: Arc<IncomingMove>) {
    let Some(mut requests) = mv.fetch_rx.lock().take() else { return };
    let mut client: Option<NodeControlClient<tonic::transport::Channel>> = None;
    loop {
        let first = tokio::select! {
            () = mv.cancel.cancelled() => return,
            key = requests.recv() => match key { Some(k) => k, None => return },
        };
        let mut keys = vec![first];
        while keys.len() < 64 {
            match requests.try_recv() {
                Ok(k) => keys.push(k),
                Err(_) => break,
            }
        }
        if client.is_none() {
            client = super::pull::control_client(&handler, &mv, 0).await.ok();
        }
        let Some(c) = client.as_mut() else {
            // Unreachable source: let the reads ask again.
            mv.requested.lock().clear();
            continue;
        };
        let request =
            PullKeysRequest { range: Some(mv.range.into()), keys: keys.iter().map(|k| k.to_vec()).collect() };
        match c.pull_keys(request).await {
            Ok(reply) => {
                let mut records: Vec<TransferRecord> = reply
                    .into_inner()
                    .objects
                    .into_iter()
                    .map(|o| TransferRecord {
                        hash: o.hash,
                        version: o.version,
                        key: o.key,
                        value: (!o.tombstone).then_some(o.value),
                    })
                    .collect();
                // In hash order, so keys of one stripe share a lock.
                records.sort_unstable_by_key(|r| r.hash);
                handler.apply_migrated_records(&mv, &records);
                // Fulva needs no record: a fetched key present at the
                // source is held here now, an absent one stays absent.
                let remember = mv.strategy == Strategy::Rocksteady;
                let mut fetched = mv.fetched.lock();
                let mut requested = mv.requested.lock();
                for key in keys {
                    requested.remove(&key);
                    if remember {
                        fetched.insert(key);
                    }
                }
            }
            Err(status) => {
                tracing::debug!(error = %status.message(), "priority pull failed");
                client = None;
                let mut requested = mv.requested.lock();
                for key in &keys {
                    requested.remove(key);
                }
            }
        }
    }
}
