// The web console in a real browser: Playwright drives Debian's Chromium with DevTools WebAuthn
// virtual authenticators against a real `strongroom server`; backups come from the real CLI.
//
// Scenarios run in order: an owner and a Security Admin enroll and sign in; the CLI backs up;
// the owner browses the snapshot, requests a restore in the console, approves it with a passkey
// and watches it complete; a critical operation the owner asks for is approved by the Security
// Admin in a second browser context; an approval whose authenticator reports no user
// verification is refused; the audit page verifies the log and shows who signed each approval.
// Screenshots of the main pages land in tests/browser/screenshots/.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import {
  STEP_TIMEOUT, cleanEnv, startChild, newContextWithAuthenticator,
  outcome, shot, apiFromPage, enrollFromLink, until, AUTHENTICATOR, launch, shutdown,
} from "./lib.mjs";

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "strongroom-console-"));
let server;
let browser;
let owner; // { context, page, cdp, authenticatorId }
let sam; // the Security Admin
let token; // the owner's access token, for the CLI

/** Signs the page's user in through /login (discoverable passkey); lands on the vaults. */
async function signIn(who) {
  await who.page.goto(`${server.base}/login`);
  await who.page.getByRole("button", { name: "Sign in with a passkey" }).click();
  await who.page.waitForURL(`${server.base}/vaults`);
}

function cli(args) {
  const env = cleanEnv({ XDG_CONFIG_HOME: path.join(tmp, "cli"), HOME: tmp });
  const proc = startChild(["--server", server.base, "--token", token, ...args], env);
  return proc.exited.then(({ code }) => ({ code, out: proc.stdoutText, err: proc.stderrText }));
}

/** No horizontal scrolling at a laptop's width. */
async function fitsWidth(page, what) {
  const { scroll, width } = await page.evaluate(() => ({ scroll: document.documentElement.scrollWidth, width: window.innerWidth }));
  assert.ok(scroll <= width, `${what} scrolls sideways: ${scroll} > ${width}`);
}

before(async () => {
  ({ server, browser } = await launch(tmp));
});

after(async () => {
  await shutdown({ server, browser }, tmp);
});

test("an owner and a Security Admin enroll and sign in; the CLI backs up", async () => {
  owner = await newContextWithAuthenticator(browser);
  await owner.page.setViewportSize({ width: 1280, height: 800 });
  await enrollFromLink(owner.page, server.enrollUrl, "Owner key");
  await signIn(owner);
  // The first Security Admin, enrolled from a link made on the server host: an account the
  // owner enrolled would not count as another person for the owner's own operations.
  const link = startChild(["admin", "enroll-link", "--data-dir", path.join(tmp, "data"), "--user", "sam", "--role", "security-admin"], cleanEnv());
  const made = await link.exited;
  assert.equal(made.code, 0, link.stderrText);
  const samUrl = link.stdoutText.match(/https?:\/\/\S+\/enroll\/\S+/)[0];
  sam = await newContextWithAuthenticator(browser);
  await sam.page.setViewportSize({ width: 1280, height: 800 });
  await enrollFromLink(sam.page, samUrl, "Sam's key");
  await signIn(sam);

  // A token for the CLI from a passkey sign-in in the owner's page (app.js's signIn).
  token = await owner.page.evaluate(() => signIn("owner").then((d) => d.access_token));
  assert.ok(token);
  let r = await cli(["vault", "create", "lab"]);
  assert.equal(r.code, 0, r.err);
  const src = path.join(tmp, "src");
  fs.mkdirSync(path.join(src, "docs"), { recursive: true });
  fs.writeFileSync(path.join(src, "docs", "plan.txt"), "the plan\n".repeat(1000));
  fs.writeFileSync(path.join(src, "data.bin"), Buffer.alloc(300_000, 7));
  r = await cli(["backup", "--vault", "lab", "--json", src]);
  assert.equal(r.code, 0, r.err);
});

