//! The metrics task: `/metrics`, `/healthz` and `/readyz` on `metrics.listen`.

use crate::metrics::{self, HttpState};
use anyhow::{Context, Result};
use std::future::Future;
use std::net::SocketAddr;

/// Binds `metrics.listen`; the future serves it and ends only with an error.
pub async fn start(
    listen: SocketAddr,
    state: HttpState,
) -> Result<impl Future<Output = Result<()>>> {
    let serve = metrics::serve(listen, state)
        .await
        .with_context(|| format!("listening on metrics.listen {listen}"))?;
    Ok(async move {
        serve
            .await
            .with_context(|| format!("serving metrics.listen {listen}"))?;
        anyhow::bail!("the metrics server on {listen} stopped")
    })
}
