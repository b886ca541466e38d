//! The coordinator's side of a node's `NodeControl` service. Every call goes
//! through [`NodeClient`], which decodes a failed call's `tonic::Status` once
//! into a [`NodeError`]: which node, which call, and what kind of failure, so
//! callers match on [`NodeErrorKind`] instead of raw gRPC codes.

use fulva_proto::grpc::node_control_client::NodeControlClient;
use fulva_proto::grpc::{
    AssignRangeRequest, AssignRangeResponse, BeginCopyRequest, BeginCopyResponse, DropRangeRequest,
    DropRangeResponse, FinishMigrationRequest, FinishMigrationResponse, FreezeRangeRequest,
    FreezeRangeResponse, GetStatsRequest, MigrationStatusRequest, MigrationStatusResponse, NodeStats,
    PrepareMigrationRequest, PrepareMigrationResponse, PushBatchRequest, PushBatchResponse, RangeBatch,
    SetEpochRequest, SetEpochResponse, SetMigrationRateRequest, SetMigrationRateResponse, SplitRangeRequest,
    SplitRangeResponse, StartMigrationRequest, StartMigrationResponse, UnfreezeRangeRequest,
    UnfreezeRangeResponse,
};
use fulva_proto::grpc::{MigratedObject, TransferEndpointRequest};
use fulva_proto::transfer::{self, BatchKind, Hello, StreamCheck, TransferError};
use fulva_proto::{HashRange, NodeId};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

/// A call the coordinator makes to a node (named in errors and logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeCall {
    /// Opening the connection.
    Connect,
    /// `AssignRange`.
    AssignRange,
    /// `SetEpoch`.
    SetEpoch,
    /// `SplitRange`.
    SplitRange,
    /// `PrepareMigration`.
    PrepareMigration,
    /// `FreezeRange`.
    FreezeRange,
    /// `BeginCopy`.
    BeginCopy,
    /// `UnfreezeRange`.
    UnfreezeRange,
    /// `StartMigration`.
    StartMigration,
    /// `MigrationStatus`.
    MigrationStatus,
    /// `SetMigrationRate`.
    SetMigrationRate,
    /// `FinishMigration`.
    FinishMigration,
    /// `TransferEndpoint`, or the transfer stream it names.
    Transfer,
    /// `PushBatch`.
    PushBatch,
    /// `DropRange`.
    DropRange,
    /// `GetStats`.
    GetStats,
}

impl NodeCall {
    /// The call's name, as the `.proto` spells it.
    pub fn name(self) -> &'static str {
        match self {
            NodeCall::Connect => "connect",
            NodeCall::AssignRange => "AssignRange",
            NodeCall::SetEpoch => "SetEpoch",
            NodeCall::SplitRange => "SplitRange",
            NodeCall::PrepareMigration => "PrepareMigration",
            NodeCall::FreezeRange => "FreezeRange",
            NodeCall::BeginCopy => "BeginCopy",
            NodeCall::UnfreezeRange => "UnfreezeRange",
            NodeCall::StartMigration => "StartMigration",
            NodeCall::MigrationStatus => "MigrationStatus",
            NodeCall::SetMigrationRate => "SetMigrationRate",
            NodeCall::FinishMigration => "FinishMigration",
            NodeCall::Transfer => "transfer stream",
            NodeCall::PushBatch => "PushBatch",
            NodeCall::DropRange => "DropRange",
            NodeCall::GetStats => "GetStats",
        }
    }
}

impl fmt::Display for NodeCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What kind of failure a call to a node met.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeErrorKind {
    /// No answer: the connection failed, was cut, or the call timed out.
    Unreachable,
    /// The node does not hold the range (or move) the call names.
    NotFound,
    /// The node refused the call in its state: a newer epoch, a range in
    /// another role, an overlapping range.
    Refused,
    /// The node found the request malformed.
    Invalid,
    /// Anything else the node reported.
    Internal,
}

