//! The kernel task: installs the Loc-RIB in the kernel (learned routes via their next hops,
//! blackholes for this node's own blocks), reconciles at start and after any error, and
//! reports what it installed to status and metrics.

use crate::kernel::{Kernel, RouteKind};
use crate::metrics::{Health, Metrics};
use anyhow::{bail, Context, Result};
use ferrovia_bgp::driver::Handle;
use ferrovia_bgp::rib::{Change, Source};
use ferrovia_bgp::speaker::{Event, Speaker};
use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

/// Most route changes handed to the kernel in one go (bounds memory while the kernel,
/// the slowest stage, catches up with a full table).
const KERNEL_CHUNK: usize = 16_384;
/// Route changes installed between two [`release_free_memory`] calls while a table loads.
const TRIM_EVERY: usize = 8 * KERNEL_CHUNK;
/// How often routes with unresolved next hops are tried again.
const RETRY_UNRESOLVED: Duration = Duration::from_secs(2);

/// What the kernel task reports to status and metrics.
#[derive(Default)]
pub struct KernelStatus {
    pub enabled: bool,
    pub installed: usize,
    pub unresolved: Vec<(IpNet, Vec<IpAddr>)>,
}

pub type SharedKernelStatus = Arc<Mutex<KernelStatus>>;

/// The kernel route a Loc-RIB selection asks for: learned routes via their next hops,
/// our own blocks as blackholes.
fn kernel_route(best: Option<&ferrovia_bgp::rib::Best>) -> Option<RouteKind> {
    let b = best?;
    Some(match b.best.source {
        Source::Local => RouteKind::Blackhole,
        Source::Peer(_) => RouteKind::ecmp(b.next_hops.iter().copied()),
    })
}

/// The whole Loc-RIB as kernel routes, read [`KERNEL_CHUNK`] prefixes per query so the
/// speaker task serves its sessions between pages instead of copying the table in one go.
/// Changes made between pages also wait in `take_changes`, applied after the reconcile.
async fn desired_routes(handle: &Handle) -> Result<HashMap<IpNet, RouteKind>> {
    let mut desired = HashMap::new();
    let mut after: Option<IpNet> = None;
    loop {
        let page = handle
            .query(move |s: &mut Speaker| s.loc_rib().page(after.as_ref(), KERNEL_CHUNK))
            .await
            .context("reading the Loc-RIB from the BGP speaker")?;
        let Some((last, _)) = page.last() else {
            return Ok(desired);
        };
        after = Some(*last);
        desired.extend(
            page.into_iter()
                .filter_map(|(p, b)| kernel_route(Some(&b)).map(|k| (p, k))),
        );
    }
}

