//! The coordinator's Prometheus metrics, and the operator's reconcile
//! counter (served on /metrics). The names keep the `fulva_operator_`
//! prefix the dashboards and alert rules use.

use prometheus::{Encoder, GaugeVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

/// Every metric the rebalancer and the reconciler export.
pub struct OperatorMetrics {
    registry: Registry,
    /// Imbalance score (max / mean node load) by dimension (ops, memory).
    pub imbalance: GaugeVec,
    /// The score above which the policy calls the cluster imbalanced, by dimension.
    pub imbalance_trigger: GaugeVec,
    /// Smoothed client operations per second served by each node.
    pub node_ops: GaugeVec,
    /// Planner decisions by kind (move, split, proposal).
    pub decisions: IntCounterVec,
    /// Finished moves by outcome (finished, aborted, failed) and strategy.
    pub moves: IntCounterVec,
    /// Moves running now.
    pub moves_in_flight: IntGauge,
    /// Key and value bytes moved by finished moves.
    pub moved_bytes: IntCounter,
    /// Reconciles by result (ok, error).
    pub reconciles: IntCounterVec,
    /// Ranges declared lost (their objects gone), by cause (restarted, not-held, gone).
    pub ranges_lost: IntCounterVec,
    /// Connections to the control endpoint whose TLS handshake failed.
    pub tls_handshakes_refused: IntCounter,
}

impl OperatorMetrics {
    /// Fresh metrics in their own registry.
    pub fn new() -> OperatorMetrics {
        let registry = Registry::new();
        let imbalance = GaugeVec::new(
            Opts::new("fulva_operator_imbalance_score", "Max over mean node load (1 = even)"),
            &["dimension"],
        )
        .expect("valid metric");
        let imbalance_trigger = GaugeVec::new(
            Opts::new("fulva_operator_imbalance_trigger", "Imbalance score above which the policy acts"),
            &["dimension"],
        )
        .expect("valid metric");
        let node_ops = GaugeVec::new(
            Opts::new(
                "fulva_operator_node_ops_per_second",
                "Smoothed operations per second served by a node",
            ),
            &["node"],
        )
        .expect("valid metric");
        let decisions = IntCounterVec::new(
            Opts::new("fulva_operator_planner_decisions_total", "Planner decisions by kind"),
            &["decision"],
        )
        .expect("valid metric");
        let moves = IntCounterVec::new(
            Opts::new("fulva_operator_moves_total", "Moves that ended, by outcome and strategy"),
            &["outcome", "strategy"],
        )
        .expect("valid metric");
        let moves_in_flight =
            IntGauge::new("fulva_operator_moves_in_flight", "Moves running now").expect("valid metric");
        let moved_bytes = IntCounter::new(
            "fulva_operator_moved_bytes_total",
            "Key and value bytes moved by finished moves",
        )
        .expect("valid metric");
        let reconciles = IntCounterVec::new(
            Opts::new("fulva_operator_reconciles_total", "Reconciles of FulvaCluster resources by result"),
            &["result"],
        )
        .expect("valid metric");
        let ranges_lost = IntCounterVec::new(
            Opts::new(
                "fulva_ranges_lost_total",
                "Ranges declared lost (a node restarted empty or stayed gone), by cause",
            ),
            &["cause"],
        )
        .expect("valid metric");
        let tls_handshakes_refused = IntCounter::new(
            "fulva_operator_tls_handshakes_refused_total",
            "Connections to the control endpoint whose TLS handshake failed (no certificate, or one no cluster's authority signed)",
        )
        .expect("valid metric");
        for cause in ["restarted", "not-held", "gone"] {
            ranges_lost.with_label_values(&[cause]);
        }
        // Every label value exists from the start (at zero), so dashboards and
        // alerts see a series before the first event.
        for result in ["ok", "error"] {
            reconciles.with_label_values(&[result]);
        }
        for decision in ["move", "split", "proposal"] {
            decisions.with_label_values(&[decision]);
        }
        for outcome in ["finished", "aborted", "failed"] {
            for strategy in ["fulva", "rocksteady", "source-driven"] {
                moves.with_label_values(&[outcome, strategy]);
            }
        }
        for c in [
            Box::new(imbalance.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(imbalance_trigger.clone()),
            Box::new(node_ops.clone()),
            Box::new(decisions.clone()),
            Box::new(moves.clone()),
            Box::new(moves_in_flight.clone()),
            Box::new(moved_bytes.clone()),
            Box::new(reconciles.clone()),
            Box::new(ranges_lost.clone()),
            Box::new(tls_handshakes_refused.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        OperatorMetrics {
            registry,
            imbalance,
            imbalance_trigger,
            node_ops,
            decisions,
            moves,
            moves_in_flight,
            moved_bytes,
            reconciles,
            ranges_lost,
            tls_handshakes_refused,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// Serves `metrics` on `/metrics` of `listener` until `shutdown` (the local
/// mode's endpoint; the operator process adds health routes to its own).
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: std::sync::Arc<OperatorMetrics>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let app =
        axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = metrics.clone();
                async move {
                    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics.render())
                }
            }),
        );
    let _ = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await;
}

impl Default for OperatorMetrics {
    fn default() -> Self {
        OperatorMetrics::new()
    }
}
