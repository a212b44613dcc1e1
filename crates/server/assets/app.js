// Strongroom pages: the one script. Converts between WebAuthn's binary fields and the JSON
// (base64url) form the server speaks, and drives the enroll, sign-in, device and credential pages.
"use strict";

const b64u = {
  enc(buf) {
    const bytes = new Uint8Array(buf);
    let s = "";
    for (const b of bytes) s += String.fromCharCode(b);
    return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  },
  dec(str) {
    const pad = "=".repeat((4 - (str.length % 4)) % 4);
    const bin = atob((str + pad).replace(/-/g, "+").replace(/_/g, "/"));
    return Uint8Array.from(bin, (c) => c.charCodeAt(0)).buffer;
  },
};

function status(msg, isError) {
  const el = document.getElementById("status");
  if (!el) return;
  el.textContent = msg;
  el.className = isError ? "status error" : "status";
}

async function api(path, body, method) {
  const res = await fetch(path, {
    method: method || "POST",
    headers: body === undefined ? {} : { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  const text = await res.text();
  let data = {};
  try {
    data = text ? JSON.parse(text) : {};
  } catch (e) {
    // A body that is not JSON (a proxy's error page, a plain-text rejection): report the status.
    if (res.ok) throw new Error("unexpected answer from the server");
  }
  if (!res.ok) {
    const err = (data && data.error) || {};
    const e = new Error(err.message || ("request failed: " + res.status));
    e.code = err.code;
    throw e;
  }
  return data;
}

function creationOptions(options) {
  const pk = options.publicKey;
  pk.challenge = b64u.dec(pk.challenge);
  pk.user.id = b64u.dec(pk.user.id);
  (pk.excludeCredentials || []).forEach((c) => (c.id = b64u.dec(c.id)));
  return { publicKey: pk };
}

function requestOptions(options) {
  const pk = options.publicKey;
  pk.challenge = b64u.dec(pk.challenge);
  (pk.allowCredentials || []).forEach((c) => (c.id = b64u.dec(c.id)));
  const out = { publicKey: pk };
  return out;
}

function registrationJson(cred) {
  return {
    id: cred.id,
    rawId: b64u.enc(cred.rawId),
    type: cred.type,
    response: {
      attestationObject: b64u.enc(cred.response.attestationObject),
      clientDataJSON: b64u.enc(cred.response.clientDataJSON),
      transports: cred.response.getTransports ? cred.response.getTransports() : undefined,
    },
    extensions: cred.getClientExtensionResults ? cred.getClientExtensionResults() : {},
  };
}

function assertionJson(cred) {
  return {
    id: cred.id,
    rawId: b64u.enc(cred.rawId),
    type: cred.type,
    response: {
      authenticatorData: b64u.enc(cred.response.authenticatorData),
      clientDataJSON: b64u.enc(cred.response.clientDataJSON),
      signature: b64u.enc(cred.response.signature),
      userHandle: cred.response.userHandle ? b64u.enc(cred.response.userHandle) : null,
    },
    extensions: cred.getClientExtensionResults ? cred.getClientExtensionResults() : {},
  };
}

async function enroll(token) {
  status("Waiting for your authenticator…");
  const start = await api(`/api/v1/enroll/${encodeURIComponent(token)}/start`, {});
  const cred = await navigator.credentials.create(creationOptions(start.options));
  const name = (document.getElementById("cred-name") || {}).value || "";
  const done = await api(`/api/v1/enroll/${encodeURIComponent(token)}/finish`, {
    ceremony_id: start.ceremony_id,
    credential: registrationJson(cred),
    name,
  });
  status("Passkey created. You can now sign in.");
  return done;
}

async function signIn(username) {
  status("Waiting for your authenticator…");
  const start = await api("/api/v1/auth/login/start", username ? { username } : {});
  const cred = await navigator.credentials.get(requestOptions(start.options));
  const done = await api("/api/v1/auth/login/finish", { ceremony_id: start.ceremony_id, credential: assertionJson(cred) });
  status("Signed in.");
  return done;
}

async function approveDevice(userCode) {
  status("Confirm with your passkey…");
  const start = await api("/api/v1/device/approve/start", { user_code: userCode });
  const cred = await navigator.credentials.get(requestOptions(start.options));
  await api("/api/v1/device/approve/finish", { ceremony_id: start.ceremony_id, credential: assertionJson(cred) });
  status("Approved. You can return to your terminal.");
}

/** Approves (or, as its requester, confirms) approval `id` whose digest the user was shown. */
async function approveApproval(id, digest) {
  status("Confirm with your passkey…");
  const start = await api(`/api/v1/approvals/${encodeURIComponent(id)}/start`, {});
  if (start.digest !== digest) throw new Error("the operation changed; reload the page");
  const cred = await navigator.credentials.get(requestOptions(start.options));
  const done = await api(`/api/v1/approvals/${encodeURIComponent(id)}/finish`, { ceremony_id: start.ceremony_id, credential: assertionJson(cred) });
  if (done && done.kind === "critical") {
    status(done.status === "executed" ? "Approved. The operation ran." : done.status === "failed" ? `Approved, but the operation did not run: ${done.result.error}` : `Recorded. Still needed: ${done.waiting_for.join(", ")}.`);
  } else {
    status("Approved. The restore can start.");
  }
  return done;
}

/**
 * Conditional UI: once the user name field is focused, a discoverable sign-in waits in the
 * browser's autofill, where the user picks a passkey. Pressing the button instead cancels it.
 */
let conditional = null;
async function startConditional() {
  if (conditional || !window.PublicKeyCredential || !PublicKeyCredential.isConditionalMediationAvailable) return;
  if (!(await PublicKeyCredential.isConditionalMediationAvailable())) return;
  conditional = new AbortController();
  const signal = conditional.signal;
  try {
    const start = await api("/api/v1/auth/login/start", {});
    const cred = await navigator.credentials.get({ ...requestOptions(start.options), mediation: "conditional", signal });
    await api("/api/v1/auth/login/finish", { ceremony_id: start.ceremony_id, credential: assertionJson(cred) });
    status("Signed in.");
    location.assign(nextTarget());
  } catch (e) {
    if (!signal.aborted) status(e.message || String(e), true);
  }
}

// Where to go after signing in: the server already checked `next` (data-next); the page
// checks again by parsing it as a URL and keeping it only on this origin.
function nextTarget() {
  const n = document.body.dataset.next || new URLSearchParams(location.search).get("next") || "";
  try {
    const u = new URL(n, location.origin);
    if (u.origin === location.origin && (u.protocol === "http:" || u.protocol === "https:")) {
      return u.pathname + u.search;
    }
  } catch (_) {}
  return "/vaults";
}

async function loadCredentials() {
  const list = document.getElementById("credentials");
  const data = await api("/api/v1/me/credentials", undefined, "GET");
  list.innerHTML = "";
  for (const c of data.credentials) {
    const li = document.createElement("li");
    const state = c.revoked_at ? " (revoked)" : c.locked_at ? ` (locked: ${c.lock_reason || ""})` : "";
    const label = document.createElement("span");
    label.textContent = `${c.name}${state} — ${c.attestation_trusted ? "attested hardware" : "passkey"}, model ${c.aaguid}`;
    li.appendChild(label);
    if (!c.revoked_at) {
      const rename = document.createElement("button");
      rename.textContent = "Rename";
      rename.setAttribute("aria-label", `Rename ${c.name}`);
      rename.onclick = async () => {
        const name = prompt("New name", c.name);
        if (!name) return;
        try { await api(`/api/v1/me/credentials/${c.id}`, { name }, "PATCH"); loadCredentials(); }
        catch (e) { status(e.message, true); }
      };
      const revoke = document.createElement("button");
      revoke.textContent = "Revoke";
      revoke.setAttribute("aria-label", `Revoke ${c.name}`);
      revoke.onclick = async () => {
        try { await api(`/api/v1/me/credentials/${c.id}`, undefined, "DELETE"); loadCredentials(); }
        catch (e) { status(e.message, true); }
      };
      li.append(" ", rename, " ", revoke);
    }
    list.appendChild(li);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page;
  const run = (fn) => async (ev) => {
    ev.preventDefault();
    try { await fn(); } catch (e) { status(e.message || String(e), true); }
  };
  if (page === "enroll") {
    document.getElementById("create").onclick = run(async () => {
      await enroll(document.body.dataset.token);
      document.getElementById("after").hidden = false;
    });
  } else if (page === "login") {
    document.getElementById("username").addEventListener("focus", () => { startConditional(); }, { once: true });
    document.getElementById("signin").onclick = run(async () => {
      if (conditional) conditional.abort();
      await signIn(document.getElementById("username").value.trim());
      location.assign(nextTarget());
    });
  } else if (page === "device") {
    document.getElementById("approve").onclick = run(async () => approveDevice(document.getElementById("user-code").value));
    document.getElementById("deny").onclick = run(async () => {
      await api("/api/v1/device/deny", { user_code: document.getElementById("user-code").value });
      status("Denied. The device will not be signed in.");
    });
  } else if (page === "approval") {
    const id = document.body.dataset.approval;
    document.getElementById("approve").onclick = run(async () => {
      const done = await approveApproval(id, document.getElementById("digest").textContent);
      if (done && done.kind === "critical") {
        document.getElementById("approval-status").textContent = done.status;
        const waiting = document.getElementById("approval-waiting");
        if (waiting) waiting.textContent = done.waiting_for.length ? done.waiting_for.join(", ") : "nothing";
      } else {
        document.getElementById("approval-status").textContent = "approved";
        const follow = document.getElementById("follow");
        if (follow) follow.hidden = false;
      }
    });
    document.getElementById("deny").onclick = run(async () => {
      await api(`/api/v1/approvals/${encodeURIComponent(id)}/deny`, {});
      document.getElementById("approval-status").textContent = "denied";
      status("Denied. It will not run.");
    });
  } else if (page === "credentials") {
    loadCredentials().catch((e) => status(e.message, true));
    document.getElementById("add").onclick = run(async () => {
      let link;
      try {
        link = await api("/api/v1/me/credentials/add", {});
      } catch (e) {
        if (e.code !== "auth.insufficient_user_authentication") throw e;
        // Adding a passkey needs a fresh passkey sign-in: confirm with one you already have.
        status("Confirm with one of your passkeys first…");
        const me = await api("/api/v1/me", undefined, "GET");
        await signIn(me.username);
        link = await api("/api/v1/me/credentials/add", {});
      }
      location.assign(link.url);
    });
  }
});
