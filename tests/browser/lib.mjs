// Shared helpers of the browser tests: the server and CLI as child processes, Chromium contexts
// with a DevTools WebAuthn virtual authenticator, page outcomes and screenshots.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(HERE, "..", "..");
export const TARGET = process.env.CARGO_TARGET_DIR ? path.resolve(REPO, process.env.CARGO_TARGET_DIR) : path.join(REPO, "target");
export const BIN = process.env.STRONGROOM_BIN || path.join(TARGET, "debug", "strongroom");
export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
export const SHOTS = process.env.SCREENSHOT_DIR || path.join(HERE, "screenshots");
export const STEP_TIMEOUT = 15_000;

// Without the background-networking flags Chromium keeps trying to reach the (closed) network.
export const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

export const AUTHENTICATOR = {
  protocol: "ctap2",
  transport: "internal",
  hasResidentKey: true,
  hasUserVerification: true,
  isUserVerified: true,
  automaticPresenceSimulation: true,
};

/** Child processes still running (killed on exit). */
export const children = new Set();


export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Environment for child processes: no STRONGROOM_* settings leak in from the caller. */
export function cleanEnv(extra) {
  const env = { ...process.env };
  for (const k of Object.keys(env)) if (k.startsWith("STRONGROOM_")) delete env[k];
  return { ...env, RUST_LOG: env.RUST_LOG || "info", ...extra };
}

export function startChild(args, env) {
  const proc = spawn(BIN, args, { env, stdio: ["ignore", "pipe", "pipe"] });
  children.add(proc);
  proc.exited = new Promise((resolve) =>
    proc.on("close", (code, signal) => {
      children.delete(proc);
      resolve({ code, signal });
    }),
  );
  proc.stdoutText = "";
  proc.stderrText = "";
  proc.stdout.setEncoding("utf8").on("data", (d) => (proc.stdoutText += d));
  proc.stderr.setEncoding("utf8").on("data", (d) => (proc.stderrText += d));
  return proc;
}

/** Resolves with the match of the first stdout line matching `re`; rejects on exit or timeout. */
export function waitForLine(proc, re, what, timeoutMs = STEP_TIMEOUT) {
  return new Promise((resolve, reject) => {
    const check = () => {
      for (const line of proc.stdoutText.split("\n").slice(0, -1)) {
        const m = line.trim().match(re);
        if (m) return finish(resolve, m);
      }
    };
    const onExit = ({ code, signal }) =>
      finish(reject, new Error(`${what}: the process exited (${code ?? signal}) first; stderr:\n${proc.stderrText}`));
    const timer = setTimeout(
      () => finish(reject, new Error(`timed out waiting for ${what}; stdout:\n${proc.stdoutText}\nstderr:\n${proc.stderrText}`)),
      timeoutMs,
    );
    let settled = false;
    function finish(fn, v) {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      proc.stdout.off("data", check);
      fn(v);
    }
    proc.stdout.on("data", check);
    proc.exited.then(onExit);
    check();
  });
}

