//! The client: routing, retransmission, redirects and map refresh.

use crate::config::ClientConfig;
use crate::error::ClientError;
use crate::moves::KnownMove;
use crate::routing::{Route, Routes};
use crate::stats::ClientStats;
use crate::transport::{DataTransport, TransportChoice};
use bytes::Bytes;
use fulva_proto::fragment::{Accepted, Reassembler, ReassemblyLimits};
use fulva_proto::frame::{dual_read_flags, RequestHeader, MAX_MULTI_GET};
use fulva_proto::grpc::shard_map_service_client::ShardMapServiceClient;
use fulva_proto::grpc::{GetShardMapRequest, WatchShardMapRequest};
use fulva_proto::transport::{send_message, RecvBatch, Transport, UdpTransport};
use fulva_proto::{key_hash, Epoch, NodeId, Op, Reply, Request, RequestBody, ShardMap, Status};
use futures::future::{self, Either};
use parking_lot::Mutex;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::Channel;

/// A value read with its version (`version == 0` and `value == None`: absent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    /// Object version (0 if the key never existed; a tombstone's version if deleted).
    pub version: u64,
    /// Value, `None` if absent or deleted.
    pub value: Option<Bytes>,
}

/// Encoded size budget of one multi-get frame (keys), leaving room in a datagram.
const MULTI_GET_FRAME_BUDGET: usize = 16 * 1024;
const PENDING_SHARDS: usize = 16;
/// Most replies taken per receive call.
const RECEIVE_BATCH: usize = 32;

/// Sequence numbers of writes, and the ack floor sent with every request.
#[derive(Default)]
struct SeqTracker {
    next: u64,
    in_flight: BTreeSet<u64>,
}

impl SeqTracker {
    fn begin(&mut self) -> u64 {
        self.next += 1;
        self.in_flight.insert(self.next);
        self.next
    }

    fn end(&mut self, seq: u64) {
        self.in_flight.remove(&seq);
    }

    /// Every seq below this one has finished (replied to, or given up on).
    fn ack(&self) -> u64 {
        self.in_flight.first().copied().unwrap_or(self.next + 1)
    }
}

/// A request waiting for its reply. The retransmission task resends its
/// frame when `next_send` passes and fails it when `deadline` passes, so no
/// call needs a timer of its own.
struct Pending {
    tx: oneshot::Sender<Result<Reply, u32>>,
    frame: Bytes,
    addr: SocketAddr,
    transport: usize,
    next_send: Instant,
    timeout: Duration,
    deadline: Instant,
    attempts: u32,
    /// When it was first sent (the round trip of a request sent once).
    sent_at: Instant,
}

type PendingShard = Mutex<HashMap<u64, Pending>>;