impl NodeErrorKind {
    /// Decodes the serving side's mapping (kvnode's `From<ControlError> for Status`).
    pub fn of(code: tonic::Code) -> NodeErrorKind {
        use tonic::Code;
        match code {
            // tonic reports a broken HTTP/2 connection as Unknown.
            Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded | Code::Unknown => {
                NodeErrorKind::Unreachable
            }
            Code::NotFound => NodeErrorKind::NotFound,
            Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => NodeErrorKind::Refused,
            Code::InvalidArgument | Code::OutOfRange => NodeErrorKind::Invalid,
            _ => NodeErrorKind::Internal,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            NodeErrorKind::Unreachable => "unreachable",
            NodeErrorKind::NotFound => "not found",
            NodeErrorKind::Refused => "refused",
            NodeErrorKind::Invalid => "invalid request",
            NodeErrorKind::Internal => "internal error",
        }
    }
}

impl fmt::Display for NodeErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// A failed call to a node.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("node {node} ({addr}), {call}: {kind}: {message}")]
pub struct NodeError {
    /// The node.
    pub node: NodeId,
    /// Its control address.
    pub addr: String,
    /// The call that failed.
    pub call: NodeCall,
    /// What kind of failure.
    pub kind: NodeErrorKind,
    /// The node's (or the transport's) words.
    pub message: String,
}

impl NodeError {
    /// Whether the node gave no answer (as opposed to refusing).
    pub fn is_unreachable(&self) -> bool {
        self.kind == NodeErrorKind::Unreachable
    }

    /// Whether the node said it does not hold what the call named.
    pub fn is_not_found(&self) -> bool {
        self.kind == NodeErrorKind::NotFound
    }

    /// Whether the node refused the call because it has seen a newer map
    /// epoch than the call carried (kvnode's `OwnershipError::StaleEpoch`).
    pub fn is_stale_epoch(&self) -> bool {
        self.kind == NodeErrorKind::Refused && self.message.contains("is older than the node's epoch")
    }
}

/// A connection to one node's control service.
#[derive(Clone, Debug)]
pub struct NodeClient {
    node: NodeId,
    addr: String,
    inner: NodeControlClient<Channel>,
    tls: Option<Arc<fulva_tls::ClientTls>>,
}

impl NodeClient {
    /// Connects to `node` at `addr` (host:port), bounding the connection and
    /// every call; with `tls`, shows the coordinator's certificate and
    /// accepts only a server certified as that node.
    pub async fn connect(
        node: NodeId,
        addr: String,
        connect_timeout: Duration,
        call_timeout: Duration,
        tls: Option<&Arc<fulva_tls::ClientTls>>,
    ) -> Result<NodeClient, NodeError> {
        let fail = |kind, message: String| NodeError {
            node,
            addr: addr.clone(),
            call: NodeCall::Connect,
            kind,
            message,
        };
        let channel = Channel::from_shared(format!("http://{addr}"))
            .map_err(|e| fail(NodeErrorKind::Invalid, e.to_string()))?
            .connect_timeout(connect_timeout)
            .timeout(call_timeout);
        let channel = fulva_tls::connect_channel(channel, tls, fulva_tls::Role::Node(node))
            .await
            .map_err(|e| fail(NodeErrorKind::Unreachable, fulva_tls::error_chain(&e)))?;
        let inner = NodeControlClient::new(channel)
            .max_decoding_message_size(fulva_proto::MAX_CONTROL_MESSAGE)
            .max_encoding_message_size(fulva_proto::MAX_CONTROL_MESSAGE);
        Ok(NodeClient { node, addr, inner, tls: tls.cloned() })
    }

    /// The node this client calls.
    pub fn node(&self) -> NodeId {
        self.node
    }

    fn error(&self, call: NodeCall, status: tonic::Status) -> NodeError {
        NodeError {
            node: self.node,
            addr: self.addr.clone(),
            call,
            kind: NodeErrorKind::of(status.code()),
            message: status.message().to_string(),
        }
    }
}

/// A pull of a range over a node's TCP transfer stream, read a batch at a
/// time (the coordinator relaying a move).
pub struct TransferPull {
    node: NodeId,
    addr: String,
    stream: fulva_tls::ClientStream,
    check: StreamCheck,
}

