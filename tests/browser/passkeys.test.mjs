// Browser test of Strongroom's pages: Playwright (playwright-core) drives Debian's Chromium,
// whose DevTools WebAuthn virtual authenticator plays the passkey. A real `strongroom server`
// runs on loopback; `strongroom login` runs as a real child process.
//
// Run with `bash tests/browser/run.sh` (installs Chromium and playwright-core if needed and
// builds the binary). Environment: STRONGROOM_BIN (the binary; default
// $CARGO_TARGET_DIR or <repo>/target, then debug/strongroom), CHROMIUM (default /usr/bin/chromium),
// SCREENSHOT_DIR (default tests/browser/screenshots).
//
// The scenarios run in order and build on each other (enroll, then sign in with that passkey,
// then approve a device login while signed in, then refusals for a second user).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import {
  STEP_TIMEOUT, cleanEnv, startChild, waitForLine, stopChild,
  newContextWithAuthenticator as newContext, outcome, shot, b64url, sessionCookie as cookieAt, apiFromPage,
  enrollFromLink, orAfter, until, launch, shutdown,
} from "./lib.mjs";

// ---------- shared state (scenarios run in order) ----------

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "strongroom-browser-"));
let server; // { proc, port, base, enrollUrl, log }
let browser;
let owner; // { context, page, cdp, authenticatorId, userId, credentialId }

/**
 * Clicks "Sign in with a passkey" on /login with an empty user name (discoverable credential)
 * for a sign-in that should fail; returns the status outcome and the login/finish response
 * (null if the browser never sent one).
 */
async function failedSignIn({ page }) {
  await page.goto(`${server.base}/login`);
  await page.getByRole("heading", { name: "Sign in" }).waitFor();
  assert.equal(await page.getByLabel(/User name/).inputValue(), "");
  const finish = page
    .waitForResponse((r) => r.url().endsWith("/api/v1/auth/login/finish"), { timeout: STEP_TIMEOUT })
    .catch(() => null);
  await page.getByRole("button", { name: "Sign in with a passkey" }).click();
  const result = await outcome(page);
  const resp = await orAfter(finish, 2_000, null);
  return { result, finish: resp, body: resp ? await resp.json() : null };
}

const newContextWithAuthenticator = () => newContext(browser);
const sessionCookie = (context) => cookieAt(context, server.base);

// ---------- set-up and tear-down ----------

before(async () => {
  ({ server, browser } = await launch(tmp));
});

after(async () => {
  await shutdown({ server, browser }, tmp);
});

// ---------- scenarios ----------

test("enroll the first owner from the first-start link", async () => {
  owner = await newContextWithAuthenticator();
  const { page, cdp, authenticatorId } = owner;
  const body = await enrollFromLink(page, server.enrollUrl, "Browser test key", "enroll");
  assert.ok(body.user_id && body.credential_id, `finish body: ${JSON.stringify(body)}`);
  assert.equal(await page.getByRole("link", { name: "Continue to sign in" }).isVisible(), true);

  const { credentials } = await cdp.send("WebAuthn.getCredentials", { authenticatorId });
  assert.equal(credentials.length, 1, "the authenticator holds one credential");
  const [cred] = credentials;
  assert.equal(cred.rpId, "localhost");
  assert.equal(cred.isResidentCredential, true, "a discoverable credential was created");
  assert.equal(b64url(cred.credentialId), body.credential_id, "the server registered the authenticator's credential");
  owner.userId = body.user_id;
  owner.credentialId = body.credential_id;

  // The link is one-time: starting another ceremony with it is refused.
  const again = await apiFromPage(page, "POST", new URL(server.enrollUrl).pathname.replace("/enroll/", "/api/v1/enroll/") + "/start", {});
  assert.equal(again.status, 410);
  assert.equal(again.body.error.code, "enroll.link_invalid");
});

