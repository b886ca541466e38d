//! The operator process: leader election, the FulvaCluster controller, the
//! control endpoint clients fetch shard maps from, and /metrics, /healthz,
//! /readyz.

use crate::controller::certs::{self, OperatorTls};
use crate::controller::kube_runtimes::KubeRuntimes;
use crate::controller::{self, Context};
use crate::leader::LeaseLock;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use fulva_coordinator::metrics::OperatorMetrics;
use fulva_coordinator::service::{ClusterDirectory, ShardMapServiceImpl};
use fulva_proto::grpc::shard_map_service_server::ShardMapServiceServer;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Settings of the operator process (flags or environment variables).
#[derive(clap::Args, Clone, Debug)]
pub struct OperatorConfig {
    /// HTTP address of /metrics, /healthz and /readyz.
    #[arg(long, env = "FULVA_OPERATOR_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// gRPC address of the control endpoint (shard maps for clients).
    #[arg(long, env = "FULVA_OPERATOR_CONTROL_ADDR", default_value = "0.0.0.0:7000")]
    pub control_addr: SocketAddr,
    /// DNS name of the operator's Service; each cluster's `-control` Service aliases it.
    #[arg(
        long,
        env = "FULVA_OPERATOR_SERVICE_HOST",
        default_value = "fulva-operator.fulva-system.svc.cluster.local"
    )]
    pub service_host: String,
    /// Namespace of the leader Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, env = "FULVA_OPERATOR_LEASE", default_value = "fulva-operator")]
    pub lease_name: String,
    /// This replica's identity in the Lease.
    #[arg(long, env = "POD_NAME", default_value = "fulva-operator")]
    pub identity: String,
    /// Watch FulvaClusters and FulvaRebalances in this namespace only (a
    /// namespace-scoped install, with a Role there); empty: every namespace
    /// (a ClusterRole). In one namespace, Node cordons and maintenance taints
    /// are not followed: reading Nodes needs a ClusterRole.
    #[arg(long, env = "FULVA_WATCH_NAMESPACE", default_value = "")]
    pub watch_namespace: String,
    /// Run without TLS: kvnodes take control calls and pulls from anyone
    /// who reaches them (their NetworkPolicy is the only guard), and the
    /// control endpoint serves maps to anyone. By default the operator is
    /// each cluster's certificate authority (docs/security.md).
    #[arg(long, env = "FULVA_INSECURE", default_value_t = false)]
    pub insecure: bool,
    /// Secret in the operator's namespace holding the authority of the
    /// control endpoint's certificate (made on first start).
    #[arg(long, env = "FULVA_OPERATOR_CA_SECRET", default_value = "fulva-operator-ca")]
    pub ca_secret: String,
    /// How long a Lease holds without renewal, in seconds.
    #[arg(long, env = "FULVA_OPERATOR_LEASE_SECONDS", default_value_t = 15)]
    pub lease_seconds: u64,
}

/// Failures that stop the operator.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Binding a listener failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The control endpoint's certificate authority could not be set up.
    #[error("control endpoint TLS: {0}")]
    Tls(String),
    /// Another replica took the leader Lease.
    #[error("lost the leader lease")]
    LostLeadership,
}

struct Health {
    metrics: Arc<OperatorMetrics>,
    leading: AtomicBool,
}

fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(h): State<Arc<Health>>| async move {
                ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], h.metrics.render())
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(h): State<Arc<Health>>| async move {
                if h.leading.load(Ordering::Acquire) {
                    (StatusCode::OK, "leading\n").into_response()
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "standing by for the leader lease\n").into_response()
                }
            }),
        )
        .with_state(health)
}

/// The operator's TLS: the control endpoint's authority from its Secret,
/// and the endpoint's certificate, renewed (checked hourly) until `stop`.
async fn control_tls(
    client: &kube::Client,
    config: &OperatorConfig,
    stop: CancellationToken,
) -> Result<(Arc<OperatorTls>, Arc<fulva_tls::ServerTls>), AppError> {
    let tls_error = |e: controller::Error| AppError::Tls(e.to_string());
    let authority = certs::operator_authority(client, &config.lease_namespace, &config.ca_secret)
        .await
        .map_err(tls_error)?;
    let tls = Arc::new(OperatorTls::new(authority.cert_pem().to_string()));
    let (server, mut expires) = tls.control_server(&authority).map_err(tls_error)?;
    tokio::spawn({
        let (tls, server) = (tls.clone(), server.clone());
        async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(3600)) => {}
                }
                match tls.renew_control(&authority, &server, expires) {
                    Ok(next) => expires = next,
                    Err(err) => tracing::error!(error = %err, "control endpoint certificate not renewed"),
                }
            }
        }
    });
    Ok((tls, server))
}