export async function waitForHealth(base, proc) {
  const deadline = Date.now() + STEP_TIMEOUT;
  while (Date.now() < deadline) {
    if (proc.exitCode !== null) throw new Error(`server exited (${proc.exitCode}):\n${proc.stderrText}`);
    try {
      const r = await fetch(`${base}/healthz`);
      if (r.ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`server did not become healthy:\n${proc.stderrText}`);
}

export async function stopChild(proc, signal = "SIGINT") {
  if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
  proc.kill(signal);
  const killer = setTimeout(() => proc.kill("SIGKILL"), 5_000);
  await proc.exited;
  clearTimeout(killer);
}

/** A fresh browser context and page with a DevTools WebAuthn virtual authenticator. */
export async function newContextWithAuthenticator(browser) {
  const context = await browser.newContext({ viewport: { width: 900, height: 700 } });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT);
  const cdp = await context.newCDPSession(page);
  await cdp.send("WebAuthn.enable", { enableUI: false });
  const { authenticatorId } = await cdp.send("WebAuthn.addVirtualAuthenticator", { options: AUTHENTICATOR });
  return { context, page, cdp, authenticatorId };
}

/** Waits until the page's status line shows an outcome (not a "waiting" prompt). */
export async function outcome(page) {
  const status = page.getByRole("status");
  await page.waitForFunction(
    () => {
      const t = (document.getElementById("status")?.textContent || "").trim();
      return t !== "" && !/^(Waiting for your authenticator|Confirm with your passkey)/.test(t);
    },
    null,
    { timeout: STEP_TIMEOUT },
  );
  return {
    text: (await status.textContent()).trim(),
    isError: await status.evaluate((el) => el.classList.contains("error")),
  };
}

export async function shot(page, name) {
  fs.mkdirSync(SHOTS, { recursive: true });
  const file = path.join(SHOTS, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  console.log(`screenshot: ${file}`);
  return file;
}

/** Base64 (standard or url-safe) to base64url without padding. */
export function b64url(s) {
  return s.replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

export async function sessionCookie(context, base) {
  return (await context.cookies(base)).find((c) => c.name === "sr_session");
}

/** Calls the API from inside the page (same origin, session cookie), returns {status, body}. */
export function apiFromPage(page, method, urlPath, body) {
  return page.evaluate(
    async ({ method, urlPath, body }) => {
      const r = await fetch(urlPath, {
        method,
        headers: body === undefined ? {} : { "Content-Type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
        credentials: "same-origin",
      });
      const text = await r.text();
      return { status: r.status, body: text ? JSON.parse(text) : null };
    },
    { method, urlPath, body },
  );
}

/** Enrolls a passkey on `page` from an enrollment link; returns the finish response body. */
export async function enrollFromLink(page, url, passkeyName, screenshot) {
  await page.goto(url);
  await page.getByRole("heading", { name: "Create your passkey" }).waitFor();
  if (passkeyName) await page.getByLabel("Name for this passkey (optional)").fill(passkeyName);
  if (screenshot) await shot(page, screenshot);
  const finish = page.waitForResponse((r) => r.url().endsWith("/finish") && r.request().method() === "POST");
  await page.getByRole("button", { name: "Create passkey" }).click();
  const resp = await finish;
  const result = await outcome(page);
  assert.equal(resp.status(), 200, `enroll finish: ${await resp.text()}`);
  assert.equal(result.isError, false, `enroll status: ${result.text}`);
  assert.match(result.text, /Passkey created/);
  return resp.json();
}

export function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

/** `promise`, or `fallback` after `ms` (the timer never keeps the process alive). */
export function orAfter(promise, ms, fallback) {
  let timer;
  const t = new Promise((r) => {
    timer = setTimeout(() => r(fallback), ms);
    timer.unref();
  });
  return Promise.race([promise, t]).finally(() => clearTimeout(timer));
}

/** Polls `cond` until it is true or `ms` pass. */
export async function until(cond, ms, what) {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

/** Starts `strongroom server` on a free port with its data in `dir`; waits for its first-start link. */
export async function startServer(dir, extra = []) {
  const port = await freePort();
  const base = `http://localhost:${port}`;
  const proc = startChild(["server", "--data-dir", path.join(dir, "data"), "--listen", `127.0.0.1:${port}`, "--public-url", base, ...extra], cleanEnv());
  const escaped = base.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const [enrollUrl] = await waitForLine(proc, new RegExp(`^${escaped}/enroll/[A-Za-z0-9_-]+$`), "the first-start enrollment URL");
  await waitForHealth(base, proc);
  return { proc, port, base, enrollUrl, dir };
}

process.on("exit", () => {
  for (const c of children) c.kill("SIGKILL");
});

/** A suite's set-up: the binary and Chromium are there, a server runs, a browser is open. */
export async function launch(tmp) {
  assert.ok(fs.existsSync(BIN), `no server binary at ${BIN}: run tests/browser/run.sh (it builds it)`);
  assert.ok(fs.existsSync(CHROMIUM), `no Chromium at ${CHROMIUM}: apt-get install chromium`);
  const server = await startServer(tmp);
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
  return { server, browser };
}

/** A suite's tear-down: everything stopped; the server's log kept (and named) on failure. */
export async function shutdown({ server, browser }, tmp) {
  if (browser) await browser.close().catch(() => {});
  for (const c of [...children]) if (c !== server?.proc) await stopChild(c, "SIGTERM");
  if (server) {
    await stopChild(server.proc);
    const log = path.join(tmp, "server.log");
    fs.writeFileSync(log, server.proc.stderrText);
    if (process.exitCode) console.log(`server log: ${log}`);
  }
  if (!process.exitCode) fs.rmSync(tmp, { recursive: true, force: true });
}
