//! The client half of a backup over HTTP: the engine's `Archiver` reads, chunks, hashes and
//! compresses locally; `HttpSink` asks the server which chunks it lacks and uploads only those,
//! in binary batches, from several threads at once.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use anyhow::{bail, Context};
use repo::{ChunkSink, Id, PreparedChunk};

/// Ids per `missing` query: 67 bytes of JSON each, under the server's 64 KiB body limit.
const MISSING_PER_QUERY: usize = 900;

/// Chunk requests in flight during a restore.
const FETCHERS: usize = 4;

/// Listings per request when reading a parent snapshot (the server's limit).
const TREES_PER_QUERY: usize = 900;

/// Upload batches are sent once they reach this size.
const BATCH: usize = 8 << 20;

/// Paces transfers to a byte rate shared by all threads (`--limit-upload`/`--limit-download`).
/// Written here because it is a few lines over `Instant`: rate-limiting crates count requests
/// (or need an async runtime), not bytes from blocking threads.
pub(crate) struct Pace {
    bytes_per_sec: f64,
    state: Mutex<(std::time::Instant, u64)>,
}

impl Pace {
    pub(crate) fn new(mib_per_sec: f64) -> Pace {
        Pace { bytes_per_sec: mib_per_sec * 1048576.0, state: Mutex::new((std::time::Instant::now(), 0)) }
    }

    /// Accounts `n` bytes and sleeps until the average rate is back under the limit.
    pub(crate) fn take(&self, n: u64) {
        let wait = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.1 += n;
            let due = Duration::from_secs_f64(st.1 as f64 / self.bytes_per_sec);
            due.saturating_sub(st.0.elapsed())
        };
        std::thread::sleep(wait);
    }
}

/// Where HTTP calls go and how they authenticate.
pub(crate) struct Remote {
    pub(crate) client: reqwest::blocking::Client,
    pub(crate) base: String,
    token: RwLock<String>,
    /// Refreshes the access token (stored login); `None` for an explicit token.
    refresher: Option<Box<dyn Fn() -> anyhow::Result<String> + Send + Sync>>,
    /// Bandwidth limit for chunk uploads or downloads.
    pub(crate) pace: Option<Pace>,
}

impl Remote {
    pub(crate) fn new(
        base: String,
        token: String,
        refresher: Option<Box<dyn Fn() -> anyhow::Result<String> + Send + Sync>>,
    ) -> anyhow::Result<Remote> {
        let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(300)).build()?;
        Ok(Remote { client, base, token: RwLock::new(token), refresher, pace: None })
    }

    /// Sends a request built by `build`, refreshing the token once on a 401.
    pub(crate) fn send(
        &self,
        build: &dyn Fn(&reqwest::blocking::Client, &str) -> reqwest::blocking::RequestBuilder,
    ) -> anyhow::Result<reqwest::blocking::Response> {
        let mut refreshed = false;
        loop {
            let token = self.token.read().unwrap_or_else(|p| p.into_inner()).clone();
            let resp = build(&self.client, &self.base)
                .bearer_auth(&token)
                .send()
                .with_context(|| format!("cannot reach {}", self.base))?;
            if resp.status() == reqwest::StatusCode::UNAUTHORIZED && !refreshed {
                if let Some(r) = &self.refresher {
                    *self.token.write().unwrap_or_else(|p| p.into_inner()) = r()?;
                    refreshed = true;
                    continue;
                }
            }
            if !resp.status().is_success() {
                let status = resp.status();
                let v: serde_json::Value = resp.json().unwrap_or(serde_json::Value::Null);
                bail!(
                    "the server refused ({status}, {}): {}",
                    v["error"]["code"].as_str().unwrap_or(""),
                    v["error"]["message"].as_str().unwrap_or("")
                );
            }
            return Ok(resp);
        }
    }

    pub(crate) fn get_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        Ok(self.send(&|c, b| c.get(format!("{b}{path}")))?.json()?)
    }

    pub(crate) fn post_json(&self, path: &str, body: &serde_json::Value) -> anyhow::Result<serde_json::Value> {
        Ok(self.send(&|c, b| c.post(format!("{b}{path}")).json(body))?.json()?)
    }
}