/// Runs the operator until `shutdown`: serves health and metrics at once,
/// waits for the leader Lease, then runs the controller and the control
/// endpoint. Returns [`AppError::LostLeadership`] if the Lease is lost, so
/// the process restarts as a follower.
pub async fn run(
    config: OperatorConfig,
    client: kube::Client,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    let metrics = Arc::new(OperatorMetrics::new());
    let health = Arc::new(Health { metrics: metrics.clone(), leading: AtomicBool::new(false) });
    let http = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .map_err(|source| AppError::Listen { addr: config.http_addr, source })?;
    let http_shutdown = shutdown.clone();
    let app = router(health.clone());
    let http_task = tokio::spawn(async move {
        let _ = axum::serve(http, app).with_graceful_shutdown(http_shutdown.cancelled_owned()).await;
    });

    let lock = LeaseLock::new(
        kube::Api::namespaced(client.clone(), &config.lease_namespace),
        config.lease_name.clone(),
        config.identity.clone(),
        Duration::from_secs(config.lease_seconds.max(3)),
    );
    tracing::info!(identity = %config.identity, lease = %config.lease_name, "waiting for the leader lease");
    if !lock.acquire(Duration::from_secs(2), &shutdown).await {
        let _ = http_task.await;
        return Ok(());
    }
    tracing::info!(identity = %config.identity, "leading");
    health.leading.store(true, Ordering::Release);
    let lost = CancellationToken::new();
    let renew = tokio::spawn({
        let (shutdown, lost) = (shutdown.clone(), lost.clone());
        async move { lock.keep(Duration::from_secs(config.lease_seconds.max(3) / 3), shutdown, lost).await }
    });

    let stop = CancellationToken::new();
    let tls = match config.insecure {
        true => {
            tracing::warn!("--insecure: kvnodes and the control endpoint run without TLS");
            None
        }
        false => {
            let (tls, server) = control_tls(&client, &config, stop.clone()).await?;
            let refused = metrics.tls_handshakes_refused.clone();
            server.count_refusals_with(move || refused.inc());
            Some((tls, server))
        }
    };
    let directory = Arc::new(match &tls {
        Some((tls, _)) => ClusterDirectory::with_authorities(tls.authorities().clone()),
        None => ClusterDirectory::default(),
    });
    let control = tokio::net::TcpListener::bind(config.control_addr)
        .await
        .map_err(|source| AppError::Listen { addr: config.control_addr, source })?;
    let service =
        ShardMapServiceServer::new(ShardMapServiceImpl::for_directory(directory.clone(), stop.clone()));
    let control_task = tokio::spawn({
        let stop = stop.clone();
        let server_tls = tls.as_ref().map(|(_, server)| server.clone());
        async move {
            let incoming = fulva_tls::incoming(control, server_tls);
            if let Err(err) = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await
            {
                tracing::error!(error = %err, "control endpoint failed");
            }
        }
    });
    let runtimes = Arc::new(KubeRuntimes::new(
        client.clone(),
        metrics.clone(),
        directory,
        format!("http://127.0.0.1:{}", config.control_addr.port()),
    ));
    let mut ctx =
        Context::new(client, metrics, runtimes, config.service_host.clone(), config.control_addr.port())
            .watching((!config.watch_namespace.is_empty()).then(|| config.watch_namespace.clone()));
    if let Some((tls, _)) = tls {
        ctx = ctx.with_tls(tls);
    }
    let ctx = Arc::new(ctx);
    let controller_stop = stop.clone();
    let controller = tokio::spawn(controller::run(ctx, async move { controller_stop.cancelled().await }));

    tokio::select! {
        () = shutdown.cancelled() => {}
        () = lost.cancelled() => {}
    }
    stop.cancel();
    // Reconciles in progress finish; a controller whose watch cannot end
    // (its resource missing from the API server) does not hold the exit.
    if tokio::time::timeout(Duration::from_secs(10), controller).await.is_err() {
        tracing::warn!("the controllers did not stop within 10 s; exiting anyway");
    }
    let _ = control_task.await;
    renew.abort();
    shutdown.cancel();
    let _ = http_task.await;
    if lost.is_cancelled() {
        return Err(AppError::LostLeadership);
    }
    Ok(())
}