impl NodeClient {
    /// Opens a pull of `range`'s objects above `min_version` on the node's
    /// transfer stream (the coordinator relays a range between two nodes
    /// that cannot reach each other); read it with [`TransferPull::next_batch`].
    pub async fn open_transfer(
        &mut self,
        range: HashRange,
        min_version: u64,
    ) -> Result<TransferPull, NodeError> {
        let port = match self.inner.transfer_endpoint(TransferEndpointRequest {}).await {
            Ok(response) => response.into_inner().port,
            Err(status) => return Err(self.error(NodeCall::Transfer, status)),
        };
        let addr = transfer::transfer_addr(&self.addr, port).unwrap_or_else(|| self.addr.clone());
        let hello = Hello {
            destination: transfer::RELAY,
            source: self.node,
            range,
            from: range.first,
            min_version,
            hot_keys: 0,
            batch_bytes: 64 * 1024,
            window: 2,
        };
        let connect = fulva_tls::connect_stream(&addr, self.tls.as_ref(), fulva_tls::Role::Node(self.node));
        let stream = transfer::open(connect, &hello).await.map_err(|err| NodeError {
            node: self.node,
            addr: addr.clone(),
            call: NodeCall::Transfer,
            kind: transfer_kind(&err),
            message: err.to_string(),
        })?;
        Ok(TransferPull {
            node: self.node,
            addr,
            stream,
            check: StreamCheck::new(range, range.first, min_version),
        })
    }
}

fn transfer_kind(err: &TransferError) -> NodeErrorKind {
    match err {
        err if err.is_connection() => NodeErrorKind::Unreachable,
        TransferError::Refused(_) => NodeErrorKind::Refused,
        _ => NodeErrorKind::Invalid,
    }
}

impl TransferPull {
    /// The next batch, as a `PushBatch` carries it (`None`: the stream
    /// ended before its last batch); a credit for one more batch goes back
    /// to the node once it is read.
    pub async fn next_batch(&mut self) -> Result<Option<RangeBatch>, NodeError> {
        let failed = |err: TransferError| NodeError {
            node: self.node,
            addr: self.addr.clone(),
            call: NodeCall::Transfer,
            kind: transfer_kind(&err),
            message: err.to_string(),
        };
        let batch = match self.check.read_batch(&mut self.stream).await {
            Ok(batch) => batch,
            Err(TransferError::Truncated) => return Ok(None),
            Err(err) => return Err(failed(err)),
        };
        if batch.kind != BatchKind::Last {
            transfer::write_credit(&mut self.stream, 1).await.map_err(failed)?;
        }
        Ok(Some(RangeBatch {
            objects: batch
                .records
                .into_iter()
                .map(|r| MigratedObject {
                    key: r.key,
                    hash: r.hash,
                    version: r.version,
                    tombstone: r.value.is_none(),
                    value: r.value.unwrap_or_default(),
                })
                .collect(),
            next_cursor: batch.next_cursor,
            last: batch.kind == BatchKind::Last,
            hot: batch.kind == BatchKind::Hot,
        }))
    }
}

/// One method per unary call: the request in, the response's message or a
/// decoded [`NodeError`] out.
macro_rules! unary_calls {
    ($($method:ident($request:ty) -> $response:ty = $call:ident;)*) => {
        impl NodeClient {
            $(
                #[doc = concat!("Calls `", stringify!($call), "`.")]
                pub async fn $method(&mut self, request: $request) -> Result<$response, NodeError> {
                    match self.inner.$method(request).await {
                        Ok(response) => Ok(response.into_inner()),
                        Err(status) => Err(self.error(NodeCall::$call, status)),
                    }
                }
            )*
        }
    };
}