/// A `ChunkSink` that talks to a backup session on the server. Full batches go to uploader
/// threads through a short queue, so reading, chunking and compressing go on while the server
/// verifies and stores the previous batches.
pub(crate) struct HttpSink<'a> {
    remote: &'a Remote,
    backup_id: String,
    buf: Mutex<Vec<u8>>,
    pub(crate) uploaded: AtomicU64,
    queue: Mutex<Option<std::sync::mpsc::SyncSender<Vec<u8>>>>,
    batches: Mutex<std::sync::mpsc::Receiver<Vec<u8>>>,
    /// The first upload failure; later puts fail with it.
    failure: Mutex<Option<String>>,
}

/// Upload threads (and batches queued for them).
pub(crate) const UPLOADERS: usize = 2;

fn backend_err(e: anyhow::Error) -> repo::Error {
    repo::Error::Backend { object: "server".into(), message: format!("{e:#}") }
}

impl<'a> HttpSink<'a> {
    pub(crate) fn new(remote: &'a Remote, backup_id: String) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel(UPLOADERS);
        HttpSink {
            remote,
            backup_id,
            buf: Mutex::new(Vec::with_capacity(BATCH + (1 << 20))),
            uploaded: AtomicU64::new(0),
            queue: Mutex::new(Some(tx)),
            batches: Mutex::new(rx),
            failure: Mutex::new(None),
        }
    }

    fn failed(&self) -> repo::Result<()> {
        match &*self.failure.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(m) => Err(repo::Error::Backend { object: "server".into(), message: m.clone() }),
            None => Ok(()),
        }
    }

    /// An uploader thread: sends queued batches until the queue closes. After a failure the
    /// rest are dropped (the backup fails; what the server stored stays for the next run).
    pub(crate) fn upload_loop(&self) {
        loop {
            let next = self.batches.lock().unwrap_or_else(|p| p.into_inner()).recv();
            let Ok(batch) = next else { return };
            if self.failed().is_err() {
                continue;
            }
            if let Err(e) = self.upload(batch) {
                self.failure.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }

    fn upload(&self, batch: Vec<u8>) -> anyhow::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let path = format!("/api/v1/backups/{}/chunks", self.backup_id);
        let len = batch.len() as u64;
        if let Some(p) = &self.remote.pace {
            p.take(len);
        }
        let body = bytes::Bytes::from(batch);
        self.remote.send(&|c, b| {
            c.post(format!("{b}{path}")).header("content-type", "application/octet-stream").body(body.clone())
        })?;
        self.uploaded.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    fn enqueue(&self, batch: Vec<u8>) -> repo::Result<()> {
        self.failed()?;
        let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match queue {
            Some(q) => q.send(batch).map_err(|_| backend_err(anyhow::anyhow!("the uploaders stopped"))),
            None => Err(backend_err(anyhow::anyhow!("the backup's uploads are already finished"))),
        }
    }

    /// Queues what is still buffered and closes the queue; the uploader threads then finish.
    pub(crate) fn close(&self) -> repo::Result<()> {
        let batch = std::mem::take(&mut *self.buf.lock().unwrap_or_else(|p| p.into_inner()));
        let sent = if batch.is_empty() { Ok(()) } else { self.enqueue(batch) };
        drop(self.queue.lock().unwrap_or_else(|p| p.into_inner()).take());
        sent
    }
}

impl ChunkSink for HttpSink<'_> {
    fn missing(&self, ids: &[Id]) -> repo::Result<Vec<bool>> {
        use rayon::prelude::*;
        // Queries stay under the server's 64 KiB limit for JSON bodies; several run at once.
        let parts: Vec<Vec<bool>> = ids
            .par_chunks(MISSING_PER_QUERY)
            .map(|part| -> repo::Result<Vec<bool>> {
                let hex: Vec<String> = part.iter().map(Id::to_hex).collect();
                let v = self
                    .remote
                    .post_json(
                        &format!("/api/v1/backups/{}/missing", self.backup_id),
                        &serde_json::json!({ "ids": hex }),
                    )
                    .map_err(backend_err)?;
                let list: Vec<bool> =
                    serde_json::from_value(v["missing"].clone()).map_err(|e| backend_err(e.into()))?;
                if list.len() != part.len() {
                    return Err(backend_err(anyhow::anyhow!(
                        "the server answered for {} ids, asked {}",
                        list.len(),
                        part.len()
                    )));
                }
                Ok(list)
            })
            .collect::<repo::Result<_>>()?;
        Ok(parts.into_iter().flatten().collect())
    }

    fn put(&self, chunk: PreparedChunk) -> repo::Result<()> {
        let full = {
            let mut buf = self.buf.lock().unwrap_or_else(|p| p.into_inner());
            buf.extend_from_slice(&chunk.id.0);
            buf.push(match chunk.kind {
                repo::pack::BlobKind::Data => 0,
                repo::pack::BlobKind::Tree => 1,
            });
            buf.push(u8::from(chunk.compressed));
            buf.extend_from_slice(&chunk.raw_len.to_le_bytes());
            buf.extend_from_slice(&(chunk.data.len() as u32).to_le_bytes());
            buf.extend_from_slice(&chunk.data);
            if buf.len() >= BATCH {
                Some(std::mem::replace(&mut *buf, Vec::with_capacity(BATCH + (1 << 20))))
            } else {
                None
            }
        };
        // Queued outside the lock so other threads keep filling the next batch.
        match full {
            Some(batch) => self.enqueue(batch),
            None => self.failed(),
        }
    }
}