test("vaults, a vault and a snapshot's tree with file sizes", async () => {
  const { page } = owner;
  await page.goto(`${server.base}/vaults`);
  const row = page.getByRole("table", { name: "Vaults" }).getByRole("row", { name: /lab/ });
  await row.waitFor();
  const text = await row.textContent();
  assert.match(text, /test/);
  assert.match(text, /\d+(\.\d)? (KB|MB|B)/, `size shown: ${text}`);
  assert.match(text, /retention 14 d/);
  await fitsWidth(page, "/vaults");
  await shot(page, "console-vaults");

  await page.getByRole("link", { name: "lab" }).click();
  await page.getByRole("heading", { name: "Vault lab" }).waitFor();
  const snapshots = page.getByRole("table", { name: "Snapshots" }).getByRole("row");
  await until(async () => (await snapshots.count()) === 2, STEP_TIMEOUT, "one snapshot row");
  await fitsWidth(page, "/vaults/lab");
  await shot(page, "console-vault");

  await page.getByRole("table", { name: "Snapshots" }).getByRole("link").first().click();
  await page.getByRole("heading", { name: /Snapshot .* of lab/ }).waitFor();
  await page.getByRole("table", { name: "Files" }).getByRole("link", { name: "src/" }).click();
  await page.getByRole("table", { name: "Files" }).getByRole("link", { name: "docs/" }).waitFor();
  const bin = await page.getByRole("table", { name: "Files" }).getByRole("row", { name: /data\.bin/ }).textContent();
  assert.match(bin, /300\.0 KB/, bin);
  await fitsWidth(page, "snapshot page");
  await shot(page, "console-snapshot");
});

test("a restore requested in the console, approved with a passkey, watched to the end", async () => {
  const { page } = owner;
  // Still on the snapshot's src/ folder: restore just that folder.
  assert.equal(await page.getByLabel(/Paths to restore/).inputValue(), "src");
  await page.getByLabel(/Restore into/).fill("lab-first");
  await page.getByRole("button", { name: "Request restore" }).click();
  await page.getByRole("link", { name: "open the approval page" }).click();
  await page.getByRole("heading", { name: "Approve a restore" }).waitFor();
  const digest = (await page.locator("#digest").textContent()).trim();
  assert.match(digest, /^[0-9a-f]{64}$/, "the page shows the operation's digest as text");
  for (const fact of ["lab", "lab-first", "owner", "src"]) assert.match(await page.locator("main dl").textContent(), new RegExp(fact));
  await shot(page, "console-approval-restore");
  await page.getByRole("button", { name: "Approve with passkey" }).click();
  const result = await outcome(page);
  assert.equal(result.isError, false, result.text);
  await page.getByRole("link", { name: "Follow the restore" }).click();
  await until(async () => (await page.locator("#job-status").textContent()) === "done", STEP_TIMEOUT, "the restore to finish");
  assert.match(await page.locator("#job").textContent(), /files.*every chunk verified/);
  await shot(page, "console-restore");
  const restored = path.join(tmp, "data", "restores", "lab-first", "src");
  assert.equal(fs.readFileSync(path.join(restored, "docs", "plan.txt"), "utf8"), "the plan\n".repeat(1000));
  assert.deepEqual(fs.readFileSync(path.join(restored, "data.bin")), Buffer.alloc(300_000, 7));
});