struct Inner<T: Transport> {
    config: ClientConfig,
    client_id: u64,
    transports: Vec<Arc<T>>,
    pending: Box<[PendingShard]>,
    next_request_id: AtomicU64,
    seqs: Mutex<SeqTracker>,
    routes: Routes,
    /// Only with the `learned_keys_outlive_moves` trap: every key ever learned.
    outliving: Mutex<std::collections::HashSet<u64>>,
    control: ShardMapServiceClient<Channel>,
    refresh: tokio::sync::Mutex<()>,
    stats: ClientStats,
    /// The first resend's timeout, from measured round trips.
    rtt: crate::rtt::RttEstimator,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl<T: Transport> Drop for Inner<T> {
    fn drop(&mut self) {
        for task in self.tasks.get_mut().drain(..) {
            task.abort();
        }
    }
}

/// A Fulva client. Cheap to clone; clones share sockets and the cached map.
pub struct Client<T: Transport = DataTransport> {
    inner: Arc<Inner<T>>,
}

impl<T: Transport> Clone for Client<T> {
    fn clone(&self) -> Self {
        Client { inner: self.inner.clone() }
    }
}

impl Client<DataTransport> {
    /// Connects to the control endpoint, fetches the shard map and opens the
    /// data path `config.transport` names: `config.sockets` UDP sockets, or
    /// one DPDK transport.
    pub async fn connect(config: ClientConfig) -> Result<Client<DataTransport>, ClientError> {
        let transports = match &config.transport {
            TransportChoice::Kernel => (0..config.sockets.max(1))
                .map(|_| UdpTransport::bind(config.bind_addr, false).map(DataTransport::Udp))
                .collect::<Result<Vec<_>, _>>()?,
            #[cfg(feature = "dpdk")]
            TransportChoice::Dpdk(dpdk) => {
                let transport = fulva_dpdk::DpdkTransport::start(dpdk.clone())
                    .map_err(|e| ClientError::Io(std::io::Error::other(format!("dpdk: {e}"))))?;
                vec![DataTransport::Dpdk(Box::new(transport))]
            }
        };
        Client::with_transports(config, transports).await
    }
}

fn control_error(config: &ClientConfig, message: impl ToString) -> ClientError {
    ClientError::Control { endpoint: config.control_endpoint.clone(), message: message.to_string() }
}

impl<T: Transport> Client<T> {
    /// Like [`Client::connect`], over transports the caller made (fault
    /// injection, DPDK).
    pub async fn with_transports(config: ClientConfig, transports: Vec<T>) -> Result<Client<T>, ClientError> {
        if transports.is_empty() {
            return Err(ClientError::Io(std::io::Error::other("no transports given")));
        }
        let endpoint = Channel::from_shared(config.control_endpoint.clone())
            .map_err(|e| control_error(&config, e))?
            .connect_timeout(Duration::from_secs(5));
        let tls = match &config.tls {
            Some(crate::ClientTlsSetting::Files(files)) => {
                Some(fulva_tls::ClientTls::new(files.clone()).map_err(|e| control_error(&config, e))?)
            }
            Some(crate::ClientTlsSetting::Loaded(tls)) => Some(tls.clone()),
            None => None,
        };
        let channel = fulva_tls::connect_channel(endpoint, tls.as_ref(), fulva_tls::Role::Coordinator)
            .await
            .map_err(|e| control_error(&config, fulva_tls::error_chain(&e)))?;
        let mut control = ShardMapServiceClient::new(channel);
        let map = fetch_map(&mut control, &config).await?;
        let inner = Arc::new(Inner {
            client_id: rand::random::<u64>() | 1,
            transports: transports.into_iter().map(Arc::new).collect(),
            pending: (0..PENDING_SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            next_request_id: AtomicU64::new(1),
            seqs: Mutex::new(SeqTracker::default()),
            routes: Routes::with_learned_limit(map, config.learned_keys_per_move),
            outliving: Mutex::new(std::collections::HashSet::new()),
            control,
            refresh: tokio::sync::Mutex::new(()),
            stats: ClientStats::default(),
            rtt: crate::rtt::RttEstimator::new(config.initial_timeout, config.max_timeout),
            tasks: Mutex::new(Vec::new()),
            config,
        });
        let mut tasks: Vec<JoinHandle<()>> = inner
            .transports
            .iter()
            .map(|t| tokio::spawn(receive_loop(t.clone(), Arc::downgrade(&inner))))
            .collect();
        tasks.push(tokio::spawn(retransmit_loop(Arc::downgrade(&inner))));
        if inner.config.watch_map {
            tasks.push(tokio::spawn(watch_loop(
                inner.control.clone(),
                inner.config.cluster.clone(),
                Arc::downgrade(&inner),
            )));
        }
        *inner.tasks.lock() = tasks;
        Ok(Client { inner })
    }

    /// This client's id (used in at-most-once records).
    pub fn client_id(&self) -> u64 {
        self.inner.client_id
    }

    /// The cached shard map.
    pub fn map(&self) -> Arc<ShardMap> {
        self.inner.routes.map()
    }

    /// Counters of retransmissions, redirects and map refreshes.
    pub fn stats(&self) -> &ClientStats {
        &self.inner.stats
    }

    /// The node that the cached map says serves `key`.
    pub fn owner_of(&self, key: &[u8]) -> Option<NodeId> {
        self.inner.routes.map().owner_of(key_hash(key))
    }

    /// Fetches the map from the control endpoint unless the cached one is at least `min_epoch`.
    pub async fn refresh_map(&self, min_epoch: Epoch) -> Result<Arc<ShardMap>, ClientError> {
        let _one_at_a_time = self.inner.refresh.lock().await;
        let cached = self.map();
        if cached.epoch >= min_epoch {
            return Ok(cached);
        }
        let map = fetch_map(&mut self.inner.control.clone(), &self.inner.config).await?;
        self.inner.stats.map_refreshes.fetch_add(1, Ordering::Relaxed);
        Ok(self.inner.routes.install(map))
    }

    /// Reads `key`; `None` if it does not exist.
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>, ClientError> {
        Ok(self.get_versioned(key).await?.value)
    }

    /// Reads `key` with its version.
    pub async fn get_versioned(&self, key: impl AsRef<[u8]>) -> Result<Versioned, ClientError> {
        let key = key.as_ref();
        self.check_key(key)?;
        let hash = key_hash(key);
        // Only a read that has to ask again needs a deadline; most never do.
        let mut deadline = None;
        let mut rounds = 0u32;
        loop {
            rounds += 1;
            if rounds > 1 {
                let deadline = *deadline.get_or_insert_with(|| Instant::now() + self.inner.config.deadline);
                if Instant::now() >= deadline {
                    return Err(ClientError::Timeout { op: "get", attempts: rounds });
                }
            }
            if self.inner.config.traps.learned_keys_outlive_moves
                && self.inner.outliving.lock().contains(&hash)
            {
                // Trap: the paper's client trusts a learned key's owner for good.
                let reply = self.call(RequestBody::Get { key }, hash, 0, None, 0).await?;
                return versioned(reply.outcomes.into_iter().next());
            }
            let node = match self.inner.routes.route(hash) {
                Route::Dual(mv) => match self.dual_read(key, hash, mv).await? {
                    Some(read) => return Ok(read),
                    // What the client knew of the move is out of date: ask afresh.
                    None => {
                        self.inner.routes.forget_move(mv.progress.range);
                        continue;
                    }
                },
                Route::Learned(mv) => mv.destination,
                Route::Owner(node) => node,
                Route::Unrouted => return Err(ClientError::NoRoute(hash)),
            };
            let (reply, answered_by) =
                self.call_routed(RequestBody::Get { key }, hash, 0, Some(node), 0).await?;
            if self.answers_alone(&reply, answered_by, hash) {
                return versioned(reply.outcomes.into_iter().next());
            }
            // A move's destination that may not hold the key yet: read both ends.
        }
    }

    /// Whether one node's reply to a read of `hash` is the answer on its own:
    /// the node serves the key outside any move, its cursor covers the key,
    /// or it holds the key (and is then remembered as holding it). Otherwise
    /// the reply corrects what the client knew of the move, which the next
    /// round reads at both ends.
    fn answers_alone(&self, reply: &Reply, answered_by: Option<NodeId>, hash: u64) -> bool {
        let Some(progress) = reply.progress.filter(|p| p.range.contains(hash)) else { return true };
        if progress.covers(hash) {
            return true;
        }
        let held = reply.outcomes.first().is_some_and(|o| self.trusts_held(o));
        if let Some(destination) = answered_by {
            if held {
                self.inner.stats.held_reads.fetch_add(1, Ordering::Relaxed);
                self.learn_key(&progress, destination, hash);
                return true;
            }
            self.inner.routes.moves().correct(progress, destination);
        }
        self.inner.config.traps.destination_absent_is_final
    }

    /// Whether `outcome` is a held answer this client takes alone (learned
    /// keys are on: `learned_keys_per_move` > 0).
    fn trusts_held(&self, outcome: &fulva_proto::Outcome) -> bool {
        outcome.held && self.inner.config.learned_keys_per_move > 0
    }

    fn learn_key(&self, progress: &fulva_proto::MigrationProgress, destination: NodeId, hash: u64) {
        self.inner.routes.moves().learn_key(progress, destination, hash);
        if self.inner.config.traps.learned_keys_outlive_moves {
            self.inner.outliving.lock().insert(hash);
        }
    }

    /// Reads `key` from a move's destination and source at once. When the
    /// destination holds the key (or its cursor covers it), its answer is
    /// final and the source's is not waited for; otherwise the higher version
    /// wins (a tie goes to the destination; absent is version 0; a tombstone
    /// counts with its version). Returns `None` when either end shows the
    /// move is not what the client believed (moved on, finished, another
    /// move): the caller then asks afresh.
    async fn dual_read(
        &self,
        key: &[u8],
        hash: u64,
        mv: KnownMove,
    ) -> Result<Option<Versioned>, ClientError> {
        self.inner.stats.dual_reads.fetch_add(1, Ordering::Relaxed);
        let body = RequestBody::Get { key };
        let at_destination = std::pin::pin!(self.call_routed(body.clone(), hash, 0, Some(mv.destination), 0));
        let at_source =
            std::pin::pin!(self.call_once(body, hash, mv.progress.source, dual_read_flags(mv.destination)));
        // Both requests are out once the first poll returns; whichever answers first.
        let (at_destination, at_source) = match future::select(at_destination, at_source).await {
            Either::Left((reply, source)) => (reply, Either::Left(source)),
            Either::Right((reply, destination)) => (destination.await, Either::Right(future::ready(reply))),
        };
        let (reply, answered_by) = at_destination?;
        if answered_by != Some(mv.destination) {
            return Ok(None);
        }
        let progress = match reply.progress {
            // The destination serves the range alone: the move is over.
            None => return versioned(reply.outcomes.into_iter().next()).map(Some),
            Some(p) if p.range.contains(hash) && p.source == mv.progress.source => p,
            Some(_) => return Ok(None),
        };
        let outcome = reply.outcomes.into_iter().next();
        let held = outcome.as_ref().is_some_and(|o| self.trusts_held(o));
        let destination = versioned(outcome)?;
        if progress.covers(hash) || self.inner.config.traps.destination_absent_is_final {
            return Ok(Some(destination));
        }
        if held {
            self.inner.stats.held_reads.fetch_add(1, Ordering::Relaxed);
            self.learn_key(&progress, mv.destination, hash);
            return Ok(Some(destination));
        }
        let source = at_source.await?;
        let Some(outcome) = source.outcomes.into_iter().next() else { return Ok(None) };
        if !matches!(outcome.status, Status::Ok | Status::NotFound) {
            return Ok(None);
        }
        let source = versioned(Some(outcome))?;
        Ok(Some(if source.version > destination.version { source } else { destination }))
    }

    /// Writes `value` under `key`; returns the version given to the write.
    pub async fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<u64, ClientError> {
        let (key, value) = (key.as_ref(), value.as_ref());
        self.check_key(key)?;
        if value.len() > self.inner.config.max_value_bytes {
            return Err(ClientError::TooLarge(format!(
                "value of {} bytes; the client's limit is {} bytes (ClientConfig::max_value_bytes)",
                value.len(),
                self.inner.config.max_value_bytes
            )));
        }
        let outcome = self.write(RequestBody::Put { key, value }, key_hash(key)).await?;
        match outcome.status {
            Status::Ok => Ok(outcome.version),
            Status::TooLarge => Err(refused_as_too_large(&outcome, key.len(), value.len())),
            other => Err(status_error(other)),
        }
    }

    /// Deletes `key`; returns whether it existed.
    pub async fn delete(&self, key: impl AsRef<[u8]>) -> Result<bool, ClientError> {
        let key = key.as_ref();
        self.check_key(key)?;
        let outcome = self.write(RequestBody::Delete { key }, key_hash(key)).await?;
        match outcome.status {
            Status::Ok => Ok(true),
            Status::NotFound => Ok(false),
            other => Err(status_error(other)),
        }
    }

    /// Reads several keys, one frame per node (split when large); results follow `keys`.
    pub async fn multi_get<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<Vec<Option<Bytes>>, ClientError> {
        for key in keys {
            self.check_key(key.as_ref())?;
        }
        let map = self.map();
        let mut groups: HashMap<Option<NodeId>, Vec<usize>> = HashMap::new();
        for (i, key) in keys.iter().enumerate() {
            groups.entry(map.owner_of(key_hash(key.as_ref()))).or_default().push(i);
        }
        let mut batches: Vec<Vec<usize>> = Vec::new();
        for (_, indices) in groups {
            let mut batch = Vec::new();
            let mut size = 0;
            for i in indices {
                let len = 2 + keys[i].as_ref().len();
                if batch.len() == MAX_MULTI_GET || size + len > MULTI_GET_FRAME_BUDGET {
                    batches.push(std::mem::take(&mut batch));
                    size = 0;
                }
                batch.push(i);
                size += len;
            }
            batches.push(batch);
        }
        let calls = batches.into_iter().filter(|b| !b.is_empty()).map(|batch| async move {
            let batch_keys: Vec<&[u8]> = batch.iter().map(|&i| keys[i].as_ref()).collect();
            let hash = key_hash(batch_keys[0]);
            let reply = self.call(RequestBody::MultiGet { keys: batch_keys }, hash, 0, None, 0).await?;
            if reply.status == Status::TooLarge {
                // The values do not fit one reply datagram: one read each.
                let mut results = Vec::with_capacity(batch.len());
                for &i in &batch {
                    results.push((i, self.get(keys[i].as_ref()).await?));
                }
                return Ok(results);
            }
            if reply.outcomes.len() != batch.len() {
                return Err(ClientError::Rejected(Status::Malformed));
            }
            let mut results = Vec::with_capacity(batch.len());
            for (&i, outcome) in batch.iter().zip(reply.outcomes) {
                let moving = self.inner.routes.move_for(key_hash(keys[i].as_ref())).is_some()
                    || reply.progress.is_some_and(|p| !p.done);
                let value = match outcome.status {
                    // Served elsewhere since the map was read, or moving: ask for it alone.
                    Status::Redirect => self.get(keys[i].as_ref()).await?,
                    _ if moving => self.get(keys[i].as_ref()).await?,
                    _ => versioned(Some(outcome))?.value,
                };
                results.push((i, value));
            }
            Ok::<_, ClientError>(results)
        });
        let mut out = vec![None; keys.len()];
        for results in futures::future::try_join_all(calls).await? {
            for (i, value) in results {
                out[i] = value;
            }
        }
        Ok(out)
    }

    fn check_key(&self, key: &[u8]) -> Result<(), ClientError> {
        if key.len() > self.inner.config.max_key_bytes || key.len() > usize::from(u16::MAX) {
            return Err(ClientError::TooLarge(format!(
                "key of {} bytes; the client's limit is {} bytes (ClientConfig::max_key_bytes)",
                key.len(),
                self.inner.config.max_key_bytes.min(usize::from(u16::MAX))
            )));
        }
        Ok(())
    }

    async fn write(&self, body: RequestBody<'_>, hash: u64) -> Result<fulva_proto::Outcome, ClientError> {
        let seq = self.inner.seqs.lock().begin();
        let result = self.call(body, hash, seq, None, 0).await;
        self.inner.seqs.lock().end(seq);
        let reply = result?;
        reply.outcomes.into_iter().next().ok_or_else(|| status_error(reply.status))
    }

    /// Sends one request until it gets a final reply: retransmits the same
    /// frame (same request id and seq) on timeout, follows redirects, and
    /// refreshes the map when a node reports a newer epoch.
    async fn call(
        &self,
        body: RequestBody<'_>,
        hash: u64,
        seq: u64,
        target: Option<NodeId>,
        flags: u32,
    ) -> Result<Reply, ClientError> {
        self.call_routed(body, hash, seq, target, flags).await.map(|(reply, _)| reply)
    }

    /// Like `call`, also naming the node that gave the final reply.
    async fn call_routed(
        &self,
        body: RequestBody<'_>,
        hash: u64,
        seq: u64,
        target: Option<NodeId>,
        flags: u32,
    ) -> Result<(Reply, Option<NodeId>), ClientError> {
        let inner = &self.inner;
        let op = body.op();
        let deadline = Instant::now() + inner.config.deadline;
        let mut redirect: Option<NodeId> = target;
        let mut exchanges = 0u32;
        loop {
            exchanges += 1;
            let map = self.inner.routes.map();
            let node = redirect.take().filter(|n| map.node(*n).is_some()).or_else(|| map.owner_of(hash));
            let Some(addr) = node.and_then(|n| map.node(n)).map(|n| n.data_addr) else {
                return Err(ClientError::NoRoute(hash));
            };
            let (request_id, frame) = inner.frame(body.clone(), seq, flags, map.epoch);
            let reply = self.exchange(request_id, frame, addr, deadline, op).await?;
            if let (Some(progress), Some(node)) = (reply.progress, node) {
                inner.routes.learn(progress, node);
            }
            match reply.status {
                Status::Redirect => {
                    inner.stats.redirects.fetch_add(1, Ordering::Relaxed);
                    redirect = reply.outcomes.first().and_then(|o| o.redirect);
                    let target_known = redirect.is_some_and(|n| map.node(n).is_some());
                    if reply.epoch > map.epoch || !target_known {
                        let refreshed = self.refresh_map(reply.epoch.max(map.epoch + 1)).await?;
                        if refreshed.epoch == map.epoch && !target_known {
                            // The control endpoint has not caught up with the node yet.
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                }
                Status::Retry => tokio::time::sleep(Duration::from_millis(1)).await,
                _ => return Ok((reply, node)),
            }
            if Instant::now() >= deadline {
                return Err(ClientError::Timeout { op: op.name(), attempts: exchanges });
            }
        }
    }

    /// Sends one request to `node` and returns whatever it answers
    /// (retransmitting on timeout, but following no redirect).
    async fn call_once(
        &self,
        body: RequestBody<'_>,
        hash: u64,
        node: NodeId,
        flags: u32,
    ) -> Result<Reply, ClientError> {
        let inner = &self.inner;
        let op = body.op();
        let map = inner.routes.map();
        let addr = map.node(node).map(|n| n.data_addr).ok_or(ClientError::NoRoute(hash))?;
        let (request_id, frame) = inner.frame(body, 0, flags, map.epoch);
        self.exchange(request_id, frame, addr, Instant::now() + inner.config.deadline, op).await
    }

    /// Sends `frame` and waits for its reply; the retransmission task resends
    /// it until the reply arrives or `deadline` passes.
    async fn exchange(
        &self,
        request_id: u64,
        frame: Bytes,
        addr: SocketAddr,
        deadline: Instant,
        op: Op,
    ) -> Result<Reply, ClientError> {
        let inner = &self.inner;
        let transport = (request_id % inner.transports.len() as u64) as usize;
        let (tx, rx) = oneshot::channel();
        // The round trips measured so far (or the fixed initial timeout); a
        // frame sent as fragments takes longer to arrive: 20 ns a byte more
        // (50 MB/s) before the first resend.
        let base =
            if inner.config.adaptive_timeout { inner.rtt.timeout() } else { inner.config.initial_timeout };
        let timeout = base + Duration::from_nanos(20 * frame.len() as u64);
        let now = Instant::now();
        let pending = Pending {
            tx,
            frame: frame.clone(),
            addr,
            transport,
            next_send: now + timeout,
            timeout,
            deadline,
            attempts: 1,
            sent_at: now,
        };
        // Registered before the first send, so even an instant reply finds it.
        inner.pending_shard(request_id).lock().insert(request_id, pending);
        // A failed send is a lost datagram: retransmission covers it.
        let _ = send_message(&*inner.transports[transport], &frame, addr).await;
        match rx.await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(attempts)) => Err(ClientError::Timeout { op: op.name(), attempts }),
            Err(_) => Err(ClientError::Io(std::io::Error::other("client shut down"))),
        }
    }
}

impl<T: Transport> Inner<T> {
    /// Encodes a request under a fresh request id.
    fn frame(&self, body: RequestBody<'_>, seq: u64, flags: u32, epoch: Epoch) -> (u64, Bytes) {
        let request_id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        // The ack floor matters only to writes (reads keep no records).
        let ack = if seq == 0 { 0 } else { self.seqs.lock().ack() };
        let header = RequestHeader {
            op: body.op() as u8,
            flags,
            request_id,
            client_id: self.client_id,
            seq,
            ack,
            epoch,
        };
        let request = Request { header, body };
        let mut frame = Vec::with_capacity(request.encoded_len());
        request.encode(&mut frame);
        (request_id, Bytes::from(frame))
    }

