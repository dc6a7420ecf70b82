//! The allocator's own account of the gateway's memory, as two gauges: bytes the gateway's
//! data holds (`allocated`) and bytes the allocator keeps from the system for it
//! (`resident`). RSS alone cannot tell a leak from allocator slack after a connect storm;
//! the two together can, and memory per stream is `allocated` over streams.
//!
//! The binary's allocator is jemalloc (`main.rs`); in a test binary, with the system
//! allocator, jemalloc serves nothing and the gauges stay near zero.

use std::time::Duration;

use metrics::gauge;
use tikv_jemalloc_ctl::{epoch, stats};
use tokio_util::sync::CancellationToken;

use crate::metrics as m;

/// How often the gauges are refreshed (jemalloc sums its statistics only when asked to).
const EVERY: Duration = Duration::from_secs(2);

/// Refreshes the heap gauges until `shutdown`.
pub async fn sample(shutdown: CancellationToken) {
    let (Ok(refresh), Ok(allocated), Ok(resident)) = (
        epoch::mib(),
        stats::allocated::mib(),
        stats::resident::mib(),
    ) else {
        tracing::warn!("jemalloc statistics unavailable: no heap gauges");
        return;
    };
    let mut ticks = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if refresh.advance().is_err() {
            continue;
        }
        if let (Ok(allocated), Ok(resident)) = (allocated.read(), resident.read()) {
            gauge!(m::HEAP_ALLOCATED).set(allocated as f64);
            gauge!(m::HEAP_RESIDENT).set(resident as f64);
        }
    }
}
