//! The FulvaRebalance controller: proposal, approval, stop, refresh,
//! throttle, and status with progress and ETA.
//!
//! Reconcile, in order:
//! 1. A spec that fails validation, or names no existing FulvaCluster:
//!    NotReady with the reason, a Warning Event, nothing runs.
//! 2. A rebalance that ended (Ready, Stopped, NotReady) stays as it is.
//! 3. While its job runs: `fulva.io/stop` stops it (moves in flight finish,
//!    no new one starts); the spec's bandwidth settings are applied to the
//!    running moves; status shows moves done/total, progress and ETA.
//! 4. With no job: the proposal is computed when there is none, when the
//!    spec changed, or on `fulva.io/refresh` (the annotation is removed once
//!    done). With `fulva.io/approve` (or `autoApprove`) the job starts. A
//!    rebalance found Rebalancing with no job (the operator restarted) resumes:
//!    moves already done are skipped.

use super::runtime::{ClusterKey, JobStatus};
use super::{condition, Context, Error};
use crate::crd::FulvaCluster;
use crate::rebalance_crd::{
    annotated, FulvaRebalance, FulvaRebalanceStatus, Proposal, RebalancePhase, APPROVE_ANNOTATION,
    REFRESH_ANNOTATION, STOP_ANNOTATION,
};
use fulva_coordinator::rebalance_job::JobPhase;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How often status is refreshed while moves run.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(2);

async fn publish(ctx: &Context, fr: &FulvaRebalance, warning: bool, reason: &str, note: String) {
    let event = Event {
        type_: if warning { EventType::Warning } else { EventType::Normal },
        reason: reason.to_string(),
        note: Some(note),
        action: "Rebalance".to_string(),
        secondary: None,
    };
    if let Err(err) = ctx.recorder.publish(&event, &fr.object_ref(&())).await {
        tracing::warn!(error = %err, reason, "could not publish an event");
    }
}