test("sign in with the discoverable passkey and see it listed", async () => {
  assert.ok(owner, "needs the enrolled owner");
  const { page, context } = owner;
  assert.equal(await sessionCookie(context), undefined, "not signed in before");
  await page.goto(`${server.base}/login`);
  await page.getByRole("heading", { name: "Sign in" }).waitFor();
  await shot(page, "login");
  await page.getByRole("button", { name: "Sign in with a passkey" }).click();
  // Signed in, the console opens on the vaults.
  await page.waitForURL(`${server.base}/vaults`);
  await page.getByRole("navigation", { name: "Console" }).getByRole("link", { name: "My passkeys" }).click();
  await page.waitForURL(`${server.base}/credentials`);
  await page.getByRole("heading", { name: "My passkeys" }).waitFor();

  const items = page.getByRole("list", { name: "Your passkeys" }).getByRole("listitem");
  await items.first().waitFor();
  assert.equal(await items.count(), 1);
  const text = await items.first().textContent();
  assert.match(text, /Browser test key/);
  assert.doesNotMatch(text, /revoked|locked/);
  await shot(page, "credentials");

  // Rename through the page (the name is asked for in a prompt).
  page.once("dialog", (d) => d.accept("Owner laptop"));
  await page.getByRole("button", { name: "Rename Browser test key" }).click();
  await page.getByRole("button", { name: "Rename Owner laptop" }).waitFor();
  assert.match(await items.first().textContent(), /^Owner laptop/);

  const cookie = await sessionCookie(context);
  assert.ok(cookie, "a session cookie was set");
  assert.equal(cookie.httpOnly, true);
  assert.equal(cookie.sameSite, "Strict");

  const me = await apiFromPage(page, "GET", "/api/v1/me");
  assert.equal(me.status, 200);
  assert.equal(me.body.username, "owner");
  assert.equal(me.body.user_id, owner.userId);
  assert.deepEqual(me.body.roles, [{ role: "owner" }]);
  assert.ok(me.body.amr.includes("user"), `amr ${JSON.stringify(me.body.amr)} records user verification`);

  const creds = await apiFromPage(page, "GET", "/api/v1/me/credentials");
  assert.equal(creds.body.credentials.length, 1);
  assert.equal(creds.body.credentials[0].id, owner.credentialId);
  assert.ok(creds.body.credentials[0].last_used_at, "the sign-in was recorded on the credential");
});

test("approve a device login from `strongroom login`", async () => {
  assert.ok(owner && (await sessionCookie(owner.context)), "needs the signed-in owner");
  const { page } = owner;
  const config = path.join(tmp, "cli-config");
  fs.mkdirSync(config, { recursive: true });
  const env = cleanEnv({ XDG_CONFIG_HOME: config, HOME: tmp });
  const cli = startChild(["login", "--server", server.base], env);
  try {
    const escaped = server.base.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    const [url, userCode] = await waitForLine(
      cli,
      new RegExp(`${escaped}/device\\?user_code=([A-Z0-9]{4}-[A-Z0-9]{4})`),
      "the verification URL from strongroom login",
    );
    // The CLI also prints the code on its own for the user to compare.
    await until(() => new RegExp(`code:\\s+${userCode}`).test(cli.stdoutText), 5_000, "the user code line");

    // Signed out, the approval page sends the user to sign in first and back afterwards.
    const stranger = await browser.newPage();
    try {
      await stranger.goto(url);
      const landed = new URL(stranger.url());
      assert.equal(landed.pathname, "/login");
      assert.equal(landed.searchParams.get("next"), `/device?user_code=${userCode}`);
    } finally {
      await stranger.context().close();
    }

    await page.goto(url);
    await page.getByRole("heading", { name: "Approve a device login" }).waitFor();
    assert.equal(await page.getByLabel("Code").inputValue(), userCode, "the page shows the code the CLI printed");
    await shot(page, "device");
    await page.getByRole("button", { name: "Approve with passkey" }).click();
    const result = await outcome(page);
    assert.equal(result.isError, false, `approval status: ${result.text}`);
    assert.match(result.text, /Approved/);

    // The CLI polls every 5 seconds (the server's interval).
    const exit = await orAfter(cli.exited, 30_000, { code: "timeout" });
    assert.equal(exit.code, 0, `strongroom login exit; stdout:\n${cli.stdoutText}\nstderr:\n${cli.stderrText}`);
    assert.match(cli.stdoutText, /Signed in/);
  } finally {
    await stopChild(cli, "SIGTERM");
  }

  const stored = path.join(config, "strongroom", "login.json");
  assert.equal(fs.statSync(stored).mode & 0o777, 0o600, "the stored login is private");

  const whoami = startChild(["whoami", "--json"], env);
  const { code } = await whoami.exited;
  assert.equal(code, 0, `whoami failed:\n${whoami.stderrText}`);
  const me = JSON.parse(whoami.stdoutText);
  assert.equal(me.username, "owner");
  assert.equal(me.user_id, owner.userId);
  assert.deepEqual(me.roles, [{ role: "owner" }]);
});

