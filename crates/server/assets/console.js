// Strongroom console: the data pages (vaults, snapshots, restores, approvals inbox, users,
// audit). Rendered from the same JSON API the CLI uses; text goes in with textContent only.
// Uses api(), status(), approveApproval() from app.js (loaded first).
"use strict";

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

function bytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  let v = Number(n);
  while (v >= 1000 && i < units.length - 1) { v /= 1000; i++; }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

function when(unix) {
  if (!unix) return "never";
  return new Date(unix * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function cell(...children) {
  return el("td", {}, ...children);
}

/** A cell that never wraps (short values: times, sizes, ids). */
function nw(...children) {
  return el("td", { class: "nw" }, ...children);
}

/** A cell for long values (paths, details) that may break anywhere rather than widen the page. */
function wide(...children) {
  return el("td", { class: "wrap" }, ...children);
}

const guarded = (fn) => async (ev) => {
  if (ev) ev.preventDefault();
  try { await fn(ev); } catch (e) { status(e.message || String(e), true); }
};

/** Shows the outcome of a gated change: done, or the approval it now waits for. */
function showGated(answer, what) {
  const box = document.getElementById("gated");
  if (answer.status === "pending_approval") {
    box.replaceChildren(
      el("p", { text: `${what} is a critical operation: it runs once you confirm it and a Security Admin approves it.` }),
      el("p", {}, el("a", { href: new URL(answer.approval_url).pathname, text: "Open the approval" })),
    );
    status(`${what}: waiting for approval.`);
  } else {
    box.replaceChildren();
    status(`${what}: done.`);
  }
}

// ---------- vaults ----------

function policySummary(p) {
  const parts = [p.require_hardware ? "hardware passkey" : "any passkey"];
  if (p.distinct_approver) parts.push("another person approves");
  parts.push(`retention ${p.retention_days} d`);
  if (p.immutability && p.immutability !== "disabled") parts.push(`immutability ${p.immutability}`);
  if (p.rotate_key_days) parts.push(`key rotated every ${p.rotate_key_days} d`);
  return parts.join(", ");
}

async function vaultsPage() {
  const data = await api("/api/v1/vaults", undefined, "GET");
  const tbody = document.querySelector("#vaults tbody");
  if (!data.vaults.length) {
    fill(tbody, [el("tr", {}, el("td", { colspan: "6", text: "No vaults you can see yet." }))]);
    return;
  }
  fill(tbody, data.vaults.map((v) => el("tr", {},
    cell(el("a", { href: `/vaults/${encodeURIComponent(v.name)}`, text: v.name })),
    cell(v.state === "deleted" ? `${v.kind} (deleted, purged ${when(v.purge_at)})` : v.kind),
    nw(v.stats ? bytes(v.stats.stored_bytes) : ""),
    nw(v.stats ? String(v.stats.snapshots) : ""),
    nw(v.stats ? when(v.stats.last_backup) : ""),
    wide(policySummary(v.policy)),
  )));
}

async function vaultPage(name) {
  const enc = encodeURIComponent(name);
  const v = await api(`/api/v1/vaults/${enc}`, undefined, "GET");
  const summary = document.getElementById("vault-summary");
  summary.replaceChildren(
    el("dt", { text: "Kind" }), el("dd", { text: v.kind }),
    el("dt", { text: "Policy" }), el("dd", { text: policySummary(v.policy) }),
    el("dt", { text: "State" }), el("dd", { text: v.state === "deleted" ? `deleted by ${v.deleted_by}, purged ${when(v.purge_at)}` : "in use" }),
    el("dt", { text: "Key versions" }), el("dd", { text: v.key_versions ? `${v.key_versions.join(", ")} (current ${v.current_key_version})` : "" }),
  );
  document.getElementById("retention-days").value = v.policy.retention_days;
  document.getElementById("immutability").value = v.policy.immutability;
  document.getElementById("delete-vault").hidden = v.state === "deleted";
  document.getElementById("undelete-vault").hidden = v.state !== "deleted";
  if (v.state === "deleted") return;
  const list = await api(`/api/v1/vaults/${enc}/snapshots`, undefined, "GET");
  const tbody = document.querySelector("#snapshots tbody");
  fill(tbody, list.snapshots.slice().reverse().map((s) => el("tr", {},
    nw(el("a", { href: `/vaults/${enc}/snapshots/${s.id}`, text: s.short_id })),
    nw(s.time.replace("T", " ").replace(/\.\d+Z$/, " UTC")),
    cell(s.hostname),
    wide(s.paths.join(" ")),
    nw(bytes(s.summary.bytes)),
    nw(s.protected ? `until ${when(s.protected_until)}` : "no"),
    cell(el("button", { type: "button", "aria-label": `Delete snapshot ${s.short_id}`, text: "Delete",
      onclick: guarded(async () => {
        showGated(await api(`/api/v1/vaults/${enc}/snapshots/${s.id}`, undefined, "DELETE"), `Deleting snapshot ${s.short_id}`);
        await vaultPage(name);
      }) })),
  )));
  if (!list.snapshots.length) fill(tbody, [el("tr", {}, el("td", { colspan: "7", text: "No snapshots yet." }))]);
  const gone = document.querySelector("#deleted tbody");
  fill(gone, list.deleted.map((s) => el("tr", {},
    cell(s.short_id), cell(s.time.replace("T", " ").replace(/\.\d+Z$/, " UTC")), cell(s.deleted_by), cell(when(s.purge_at)),
    cell(el("button", { type: "button", "aria-label": `Undelete snapshot ${s.short_id}`, text: "Undelete",
      onclick: guarded(async () => {
        await api(`/api/v1/vaults/${enc}/snapshots/${s.id}/undelete`, {});
        status(`Snapshot ${s.short_id} is back.`);
        await vaultPage(name);
      }) })),
  )));
  document.getElementById("deleted-section").hidden = !list.deleted.length;
}

function vaultControls(name) {
  const enc = encodeURIComponent(name);
  document.getElementById("retention-form").addEventListener("submit", guarded(async () => {
    const days = Number(document.getElementById("retention-days").value);
    showGated(await api(`/api/v1/vaults/${enc}/retention`, { days }), `Setting retention to ${days} days`);
    await vaultPage(name);
  }));
  document.getElementById("immutability-form").addEventListener("submit", guarded(async () => {
    const state = document.getElementById("immutability").value;
    showGated(await api(`/api/v1/vaults/${enc}/immutability`, { state }), `Setting immutability to ${state}`);
    await vaultPage(name);
  }));
  document.getElementById("delete-vault").addEventListener("click", guarded(async () => {
    showGated(await api(`/api/v1/vaults/${enc}`, undefined, "DELETE"), `Deleting vault ${name}`);
    await vaultPage(name);
  }));
  document.getElementById("undelete-vault").addEventListener("click", guarded(async () => {
    await api(`/api/v1/vaults/${enc}/undelete`, {});
    status(`Vault ${name} is back.`);
    await vaultPage(name);
  }));
}

// ---------- snapshot browsing and restore ----------

async function snapshotPage(vault, id) {
  const enc = encodeURIComponent(vault);
  const path = new URLSearchParams(location.search).get("path") || "";
  const t = await api(`/api/v1/vaults/${enc}/snapshots/${encodeURIComponent(id)}/tree?path=${encodeURIComponent(path)}`, undefined, "GET");
  const crumbs = document.getElementById("crumbs");
  const parts = path ? path.split("/") : [];
  const link = (p, text) => el("a", { href: `?path=${encodeURIComponent(p)}`, text });
  const items = [link("", "(snapshot root)")];
  parts.forEach((part, i) => items.push(" / ", link(parts.slice(0, i + 1).join("/"), part)));
  crumbs.replaceChildren(...items);
  const tbody = document.querySelector("#entries tbody");
  fill(tbody, t.entries.map((e) => {
    const full = path ? `${path}/${e.name}` : e.name;
    const name = e.kind === "dir" ? el("a", { href: `?path=${encodeURIComponent(full)}`, text: `${e.name}/` }) : e.name;
    return el("tr", {},
      wide(name),
      wide(e.kind === "symlink" ? `symlink → ${e.target || ""}` : e.kind),
      nw(e.kind === "file" ? bytes(e.size) : ""),
      nw(when(e.mtime)),
    );
  }));
  if (t.truncated) status(`Showing the first ${t.entries.length} entries.`);
  document.getElementById("restore-paths").value = path;
  document.getElementById("restore-form").addEventListener("submit", guarded(async () => {
    const paths = document.getElementById("restore-paths").value.split("\n").map((p) => p.trim()).filter(Boolean);
    const target = document.getElementById("restore-target").value.trim();
    const r = await api(`/api/v1/vaults/${enc}/restores`, { snapshot: t.snapshot, paths, target, on_server: true });
    status("Restore requested. It starts once a Restore Operator approves it.");
    const box = document.getElementById("requested");
    box.replaceChildren(
      el("p", {}, "Approval: ", el("a", { href: new URL(r.approval_url).pathname, text: "open the approval page" })),
      el("p", {}, "Progress: ", el("a", { href: `/restores/${r.restore_id}`, text: "follow the restore" })),
    );
  }));
}

async function restorePage(id) {
  const bar = document.getElementById("progress");
  const facts = document.getElementById("job");
  for (;;) {
    const j = await api(`/api/v1/restores/${encodeURIComponent(id)}/job`, undefined, "GET");
    const op = j.operation || {};
    if (j.destination === "client") {
      document.getElementById("job-status").textContent = j.status;
      status("This restore runs on the requester's machine (strongroom restore); its outcome is in the audit log.");
      return;
    }
    const rows = [
      ["Vault", op.vault], ["Snapshot", op.snapshot], ["Paths", (op.paths || []).join(", ") || "everything"],
      ["Target on the server", j.target || op.target], ["Requested by", op.requester], ["Status", j.status],
    ];
    if (j.bytes_total !== undefined) rows.push(["Written", `${bytes(j.bytes_done)} of ${bytes(j.bytes_total)}, ${j.files_total} files`]);
    if (j.result && j.result.files !== undefined) rows.push(["Result", `${j.result.files} files, ${j.result.dirs} directories, ${bytes(j.result.bytes)}; every chunk verified`]);
    if (j.result && j.result.error) rows.push(["Error", j.result.error]);
    facts.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v === undefined ? "" : String(v) })]));
    if (j.bytes_total) { bar.max = j.bytes_total; bar.value = j.bytes_done; }
    document.getElementById("job-status").textContent = j.status;
    if (["done", "failed", "denied", "expired", "interrupted"].includes(j.status)) {
      if (j.status === "done") { bar.max = 1; bar.value = 1; }
      status(j.status === "done" ? "Restore complete." : `Restore ${j.status}.`, j.status !== "done");
      return;
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

// ---------- approvals inbox ----------

function describe(a) {
  const op = a.operation || {};
  if (a.kind === "restore") {
    return `Restore of ${(op.paths || []).length ? op.paths.join(", ") : "everything"} from snapshot ${String(op.snapshot).slice(0, 8)} of vault ${op.vault} to ${op.target}, asked by ${op.requester}`;
  }
  const fields = Object.entries(op).filter(([k]) => !["kind", "action", "requester", "requester_id", "request_time", "approvals_required", "vault"].includes(k));
  const detail = fields.map(([k, v]) => `${k} ${typeof v === "object" ? JSON.stringify(v) : v}`).join(", ");
  return `${op.action}${op.vault ? ` on vault ${op.vault}` : ""}${detail ? ` (${detail})` : ""}, asked by ${op.requester}`;
}

async function inboxPage() {
  const data = await api("/api/v1/approvals", undefined, "GET");
  const list = document.getElementById("waiting");
  list.replaceChildren(...data.waiting_for_me.map((a) => {
    const text = describe(a);
    const short = a.approval_id.slice(0, 8);
    return el("li", {},
      el("p", {}, el("a", { href: `/approvals/${a.approval_id}`, text }), a.needs_my_confirmation ? " — your own confirmation" : ""),
      el("p", { class: "digest" }, "Digest ", el("code", { text: a.digest })),
      el("button", { type: "button", "aria-label": `Approve ${a.kind} ${short}`, text: "Approve with passkey",
        onclick: guarded(async () => { await approveApproval(a.approval_id, a.digest); await inboxPage(); }) }),
      " ",
      el("button", { type: "button", "aria-label": `Deny ${a.kind} ${short}`, text: "Deny",
        onclick: guarded(async () => { await api(`/api/v1/approvals/${a.approval_id}/deny`, {}); status("Denied."); await inboxPage(); }) }),
    );
  }));
  if (!data.waiting_for_me.length) list.replaceChildren(el("li", { text: "Nothing waits for you." }));
  const mine = document.getElementById("mine");
  mine.replaceChildren(...data.my_requests.map((a) => el("li", {}, el("a", { href: `/approvals/${a.approval_id}`, text: describe(a) }))));
  if (!data.my_requests.length) mine.replaceChildren(el("li", { text: "No requests of yours are pending." }));
}

// ---------- users, roles, invites, simulator ----------

async function usersPage() {
  const tbody = document.querySelector("#users tbody");
  try {
    const data = await api("/api/v1/users", undefined, "GET");
    fill(tbody, data.users.map((u) => el("tr", {},
      cell(u.username), cell(u.roles.join(", ")), cell(u.disabled ? "disabled" : "active"), cell(u.expires_at ? when(u.expires_at) : "never"))));
  } catch (e) {
    fill(tbody, [el("tr", {}, el("td", { colspan: "4", text: `Only Owners see the user list (${e.message}).` }))]);
  }
  try {
    const roles = await api("/api/v1/roles", undefined, "GET");
    fill(document.querySelector("#roles tbody"), roles.roles.map((r) => el("tr", {}, cell(r.username), cell(r.role), cell(r.vault || "every vault"))));
  } catch (e) {
    fill(document.querySelector("#roles tbody"), [el("tr", {}, el("td", { colspan: "3", text: e.message }))]);
  }
}

function usersControls() {
  document.getElementById("role-form").addEventListener("submit", (e) => e.preventDefault());
  const val = (id) => document.getElementById(id).value.trim();
  document.getElementById("invite-form").addEventListener("submit", guarded(async () => {
    const r = await api("/api/v1/invites", { username: val("invite-user"), role: val("invite-role") });
    document.getElementById("invite-link").replaceChildren(el("p", {}, "One-time enrollment link (valid 1 hour): ", el("code", { text: r.url })));
    status("Invite created.");
  }));
  const roleChange = (path, what) => guarded(async () => {
    const body = { username: val("role-user"), role: val("role-role") };
    if (val("role-vault")) body.vault = val("role-vault");
    const r = await api(path, body);
    if (r && r.status) showGated(r, what); else { document.getElementById("gated").replaceChildren(); status(`${what}: done.`); }
    await usersPage();
  });
  document.getElementById("assign").addEventListener("click", roleChange("/api/v1/roles", "Assigning the role"));
  document.getElementById("revoke").addEventListener("click", roleChange("/api/v1/roles/revoke", "Revoking the role"));
  document.getElementById("simulate-form").addEventListener("submit", guarded(async () => {
    const body = { username: val("sim-user"), operation: val("sim-op") };
    if (val("sim-vault")) body.vault = val("sim-vault");
    const r = await api("/api/v1/policy/simulate", body);
    const say = (d) => d.decision === "allow" ? "allowed" : d.decision === "deny" ? `refused: ${String(d.reason).replace(/_/g, " ")}` : d.decision === "step_up" ? `allowed after a fresh sign-in (at most ${d.max_age} s old)` : `allowed once a ${d.approver_role} approves${d.distinct_approver ? " (another person)" : ""}${d.require_hardware ? " with a hardware passkey" : ""}`;
    const out = [el("li", { text: `With a software passkey: ${say(r.with_software_passkey)}` }), el("li", { text: `With a hardware passkey: ${say(r.with_hardware_passkey)}` })];
    if (r.as_approver_of_others) out.push(el("li", { text: `Approving other people's restores: software ${say(r.as_approver_of_others.software)}, hardware ${say(r.as_approver_of_others.hardware)}` }));
    document.getElementById("sim-result").replaceChildren(...out);
  }));
}

// ---------- audit ----------

const enc8 = new TextEncoder();

async function sha256(...parts) {
  const len = parts.reduce((n, p) => n + p.length, 0);
  const buf = new Uint8Array(len);
  let o = 0;
  for (const p of parts) { buf.set(p, o); o += p.length; }
  return new Uint8Array(await crypto.subtle.digest("SHA-256", buf));
}

/** RFC 6962 root of the leaves' hashes (leaf = SHA-256(0x00 || record)). */
async function merkleRoot(leafHashes) {
  if (!leafHashes.length) return sha256(new Uint8Array(0));
  // Largest-power-of-two split, bottom-up with a stack of complete subtrees.
  const stack = [];
  for (let i = 0; i < leafHashes.length; i++) {
    let node = { h: leafHashes[i], size: 1 };
    while (stack.length && stack[stack.length - 1].size === node.size) {
      const left = stack.pop();
      node = { h: await sha256(Uint8Array.of(1), left.h, node.h), size: left.size * 2 };
    }
    stack.push(node);
  }
  let right = stack.pop().h;
  while (stack.length) right = await sha256(Uint8Array.of(1), stack.pop().h, right);
  return right;
}

/** Records the audit page rehashes itself; a larger log is checked against the checkpoint this
 * browser verified before (an RFC 9162 consistency proof) and shows its latest records. */
const FULL_VERIFY_LIMIT = 50_000;
const SHOWN_RECORDS = 5_000;
const SEEN_KEY = "strongroom.audit.verified";

function hexBytes(h) {
  return Uint8Array.from(h.match(/../g) || [], (x) => parseInt(x, 16));
}

function same(a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** RFC 9162 2.1.4.2: does `proof` show the tree of `first` leaves (root `r1`) is a prefix of
 * the tree of `second` leaves (root `r2`)? */
async function consistent(first, second, r1, r2, proof) {
  if (first === second) return proof.length === 0 && same(r1, r2);
  if (first === 0 || first > second || !proof.length) return false;
  let p = proof.slice();
  if ((first & (first - 1)) === 0) p = [r1, ...p];
  let fn = first - 1;
  let sn = second - 1;
  while (fn & 1) { fn >>= 1; sn >>= 1; }
  let fr = p[0];
  let sr = p[0];
  for (const c of p.slice(1)) {
    if (sn === 0) return false;
    if ((fn & 1) || fn === sn) {
      fr = await sha256(Uint8Array.of(1), c, fr);
      sr = await sha256(Uint8Array.of(1), c, sr);
      if (!(fn & 1)) while (fn !== 0 && !(fn & 1)) { fn >>= 1; sn >>= 1; }
    } else {
      sr = await sha256(Uint8Array.of(1), sr, c);
    }
    fn >>= 1;
    sn >>= 1;
  }
  return sn === 0 && same(fr, r1) && same(sr, r2);
}

function b64decode(s) {
  return Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
}

/** Checks a C2SP signed note against a verifier key `<name>+<hex id>+<base64(0x01||key)>`. */
async function verifyNote(note, vkey) {
  // name "+" key id "+" base64 key; base64 itself may contain "+".
  const v = vkey.trim();
  const i = v.indexOf("+");
  const j = v.indexOf("+", i + 1);
  const name = v.slice(0, i);
  const keyB64 = v.slice(j + 1);
  const keyBytes = b64decode(keyB64);
  if (keyBytes[0] !== 1 || keyBytes.length !== 33) throw new Error("not an Ed25519 verifier key");
  const split = note.indexOf("\n\n");
  const text = note.slice(0, split + 1);
  const sigLine = note.slice(split + 2).split("\n").find((l) => l.startsWith(`\u2014 ${name} `));
  if (!sigLine) throw new Error("the checkpoint carries no signature by this log's key");
  const sig = b64decode(sigLine.split(" ")[2]).slice(4);
  const key = await crypto.subtle.importKey("raw", keyBytes.slice(1), { name: "Ed25519" }, false, ["verify"]);
  if (!(await crypto.subtle.verify({ name: "Ed25519" }, key, sig, enc8.encode(text)))) throw new Error("the checkpoint's signature does not verify");
  const lines = text.split("\n");
  return { origin: lines[0], size: Number(lines[1]), root: lines[2] };
}

let auditRecords = [];
const credentialInfo = new Map();

async function credentialText(id) {
  if (!credentialInfo.has(id)) {
    credentialInfo.set(id, api(`/api/v1/audit/credentials/${encodeURIComponent(id)}`, undefined, "GET").catch(() => null));
  }
  const c = await credentialInfo.get(id);
  if (!c) return `credential ${id.slice(0, 12)}…`;
  return `${c.user}'s "${c.name}" (${c.hardware ? "attested hardware" : "software or unattested"} passkey, AAGUID ${c.aaguid}${c.revoked_at ? ", since revoked" : ""})`;
}

async function renderAudit() {
  const q = document.getElementById("audit-search").value.trim().toLowerCase();
  const kind = document.getElementById("audit-kind").value;
  const outcome = document.getElementById("audit-outcome").value;
  const shown = auditRecords
    .filter((r) => (!kind || r.kind.startsWith(kind)) && (!outcome || r.outcome === outcome))
    .filter((r) => !q || r.raw.toLowerCase().includes(q))
    .slice(-500)
    .reverse();
  const rows = [];
  for (const r of shown) {
    const d = r.details || {};
    const signed = d.assertion ? `signed by ${await credentialText(d.assertion.credential_id)}` : "";
    const about = [r.vault, d.approval_id ? `approval ${String(d.approval_id).slice(0, 8)}` : "", d.operation && d.operation.action ? d.operation.action : "", typeof d.operation === "string" ? d.operation : "", d.reason || r.reason || ""].filter(Boolean).join(" · ");
    rows.push(el("tr", {}, nw(String(r.seq)), nw(when(r.time)), nw(r.kind), nw(r.actor), nw(r.outcome), wide(about, signed ? el("br") : null, signed)));
  }
  fill(document.querySelector("#audit tbody"), rows);
  document.getElementById("audit-count").textContent = `${shown.length} of ${auditRecords.length} records shown`;
}

async function auditPage() {
  const badge = document.getElementById("badge");
  const vkey = await (await fetch("/api/v1/audit/key")).text();
  const res = await fetch("/api/v1/audit/checkpoint", { method: "POST", credentials: "same-origin" });
  if (!res.ok) throw new Error(`cannot read the audit log (${res.status})`);
  const note = await res.text();
  let cp;
  try {
    cp = await verifyNote(note, vkey);
  } catch (e) {
    badge.textContent = `Checkpoint NOT verified: ${e.message}`;
    badge.className = "badge bad";
    throw e;
  }
  const full = cp.size <= FULL_VERIFY_LIMIT && new URLSearchParams(location.search).get("verify") !== "incremental";
  const raws = [];
  let after = full ? 0 : Math.max(0, cp.size - SHOWN_RECORDS);
  const first = after;
  while (after < cp.size) {
    const page = await api(`/api/v1/audit/records?after=${after}&limit=${Math.min(10000, cp.size - after)}`, undefined, "GET");
    if (!page.records.length) break;
    raws.push(...page.records);
    after = page.next;
  }
  const seenBefore = JSON.parse(localStorage.getItem(SEEN_KEY) || "null");
  const remember = () => localStorage.setItem(SEEN_KEY, JSON.stringify({ origin: cp.origin, size: cp.size, root: cp.root }));
  if (full) {
    const leaves = [];
    for (const raw of raws) leaves.push(await sha256(Uint8Array.of(0), enc8.encode(raw)));
    const root = btoa(String.fromCharCode(...(await merkleRoot(leaves))));
    if (raws.length !== cp.size || root !== cp.root) {
      badge.textContent = `Checkpoint NOT verified: the ${raws.length} records do not hash to the signed root`;
      badge.className = "badge bad";
    } else {
      badge.textContent = `Latest checkpoint verified: ${cp.size} records hash to the root signed by ${cp.origin}`;
      badge.className = "badge ok";
      remember();
    }
  } else if (seenBefore && seenBefore.origin === cp.origin && seenBefore.size <= cp.size) {
    // Too many records to rehash here: the log must extend what this browser verified before.
    const c = await api(`/api/v1/audit/proof/consistency?from=${seenBefore.size}&to=${cp.size}`, undefined, "GET");
    const ok = await consistent(seenBefore.size, cp.size, b64decode(seenBefore.root), b64decode(cp.root), c.proof.map(hexBytes));
    if (ok) {
      badge.textContent = `Latest checkpoint verified: signed by ${cp.origin}, and its ${cp.size} records extend the ${seenBefore.size} this browser verified before (consistency proof); the latest ${raws.length} are shown`;
      badge.className = "badge ok";
      remember();
    } else {
      badge.textContent = `Checkpoint NOT verified: the log no longer extends the ${seenBefore.size} records this browser verified before`;
      badge.className = "badge bad";
    }
  } else {
    badge.textContent = `Checkpoint signature verified (${cp.size} records, too many to rehash here; the latest ${raws.length} are shown): run strongroom audit verify on an export for the whole log`;
    badge.className = "badge ok";
  }
  if (first > 0) document.getElementById("audit-count").dataset.from = String(first + 1);
  auditRecords = raws.map((raw) => ({ raw, ...JSON.parse(raw) }));
  const kinds = [...new Set(auditRecords.map((r) => r.kind.split(".")[0]))].sort();
  document.getElementById("audit-kind").append(...kinds.map((k) => el("option", { value: k, text: k })));
  document.getElementById("audit-filter").addEventListener("submit", (e) => e.preventDefault());
  for (const id of ["audit-search", "audit-kind", "audit-outcome"]) {
    document.getElementById(id).addEventListener("input", guarded(renderAudit));
  }
  await renderAudit();
}

// ---------- wiring ----------

document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page;
  const d = document.body.dataset;
  const fail = (e) => status(e.message || String(e), true);
  // Links to pages the user's roles cannot use are hidden (the API refuses them anyway).
  if (document.querySelector("nav[aria-label=Console]")) {
    api("/api/v1/me", undefined, "GET").then((me) => {
      const server = (me.roles || []).filter((r) => !r.vault).map((r) => r.role);
      const has = (...roles) => roles.some((r) => server.includes(r));
      const hide = (href, yes) => { const a = document.querySelector(`nav a[href="${href}"]`); if (a) a.hidden = yes; };
      hide("/users", !has("owner", "security-admin"));
      hide("/audit", !has("owner", "security-admin", "auditor"));
      // A passkey added to this account since this session began: say so on every page.
      for (const n of me.notices || []) {
        const p = document.createElement("p");
        p.className = "status error";
        p.setAttribute("role", "alert");
        p.textContent = `A passkey named "${n.credential}" was added to your account at ${new Date(n.at * 1000).toLocaleString()}. If that was not you, revoke it under My passkeys.`;
        document.querySelector("main").prepend(p);
      }
    }).catch(() => {});
  }
  const logout = document.getElementById("nav-logout");
  if (logout) logout.addEventListener("click", guarded(async () => { await api("/api/v1/auth/logout", {}); location.assign("/login"); }));
  if (page === "vaults") vaultsPage().catch(fail);
  else if (page === "vault") { vaultControls(d.vault); vaultPage(d.vault).catch(fail); }
  else if (page === "snapshot") snapshotPage(d.vault, d.snapshot).catch(fail);
  else if (page === "restore") restorePage(d.restore).catch(fail);
  else if (page === "inbox") inboxPage().catch(fail);
  else if (page === "users") { usersControls(); usersPage().catch(fail); }
  else if (page === "audit") auditPage().catch(fail);
});
