//! The server's side of the verifiable audit log: appends with group commit (one durable
//! transaction for every event waiting at that moment), the Merkle tree in memory, and signed
//! checkpoints — after every `CHECKPOINT_RECORDS` records, or when asked, never two for one
//! size and never one that is not an extension of the last (checked before signing).

use std::sync::Mutex;

use auditlog::{AuditKey, Checkpoint, Record, Tree};

use crate::error::{ApiError, ApiResult};

/// A checkpoint is signed at least every this many records.
pub const CHECKPOINT_RECORDS: u64 = 1000;

/// ... and at least every this many seconds while the log grows.
pub const CHECKPOINT_SECONDS: u64 = 60;

/// Events waiting to be written (with their details as a value, for the leaf), and where to
/// send their sequence numbers.
type Waiting = Vec<(store::AuditEvent, serde_json::Value, tokio::sync::oneshot::Sender<Result<i64, String>>)>;

/// The audit log of a running server.
pub struct AuditLog {
    key: AuditKey,
    tree: Mutex<Tree>,
    latest: Mutex<Option<Checkpoint>>,
    queue: Mutex<Waiting>,
    /// Held by the one task writing a batch.
    writer: tokio::sync::Mutex<()>,
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

/// The leaf of an event: its canonical record. `details` is the event's `details_json` as a
/// value (callers have it already; records written before the log existed parse it).
pub fn leaf_of(seq: i64, e: &store::AuditEvent, details: serde_json::Value) -> Result<String, String> {
    let text = |k: &str| details.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let record = Record {
        seq: u64::try_from(seq).map_err(|e| e.to_string())?,
        time: e.time,
        kind: e.kind.clone(),
        actor: e.actor.clone(),
        outcome: e.outcome.clone(),
        vault: text("vault"),
        reason: text("reason"),
        details,
    };
    String::from_utf8(record.canonical().map_err(|e| e.to_string())?).map_err(|e| e.to_string())
}

impl AuditLog {
    /// Loads the log: gives leaves to events written before the log existed, rebuilds the tree,
    /// and checks it against the last signed checkpoint (a database that no longer matches what
    /// was signed is refused).
    pub async fn open(store: &store::Store, key: AuditKey) -> Result<AuditLog, String> {
        let mut tree = Tree::new();
        let mut after = 0i64;
        loop {
            let rows = store.audit_leaves(after, 10_000).await.map_err(|e| e.to_string())?;
            if rows.is_empty() {
                break;
            }
            for (seq, leaf) in rows {
                if seq != after + 1 {
                    return Err(format!("audit record {} is missing", after + 1));
                }
                let leaf = match leaf {
                    Some(l) => l,
                    None => {
                        let e = store.audit_events(seq - 1, 1).await.map_err(|e| e.to_string())?;
                        let e = e.first().ok_or("audit record vanished")?;
                        let details = serde_json::from_str(&e.event.details_json).map_err(|e| e.to_string())?;
                        let l = leaf_of(seq, &e.event, details)?;
                        store.set_audit_leaf(seq, &l).await.map_err(|e| e.to_string())?;
                        l
                    }
                };
                tree.push(leaf.as_bytes()).map_err(|e| e.to_string())?;
                after = seq;
            }
        }
        let checkpoints = store.audit_checkpoints().await.map_err(|e| e.to_string())?;
        let latest = match checkpoints.last() {
            Some((size, _, note, _)) => {
                let cp = Checkpoint::open(note, &key.vkey()).map_err(|e| e.to_string())?;
                let size = u64::try_from(*size).map_err(|e| e.to_string())?;
                if cp.size != size || tree.root(size).map_err(|e| e.to_string())? != cp.root {
                    return Err(format!(
                        "the audit records in the database no longer match the checkpoint signed at size {size}: \
                         refusing to start (restore the database, or investigate tampering)"
                    ));
                }
                Some(cp)
            }
            None => None,
        };
        Ok(AuditLog {
            key,
            tree: Mutex::new(tree),
            latest: Mutex::new(latest),
            queue: Mutex::new(Vec::new()),
            writer: tokio::sync::Mutex::new(()),
        })
    }