test("a critical operation: the owner asks and confirms, the Security Admin approves in another browser", async () => {
  const { page } = owner;
  await page.goto(`${server.base}/vaults/lab`);
  await page.getByLabel(/Retention in days/).fill("7");
  await page.getByRole("button", { name: "Set retention" }).click();
  await page.getByRole("link", { name: "Open the approval" }).click();
  await page.getByRole("heading", { name: "Approve a critical operation" }).waitFor();
  assert.match(await page.locator("main dl").textContent(), /set_retention/);
  await page.getByRole("button", { name: "Approve with passkey" }).click();
  let result = await outcome(page);
  assert.equal(result.isError, false, result.text);
  assert.match(result.text, /Still needed: 1 Security Admin approval/);
  // The owner alone changed nothing.
  assert.equal((await apiFromPage(page, "GET", "/api/v1/vaults/lab")).body.policy.retention_days, 14);

  await sam.page.goto(`${server.base}/approvals`);
  const item = sam.page.getByRole("list", { name: "Waiting for you" }).getByRole("listitem").first();
  await item.waitFor();
  assert.match(await item.textContent(), /set_retention on vault lab/);
  await fitsWidth(sam.page, "/approvals");
  await shot(sam.page, "console-inbox");
  await item.getByRole("link").click();
  await sam.page.getByRole("heading", { name: "Approve a critical operation" }).waitFor();
  await shot(sam.page, "console-approval-critical");
  await sam.page.getByRole("button", { name: "Approve with passkey" }).click();
  result = await outcome(sam.page);
  assert.equal(result.isError, false, result.text);
  assert.match(result.text, /The operation ran/);
  assert.equal((await apiFromPage(page, "GET", "/api/v1/vaults/lab")).body.policy.retention_days, 7);
});

test("an approval is refused when the authenticator reports no user verification", async () => {
  const { page } = owner;
  await page.goto(`${server.base}/vaults/lab`);
  await page.getByLabel("Immutability").selectOption("enabled");
  await page.getByRole("button", { name: "Set immutability" }).click();
  await page.getByRole("link", { name: "Open the approval" }).click();
  await page.getByRole("button", { name: "Approve with passkey" }).click();
  assert.equal((await outcome(page)).isError, false);
  const id = new URL(page.url()).pathname.split("/").pop();

  const { cdp, authenticatorId } = sam;
  await cdp.send("WebAuthn.setUserVerified", { authenticatorId, isUserVerified: false });
  // Chromium would decline on its own (the server requires user verification), so a tampering
  // client downgrades the options: the authenticator then answers without the UV flag, and the
  // server must refuse that assertion.
  await sam.page.route("**/api/v1/approvals/*/start", async (route) => {
    const resp = await route.fetch();
    const json = await resp.json();
    json.options.publicKey.userVerification = "discouraged";
    await route.fulfill({ response: resp, json });
  });
  await sam.page.goto(`${server.base}/approvals/${id}`);
  const finish = sam.page.waitForResponse((r) => r.url().endsWith("/finish"));
  await sam.page.getByRole("button", { name: "Approve with passkey" }).click();
  const resp = await finish;
  const result = await outcome(sam.page);
  await shot(sam.page, "console-approval-refused-no-uv");
  assert.equal(result.isError, true, result.text);
  assert.match(result.text, /user verification/i);
  assert.equal(resp.status() >= 400, true);
  const shown = await apiFromPage(sam.page, "GET", `/api/v1/approvals/${id}`);
  assert.equal(shown.body.status, "pending");
  assert.equal(shown.body.approvals_needed, 1, "the refused assertion counted for nothing");
  await sam.page.unroute("**/api/v1/approvals/*/start");
  await cdp.send("WebAuthn.setUserVerified", { authenticatorId, isUserVerified: true });
  // Sam denies it from the inbox instead.
  await sam.page.goto(`${server.base}/approvals`);
  await sam.page.getByRole("button", { name: `Deny critical ${id.slice(0, 8)}` }).click();
  await until(async () => (await apiFromPage(sam.page, "GET", `/api/v1/approvals/${id}`)).body.status === "denied", STEP_TIMEOUT, "the denial");
  assert.equal((await apiFromPage(page, "GET", "/api/v1/vaults/lab")).body.policy.immutability, "disabled");
});