async fn patch_status(
    api: &Api<FulvaRebalance>,
    name: &str,
    status: &FulvaRebalanceStatus,
) -> Result<(), Error> {
    let patch = serde_json::json!({
        "apiVersion": "fulva.io/v1alpha1",
        "kind": "FulvaRebalance",
        "status": status,
    });
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

/// The five conditions for `phase`, with `message` on the one that holds.
fn conditions(
    phase: RebalancePhase,
    has_proposal: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) -> Vec<Condition> {
    let proposal = condition(
        "ProposalReady",
        has_proposal,
        if has_proposal { "Computed" } else { "NotComputed" },
        if has_proposal { "the proposal is in status.proposal" } else { "no proposal yet" },
        generation,
    );
    // Each phase condition holds in its phase, with the reason and message given.
    let phases = [
        ("Rebalancing", RebalancePhase::Rebalancing, "NotRunning", "no move running"),
        ("Stopped", RebalancePhase::Stopped, "NotStopped", "not stopped"),
        ("Ready", RebalancePhase::Ready, "NotDone", "not every move is done"),
        ("NotReady", RebalancePhase::NotReady, "NoProblem", "nothing is wrong"),
    ];
    std::iter::once(proposal)
        .chain(phases.into_iter().map(|(type_, p, idle_reason, idle_message)| {
            let holds = phase == p;
            condition(
                type_,
                holds,
                if holds { reason } else { idle_reason },
                if holds { message } else { idle_message },
                generation,
            )
        }))
        .collect()
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

fn rfc3339(t: SystemTime) -> Option<String> {
    k8s_openapi::jiff::Timestamp::try_from(t).ok().map(|t| t.to_string())
}

/// Status fields from a job's report.
fn progress(status: &mut FulvaRebalanceStatus, job: &JobStatus) {
    let r = &job.report;
    status.moves_done = r.done;
    status.moves_failed = r.failed;
    status.moves_total = r.total;
    status.moves_summary = format!("{}/{}", r.done, r.total);
    status.bytes_moved = r.bytes_moved;
    let moved = r.bytes_moved + job.in_flight_bytes;
    status.progress_percent = if r.bytes_total > 0 {
        (moved as f64 * 100.0 / r.bytes_total as f64).min(100.0)
    } else if r.total > 0 {
        f64::from(r.done + r.failed) * 100.0 / f64::from(r.total)
    } else {
        100.0
    };
    let elapsed = r.started.elapsed().map(|d| d.as_secs_f64()).unwrap_or(0.0);
    status.eta_seconds = if r.phase != JobPhase::Running {
        0.0
    } else if moved > 0 && elapsed > 0.0 {
        r.bytes_total.saturating_sub(moved) as f64 / (moved as f64 / elapsed)
    } else {
        job.current.iter().map(|m| m.eta_seconds).fold(0.0, f64::max)
    };
    status.rate_mb_per_sec = r.rate_bytes_per_sec as f64 / 1e6;
    status.current = job.current.clone();
    status.started_at = status.started_at.clone().or_else(|| rfc3339(r.started));
    status.finished_at = r.finished.and_then(rfc3339);
}

/// Reconciles one FulvaRebalance (see the module documentation).
#[tracing::instrument(skip_all, fields(rebalance = %fr.name_any()))]
pub async fn reconcile(fr: Arc<FulvaRebalance>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = fr.namespace().ok_or_else(|| Error::NoNamespace(fr.name_any()))?;
    let name = fr.name_any();
    let api: Api<FulvaRebalance> = Api::namespaced(ctx.client.clone(), &namespace);
    let generation = fr.metadata.generation;
    let previous = fr.status.clone().unwrap_or_default();
    let key = ClusterKey { namespace: namespace.clone(), name: fr.spec.cluster.clone() };
    let mut status = FulvaRebalanceStatus { observed_generation: generation, ..previous.clone() };

    let refused = match fr.spec.validate() {
        Err(err) => Some(("InvalidSpec", err.to_string())),
        Ok(()) => {
            let clusters: Api<FulvaCluster> = Api::namespaced(ctx.client.clone(), &namespace);
            match crate::k8s::get_if_exists(&clusters, &fr.spec.cluster).await? {
                None => Some(("ClusterNotFound", format!("no FulvaCluster {key}"))),
                Some(_) => None,
            }
        }
    };
    if let Some((reason, message)) = refused {
        if previous.phase != RebalancePhase::NotReady || status_message(&previous, "NotReady") != message {
            publish(&ctx, &fr, true, reason, message.clone()).await;
        }
        status.phase = RebalancePhase::NotReady;
        status.conditions = conditions(status.phase, status.proposal.is_some(), reason, &message, generation);
        super::carry_transitions(&previous.conditions, &mut status.conditions);
        patch_status(&api, &name, &status).await?;
        return Ok(if reason == "ClusterNotFound" {
            Action::requeue(Duration::from_secs(30))
        } else {
            Action::await_change()
        });
    }
    if previous.phase.is_final() {
        return Ok(Action::await_change());
    }

    let stop = annotated(&fr, STOP_ANNOTATION);
    let approved = fr.spec.auto_approve || annotated(&fr, APPROVE_ANNOTATION);
    let refresh = annotated(&fr, REFRESH_ANNOTATION);

    let mut job = ctx.runtimes.rebalance_status(&key, &name).await;
    if job.is_none() && previous.phase == RebalancePhase::Rebalancing && !stop {
        // The operator restarted mid-rebalance: resume (done moves are skipped).
        if let Some(proposal) = &previous.proposal {
            ctx.runtimes.start_rebalance(&key, &name, &fr.spec, proposal).await.map_err(Error::Runtime)?;
            publish(&ctx, &fr, false, "RebalanceResumed", "resumed after an operator restart".into()).await;
            job = ctx.runtimes.rebalance_status(&key, &name).await;
        }
    }

    let (reason, message) = match job {
        Some(job) => {
            if stop && job.report.phase == JobPhase::Running {
                ctx.runtimes.stop_rebalance(&key, &name).await;
                publish(
                    &ctx,
                    &fr,
                    false,
                    "RebalanceStopping",
                    "no new move starts; moves in flight finish".into(),
                )
                .await;
            }
            if job.report.phase == JobPhase::Running {
                ctx.runtimes.set_rebalance_rate(&key, &name, &fr.spec).await;
            }
            progress(&mut status, &job);
            let r = &job.report;
            let (phase, reason, message) = match r.phase {
                JobPhase::Running if stop => (
                    RebalancePhase::Rebalancing,
                    "Stopping",
                    format!("stopping: {} moves in flight", r.in_flight.len()),
                ),
                JobPhase::Running => (
                    RebalancePhase::Rebalancing,
                    "Moving",
                    format!("{} of {} moves done, {} in flight", r.done, r.total, r.in_flight.len()),
                ),
                JobPhase::Stopped => (
                    RebalancePhase::Stopped,
                    "StoppedOnRequest",
                    format!("stopped after {} of {} moves", r.done, r.total),
                ),
                JobPhase::Done if r.failed == 0 => {
                    (RebalancePhase::Ready, "Done", format!("all {} moves done", r.total))
                }
                JobPhase::Done => (
                    RebalancePhase::NotReady,
                    "MovesFailed",
                    format!(
                        "{} of {} moves failed and were rolled back: {}",
                        r.failed,
                        r.total,
                        r.errors.last().cloned().unwrap_or_default()
                    ),
                ),
            };
            if phase != previous.phase && phase.is_final() {
                publish(&ctx, &fr, phase == RebalancePhase::NotReady, reason, message.clone()).await;
            }
            status.phase = phase;
            (reason, message)
        }
        None if stop => {
            status.phase = RebalancePhase::Stopped;
            status.finished_at = Some(now());
            publish(&ctx, &fr, false, "StoppedOnRequest", "stopped before any move started".into()).await;
            ("StoppedOnRequest", "stopped before any move started".to_string())
        }
        None => {
            let stale = previous.observed_generation != generation;
            if status.proposal.is_none() || refresh || stale {
                match ctx.runtimes.propose(&key, &fr.spec).await {
                    Ok(proposal) => {
                        publish(&ctx, &fr, false, "ProposalReady", summary(&proposal)).await;
                        status.proposal = Some(proposal);
                    }
                    Err(err) => {
                        // No load sample yet, or a request the map cannot honour.
                        status.phase = RebalancePhase::Pending;
                        status.conditions =
                            conditions(status.phase, false, "ProposalFailed", &err.to_string(), generation);
                        super::carry_transitions(&previous.conditions, &mut status.conditions);
                        patch_status(&api, &name, &status).await?;
                        return Ok(Action::requeue(Duration::from_secs(5)));
                    }
                }
                if refresh {
                    let patch = serde_json::json!({"metadata": {"annotations": {REFRESH_ANNOTATION: null}}});
                    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
                }
            }
            let proposal: Proposal = status.proposal.clone().expect("computed above");
            status.moves_total = proposal.moves.len() as u32;
            status.moves_summary = format!("0/{}", status.moves_total);
            if proposal.moves.is_empty() {
                status.phase = RebalancePhase::Ready;
                status.finished_at = Some(now());
                ("NothingToMove", "the cluster is already as asked".to_string())
            } else if approved {
                ctx.runtimes
                    .start_rebalance(&key, &name, &fr.spec, &proposal)
                    .await
                    .map_err(Error::Runtime)?;
                publish(&ctx, &fr, false, "RebalanceStarted", summary(&proposal)).await;
                status.phase = RebalancePhase::Rebalancing;
                status.started_at = Some(now());
                ("Moving", format!("0 of {} moves done", proposal.moves.len()))
            } else {
                status.phase = RebalancePhase::ProposalReady;
                (
                    "AwaitingApproval",
                    format!("{}; annotate {APPROVE_ANNOTATION}=true to run it", summary(&proposal)),
                )
            }
        }
    };
    status.conditions = conditions(status.phase, status.proposal.is_some(), reason, &message, generation);
    super::carry_transitions(&previous.conditions, &mut status.conditions);
    patch_status(&api, &name, &status).await?;
    Ok(match status.phase {
        RebalancePhase::Rebalancing => Action::requeue(PROGRESS_INTERVAL),
        RebalancePhase::ProposalReady => Action::requeue(Duration::from_secs(60)),
        _ => Action::await_change(),
    })
}

fn status_message(status: &FulvaRebalanceStatus, type_: &str) -> String {
    status.conditions.iter().find(|c| c.type_ == type_).map(|c| c.message.clone()).unwrap_or_default()
}

fn summary(p: &Proposal) -> String {
    format!(
        "{} moves, {:.1} MB, {} imbalance {:.2} -> {:.2}, about {:.0} s",
        p.moves.len(),
        p.bytes_to_move as f64 / 1e6,
        p.dimension,
        p.imbalance_before,
        p.imbalance_after,
        p.estimated_seconds
    )
}

/// Retries a failed reconcile after a short pause.
pub fn error_policy(_fr: Arc<FulvaRebalance>, err: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %err, "rebalance reconcile failed; retrying");
    ctx.metrics.reconciles.with_label_values(&["error"]).inc();
    Action::requeue(Duration::from_secs(5))
}