test("the server refuses sign-in without user verification and with a bogus signature", async () => {
  assert.ok(owner && (await sessionCookie(owner.context)), "needs the signed-in owner");
  // A second user with a passkey of their own, invited by the owner.
  const invite = await apiFromPage(owner.page, "POST", "/api/v1/invites", { username: "bob", role: "reader" });
  assert.equal(invite.status, 200, JSON.stringify(invite.body));
  assert.ok(invite.body.url.startsWith(`${server.base}/enroll/`), invite.body.url);

  const bob = await newContextWithAuthenticator();
  try {
    const enrolled = await enrollFromLink(bob.page, invite.body.url, "Bob's key");
    const { cdp, authenticatorId } = bob;

    // 1. The authenticator does not verify the user. The server's options require user
    // verification, so Chromium already declines on its own and sends nothing (should a
    // browser send the assertion anyway, the server must refuse it)...
    await cdp.send("WebAuthn.setUserVerified", { authenticatorId, isUserVerified: false });
    const local = await failedSignIn(bob);
    assert.equal(local.result.isError, true, `status: ${local.result.text}`);
    if (local.finish) {
      assert.equal(local.finish.status(), 401);
      assert.equal(local.body.error.code, "webauthn.user_not_verified");
    }
    assert.equal(await sessionCookie(bob.context), undefined);

    // ...so to prove the server enforces it, a tampering client downgrades the options to
    // userVerification "discouraged": the authenticator then answers without the UV flag,
    // and the server must refuse that assertion.
    await bob.page.route("**/api/v1/auth/login/start", async (route) => {
      const resp = await route.fetch();
      const json = await resp.json();
      json.options.publicKey.userVerification = "discouraged";
      await route.fulfill({ response: resp, json });
    });
    const noUv = await failedSignIn(bob);
    await bob.page.unroute("**/api/v1/auth/login/start");
    await shot(bob.page, "login-refused-no-uv");
    assert.equal(noUv.result.isError, true, `status: ${noUv.result.text}`);
    assert.match(noUv.result.text, /user verification/i);
    assert.ok(noUv.finish, "the assertion reached the server");
    assert.equal(noUv.finish.status(), 401);
    assert.equal(noUv.body.error.code, "webauthn.user_not_verified");
    assert.equal(await sessionCookie(bob.context), undefined, "no session without user verification");
    assert.equal(new URL(bob.page.url()).pathname, "/login");

    // 2. The authenticator signs wrongly.
    await cdp.send("WebAuthn.setUserVerified", { authenticatorId, isUserVerified: true });
    await cdp.send("WebAuthn.setResponseOverrideBits", { authenticatorId, isBogusSignature: true });
    const bogus = await failedSignIn(bob);
    await shot(bob.page, "login-refused-bogus-signature");
    assert.equal(bogus.result.isError, true, `status: ${bogus.result.text}`);
    assert.match(bogus.result.text, /did not verify/i);
    assert.ok(bogus.finish, "the assertion reached the server");
    assert.equal(bogus.finish.status(), 401);
    assert.equal(bogus.body.error.code, "webauthn.bad_signature");
    assert.equal(await sessionCookie(bob.context), undefined, "no session with a bogus signature");

    // Control: with the bits cleared the same passkey signs in, as bob the reader.
    await cdp.send("WebAuthn.setResponseOverrideBits", { authenticatorId, isBogusSignature: false });
    await bob.page.goto(`${server.base}/login`);
    await bob.page.getByRole("button", { name: "Sign in with a passkey" }).click();
    await bob.page.waitForURL(`${server.base}/vaults`);
    const me = await apiFromPage(bob.page, "GET", "/api/v1/me");
    assert.equal(me.status, 200);
    assert.equal(me.body.username, "bob");
    assert.equal(me.body.user_id, enrolled.user_id);
    assert.deepEqual(me.body.roles, [{ role: "reader" }]);
    assert.ok(await sessionCookie(bob.context));
  } finally {
    await bob.context.close();
  }
});

test("the pages report an error answer that is not JSON", async () => {
  // E.g. a proxy's HTML error page in front of the server.
  const page = await browser.newPage();
  try {
    await page.route("**/api/v1/auth/login/start", (route) =>
      route.fulfill({ status: 502, contentType: "text/html", body: "<html><body>Bad Gateway</body></html>" }),
    );
    await page.goto(`${server.base}/login`);
    await page.getByRole("button", { name: "Sign in with a passkey" }).click();
    const result = await outcome(page);
    assert.equal(result.isError, true);
    assert.equal(result.text, "request failed: 502");
  } finally {
    await page.context().close();
  }
});