test("the audit page verifies the checkpoint and shows who signed each approval", async () => {
  const { page } = owner;
  await page.goto(`${server.base}/audit`);
  const badge = page.locator("#badge");
  await until(async () => /verified/.test(await badge.textContent()), STEP_TIMEOUT, "the checkpoint badge");
  assert.match(await badge.textContent(), /^Latest checkpoint verified: \d+ records/);
  await page.getByLabel("Kind").selectOption("critical");
  await page.getByLabel("Search").fill("approve");
  const rows = page.getByRole("table", { name: "Audit records" }).getByRole("row");
  await until(async () => /signed by sam's "Sam's key"/.test(await page.getByRole("table", { name: "Audit records" }).textContent()), STEP_TIMEOUT, "sam's signed approval");
  assert.ok((await rows.count()) >= 2);
  await page.getByLabel("Kind").selectOption("restore");
  await until(async () => /signed by owner's "Owner key"/.test(await page.getByRole("table", { name: "Audit records" }).textContent()), STEP_TIMEOUT, "the owner's restore approval");
  await page.getByLabel("Kind").selectOption("");
  await page.getByLabel("Search").fill("");
  await fitsWidth(page, "/audit");
  await shot(page, "console-audit");
  // A log too large to rehash in the browser is checked against the checkpoint this browser
  // verified before, with a consistency proof (forced here on a small log).
  const seen = await page.evaluate(() => JSON.parse(localStorage.getItem("strongroom.audit.verified")));
  assert.ok(seen && seen.size > 0, "the verified checkpoint is remembered");
  await page.goto(`${server.base}/audit?verify=incremental`);
  await until(async () => /verified/.test(await badge.textContent()), STEP_TIMEOUT, "the incremental badge");
  assert.match(await badge.textContent(), new RegExp(`extend the ${seen.size} this browser verified before`));
  // The page's RFC 9162 check agrees with the server's proofs for every earlier size, and
  // refuses a wrong root.
  const checked = await page.evaluate(async (n) => {
    let ok = 0;
    for (let m = 1; m <= n; m++) {
      const c = await api(`/api/v1/audit/proof/consistency?from=${m}&to=${n}`, undefined, "GET");
      const proof = c.proof.map(hexBytes);
      if (!(await consistent(m, n, hexBytes(c.from_root), hexBytes(c.to_root), proof))) return `fails at ${m}`;
      const bad = hexBytes(c.from_root);
      bad[0] ^= 1;
      if (m < n && (await consistent(m, n, bad, hexBytes(c.to_root), proof))) return `accepts a wrong root at ${m}`;
      ok++;
    }
    return ok;
  }, seen.size);
  assert.equal(checked, seen.size);
  // A remembered root the log does not extend is reported, not papered over.
  await page.evaluate((s) => localStorage.setItem("strongroom.audit.verified", JSON.stringify({ ...s, root: btoa("x".repeat(32)) })), seen);
  await page.goto(`${server.base}/audit?verify=incremental`);
  await until(async () => /verified/.test(await badge.textContent()), STEP_TIMEOUT, "the failing badge");
  assert.match(await badge.textContent(), /^Checkpoint NOT verified: the log no longer extends/);
  await page.evaluate((s) => localStorage.setItem("strongroom.audit.verified", JSON.stringify(s)), seen);
  // The export button's archive verifies offline with the CLI.
  const download = page.waitForEvent("download");
  await page.getByRole("link", { name: /Export/ }).click();
  const file = path.join(tmp, "audit.tar");
  await (await download).saveAs(file);
  const verify = startChild(["audit", "verify", file], cleanEnv());
  const { code } = await verify.exited;
  assert.equal(code, 0, verify.stderrText);
  assert.match(verify.stdoutText, /OK: \d+ records.*passkey approvals re-verified/);
});

test("users, roles and the policy simulator; keyboard use", async () => {
  const { page } = owner;
  await page.goto(`${server.base}/users`);
  const users = page.getByRole("table", { name: "Users" });
  await users.getByRole("row", { name: /sam/ }).waitFor();
  // Invite a reader: a one-time link appears.
  await page.getByLabel("New user's name").fill("rita");
  await page.locator("#invite-role").selectOption("reader");
  await page.getByRole("button", { name: "Create invite" }).click();
  await until(async () => /\/enroll\//.test(await page.locator("#invite-link").textContent()), STEP_TIMEOUT, "the invite link");
  // Granting a role below Security Admin takes effect at once.
  await page.getByLabel("User", { exact: true }).fill("sam");
  await page.locator("#role-role").selectOption("auditor");
  await page.getByRole("button", { name: "Assign role" }).click();
  await page.getByRole("table", { name: "Role assignments" }).getByRole("row", { name: /sam auditor/ }).waitFor();
  await page.getByLabel("What would user").fill("sam");
  await page.getByLabel("need to").selectOption("restore-request");
  await page.getByLabel(/on vault/).fill("lab");
  await page.getByRole("button", { name: "Simulate" }).click();
  await page.getByRole("list").filter({ hasText: "With a software passkey" }).waitFor();
  assert.match(await page.locator("#sim-result").textContent(), /With a software passkey: refused: no role/);
  await fitsWidth(page, "/users");
  await shot(page, "console-users");
  // Keyboard: from the top of the page, Tab reaches the navigation, Enter follows a link.
  await page.goto(`${server.base}/vaults`);
  await page.keyboard.press("Tab");
  assert.equal(await page.evaluate(() => document.activeElement.textContent), "Vaults");
  await page.keyboard.press("Tab");
  await page.keyboard.press("Enter");
  await page.waitForURL(`${server.base}/approvals`);
});

test("conditional UI signs in from the user-name field; a second authenticator is added, renamed and revoked", async () => {
  const { page, cdp, authenticatorId } = owner;
  await page.getByRole("navigation", { name: "Console" }).getByRole("button", { name: "Sign out" }).click();
  await page.waitForURL(`${server.base}/login`);
  // Focusing the field starts a conditional (autofill) request; the virtual authenticator
  // picks the discoverable passkey, as a user choosing it from the autofill list would.
  assert.equal(await page.evaluate(() => PublicKeyCredential.isConditionalMediationAvailable()), true);
  await page.getByLabel(/User name/).focus();
  await page.waitForURL(`${server.base}/vaults`);

  // Add another authenticator: only the new one answers (the first is excluded anyway).
  const second = await cdp.send("WebAuthn.addVirtualAuthenticator", { options: { ...AUTHENTICATOR, transport: "usb" } });
  await cdp.send("WebAuthn.setAutomaticPresenceSimulation", { authenticatorId, enabled: false });
  await page.goto(`${server.base}/credentials`);
  await page.getByRole("button", { name: "Add another passkey" }).click();
  await page.getByRole("heading", { name: "Create your passkey" }).waitFor();
  await page.getByLabel("Name for this passkey (optional)").fill("Backup key");
  await page.getByRole("button", { name: "Create passkey" }).click();
  assert.match((await outcome(page)).text, /Passkey created/);
  await cdp.send("WebAuthn.setAutomaticPresenceSimulation", { authenticatorId, enabled: true });
  await page.goto(`${server.base}/credentials`);
  const items = page.getByRole("list", { name: "Your passkeys" }).getByRole("listitem");
  await until(async () => (await items.count()) === 2, STEP_TIMEOUT, "two passkeys listed");
  page.once("dialog", (d) => d.accept("Spare key"));
  await page.getByRole("button", { name: "Rename Backup key" }).click();
  await page.getByRole("button", { name: "Revoke Spare key" }).click();
  await until(async () => /Spare key \(revoked\)/.test(await page.getByRole("list", { name: "Your passkeys" }).textContent()), STEP_TIMEOUT, "the revoked key");
  await shot(page, "console-credentials");
  await cdp.send("WebAuthn.removeVirtualAuthenticator", { authenticatorId: second.authenticatorId });
});