/// Reads listings of earlier snapshots from the server, for change detection.
struct HttpTrees<'a> {
    remote: &'a Remote,
    vault: String,
}

impl repo::backup::TreeSource for HttpTrees<'_> {
    fn tree(&self, id: &Id) -> repo::Result<repo::model::Tree> {
        let v = self
            .remote
            .get_json(&format!("/api/v1/vaults/{}/trees/{}", self.vault, id.to_hex()))
            .map_err(backend_err)?;
        serde_json::from_value(v).map_err(|e| backend_err(e.into()))
    }

    fn trees(&self, ids: &[Id]) -> repo::Result<Vec<repo::model::Tree>> {
        use rayon::prelude::*;
        // A few requests in flight at once: the server decrypts while the next answer travels.
        let parts: Vec<Vec<repo::model::Tree>> = ids
            .par_chunks(TREES_PER_QUERY)
            .map(|part| -> repo::Result<Vec<repo::model::Tree>> {
                let hex: Vec<String> = part.iter().map(Id::to_hex).collect();
                #[derive(serde::Deserialize)]
                struct Answer {
                    trees: Vec<repo::model::Tree>,
                }
                let path = format!("/api/v1/vaults/{}/trees", self.vault);
                let body = serde_json::json!({ "ids": hex });
                let resp = self.remote.send(&|c, b| c.post(format!("{b}{path}")).json(&body)).map_err(backend_err)?;
                let bytes = read_body(resp, MAX_TREES_ANSWER)?;
                let list = serde_json::from_slice::<Answer>(&bytes).map_err(|e| backend_err(e.into()))?.trees;
                if list.len() != part.len() {
                    return Err(backend_err(anyhow::anyhow!("asked for {} listings, got {}", part.len(), list.len())));
                }
                Ok(list)
            })
            .collect::<repo::Result<_>>()?;
        Ok(parts.into_iter().flatten().collect())
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
}

