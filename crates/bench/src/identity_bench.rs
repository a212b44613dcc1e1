//! Verification throughput of the identity provider's two hot paths: a WebAuthn assertion
//! (ES256 from the software authenticator, full webauthn-rs checks) and an EdDSA access token.

use std::time::Instant;

use identity::token::{AccessClaims, StoredKey, ACCESS_TOKEN_SECONDS};
use identity::{RelyingParty, TokenSigner};
use serde::Serialize;
use testkit::softkey::SoftKey;

#[derive(Serialize)]
pub(crate) struct IdentityResult {
    pub(crate) assertions_verified_per_s: f64,
    pub(crate) assertions: usize,
    pub(crate) jwts_verified_per_s: f64,
    pub(crate) jwts: usize,
    pub(crate) jwts_signed_per_s: f64,
    pub(crate) note: &'static str,
}

pub(crate) fn run() -> anyhow::Result<IdentityResult> {
    let origin = "http://localhost:8440";
    let rp = RelyingParty::new("bench", &url::Url::parse(origin)?, Default::default())?;
    let mut key = SoftKey::new()?;
    let user = uuid::Uuid::new_v4();
    let (ccr, reg_state) = rp.start_registration(&user, "bench", "bench", Vec::new())?;
    let reg = key.register(origin, ccr)?;
    let cred = rp.finish_registration(&reg, &reg_state)?.credential;

    // Make the assertions first; only verification is timed.
    let n = 2000;
    let mut cases = Vec::with_capacity(n);
    for _ in 0..n {
        let (rcr, st) = rp.start_authentication(vec![cred.clone()])?;
        cases.push((key.assert(origin, rcr)?, st));
    }
    let start = Instant::now();
    for (pkc, st) in &cases {
        rp.finish_authentication(pkc, st, &cred)?;
    }
    let assertions_verified_per_s = n as f64 / start.elapsed().as_secs_f64();

    let now = 1_800_000_000;
    let signer = TokenSigner::new(origin, "strongroom", &[StoredKey::generate(&mut rand_core::OsRng, now)])?;
    let claims = AccessClaims {
        iss: origin.into(),
        sub: user.to_string(),
        aud: "strongroom".into(),
        exp: now + ACCESS_TOKEN_SECONDS,
        iat: now,
        auth_time: now,
        amr: vec!["swk".into(), "user".into()],
        acr: "phr".into(),
        sid: "bench-session".into(),
        jti: "bench".into(),
    };
    let jwts = 20_000;
    let start = Instant::now();
    let mut token = String::new();
    for _ in 0..jwts {
        token = signer.sign(&claims)?;
    }
    let jwts_signed_per_s = jwts as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    for _ in 0..jwts {
        signer.verify(&token, now)?;
    }
    let jwts_verified_per_s = jwts as f64 / start.elapsed().as_secs_f64();
    println!("passkey assertions verified: {assertions_verified_per_s:8.0}/s (one core, ES256)");
    println!("access tokens verified:      {jwts_verified_per_s:8.0}/s (one core, EdDSA)");
    println!("access tokens signed:        {jwts_signed_per_s:8.0}/s (one core, EdDSA)");
    Ok(IdentityResult {
        assertions_verified_per_s,
        assertions: n,
        jwts_verified_per_s,
        jwts,
        jwts_signed_per_s,
        note: "single thread; excludes HTTP and database; ES256 assertions from the software authenticator",
    })
}
