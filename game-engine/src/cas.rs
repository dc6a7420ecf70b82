//! Compare-and-set on a KV entry that holds on a nats-server cluster too.
//!
//! The engine's fence is a compare-and-set: a room's record, a claim, a lobby listing is
//! written only over the revision its writer read. On a replicated stream nats-server 2.9
//! checks `Nats-Expected-Last-Subject-Sequence` on the stream's leader *before* it proposes
//! the write, against the writes it has applied, so writes over one revision that are in
//! flight together all pass and all land (nats-server#4320, fixed in 2.9.21; on 2.9.10,
//! Debian 12's, three writers over one revision from three nodes landed two or three times
//! for 264 revisions of 300: `bench/src/bin/cas-race.rs`). A paused owner's commit and a
//! takeover's claim landing together gave one event id two payloads in the chaos soak.
//!
//! Every write here also carries the message id `<key>:<revision>`: "the write over
//! `revision`". Duplicate message ids are detected as each copy of the stream applies its
//! log, in the log's order, so of the writes over one revision the first stored is the only
//! one stored; the others are answered as duplicates, and taken here as conflicts. (On one
//! server the check is atomic already; the id costs it a duplicate-window entry a write.)
//! Each copy remembers the ids in memory for the bucket's duplicate window (2 minutes), far
//! longer than writes stay in flight; a later write over a revision long superseded fails
//! the ordinary check. What this does not cover: a copy that loses its memory of the ids
//! mid-race (restarted, it rebuilds them from the messages it still stores, and a KV key
//! keeps only its last) could store a write the others refused.

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::kv::{self, Operation};
use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;

/// Why a write over a revision did not happen.
#[derive(Debug)]
pub enum CasError {
    /// The entry is not at that revision any more (or another write over it landed first).
    Conflict,
    /// JetStream did not answer or refused for another reason: the write may have landed.
    Failed(anyhow::Error),
}

impl std::fmt::Display for CasError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CasError::Conflict => f.write_str("written by another since it was read"),
            CasError::Failed(e) => write!(f, "{e:#}"),
        }
    }
}

/// Writes `value` under `key` if its last revision is `revision`; returns the new revision.
pub async fn update(
    js: &jetstream::Context,
    bucket: &kv::Store,
    key: &str,
    value: Bytes,
    revision: u64,
) -> Result<u64, CasError> {
    write_over(js, bucket, key, Some(value), revision).await
}

/// Deletes `key` (a delete marker) if its last revision is `revision`.
pub async fn delete(
    js: &jetstream::Context,
    bucket: &kv::Store,
    key: &str,
    revision: u64,
) -> Result<u64, CasError> {
    write_over(js, bucket, key, None, revision).await
}

/// Writes `value` under `key` if the key holds nothing (never written, deleted or purged).
pub async fn create(
    js: &jetstream::Context,
    bucket: &kv::Store,
    key: &str,
    value: Bytes,
) -> Result<u64, CasError> {
    match write_over(js, bucket, key, Some(value.clone()), 0).await {
        Err(CasError::Conflict) => {}
        done => return done,
    }
    let entry = bucket
        .entry(key)
        .await
        .map_err(|e| CasError::Failed(e.into()))?;
    match entry {
        Some(entry) if entry.operation != Operation::Put => {
            write_over(js, bucket, key, Some(value), entry.revision).await
        }
        _ => Err(CasError::Conflict),
    }
}

/// The one write: `value`, or a delete marker for `None`, over `revision` (0: over nothing).
async fn write_over(
    js: &jetstream::Context,
    bucket: &kv::Store,
    key: &str,
    value: Option<Bytes>,
    revision: u64,
) -> Result<u64, CasError> {
    // The engine's buckets are its own account's: no JetStream domain prefix to add.
    let subject = format!(
        "{}{key}",
        bucket.put_prefix.as_deref().unwrap_or(&bucket.prefix)
    );
    let mut publish = PublishMessage::build()
        .expected_last_subject_sequence(revision)
        .message_id(format!("{key}:{revision}"));
    publish = match value {
        Some(value) => publish.payload(value),
        None => publish.header("KV-Operation", "DEL"),
    };
    let ack = match js.send_publish(subject, publish).await {
        Ok(pending) => pending.await,
        Err(e) => Err(e),
    };
    match ack {
        Ok(ack) if ack.duplicate => Err(CasError::Conflict),
        Ok(ack) => Ok(ack.sequence),
        Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Err(CasError::Conflict),
        Err(e) => Err(CasError::Failed(e.into())),
    }
}