/// `strongroom backup --vault NAME PATH...`
pub(crate) fn backup(remote: &Remote, vault: &str, paths: &[PathBuf], json: bool) -> anyhow::Result<()> {
    for p in paths {
        if std::fs::symlink_metadata(p).is_err() {
            bail!("{}: no such file or directory", p.display());
        }
    }
    let started = std::time::Instant::now();
    let session = remote.post_json(&format!("/api/v1/vaults/{vault}/backups"), &serde_json::json!({}))?;
    let backup_id = session["backup_id"].as_str().context("no backup id in the answer")?.to_string();
    let chunker: repo::chunker::ChunkerParams = serde_json::from_value(session["chunker"].clone())?;
    let level = session["compression_level"].as_i64().unwrap_or(3) as i32;
    let mut key = [0u8; 32];
    hex::decode_to_slice(session["chunk_id_key"].as_str().unwrap_or(""), &mut key)
        .context("bad chunk-id key from the server")?;
    let hasher = repo::chunker::ChunkHasher::from_key(key);

    // Parent: the newest snapshot of the same paths from this host.
    let abs: Vec<String> = paths
        .iter()
        .map(|p| std::path::absolute(p).map(|a| a.to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    let host = hostname();
    let list = remote.get_json(&format!("/api/v1/vaults/{vault}/snapshots"))?;
    let parent = list["snapshots"]
        .as_array()
        .into_iter()
        .flatten()
        .rev()
        .find(|s| {
            s["hostname"].as_str() == Some(host.as_str())
                && serde_json::from_value::<Vec<String>>(s["paths"].clone()).ok().as_ref() == Some(&abs)
        })
        .and_then(|s| Some((Id::from_hex(s["id"].as_str()?)?, Id::from_hex(s["tree"].as_str()?)?)));
    let parent_files = match parent {
        Some((_, tree)) => {
            Some(repo::backup::ParentFiles::load(&HttpTrees { remote, vault: vault.to_string() }, &tree)?)
        }
        None => None,
    };

    let progress = repo::backup::Progress::default();
    let sink = HttpSink::new(remote, backup_id.clone());
    let archiver = repo::backup::Archiver::new(
        &hasher,
        repo::backup::BackupOptions { chunker, compression_level: level },
        &progress,
    );
    let done = AtomicBool::new(false);
    let show = !json && std::io::stderr().is_terminal();
    let out = std::thread::scope(|s| {
        if show {
            s.spawn(|| draw_progress(&progress, &sink, &done));
        }
        let uploaders: Vec<_> = (0..UPLOADERS).map(|_| s.spawn(|| sink.upload_loop())).collect();
        let r = archiver.run(paths, parent_files.as_ref(), &sink);
        let closed = sink.close();
        for u in uploaders {
            let _ = u.join();
        }
        done.store(true, Ordering::Relaxed);
        // Every batch is on the server (or the first failure is known) once the uploaders end.
        r.and_then(|o| closed.and_then(|_| sink.failed()).map(|_| o))
    });
    let out = match out {
        Ok(o) => o,
        Err(e @ repo::Error::Backend { .. }) => {
            return Err(anyhow::Error::new(e).context(
                "backup interrupted: run the same command again to resume (what the server already stored is not sent again)",
            ))
        }
        Err(e) => return Err(e.into()),
    };
    let commit = remote.post_json(
        &format!("/api/v1/backups/{backup_id}/commit"),
        &serde_json::json!({"tree": out.tree.to_hex(), "paths": out.paths, "hostname": host,
            "parent": parent.map(|p| p.0.to_hex()), "summary": out.summary}),
    )?;
    let secs = started.elapsed().as_secs_f64();
    let s = &out.summary;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "snapshot_id": commit["snapshot_id"], "time": commit["time"], "summary": s, "seconds": secs,
                "uploaded_bytes": sink.uploaded.load(Ordering::Relaxed), "warnings": out.warnings,
            }))?
        );
    } else {
        for w in &out.warnings {
            eprintln!("warning: {w}");
        }
        // Share of the snapshot's bytes that did not need uploading (unchanged files or known chunks).
        let dedup = if s.bytes > 0 { 100.0 * (1.0 - s.new_bytes as f64 / s.bytes as f64).max(0.0) } else { 100.0 };
        println!(
            "snapshot {} saved: {} files, {} dirs, {:.1} MB; read {} files ({:.1} MB) in {:.1} s ({:.0} MB/s); new {:.1} MB, uploaded {:.1} MB; dedup {:.0} %",
            &commit["snapshot_id"].as_str().unwrap_or("?")[..8.min(commit["snapshot_id"].as_str().unwrap_or("").len())],
            s.files, s.dirs, s.bytes as f64 / 1e6, s.files_read, s.bytes_read as f64 / 1e6, secs,
            s.bytes_read as f64 / 1e6 / secs.max(1e-9), s.new_bytes as f64 / 1e6,
            sink.uploaded.load(Ordering::Relaxed) as f64 / 1e6, dedup
        );
    }
    Ok(())
}