    /// Appends an event (whose `details_json` is `details`) durably; returns its sequence
    /// number. Concurrent appends share one transaction: whoever holds the writer lock writes
    /// everything queued.
    pub async fn append(
        &self,
        store: &store::Store,
        event: store::AuditEvent,
        details: serde_json::Value,
        now: i64,
    ) -> ApiResult<i64> {
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).push((event, details, tx));
        {
            let _writing = self.writer.lock().await;
            // Whoever held the lock before may have written this event already; then there is
            // nothing to do (writing the few events queued since would make batches of one).
            match rx.try_recv() {
                Ok(done) => return done.map_err(ApiError::Internal),
                Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                    return Err(ApiError::Internal("the audit writer dropped an event".into()))
                }
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {}
            }
            let batch: Waiting = std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()));
            if !batch.is_empty() {
                self.write_batch(store, batch, now).await;
            }
        }
        rx.await.map_err(internal)?.map_err(ApiError::Internal)
    }

    async fn write_batch(&self, store: &store::Store, batch: Waiting, now: i64) {
        let mut events = Vec::with_capacity(batch.len());
        let mut details = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for (e, d, r) in batch {
            events.push(e);
            details.push(d);
            replies.push(r);
        }
        let make = |i: usize, seq: i64| leaf_of(seq, &events[i], details[i].clone());
        let result = store.append_audit_batch(&events, &make).await;
        match result {
            Ok(written) => {
                let mut failed = None;
                let contiguous = {
                    let mut tree = self.tree.lock().unwrap_or_else(|p| p.into_inner());
                    let contiguous = written.first().is_some_and(|(s, _)| *s == tree.size() as i64 + 1);
                    if contiguous {
                        for (_, l) in &written {
                            if let Err(e) = tree.push(l.as_bytes()) {
                                failed = Some(e.to_string());
                            }
                        }
                    }
                    contiguous
                };
                // Another process (an admin tool on the server host) appended meanwhile: the
                // database's order is the log's order, so read everything new from it.
                if !contiguous {
                    if let Err(e) = self.catch_up(store).await {
                        failed = Some(e);
                    }
                }
                for ((seq, _), reply) in written.into_iter().zip(replies) {
                    let _ = reply.send(match &failed {
                        Some(e) => Err(e.clone()),
                        None => Ok(seq),
                    });
                }
                if let Err(e) = self.checkpoint_if_due(store, now).await {
                    tracing::error!(error = %e, "could not sign an audit checkpoint");
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.to_string()));
                }
            }
        }
    }

    async fn checkpoint_if_due(&self, store: &store::Store, now: i64) -> ApiResult<()> {
        let size = self.size();
        let last = self.latest.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map_or(0, |c| c.size);
        if size >= last + CHECKPOINT_RECORDS {
            self.sign(store, now).await?;
        }
        Ok(())
    }

    /// Adds records other processes appended to the database since this tree last grew.
    async fn catch_up(&self, store: &store::Store) -> Result<(), String> {
        loop {
            let after = self.size() as i64;
            let rows = store.audit_leaves(after, 10_000).await.map_err(|e| e.to_string())?;
            if rows.is_empty() {
                return Ok(());
            }
            let mut tree = self.tree.lock().unwrap_or_else(|p| p.into_inner());
            for (seq, leaf) in rows {
                let next = tree.size() as i64 + 1;
                if seq < next {
                    continue;
                }
                if seq > next {
                    return Err(format!("audit record {next} is missing"));
                }
                let leaf = leaf.ok_or_else(|| format!("audit record {seq} has no leaf"))?;
                tree.push(leaf.as_bytes()).map_err(|e| e.to_string())?;
            }
        }
    }

    /// Records in the log.
    pub fn size(&self) -> u64 {
        self.tree.lock().unwrap_or_else(|p| p.into_inner()).size()
    }

    /// Signs a checkpoint of the whole log now, if it grew since the last one; returns the
    /// latest checkpoint.
    pub async fn checkpoint(&self, store: &store::Store, now: i64) -> ApiResult<Option<Checkpoint>> {
        let _writing = self.writer.lock().await;
        self.catch_up(store).await.map_err(ApiError::Internal)?;
        let size = self.size();
        let last = self.latest().map_or(0, |c| c.size);
        if size > last {
            self.sign(store, now).await?;
        }
        Ok(self.latest())
    }

    /// Signs the current tree. Callers hold the writer lock or run inside a batch write.
    async fn sign(&self, store: &store::Store, now: i64) -> ApiResult<()> {
        let (size, root, consistent) = {
            let tree = self.tree.lock().unwrap_or_else(|p| p.into_inner());
            let size = tree.size();
            let root = tree.root(size).map_err(internal)?;
            // Never sign a tree that does not extend the last signed one.
            let consistent = match &*self.latest.lock().unwrap_or_else(|p| p.into_inner()) {
                Some(c) => tree.root(c.size).map_err(internal)? == c.root,
                None => true,
            };
            (size, root, consistent)
        };
        if !consistent {
            return Err(ApiError::Internal("the audit tree does not extend the last signed checkpoint".into()));
        }
        let cp = self.key.sign_checkpoint(size, &root).map_err(internal)?;
        store.insert_audit_checkpoint(size as i64, &hex::encode(root), &cp.note, now).await?;
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = Some(cp);
        Ok(())
    }

    /// The latest signed checkpoint.
    pub fn latest(&self) -> Option<Checkpoint> {
        self.latest.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The verifier key line.
    pub fn vkey(&self) -> String {
        self.key.vkey()
    }

    /// Proof that record `seq` is in the tree of `size` records.
    pub fn inclusion_proof(&self, seq: u64, size: u64) -> ApiResult<(auditlog::Hash, Vec<auditlog::Hash>)> {
        let tree = self.tree.lock().unwrap_or_else(|p| p.into_inner());
        if seq == 0 {
            return Err(ApiError::BadRequest("records are numbered from 1".into()));
        }
        let proof = tree.inclusion_proof(seq - 1, size).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        Ok((tree.root(size).map_err(internal)?, proof))
    }

    /// Proof that the tree of `old` records is a prefix of the tree of `new`.
    pub fn consistency_proof(
        &self,
        old: u64,
        new: u64,
    ) -> ApiResult<(auditlog::Hash, auditlog::Hash, Vec<auditlog::Hash>)> {
        let tree = self.tree.lock().unwrap_or_else(|p| p.into_inner());
        let proof = tree.consistency_proof(old, new).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        Ok((tree.root(old).map_err(internal)?, tree.root(new).map_err(internal)?, proof))
    }
}