    fn pending_shard(&self, request_id: u64) -> &PendingShard {
        &self.pending[(request_id % PENDING_SHARDS as u64) as usize]
    }
}

async fn fetch_map(
    control: &mut ShardMapServiceClient<Channel>,
    config: &ClientConfig,
) -> Result<ShardMap, ClientError> {
    let msg = control
        .get_shard_map(GetShardMapRequest { cluster: config.cluster.clone() })
        .await
        .map_err(|s| control_error(config, format!("{}: {}", s.code(), s.message())))?
        .into_inner();
    ShardMap::try_from(msg).map_err(|e| control_error(config, e))
}

/// A node's `TooLarge`, with the limits it names.
fn refused_as_too_large(outcome: &fulva_proto::Outcome, key: usize, value: usize) -> ClientError {
    match outcome.limits() {
        Some((max_key, max_value)) => ClientError::TooLarge(format!(
            "refused by the node: key of {key} bytes (its limit: {max_key}), value of {value} bytes (its limit: {max_value}, --max-value-bytes)"
        )),
        None => ClientError::TooLarge("refused by the node".into()),
    }
}

fn status_error(status: Status) -> ClientError {
    match status {
        Status::TooLarge => ClientError::TooLarge("refused by the node".into()),
        other => ClientError::Rejected(other),
    }
}

fn versioned(outcome: Option<fulva_proto::Outcome>) -> Result<Versioned, ClientError> {
    let outcome = outcome.ok_or(ClientError::Rejected(Status::Malformed))?;
    match outcome.status {
        Status::Ok => {
            Ok(Versioned { version: outcome.version, value: Some(outcome.value.unwrap_or_default()) })
        }
        Status::NotFound => Ok(Versioned { version: outcome.version, value: None }),
        other => Err(status_error(other)),
    }
}

/// Delivers replies arriving on one transport to the calls waiting for them.
async fn receive_loop<T: Transport>(transport: Arc<T>, inner: Weak<Inner<T>>) {
    let mut batch = RecvBatch::new(RECEIVE_BATCH, fulva_proto::frame::MAX_DATAGRAM + 1);
    // Replies larger than a datagram come as fragments: any value a node
    // may hold (8 MiB) is read, whatever this client's own limit on writes.
    let limits = ReassemblyLimits::for_messages(fulva_proto::fragment::MAX_MESSAGE_LIMIT);
    let mut reassembler = Reassembler::new(limits);
    loop {
        if let Err(err) = transport.recv_batch(&mut batch).await {
            tracing::debug!(error = %err, "client receive failed");
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        let Some(inner) = inner.upgrade() else { return };
        for i in 0..batch.len() {
            let (datagram, from) = batch.get(i);
            let frame = match reassembler.accept(from, datagram) {
                Accepted::Whole(frame) => Bytes::copy_from_slice(frame),
                Accepted::Complete(message) => Bytes::from(message),
                Accepted::Pending => continue,
                Accepted::Refused => {
                    inner.stats.bad_replies.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            match Reply::decode(&frame) {
                Ok(reply) => {
                    let waiter = inner.pending_shard(reply.request_id).lock().remove(&reply.request_id);
                    match waiter {
                        Some(pending) => {
                            if pending.attempts == 1 {
                                inner.rtt.sample(pending.sent_at.elapsed());
                            }
                            let _ = pending.tx.send(Ok(reply));
                        }
                        None => {
                            inner.stats.late_replies.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Err(_) => {
                    inner.stats.bad_replies.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Resends requests whose reply is overdue (same bytes: same request id and
/// seq) with exponential backoff, and fails those past their deadline.
async fn retransmit_loop<T: Transport>(inner: Weak<Inner<T>>) {
    let Some(tick) = inner
        .upgrade()
        .map(|i| (i.config.initial_timeout / 4).clamp(Duration::from_millis(1), Duration::from_millis(10)))
    else {
        return;
    };
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut resend: Vec<(usize, Bytes, SocketAddr)> = Vec::new();
    loop {
        interval.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let now = Instant::now();
        for shard in inner.pending.iter() {
            let mut shard = shard.lock();
            // A call that stopped waiting (a dual read answered by the
            // destination alone) needs no resends and no timeout.
            let expired: Vec<Pending> = shard
                .extract_if(|_, p| now >= p.deadline || p.tx.is_closed())
                .map(|(_, p)| p)
                .filter(|p| !p.tx.is_closed())
                .collect();
            for p in shard.values_mut().filter(|p| now >= p.next_send) {
                p.attempts += 1;
                p.timeout = (p.timeout * 2).min(inner.config.max_timeout);
                p.next_send = now + p.timeout;
                resend.push((p.transport, p.frame.clone(), p.addr));
            }
            drop(shard);
            for p in expired {
                inner.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                let _ = p.tx.send(Err(p.attempts));
            }
        }
        for (transport, frame, addr) in resend.drain(..) {
            inner.stats.retransmits.fetch_add(1, Ordering::Relaxed);
            let _ = send_message(&*inner.transports[transport], &frame, addr).await;
        }
    }
}

/// Follows the control endpoint's map changes; reconnects after errors.
async fn watch_loop<T: Transport>(
    mut control: ShardMapServiceClient<Channel>,
    cluster: String,
    inner: Weak<Inner<T>>,
) {
    loop {
        let Some(after_epoch) = inner.upgrade().map(|i| i.routes.epoch()) else {
            return;
        };
        if let Ok(response) =
            control.watch_shard_map(WatchShardMapRequest { after_epoch, cluster: cluster.clone() }).await
        {
            let mut stream = response.into_inner();
            while let Ok(Some(msg)) = stream.message().await {
                let Some(inner) = inner.upgrade() else { return };
                if let Ok(map) = ShardMap::try_from(msg) {
                    inner.routes.install(map);
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::SeqTracker;

    #[test]
    fn ack_is_the_oldest_unfinished_seq() {
        let mut t = SeqTracker::default();
        let (a, b, c) = (t.begin(), t.begin(), t.begin());
        assert_eq!(t.ack(), a);
        t.end(b);
        assert_eq!(t.ack(), a);
        t.end(a);
        assert_eq!(t.ack(), c);
        t.end(c);
        assert_eq!(t.ack(), c + 1);
    }
}