fn draw_progress(p: &repo::backup::Progress, sink: &HttpSink<'_>, done: &AtomicBool) {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    while !done.load(Ordering::Relaxed) {
        bar.set_length(p.bytes_total.load(Ordering::Relaxed));
        bar.set_position(p.bytes_done.load(Ordering::Relaxed));
        let read = p.bytes_done.load(Ordering::Relaxed).max(1);
        let new = p.bytes_new.load(Ordering::Relaxed);
        bar.set_message(format!(
            "files {}/{}  new {:.1} MB  uploaded {:.1} MB  dedup {:.0} %",
            p.files_done.load(Ordering::Relaxed),
            p.files_total.load(Ordering::Relaxed),
            new as f64 / 1e6,
            sink.uploaded.load(Ordering::Relaxed) as f64 / 1e6,
            100.0 * (1.0 - new as f64 / read as f64).max(0.0)
        ));
        std::thread::sleep(Duration::from_millis(100));
    }
    bar.finish_and_clear();
}

/// Reads chunks of an approved restore from the server with the grant, verifying each against
/// its id with the vault's chunk-id key before anything is written.
struct HttpContent<'a> {
    remote: &'a Remote,
    restore_id: String,
    grant: String,
    hasher: repo::chunker::ChunkHasher,
}

impl repo::restore::ContentSource for HttpContent<'_> {
    fn fetch(&self, wanted: &[(Id, u32)], sink: &(dyn Fn(&Id, &[u8]) -> repo::Result<()> + Sync)) -> repo::Result<()> {
        use rayon::prelude::*;
        // Batches of at most 900 chunks (the server's limit) and 32 MiB.
        let mut batches: Vec<Vec<(Id, u32)>> = vec![Vec::new()];
        let mut size = 0u64;
        for &(id, len) in wanted {
            let last = batches.last_mut().map(|b| b.len()).unwrap_or(0);
            if last >= 900 || size + u64::from(len) > 32 << 20 {
                batches.push(Vec::new());
                size = 0;
            }
            size += u64::from(len);
            if let Some(b) = batches.last_mut() {
                b.push((id, len));
            }
        }
        // More requests in flight than cores: while one waits for the server, another
        // decompresses, verifies and writes.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(FETCHERS)
            .build()
            .map_err(|e| backend_err(anyhow::anyhow!("thread pool: {e}")))?;
        pool.install(|| {
            batches.par_iter().filter(|b| !b.is_empty()).try_for_each(|batch| -> repo::Result<()> {
                let ids: Vec<String> = batch.iter().map(|(i, _)| i.to_hex()).collect();
                let url = format!("{}/api/v1/restores/{}/chunks", self.remote.base, self.restore_id);
                let resp = self
                    .remote
                    .client
                    .post(&url)
                    .header("authorization", format!("Grant {}", self.grant))
                    .json(&serde_json::json!({ "ids": ids, "stored": true }))
                    .send()
                    .map_err(|e| backend_err(e.into()))?;
                if !resp.status().is_success() {
                    return Err(backend_err(anyhow::anyhow!("the server refused chunks ({})", resp.status())));
                }
                let body = read_body(resp, MAX_CHUNKS_ANSWER)?;
                if let Some(p) = &self.remote.pace {
                    p.take(body.len() as u64);
                }
                let lens: std::collections::HashMap<Id, u32> = batch.iter().copied().collect();
                let got = decode_chunks(&body, &lens, &self.hasher, sink)?;
                if got != batch.len() {
                    return Err(backend_err(anyhow::anyhow!("the server sent {got} of {} chunks", batch.len())));
                }
                Ok(())
            })
        })
    }
}

/// Decodes one answer to a restore's chunk request (`stored: true`): repeated
/// `id[32] flags u8 (1 = zstd) raw_len u32le len u32le data[len]`. Each chunk must be one that
/// was asked for with that plaintext length (`lens`), decompress to exactly that length without
/// allocating more than it actually produces (the length comes from the plan, which the server
/// wrote too), and hash to its id before `sink` sees it. Returns the number of chunks.
fn decode_chunks(
    body: &[u8],
    lens: &std::collections::HashMap<Id, u32>,
    hasher: &repo::chunker::ChunkHasher,
    sink: &(dyn Fn(&Id, &[u8]) -> repo::Result<()> + Sync),
) -> repo::Result<usize> {
    let truncated = || backend_err(anyhow::anyhow!("truncated chunk answer"));
    let mut at = 0usize;
    let mut got = 0usize;
    while at < body.len() {
        let head = body.get(at..at + 41).ok_or_else(truncated)?;
        let mut id = [0u8; 32];
        id.copy_from_slice(&head[..32]);
        let id = Id(id);
        let raw_len = u32::from_le_bytes([head[33], head[34], head[35], head[36]]);
        let len = u32::from_le_bytes([head[37], head[38], head[39], head[40]]) as usize;
        let data = body.get(at + 41..at + 41 + len).ok_or_else(truncated)?;
        let bad =
            |why: &str| repo::Error::Corrupt { object: format!("chunk {id} from the server"), reason: why.into() };
        if lens.get(&id) != Some(&raw_len) {
            return Err(bad("was not asked for, or has the wrong length"));
        }
        let plain;
        let data = match head[32] {
            0 => data,
            1 => {
                plain = repo::chunker::decompress_limited(data, raw_len as usize)
                    .ok_or_else(|| bad("does not decompress"))?;
                &plain[..]
            }
            _ => return Err(bad("unknown flags")),
        };
        // Never trust the server either: the bytes must hash to the id we asked for.
        if data.len() != raw_len as usize || hasher.id(data) != id {
            return Err(bad("does not match its id"));
        }
        sink(&id, data)?;
        at += 41 + len;
        got += 1;
    }
    Ok(got)
}