/// Installs Loc-RIB changes in the kernel; reconciles at start and after any error (kernel
/// errors are retried for ever, readiness false meanwhile). Ends with an error only when the
/// speaker is gone.
///
/// After a graceful restart (`keep_until` set) the first reconcile keeps our routes the
/// Loc-RIB does not have yet: the peers are about to send them again. Once every peer is
/// known (`health.peers_pending()` false) and End-of-RIB went both ways with each, or at
/// `keep_until`, a full reconcile sweeps those that did not
/// come back and the speaker stops advertising the Restart State bit.
pub async fn kernel_task(
    mut kernel: Kernel,
    mut events: mpsc::UnboundedReceiver<Event>,
    handle: Handle,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    status: SharedKernelStatus,
    mut keep_until: Option<Instant>,
) -> Result<()> {
    let mut in_sync = false;
    let mut retry = tokio::time::interval(RETRY_UNRESOLVED);
    loop {
        if !in_sync {
            let desired = desired_routes(&handle).await?;
            let t = Instant::now();
            let reconciled = if keep_until.is_some() {
                kernel.reconcile_keeping(&desired).await
            } else {
                kernel.reconcile(&desired).await
            };
            match reconciled {
                Ok(stats) => {
                    info!(
                        found = stats.found,
                        added = stats.changes.added,
                        replaced = stats.changes.replaced,
                        deleted = stats.changes.deleted,
                        unresolved = stats.changes.unresolved,
                        "kernel routes reconciled"
                    );
                    in_sync = true;
                }
                Err(e) => error!(error = %e, "kernel reconciliation failed; retrying"),
            }
            publish(&kernel, t.elapsed(), &metrics, &status);
            health.set_kernel_in_sync(in_sync);
            if !in_sync {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        tokio::select! {
            ev = events.recv() => {
                if ev.is_none() {
                    bail!("the BGP speaker's route change events stopped (the speaker ended)");
                }
                // Signals only: drain them, then pull the coalesced changes in chunks. The
                // next chunk is taken while the kernel installs the current one, so the
                // netlink pipeline does not wait for the speaker between chunks (it may be
                // busy with a batch of UPDATEs) while a full table arrives.
                while events.try_recv().is_ok() {}
                let mut chunk = take_chunk(&handle).await?;
                let mut untrimmed = 0;
                while !chunk.is_empty() {
                    let t = Instant::now();
                    untrimmed += chunk.len();
                    if untrimmed >= TRIM_EVERY {
                        untrimmed = 0;
                        release_free_memory();
                    }
                    let (applied, next) = tokio::join!(kernel.apply(chunk), take_chunk(&handle));
                    if let Err(e) = applied {
                        warn!(error = %e, "installing routes failed; reconciling the table");
                        in_sync = false;
                        health.set_kernel_in_sync(false);
                    }
                    publish(&kernel, t.elapsed(), &metrics, &status);
                    if !in_sync {
                        // The reconcile reads the whole Loc-RIB: the chunk taken meanwhile
                        // is part of it.
                        break;
                    }
                    chunk = next?;
                }
                if untrimmed >= KERNEL_CHUNK {
                    release_free_memory();
                }
            }
            _ = retry.tick() => {
                if let Some(until) = keep_until {
                    // Until the mesh is read from the datastore the speaker may have no
                    // peers at all, and "End-of-RIB with every peer" would hold at once:
                    // sweeping then would drop the routes to every other node until the
                    // sessions are back (issue 11).
                    let synchronised = !health.peers_pending()
                        && handle
                            .query(|s: &mut Speaker| s.synchronised())
                            .await
                            .context("asking the BGP speaker whether End-of-RIB was exchanged")?;
                    if synchronised || Instant::now() >= until {
                        info!(
                            synchronised,
                            "graceful restart over: sweeping kept kernel routes that no peer sent again"
                        );
                        keep_until = None;
                        in_sync = false;
                        handle
                            .query(|s: &mut Speaker| s.set_restarting(false))
                            .await
                            .context("ending the restart state in the BGP speaker")?;
                        continue;
                    }
                }
                if !kernel.unresolved().is_empty() || !kernel.conflicts().is_empty() {
                    let t = Instant::now();
                    if let Err(e) = kernel.retry_pending().await {
                        warn!(error = %e, "retrying unresolved routes failed; reconciling the table");
                        in_sync = false;
                    }
                    publish(&kernel, t.elapsed(), &metrics, &status);
                }
            }
        }
    }
}

/// Gives the allocator's free memory back to the system. While a full table loads, the
/// speaker's thread frees what it held for the kernel (the changes waiting, the chunks taken)
/// while this task's bookkeeping grows, and glibc keeps each thread's freed memory in that
/// thread's arena, resident, where the other thread cannot reuse it: without this the
/// agent's peak RSS was about 10 MiB above its live data at the end of a 1M-route load.
/// `malloc_trim(0)` returns every arena's free pages (a walk of the free lists, not of the
/// heap), so the peak follows what is live.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and only walks glibc's own free lists, under
    // each arena's lock.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Up to [`KERNEL_CHUNK`] Loc-RIB changes from the speaker, as kernel routes.
async fn take_chunk(handle: &Handle) -> Result<Vec<(IpNet, Option<RouteKind>)>> {
    let chunk = handle
        .query(|s: &mut Speaker| s.take_changes(KERNEL_CHUNK))
        .await
        .context("taking route changes from the BGP speaker")?;
    Ok(chunk
        .into_iter()
        .map(|Change { prefix, best }| (prefix, kernel_route(best.as_ref())))
        .collect())
}

fn publish(kernel: &Kernel, took: Duration, metrics: &Metrics, status: &SharedKernelStatus) {
    let unresolved = kernel.unresolved();
    metrics.kernel_synced(took, kernel.installed(), unresolved.len());
    let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
    s.enabled = true;
    s.installed = kernel.installed();
    s.unresolved = unresolved;
}