impl NodeClient {
    /// Calls `FreezeRange`: the frozen range's floor, sizes, completion
    /// records and ack floors, streamed in chunks and put back together.
    pub async fn freeze_range(
        &mut self,
        request: FreezeRangeRequest,
    ) -> Result<FreezeRangeResponse, NodeError> {
        let mut stream = match self.inner.freeze_range(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => return Err(self.error(NodeCall::FreezeRange, status)),
        };
        let mut parts = Vec::new();
        loop {
            match stream.message().await {
                Ok(Some(part)) => parts.push(part),
                Ok(None) => break,
                Err(status) => return Err(self.error(NodeCall::FreezeRange, status)),
            }
        }
        let empty = tonic::Status::internal("FreezeRange: the stream carried no message");
        fulva_proto::handover::join(parts).ok_or_else(|| self.error(NodeCall::FreezeRange, empty))
    }

    /// Calls `StartMigration`, the records and ack floors streamed in chunks.
    pub async fn start_migration(
        &mut self,
        request: StartMigrationRequest,
    ) -> Result<StartMigrationResponse, NodeError> {
        let messages = fulva_proto::handover::split(request);
        match self.inner.start_migration(tokio_stream::iter(messages)).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => Err(self.error(NodeCall::StartMigration, status)),
        }
    }
}

unary_calls! {
    assign_range(AssignRangeRequest) -> AssignRangeResponse = AssignRange;
    set_epoch(SetEpochRequest) -> SetEpochResponse = SetEpoch;
    split_range(SplitRangeRequest) -> SplitRangeResponse = SplitRange;
    prepare_migration(PrepareMigrationRequest) -> PrepareMigrationResponse = PrepareMigration;
    begin_copy(BeginCopyRequest) -> BeginCopyResponse = BeginCopy;
    unfreeze_range(UnfreezeRangeRequest) -> UnfreezeRangeResponse = UnfreezeRange;
    migration_status(MigrationStatusRequest) -> MigrationStatusResponse = MigrationStatus;
    set_migration_rate(SetMigrationRateRequest) -> SetMigrationRateResponse = SetMigrationRate;
    finish_migration(FinishMigrationRequest) -> FinishMigrationResponse = FinishMigration;
    push_batch(PushBatchRequest) -> PushBatchResponse = PushBatch;
    drop_range(DropRangeRequest) -> DropRangeResponse = DropRange;
    get_stats(GetStatsRequest) -> NodeStats = GetStats;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_for_a_stale_epoch_is_told_apart_by_the_nodes_own_words() {
        let refused = |message: String| NodeError {
            node: 2,
            addr: "127.0.0.1:7201".into(),
            call: NodeCall::FinishMigration,
            kind: NodeErrorKind::Refused,
            message,
        };
        let stale = fulva_kvnode::OwnershipError::StaleEpoch { given: 8, current: 10 };
        assert!(refused(stale.to_string()).is_stale_epoch());
        assert!(!refused("range is not coming in".into()).is_stale_epoch());
        let unreachable = NodeError { kind: NodeErrorKind::Unreachable, ..refused(stale.to_string()) };
        assert!(!unreachable.is_stale_epoch());
    }

    #[test]
    fn the_serving_sides_codes_decode_to_kinds() {
        use tonic::Code;
        let cases = [
            (Code::Unavailable, NodeErrorKind::Unreachable),
            (Code::DeadlineExceeded, NodeErrorKind::Unreachable),
            (Code::Unknown, NodeErrorKind::Unreachable),
            (Code::NotFound, NodeErrorKind::NotFound),
            (Code::FailedPrecondition, NodeErrorKind::Refused),
            (Code::AlreadyExists, NodeErrorKind::Refused),
            (Code::InvalidArgument, NodeErrorKind::Invalid),
            (Code::Internal, NodeErrorKind::Internal),
        ];
        for (code, kind) in cases {
            assert_eq!(NodeErrorKind::of(code), kind, "{code:?}");
        }
    }

    #[test]
    fn an_error_names_the_node_its_address_and_the_call() {
        let err = NodeError {
            node: 1,
            addr: "127.0.0.1:7201".into(),
            call: NodeCall::FreezeRange,
            kind: NodeErrorKind::Refused,
            message: "epoch 3 is older than the node's epoch 4".into(),
        };
        assert_eq!(
            err.to_string(),
            "node 1 (127.0.0.1:7201), FreezeRange: refused: epoch 3 is older than the node's epoch 4"
        );
    }
}