/// `strongroom restore --vault NAME SNAPSHOT --target DIR [--include PATH]...`
pub(crate) fn restore(
    remote: &Remote,
    vault: &str,
    snapshot: &str,
    target: &std::path::Path,
    include: &[String],
    json: bool,
) -> anyhow::Result<()> {
    let target_abs = std::path::absolute(target)?;
    let req = remote.post_json(
        &format!("/api/v1/vaults/{vault}/restores"),
        &serde_json::json!({"snapshot": snapshot, "paths": include, "target": target_abs.to_string_lossy()}),
    )?;
    let id = req["restore_id"].as_str().context("no restore id in the answer")?.to_string();
    // The approval URL alone on its line: scripts and people pick it up from here.
    println!("{}", req["approval_url"].as_str().unwrap_or_default());
    eprintln!(
        "Waiting for a Restore Operator to approve this restore with a passkey (operation digest {}).",
        req["digest"].as_str().unwrap_or("?")
    );
    let grant = loop {
        let s = remote.get_json(&format!("/api/v1/restores/{id}"))?;
        match s["status"].as_str() {
            Some("approved") => break s["grant"].as_str().context("no grant in the answer")?.to_string(),
            Some("pending") => std::thread::sleep(Duration::from_secs(2)),
            Some(other) => bail!("the restore was not approved: {other}"),
            None => bail!("unexpected answer from the server"),
        }
    };
    eprintln!("Approved. Restoring into {}", target_abs.display());
    let started = std::time::Instant::now();
    let plan_resp = remote
        .client
        .get(format!("{}/api/v1/restores/{id}/plan", remote.base))
        .header("authorization", format!("Grant {grant}"))
        .send()?;
    if !plan_resp.status().is_success() {
        bail!("the server refused the restore plan ({})", plan_resp.status());
    }
    let plan: serde_json::Value = plan_resp.json()?;
    let entries: Vec<repo::restore::PlanEntry> = serde_json::from_value(plan["entries"].clone())?;
    let mut key = [0u8; 32];
    hex::decode_to_slice(plan["chunk_id_key"].as_str().unwrap_or(""), &mut key)
        .context("bad chunk-id key from the server")?;
    let source = HttpContent {
        remote,
        restore_id: id.clone(),
        grant: grant.clone(),
        hasher: repo::chunker::ChunkHasher::from_key(key),
    };
    let progress = repo::restore::RestoreProgress::default();
    let owners = rustix::process::geteuid().is_root();
    let result = repo::restore::restore_plan(entries, &target_abs, owners, &progress, &source);
    let (ok, files, bytes, error) = match &result {
        Ok(s) => (true, s.files, s.bytes, None),
        Err(e) => (false, 0, 0, Some(e.to_string())),
    };
    let _ = remote
        .client
        .post(format!("{}/api/v1/restores/{id}/done", remote.base))
        .header("authorization", format!("Grant {grant}"))
        .json(&serde_json::json!({"ok": ok, "files": files, "bytes": bytes, "error": error}))
        .send();
    let summary = result?;
    let secs = started.elapsed().as_secs_f64();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "restore_id": id, "files": summary.files, "dirs": summary.dirs, "symlinks": summary.symlinks,
                "hardlinks": summary.hardlinks, "bytes": summary.bytes, "seconds": secs, "warnings": summary.warnings,
            }))?
        );
    } else {
        for w in &summary.warnings {
            eprintln!("warning: {w}");
        }
        eprintln!(
            "restored {} files, {} dirs, {} symlinks, {} hard links, {:.1} MB in {:.1} s; every chunk verified",
            summary.files,
            summary.dirs,
            summary.symlinks,
            summary.hardlinks,
            summary.bytes as f64 / 1e6,
            secs
        );
    }
    Ok(())
}

