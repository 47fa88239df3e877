//! The metrics task: `/metrics`, `/healthz` and `/readyz` on `metrics.listen`.

use crate::metrics::{self, HttpState};
use anyhow::{Context, Result};
use std::net::SocketAddr;
use tokio::task::JoinHandle;

/// Binds `metrics.listen` and serves it.
pub async fn start(listen: SocketAddr, state: HttpState) -> Result<JoinHandle<()>> {
    metrics::serve(listen, state)
        .await
        .with_context(|| format!("listening on metrics.listen {listen}"))
}