/// Largest answer to a chunks request a client accepts: the server sends at most 64 MiB of
/// chunk data per request, plus a header per chunk.
const MAX_CHUNKS_ANSWER: u64 = (64 << 20) + (1 << 20);

/// Largest answer to a listings request a client accepts (900 listings).
const MAX_TREES_ANSWER: u64 = 1 << 30;

/// Reads an answer's body, refusing one longer than `limit` instead of buffering whatever a
/// (possibly hostile) server sends.
fn read_body(resp: reqwest::blocking::Response, limit: u64) -> repo::Result<Vec<u8>> {
    use std::io::Read;
    if resp.content_length().is_some_and(|n| n > limit) {
        return Err(backend_err(anyhow::anyhow!("the server's answer is larger than {limit} bytes")));
    }
    let mut body = Vec::new();
    resp.take(limit + 1).read_to_end(&mut body).map_err(|e| backend_err(e.into()))?;
    if body.len() as u64 > limit {
        return Err(backend_err(anyhow::anyhow!("the server's answer is larger than {limit} bytes")));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    fn hasher() -> repo::chunker::ChunkHasher {
        repo::chunker::ChunkHasher::from_key([9; 32])
    }

    /// One chunk of an answer as the server writes it (any field may lie).
    fn frame(id: &Id, flags: u8, raw_len: u32, len: u32, data: &[u8]) -> Vec<u8> {
        let mut b = id.0.to_vec();
        b.push(flags);
        b.extend_from_slice(&raw_len.to_le_bytes());
        b.extend_from_slice(&len.to_le_bytes());
        b.extend_from_slice(data);
        b
    }

    /// Decodes `body`, collecting what reaches the sink.
    fn decode(body: &[u8], lens: &HashMap<Id, u32>) -> (repo::Result<usize>, Vec<(Id, Vec<u8>)>) {
        let seen = Mutex::new(Vec::new());
        let r = decode_chunks(body, lens, &hasher(), &|id, data| {
            seen.lock().unwrap().push((*id, data.to_vec()));
            Ok(())
        });
        (r, seen.into_inner().unwrap())
    }

    /// How a hostile server changes an honest answer.
    #[derive(Clone, Debug)]
    enum Lie {
        /// Says a chunk is longer than the answer.
        Overlong(u32),
        /// Cuts the answer anywhere.
        Cut(prop::sample::Index),
        /// Declares another plaintext length.
        RawLen(u32),
        /// Unknown flags.
        Flags(u8),
        /// A frame that expands to more than the plan's length (which says u32::MAX).
        Bomb,
        /// Bytes that are not what the id says.
        Flip(prop::sample::Index),
    }

    fn lie() -> impl Strategy<Value = Lie> {
        prop_oneof![
            prop_oneof![1u32..64, any::<u32>()].prop_map(Lie::Overlong),
            any::<prop::sample::Index>().prop_map(Lie::Cut),
            any::<u32>().prop_map(Lie::RawLen),
            (2u8..=255).prop_map(Lie::Flags),
            Just(Lie::Bomb),
            any::<prop::sample::Index>().prop_map(Lie::Flip),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever a server answers, the decoder refuses it or delivers only chunks that were
        /// asked for and hash to their ids.
        #[test]
        fn arbitrary_bytes_never_panic_the_restore_chunk_decoder(
            body in proptest::collection::vec(any::<u8>(), 0..400),
            asked in proptest::collection::vec((any::<[u8; 32]>(), any::<u32>()), 0..3),
        ) {
            let mut lens: HashMap<Id, u32> = asked.into_iter().map(|(id, l)| (Id(id), l)).collect();
            // Also ask for whatever id the answer starts with, at the length it declares.
            if body.len() >= 37 {
                let mut id = [0u8; 32];
                id.copy_from_slice(&body[..32]);
                lens.insert(Id(id), u32::from_le_bytes([body[33], body[34], body[35], body[36]]));
            }
            let (r, seen) = decode(&body, &lens);
            let typed = matches!(r, Ok(_) | Err(repo::Error::Corrupt { .. } | repo::Error::Backend { .. }));
            prop_assert!(typed, "{r:?}");
            for (id, data) in &seen {
                prop_assert_eq!(hasher().id(data), *id);
                prop_assert_eq!(lens.get(id).copied(), Some(data.len() as u32));
            }
        }

        /// An honest answer (raw or compressed chunks) delivers every chunk as it was; the
        /// same answer with one lie in it (a length past its end, a cut, another plaintext
        /// length, unknown flags, a bomb claiming 4 GiB, changed bytes) is refused.
        #[test]
        fn server_answers_that_lie_are_refused(
            chunks in proptest::collection::vec((proptest::collection::vec(0u8..4, 0..300), any::<bool>()), 1..5),
            lie in lie(),
            victim in any::<prop::sample::Index>(),
        ) {
            let h = hasher();
            let mut lens = HashMap::new();
            let mut parts = Vec::new();
            for (data, compress) in &chunks {
                let id = h.id(data);
                lens.insert(id, data.len() as u32);
                let stored = if *compress { zstd::bulk::compress(data, 3).unwrap() } else { data.clone() };
                parts.push((id, u8::from(*compress), data.len() as u32, stored));
            }
            let encode = |parts: &[(Id, u8, u32, Vec<u8>)]| -> Vec<u8> {
                parts.iter().flat_map(|(id, f, raw, d)| frame(id, *f, *raw, d.len() as u32, d)).collect()
            };
            let honest = encode(&parts);
            let (r, seen) = decode(&honest, &lens);
            prop_assert_eq!(r.ok(), Some(parts.len()));
            let expected: Vec<(Id, Vec<u8>)> = chunks.iter().map(|(d, _)| (h.id(d), d.clone())).collect();
            prop_assert_eq!(seen, expected);

            let v = victim.index(parts.len());
            let body = match lie {
                Lie::Overlong(extra) => {
                    let (id, f, raw, d) = &parts[v];
                    let mut b = encode(&parts[..v]);
                    b.extend(frame(id, *f, *raw, (d.len() as u32).saturating_add(extra), d));
                    b
                }
                Lie::Cut(at) => {
                    let at = at.index(honest.len());
                    // A cut between two chunks is a shorter honest answer (the caller counts).
                    let boundaries: Vec<usize> =
                        parts.iter().scan(0, |end, p| { *end += 41 + p.3.len(); Some(*end) }).collect();
                    if at == 0 || boundaries.contains(&at) {
                        return Ok(());
                    }
                    honest[..at].to_vec()
                }
                Lie::RawLen(raw) => {
                    if raw == parts[v].2 {
                        return Ok(());
                    }
                    parts[v].2 = raw;
                    encode(&parts)
                }
                Lie::Flags(f) => {
                    parts[v].1 = f;
                    encode(&parts)
                }
                Lie::Bomb => {
                    // The plan and the answer claim u32::MAX bytes; the frame is a few hundred
                    // bytes that expand to 4 MiB of zeros. Refused, having allocated what the
                    // frame produced, not what it claimed.
                    let claimed = u32::MAX;
                    let bomb = zstd::bulk::compress(&vec![0u8; 4 << 20], 3).unwrap();
                    lens.insert(parts[v].0, claimed);
                    parts[v] = (parts[v].0, 1, claimed, bomb);
                    encode(&parts)
                }
                Lie::Flip(at) => {
                    // Other contents under the same id and length, stored the same way.
                    let mut data = chunks[v].0.clone();
                    if data.is_empty() {
                        return Ok(());
                    }
                    let i = at.index(data.len());
                    data[i] ^= 0x55;
                    parts[v].3 = if chunks[v].1 { zstd::bulk::compress(&data, 3).unwrap() } else { data };
                    encode(&parts)
                }
            };
            let (r, seen) = decode(&body, &lens);
            prop_assert!(r.is_err(), "a lying answer was accepted ({lie:?})");
            for (id, data) in &seen {
                prop_assert_eq!(h.id(data), *id);
            }
        }
    }
}
