//! The identity provider end to end: real WebAuthn ceremonies (software authenticator) over
//! real HTTP on loopback, against a server with a real SQLite file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_owner_enrolls_signs_in_and_sees_their_roles() {
    let s = spawn().await;
    let link = s.first_link().await;
    assert!(link.starts_with(&format!("{}/enroll/", s.base)));
    let mut key = SoftKey::new().unwrap();
    let (st, v) = s.enroll(&mut key, &link).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert!(v["user_id"].is_string() && v["credential_id"].is_string());
    // Discoverable sign-in (no user name) and by user name.
    let token = s.token(&mut key, None).await;
    let (st, me) = s.get("/api/v1/me", Some(&token)).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(me["username"], "owner");
    assert_eq!(me["roles"], json!([{"role": "owner"}]));
    assert_eq!(me["amr"], json!(["swk", "user"]), "a software key never claims hardware");
    assert_eq!(me["acr"], "phr");
    let token2 = s.token(&mut key, Some("owner")).await;
    assert_eq!(s.get("/api/v1/me", Some(&token2)).await.0, StatusCode::OK);
    // The link was single-use; a second start is refused.
    let (st, v) = s.post(&format!("/api/v1/enroll/{}/start", Srv::token_of(&link)), json!({}), None).await;
    assert_eq!((st, code(&v)), (StatusCode::GONE, "enroll.link_invalid"));
    // The device attestation log recorded the enrollment with its details.
    let events = s.state.store.audit_events(0, 100).await.unwrap();
    let enroll = events.iter().find(|e| e.event.kind == "enroll" && e.event.outcome == "success").unwrap();
    let d: Value = serde_json::from_str(&enroll.event.details_json).unwrap();
    assert_eq!(d["attestation_format"], "packed");
    assert_eq!(d["aaguid"], "0fb9bcbc-a0d4-4042-bbb0-559bc1631e28");
    assert_eq!(d["attestation_trusted"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_finish_is_refused_for_enrollment_and_sign_in() {
    let s = spawn().await;
    let link = s.first_link().await;
    let mut key = SoftKey::new().unwrap();
    let token = Srv::token_of(&link);
    let (_, start) = s.post(&format!("/api/v1/enroll/{token}/start"), json!({}), None).await;
    let cred = key.register(&s.base, serde_json::from_value(start["options"].clone()).unwrap()).unwrap();
    let body = json!({"ceremony_id": start["ceremony_id"], "credential": cred});
    assert_eq!(s.post(&format!("/api/v1/enroll/{token}/finish"), body.clone(), None).await.0, StatusCode::OK);
    let (st, v) = s.post(&format!("/api/v1/enroll/{token}/finish"), body, None).await;
    assert_eq!((st, code(&v)), (StatusCode::BAD_REQUEST, "webauthn.ceremony_invalid"));

    let start = s.login_start(None).await;
    let pkc = key.assert(&s.base, serde_json::from_value(start["options"].clone()).unwrap()).unwrap();
    let body = json!({"ceremony_id": start["ceremony_id"], "credential": pkc});
    assert_eq!(s.post("/api/v1/auth/login/finish", body.clone(), None).await.0, StatusCode::OK);
    let (st, v) = s.post("/api/v1/auth/login/finish", body, None).await;
    assert_eq!((st, code(&v)), (StatusCode::BAD_REQUEST, "webauthn.ceremony_invalid"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assertion_for_another_ceremony_wrong_origin_and_wrong_rp_id_are_refused() {
    let s = spawn().await;
    let mut key = SoftKey::new().unwrap();
    assert_eq!(s.enroll(&mut key, &s.first_link().await).await.0, StatusCode::OK);
    // Signed for ceremony A, presented to ceremony B.
    let a = s.login_start(None).await;
    let b = s.login_start(None).await;
    let pkc = key.assert(&s.base, serde_json::from_value(a["options"].clone()).unwrap()).unwrap();
    let (st, v) =
        s.post("/api/v1/auth/login/finish", json!({"ceremony_id": b["ceremony_id"], "credential": pkc}), None).await;
    assert_eq!((st, code(&v)), (StatusCode::BAD_REQUEST, "webauthn.mismatch"), "{v}");
    // Wrong origin (another port on localhost: a different origin).
    let c = s.login_start(None).await;
    let pkc = key.assert("http://localhost:1", serde_json::from_value(c["options"].clone()).unwrap()).unwrap();
    let (st, v) =
        s.post("/api/v1/auth/login/finish", json!({"ceremony_id": c["ceremony_id"], "credential": pkc}), None).await;
    assert_eq!((st, code(&v)), (StatusCode::BAD_REQUEST, "webauthn.mismatch"), "{v}");
    // Wrong RP id: the authenticator data names another relying party.
    let d = s.login_start(None).await;
    let mut pkc = key.assert(&s.base, serde_json::from_value(d["options"].clone()).unwrap()).unwrap();
    let mut ad: Vec<u8> = pkc.response.authenticator_data.clone();
    ad[0] ^= 0xff;
    pkc.response.authenticator_data = ad;
    let (st, v) =
        s.post("/api/v1/auth/login/finish", json!({"ceremony_id": d["ceremony_id"], "credential": pkc}), None).await;
    assert_eq!((st, code(&v)), (StatusCode::BAD_REQUEST, "webauthn.mismatch"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_user_verification_and_bogus_signatures_are_refused() {
    let s = spawn().await;
    let mut key = SoftKey::new().unwrap();
    assert_eq!(s.enroll(&mut key, &s.first_link().await).await.0, StatusCode::OK);
    // The authenticator is asked for no UV: a valid signature without the UV flag.
    let start = s.login_start(None).await;
    let mut opts: webauthn_rs_proto::RequestChallengeResponse =
        serde_json::from_value(start["options"].clone()).unwrap();
    opts.public_key.user_verification = webauthn_rs_proto::UserVerificationPolicy::Preferred;
    let pkc = key.assert(&s.base, opts).unwrap();
    let (st, v) = s
        .post("/api/v1/auth/login/finish", json!({"ceremony_id": start["ceremony_id"], "credential": pkc}), None)
        .await;
    assert_eq!((st, code(&v)), (StatusCode::UNAUTHORIZED, "webauthn.user_not_verified"), "{v}");
    // A flipped signature byte.
    let start = s.login_start(None).await;
    let mut pkc = key.assert(&s.base, serde_json::from_value(start["options"].clone()).unwrap()).unwrap();
    let mut sig: Vec<u8> = pkc.response.signature.clone();
    let n = sig.len();
    sig[n - 1] ^= 1;
    pkc.response.signature = sig;
    let (st, v) = s
        .post("/api/v1/auth/login/finish", json!({"ceremony_id": start["ceremony_id"], "credential": pkc}), None)
        .await;
    assert_eq!((st, code(&v)), (StatusCode::UNAUTHORIZED, "webauthn.bad_signature"), "{v}");
    // The first refusal from this address is its own record; the next is tallied and summed
    // up in one `auth.refused_summary` record when its window ends.
    assert_eq!(s.audit_kinds().await.iter().filter(|k| *k == "login").count(), 1, "the first refusal is audited");
    assert_eq!(server::audit_refusal_summaries(&s.state, true).await.unwrap(), 1);
    assert!(s.audit_kinds().await.contains(&"auth.refused_summary".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloned_authenticator_is_detected_and_locked() {
    let s = spawn().await;
    let mut key = SoftKey::new().unwrap();
    assert_eq!(s.enroll(&mut key, &s.first_link().await).await.0, StatusCode::OK);
    let clone = key.snapshot().unwrap();
    let t1 = s.token(&mut key, None).await;
    let _t2 = s.token(&mut key, None).await;
    let mut cloned = SoftKey::restore(&clone).unwrap();
    let (st, v) = s.login(&mut cloned, None).await;
    assert_eq!((st, code(&v)), (StatusCode::UNAUTHORIZED, "webauthn.counter_regression"), "{v}");
    // The credential is locked: even the genuine authenticator is refused now, and sessions ended.
    let (st, v) = s.login(&mut key, None).await;
    assert_eq!((st, code(&v)), (StatusCode::UNAUTHORIZED, "webauthn.unknown_credential"), "{v}");
    assert_eq!(s.get("/api/v1/me", Some(&t1)).await.0, StatusCode::UNAUTHORIZED);
    assert!(s.audit_kinds().await.contains(&"security.counter_regression".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_revoked_credentials_are_refused_and_revocation_ends_sessions() {
    let s = spawn().await;
    let mut a = SoftKey::new().unwrap();
    assert_eq!(s.enroll(&mut a, &s.first_link().await).await.0, StatusCode::OK);
    let ta = s.token(&mut a, Some("owner")).await;
    // A second authenticator for the same user, from an "add another passkey" link.
    let (st, v) = s.post("/api/v1/me/credentials/add", json!({}), Some(&ta)).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let mut b = SoftKey::new().unwrap();
    let (st, added) = s.enroll(&mut b, v["url"].as_str().unwrap()).await;
    assert_eq!(st, StatusCode::OK, "{added}");
    let tb = s.token(&mut b, Some("owner")).await;
    let (_, creds) = s.get("/api/v1/me/credentials", Some(&tb)).await;
    assert_eq!(creds["credentials"].as_array().unwrap().len(), 2);
    // Revoke A using B's session: A's token dies at once, A cannot sign in.
    let a_id = creds["credentials"].as_array().unwrap().iter().find(|c| c["id"] != added["credential_id"]).unwrap()
        ["id"]
        .as_str()
        .unwrap()
        .to_string();
    let resp = s.http.delete(format!("{}/api/v1/me/credentials/{a_id}", s.base)).bearer_auth(&tb).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(s.get("/api/v1/me", Some(&ta)).await.0, StatusCode::UNAUTHORIZED);
    let (st, v) = s.login(&mut a, None).await;
    assert_eq!((st, code(&v)), (StatusCode::UNAUTHORIZED, "webauthn.unknown_credential"), "{v}");
    // The last credential cannot be revoked.
    let b_id = added["credential_id"].as_str().unwrap();
    let resp = s.http.delete(format!("{}/api/v1/me/credentials/{b_id}", s.base)).bearer_auth(&tb).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    // An authenticator the server never saw.
    let mut stranger = SoftKey::new().unwrap();
    let other = spawn().await;
    assert_eq!(other.enroll(&mut stranger, &other.first_link().await).await.0, StatusCode::OK);
    let start = s.login_start(None).await;
    let pkc = stranger.assert(&s.base, serde_json::from_value(start["options"].clone()).unwrap()).unwrap();
    let (st, v) = s
        .post("/api/v1/auth/login/finish", json!({"ceremony_id": start["ceremony_id"], "credential": pkc}), None)
        .await;
    assert_eq!((st, code(&v)), (StatusCode::UNAUTHORIZED, "webauthn.unknown_credential"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_ceremonies_and_oversized_credential_ids_are_refused() {
    let s = spawn().await;
    let mut key = SoftKey::new().unwrap();
    assert_eq!(s.enroll(&mut key, &s.first_link().await).await.0, StatusCode::OK);
    let start = s.login_start(None).await;
    let pkc = key.assert(&s.base, serde_json::from_value(start["options"].clone()).unwrap()).unwrap();
    s.state.clock.advance(server::state::CEREMONY_SECONDS + 1);
    let (st, v) = s
        .post("/api/v1/auth/login/finish", json!({"ceremony_id": start["ceremony_id"], "credential": pkc}), None)
        .await;
    assert_eq!((st, code(&v)), (StatusCode::BAD_REQUEST, "webauthn.ceremony_invalid"), "{v}");
    let start = s.login_start(None).await;
    let mut pkc = key.assert(&s.base, serde_json::from_value(start["options"].clone()).unwrap()).unwrap();
    pkc.raw_id = vec![7u8; 1024];
    let (st, v) = s
        .post("/api/v1/auth/login/finish", json!({"ceremony_id": start["ceremony_id"], "credential": pkc}), None)
        .await;
    assert_eq!((st, code(&v)), (StatusCode::BAD_REQUEST, "webauthn.credential_id_too_long"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_forged_and_alg_none_tokens_are_refused() {
    use base64::Engine as _;
    let s = spawn().await;
    let mut key = SoftKey::new().unwrap();
    assert_eq!(s.enroll(&mut key, &s.first_link().await).await.0, StatusCode::OK);
    let token = s.token(&mut key, None).await;
    assert_eq!(s.get("/api/v1/me", Some(&token)).await.0, StatusCode::OK);
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let parts: Vec<&str> = token.split('.').collect();
    let payload: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let mut forged = payload.clone();
    forged["sub"] = json!("someone-else");
    let forged_token = format!("{}.{}.{}", parts[0], b64(forged.to_string().as_bytes()), parts[2]);
    let (st, v) = s.get("/api/v1/me", Some(&forged_token)).await;
    assert_eq!((st, code(&v)), (StatusCode::UNAUTHORIZED, "auth.unauthenticated"));
    let none = format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), parts[1]);
    assert_eq!(s.get("/api/v1/me", Some(&none)).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(s.get("/api/v1/me", Some("garbage")).await.0, StatusCode::UNAUTHORIZED);
    // No credentials at all (a client without the session cookie).
    let bare = reqwest::Client::new();
    assert_eq!(bare.get(format!("{}/api/v1/me", s.base)).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    s.state.clock.advance(identity::token::ACCESS_TOKEN_SECONDS + 60);
    assert_eq!(s.get("/api/v1/me", Some(&token)).await.0, StatusCode::UNAUTHORIZED, "expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_login_end_to_end_and_refresh_reuse_revokes_the_family() {
    let s = spawn().await;
    let mut key = SoftKey::new().unwrap();
    assert_eq!(s.enroll(&mut key, &s.first_link().await).await.0, StatusCode::OK);
    let form = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
    let resp = s
        .http
        .post(format!("{}/api/v1/oauth/device_authorization", s.base))
        .form(&form(&[("client_id", "strongroom-cli")]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let auth: Value = resp.json().await.unwrap();
    let device_code = auth["device_code"].as_str().unwrap().to_string();
    let poll = || async {
        let r = s
            .http
            .post(format!("{}/api/v1/oauth/token", s.base))
            .form(&form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("device_code", &device_code),
            ]))
            .send()
            .await
            .unwrap();
        (r.status(), r.json::<Value>().await.unwrap())
    };
    let (st, v) = poll().await;
    assert_eq!((st, v["error"].as_str()), (StatusCode::BAD_REQUEST, Some("authorization_pending")));
    let (_, v) = poll().await;
    assert_eq!(v["error"], "slow_down", "polling faster than the interval");
    // The user approves in the browser: signs in, then confirms the code with a passkey.
    let t = s.token(&mut key, None).await;
    let (st, start) = s.post("/api/v1/device/approve/start", json!({"user_code": auth["user_code"]}), Some(&t)).await;
    assert_eq!(st, StatusCode::OK, "{start}");
    let pkc = key.assert(&s.base, serde_json::from_value(start["options"].clone()).unwrap()).unwrap();
    let (st, v) = s
        .post(
            "/api/v1/device/approve/finish",
            json!({"ceremony_id": start["ceremony_id"], "credential": pkc}),
            Some(&t),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    s.state.clock.advance(30);
    let (st, tokens) = poll().await;
    assert_eq!(st, StatusCode::OK, "{tokens}");
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(s.get("/api/v1/me", Some(access)).await.1["username"], "owner");
    s.state.clock.advance(30);
    let (st, v) = poll().await;
    assert_eq!(
        (st, v["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant")),
        "a device code is used once"
    );
    // Refresh rotates; reusing the old refresh token revokes the whole family.
    let sref = &s;
    let refresh = |rt: String| async move {
        let r = sref
            .http
            .post(format!("{}/api/v1/oauth/token", sref.base))
            .form(&form(&[("grant_type", "refresh_token"), ("refresh_token", &rt)]))
            .send()
            .await
            .unwrap();
        (r.status(), r.json::<Value>().await.unwrap())
    };
    let rt1 = tokens["refresh_token"].as_str().unwrap().to_string();
    let (st, t2) = refresh(rt1.clone()).await;
    assert_eq!(st, StatusCode::OK, "{t2}");
    let (st, v) = refresh(rt1).await;
    assert_eq!((st, v["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_grant")));
    let (st, _) = refresh(t2["refresh_token"].as_str().unwrap().to_string()).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "the rotated token died with its family");
    assert_eq!(
        s.get("/api/v1/me", Some(t2["access_token"].as_str().unwrap())).await.0,
        StatusCode::UNAUTHORIZED,
        "and so did the session"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_documents_and_errors_have_the_pinned_shapes() {
    let s = spawn().await;
    let (st, conf) = s.get("/.well-known/openid-configuration", None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(conf["issuer"], s.base);
    assert_eq!(conf["jwks_uri"], format!("{}/.well-known/jwks.json", s.base));
    let (_, jwks) = s.get("/.well-known/jwks.json", None).await;
    assert_eq!(jwks["keys"][0]["kty"], "OKP");
    assert_eq!(jwks["keys"][0]["crv"], "Ed25519");
    let (st, v) = s.post("/api/v1/enroll/nonsense/start", json!({}), None).await;
    assert_eq!((st, code(&v)), (StatusCode::GONE, "enroll.link_invalid"));
    assert!(v["error"]["message"].is_string());
    let (st, v) = s.get("/api/v1/nope", None).await;
    assert_eq!((st, code(&v)), (StatusCode::NOT_FOUND, "request.not_found"));
    let big = "x".repeat(server::MAX_BODY + 1);
    let (st, _) = s.post("/api/v1/auth/login/start", json!({"username": big}), None).await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE);
    // A fresh client: the server may close the connection that carried the oversized body.
    let fresh = reqwest::Client::new();
    assert_eq!(fresh.get(format!("{}/healthz", s.base)).send().await.unwrap().status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attestation_from_a_trusted_root_counts_as_hardware_and_others_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let (mut trusted_key, pem) = SoftKey::new_with_ca_pem().unwrap();
    let root = dir.path().join("root.pem");
    std::fs::write(&root, pem).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://localhost:{}", listener.local_addr().unwrap().port());
    let config = server::ServerConfig {
        attestation_roots: vec![root],
        ..server::ServerConfig::new(dir.path().join("data"), url::Url::parse(&base).unwrap())
    };
    let state = Arc::new(server::open_state(&config, server::Clock::default()).await.unwrap());
    tokio::spawn(server::serve(state.clone(), listener, std::future::pending()));
    let s = Srv { base, state, http: reqwest::Client::new(), _dir: dir };
    assert_eq!(s.enroll(&mut trusted_key, &s.first_link().await).await.0, StatusCode::OK);
    let t = s.token(&mut trusted_key, None).await;
    let (_, me) = s.get("/api/v1/me", Some(&t)).await;
    assert_eq!(me["amr"], json!(["hwk", "user"]));
    assert_eq!(me["acr"], "phrh");
    // Another software token, whose CA nobody configured, stays a software key.
    let mut other = SoftKey::new().unwrap();
    assert_eq!(s.enroll(&mut other, &s.link_for("bob", "reader").await).await.0, StatusCode::OK);
    let t = s.token(&mut other, Some("bob")).await;
    let (_, me) = s.get("/api/v1/me", Some(&t)).await;
    assert_eq!(me["amr"], json!(["swk", "user"]));
    assert_eq!(me["acr"], "phr");
    assert_eq!(me["roles"], json!([{"role": "reader"}]));
}

/// A hand-made authenticator answer with `none` attestation and a chosen credential id: the
/// only way to present a credential id that is already registered, or one over 1023 bytes,
/// since real authenticators (and the soft token) mint fresh ids.
fn crafted_registration(s: &Srv, options: &Value, cred_id: &[u8]) -> Value {
    use base64::Engine as _;
    use serde_cbor_2::Value as C;
    use sha2::Digest as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let challenge = options["publicKey"]["challenge"].as_str().unwrap();
    let rp_id = options["publicKey"]["rp"]["id"].as_str().unwrap();
    let client_data =
        json!({"type": "webauthn.create", "challenge": challenge, "origin": s.base, "crossOrigin": false});
    let client_data = serde_json::to_vec(&client_data).unwrap();
    let key = p256::SecretKey::random(&mut rand_core::OsRng);
    let point = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&key.public_key(), false);
    let cose = C::Map(
        [
            (C::Integer(1), C::Integer(2)),
            (C::Integer(3), C::Integer(-7)),
            (C::Integer(-1), C::Integer(1)),
            (C::Integer(-2), C::Bytes(point.x().unwrap().to_vec())),
            (C::Integer(-3), C::Bytes(point.y().unwrap().to_vec())),
        ]
        .into_iter()
        .collect(),
    );
    let mut auth_data = sha2::Sha256::digest(rp_id.as_bytes()).to_vec();
    auth_data.push(0x45); // UP | UV | AT
    auth_data.extend_from_slice(&0u32.to_be_bytes());
    auth_data.extend_from_slice(&[0u8; 16]);
    auth_data.extend_from_slice(&(cred_id.len() as u16).to_be_bytes());
    auth_data.extend_from_slice(cred_id);
    auth_data.extend_from_slice(&serde_cbor_2::to_vec(&cose).unwrap());
    let att = C::Map(
        [
            (C::Text("fmt".into()), C::Text("none".into())),
            (C::Text("attStmt".into()), C::Map(Default::default())),
            (C::Text("authData".into()), C::Bytes(auth_data)),
        ]
        .into_iter()
        .collect(),
    );
    json!({
        "id": b64(cred_id), "rawId": b64(cred_id), "type": "public-key", "extensions": {},
        "response": {"attestationObject": b64(&serde_cbor_2::to_vec(&att).unwrap()), "clientDataJSON": b64(&client_data)},
    })
}

async fn enroll_crafted(s: &Srv, link: &str, cred_id: &[u8]) -> (StatusCode, Value) {
    let token = Srv::token_of(link);
    let (st, start) = s.post(&format!("/api/v1/enroll/{token}/start"), json!({}), None).await;
    assert_eq!(st, StatusCode::OK, "{start}");
    let cred = crafted_registration(s, &start["options"], cred_id);
    s.post(
        &format!("/api/v1/enroll/{token}/finish"),
        json!({"ceremony_id": start["ceremony_id"], "credential": cred}),
        None,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_id_registered_twice_or_over_1023_bytes_is_refused() {
    let s = spawn().await;
    let id = [42u8; 32];
    let (st, v) = enroll_crafted(&s, &s.first_link().await, &id).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    // `none` attestation: recorded as untrusted, model unknown.
    let events = s.state.store.audit_events(0, 100).await.unwrap();
    let d: Value =
        serde_json::from_str(&events.iter().rev().find(|e| e.event.kind == "enroll").unwrap().event.details_json)
            .unwrap();
    assert_eq!((d["attestation_format"].as_str(), d["attestation_trusted"].as_bool()), (Some("none"), Some(false)));
    let (st, v) = enroll_crafted(&s, &s.link_for("mallory", "reader").await, &id).await;
    assert_eq!((st, code(&v)), (StatusCode::CONFLICT, "credential.already_registered"), "{v}");
    assert!(s.state.store.user_by_name("mallory").await.unwrap().is_none(), "nothing half-created");
    let (st, v) = enroll_crafted(&s, &s.link_for("trent", "reader").await, &[1u8; 1024]).await;
    assert_eq!((st, code(&v)), (StatusCode::BAD_REQUEST, "webauthn.credential_id_too_long"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_carry_roles_and_disabling_a_user_ends_their_sessions() {
    let s = spawn().await;
    let mut owner = SoftKey::new().unwrap();
    assert_eq!(s.enroll(&mut owner, &s.first_link().await).await.0, StatusCode::OK);
    let to = s.token(&mut owner, Some("owner")).await;
    let (st, inv) = s.post("/api/v1/invites", json!({"username": "bob", "role": "restore-operator"}), Some(&to)).await;
    assert_eq!(st, StatusCode::OK, "{inv}");
    let (st, v) = s.post("/api/v1/invites", json!({"username": "eve", "role": "emperor"}), Some(&to)).await;
    assert_eq!((st, code(&v)), (StatusCode::BAD_REQUEST, "request.malformed"));
    let mut bob = SoftKey::new().unwrap();
    assert_eq!(s.enroll(&mut bob, inv["url"].as_str().unwrap()).await.0, StatusCode::OK);
    let tb = s.token(&mut bob, Some("bob")).await;
    assert_eq!(s.get("/api/v1/me", Some(&tb)).await.1["roles"], json!([{"role": "restore-operator"}]));
    // Bob is no owner: he can neither invite nor list users.
    let (st, v) = s.post("/api/v1/invites", json!({"username": "eve", "role": "owner"}), Some(&tb)).await;
    assert_eq!((st, code(&v)), (StatusCode::FORBIDDEN, "auth.forbidden"));
    assert_eq!(s.get("/api/v1/users", Some(&tb)).await.0, StatusCode::FORBIDDEN);
    let (st, users) = s.get("/api/v1/users", Some(&to)).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(users["users"].as_array().unwrap().len(), 2);
    // Disabling Bob ends his token at once and he cannot sign in again.
    let (st, _) = s.post("/api/v1/users/bob/disable", json!({}), Some(&to)).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    assert_eq!(s.get("/api/v1/me", Some(&tb)).await.0, StatusCode::UNAUTHORIZED);
    let (st, _) = s.login(&mut bob, None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(s.audit_kinds().await.contains(&"user.disable".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vaults_roles_and_policy_simulation_follow_the_policy_crate() {
    let s = spawn().await;
    let mut owner = SoftKey::new().unwrap();
    assert_eq!(s.enroll(&mut owner, &s.first_link().await).await.0, StatusCode::OK);
    let to = s.token(&mut owner, Some("owner")).await;
    let (st, v) = s.post("/api/v1/vaults", json!({"name": "prod", "kind": "production"}), Some(&to)).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(v["policy"]["distinct_approver"], true);
    assert!(s.state.data_dir.join("vaults/prod/config").exists(), "the vault has its repository");
    let (st, v) = s.post("/api/v1/vaults", json!({"name": "prod"}), Some(&to)).await;
    assert_eq!((st, code(&v)), (StatusCode::CONFLICT, "request.conflict"));
    let (st, v) = s.post("/api/v1/vaults", json!({"name": "../etc"}), Some(&to)).await;
    assert_eq!((st, code(&v)), (StatusCode::BAD_REQUEST, "request.malformed"));
    // Bob, a reader invited without vault roles, sees nothing and may create nothing.
    let (_, inv) = s.post("/api/v1/invites", json!({"username": "bob", "role": "reader"}), Some(&to)).await;
    let mut bob = SoftKey::new().unwrap();
    assert_eq!(s.enroll(&mut bob, inv["url"].as_str().unwrap()).await.0, StatusCode::OK);
    s.state
        .store
        .remove_role(&store::RoleAssignment {
            user_id: s.state.store.user_by_name("bob").await.unwrap().unwrap().id,
            role: "reader".into(),
            vault: None,
        })
        .await
        .unwrap();
    let tb = s.token(&mut bob, Some("bob")).await;
    assert_eq!(s.get("/api/v1/vaults", Some(&tb)).await.1["vaults"], json!([]));
    let (st, v) = s.post("/api/v1/vaults", json!({"name": "mine"}), Some(&tb)).await;
    assert_eq!((st, code(&v)), (StatusCode::FORBIDDEN, "policy.no_role"));
    // A vault-scoped role shows that vault only.
    let (st, _) = s
        .post("/api/v1/roles", json!({"username": "bob", "role": "restore-operator", "vault": "prod"}), Some(&to))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (_, list) = s.get("/api/v1/vaults", Some(&tb)).await;
    assert_eq!(list["vaults"].as_array().unwrap().len(), 1);
    // Bob cannot grant himself anything.
    let (st, v) = s.post("/api/v1/roles", json!({"username": "bob", "role": "owner"}), Some(&tb)).await;
    assert_eq!((st, code(&v)), (StatusCode::FORBIDDEN, "policy.no_role"));
    // The simulator tells what a restore needs.
    let (st, sim) = s
        .post(
            "/api/v1/policy/simulate",
            json!({"username": "bob", "vault": "prod", "operation": "restore-request"}),
            Some(&to),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{sim}");
    assert_eq!(sim["with_software_passkey"]["decision"], "approval_required");
    assert_eq!(sim["with_software_passkey"]["approver_role"], "restore-operator");
    assert_eq!(sim["as_approver_of_others"]["software"]["decision"], "allow");
    let (_, sim) =
        s.post("/api/v1/policy/simulate", json!({"username": "bob", "operation": "vault-create"}), Some(&to)).await;
    assert_eq!(sim["with_hardware_passkey"], json!({"decision": "deny", "reason": "no_role"}));
    // Decisions are audited, denials included.
    let events = s.state.store.audit_events(0, 1000).await.unwrap();
    assert!(events.iter().any(|e| e.event.kind == "decision" && e.event.outcome == "deny"));
    // Granting roles needs a recent sign-in: RFC 9470 step-up on the (12-hour) browser session.
    let _ = s.token(&mut owner, Some("owner")).await; // the cookie jar now holds the owner's session
    s.state.clock.advance(policy::ADMIN_MAX_AGE + 60);
    let resp = s
        .http
        .post(format!("{}/api/v1/roles", s.base))
        .header("origin", &s.base) // as the console's own page would send it
        .json(&json!({"username": "bob", "role": "reader"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let challenge = resp.headers()[reqwest::header::WWW_AUTHENTICATE].to_str().unwrap().to_string();
    assert!(challenge.starts_with("Bearer error=\"insufficient_user_authentication\""), "{challenge}");
    assert!(challenge.contains("max_age=900") && challenge.contains("acr_values="), "{challenge}");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(code(&body), "auth.insufficient_user_authentication");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_runs_only_after_a_restore_operator_approves_that_exact_operation() {
    use base64::Engine as _;
    use sha2::Digest as _;
    let (s, to, _owner, (mut alice, ta), (mut carol, tc)) = restore_fixture().await;
    let r = request_restore(&s, &to, "prod").await;
    let id = r["approval_id"].as_str().unwrap().to_string();
    assert_eq!(r["restore_id"], r["approval_id"]);
    assert_eq!(r["approval_url"], format!("{}/approvals/{id}", s.base));
    // The digest is SHA-256 of the canonical operation the server shows.
    let (_, shown) = s.get(&format!("/api/v1/approvals/{id}"), Some(&ta)).await;
    assert_eq!(shown["status"], "pending");
    assert_eq!(
        hex::encode(sha2::Sha256::digest(shown["operation_json"].as_str().unwrap().as_bytes())),
        r["digest"].as_str().unwrap()
    );
    assert_eq!(shown["operation"]["requester"], "owner");
    // Not approved yet: no grant.
    assert_eq!(s.get(&format!("/api/v1/restores/{id}"), Some(&to)).await.1["status"], "pending");
    // A reader cannot approve; neither can the requester (no role, then four-eyes).
    let (st, v, _) = sign_approval(&s, &mut carol, &tc, &id).await;
    assert_eq!((st, code(&v)), (StatusCode::FORBIDDEN, "policy.no_role"));
    let (st, v) = s
        .post("/api/v1/roles", json!({"username": "owner", "role": "restore-operator", "vault": "prod"}), Some(&to))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
    let mut owner_key = _owner.0;
    let (st, v, _) = sign_approval(&s, &mut owner_key, &to, &id).await;
    assert_eq!((st, code(&v)), (StatusCode::FORBIDDEN, "policy.self_approval"));
    // An assertion from the ceremony of another approval is refused.
    let other = request_restore(&s, &to, "prod").await;
    let other_id = other["approval_id"].as_str().unwrap();
    let (_, other_start, other_pkc) = sign_approval(&s, &mut alice, &ta, other_id).await;
    let (st, v) = s
        .post(
            &format!("/api/v1/approvals/{id}/finish"),
            json!({"ceremony_id": other_start["ceremony_id"], "credential": other_pkc}),
            Some(&ta),
        )
        .await;
    assert_eq!((st, code(&v)), (StatusCode::BAD_REQUEST, "webauthn.ceremony_invalid"), "{v}");
    let (_, start, _) = sign_approval(&s, &mut alice, &ta, &id).await;
    let (_, _, foreign_pkc) = sign_approval(&s, &mut alice, &ta, other_id).await;
    let (st, v) = s
        .post(
            &format!("/api/v1/approvals/{id}/finish"),
            json!({"ceremony_id": start["ceremony_id"], "credential": foreign_pkc}),
            Some(&ta),
        )
        .await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::BAD_REQUEST, "webauthn.mismatch"),
        "the signature covers the other digest: {v}"
    );
    // Alice approves; the signed challenge is bound to the digest and the server nonce.
    let (_, start, pkc) = sign_approval(&s, &mut alice, &ta, &id).await;
    let body = json!({"ceremony_id": start["ceremony_id"], "credential": pkc});
    let (st, v) = s.post(&format!("/api/v1/approvals/{id}/finish"), body.clone(), Some(&ta)).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let client_data = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(pkc.as_ref().unwrap()["response"]["clientDataJSON"].as_str().unwrap())
        .unwrap();
    let client_data: Value = serde_json::from_slice(&client_data).unwrap();
    let nonce = hex::decode(start["nonce"].as_str().unwrap()).unwrap();
    let expect = server::approvals::approval_challenge(r["digest"].as_str().unwrap(), &nonce.try_into().unwrap());
    assert_eq!(client_data["challenge"], base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(expect));
    // A replayed assertion is refused.
    let (st, v) = s.post(&format!("/api/v1/approvals/{id}/finish"), body, Some(&ta)).await;
    assert_eq!((st, code(&v)), (StatusCode::BAD_REQUEST, "webauthn.ceremony_invalid"));
    // The requester's session gets the grant exactly once.
    let (st, g) = s.get(&format!("/api/v1/restores/{id}"), Some(&to)).await;
    assert_eq!(st, StatusCode::OK, "{g}");
    assert!(g["grant"].as_str().unwrap().len() >= 43);
    assert_eq!(s.get(&format!("/api/v1/restores/{id}"), Some(&to)).await.1["status"], "consumed");
    // The full WebAuthn evidence is in the audit log.
    let events = s.state.store.audit_events(0, 10_000).await.unwrap();
    let ev = events.iter().find(|e| e.event.kind == "restore.approve" && e.event.outcome == "approved").unwrap();
    let d: Value = serde_json::from_str(&ev.event.details_json).unwrap();
    for f in ["credential_id", "authenticator_data", "client_data_json", "signature"] {
        assert!(d["assertion"][f].is_string(), "{f} missing from the evidence");
    }
    for f in ["digest", "nonce", "operation_json", "rp_id", "origin"] {
        assert!(d["approval"][f].is_string(), "{f} missing from the approval evidence");
    }

    // An auditor exports the log and verifies it offline, signatures of the approval included.
    let export = export_via_api(&s, &to).await;
    let report = auditlog::export::verify(&export, &Default::default()).unwrap_or_else(|p| panic!("{p}"));
    assert!(report.approvals_verified >= 1 && report.credentials >= 3, "{report:?}");
    assert_eq!(report.records, export.records.iter().filter(|&&b| b == b'\n').count() as u64);
    let seed: [u8; 32] = std::fs::read(s._dir.path().join("data/keys/audit.key")).unwrap().try_into().unwrap();
    let key =
        auditlog::AuditKey::from_seed(&server::state::audit_origin(&url::Url::parse(&s.base).unwrap()), seed).unwrap();
    assert_eq!(key.vkey(), export.vkey);
    assert_tampering_is_detected(&export, &key);
}

async fn get_text(s: &Srv, token: &str, path: &str) -> String {
    let r = s.http.get(format!("{}{path}", s.base)).bearer_auth(token).send().await.unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.text().await.unwrap()
}

/// What `strongroom audit export` fetches, through the API.
async fn export_via_api(s: &Srv, token: &str) -> auditlog::export::Export {
    let vkey = get_text(s, token, "/api/v1/audit/key").await;
    let r = s.http.post(format!("{}/api/v1/audit/checkpoint", s.base)).bearer_auth(token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let checkpoint = r.text().await.unwrap();
    // The public route serves exactly that checkpoint, without signing anything itself.
    assert_eq!(get_text(s, token, "/api/v1/audit/checkpoint").await, checkpoint);
    // Up to the checkpoint just signed: reading the log is itself logged, so it never ends.
    let size = auditlog::Checkpoint::open(&checkpoint, &vkey).unwrap().size as i64;
    let mut records = Vec::new();
    let mut after = 0;
    while after < size {
        let limit = (size - after).min(100);
        let (st, v) = s.get(&format!("/api/v1/audit/records?after={after}&limit={limit}"), Some(token)).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        let list = v["records"].as_array().unwrap();
        for r in list {
            records.extend_from_slice(r.as_str().unwrap().as_bytes());
            records.push(b'\n');
        }
        after = v["next"].as_i64().unwrap();
    }
    let (_, cps) = s.get("/api/v1/audit/checkpoints", Some(token)).await;
    let checkpoints = cps["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["size"].as_u64().unwrap(), c["note"].as_str().unwrap().to_string()))
        .collect();
    auditlog::export::Export { records, checkpoint, checkpoints, vkey: vkey.trim().to_string() }
}

/// Each kind of tampering with an export is reported, naming the record where it can.
fn assert_tampering_is_detected(good: &auditlog::export::Export, key: &auditlog::AuditKey) {
    use auditlog::export::{verify, Options};
    let lines: Vec<&[u8]> = good.records[..good.records.len() - 1].split(|&b| b == b'\n').collect();
    let rebuild = |lines: &[Vec<u8>]| -> Vec<u8> {
        let mut out = Vec::new();
        for l in lines {
            out.extend_from_slice(l);
            out.push(b'\n');
        }
        out
    };
    let owned: Vec<Vec<u8>> = lines.iter().map(|l| l.to_vec()).collect();
    let with = |records: Vec<u8>| auditlog::export::Export { records, ..good.clone() };
    let approval = owned.iter().position(|l| String::from_utf8_lossy(l).contains("\"assertion\"")).unwrap();
    let enrolled = owned.iter().position(|l| String::from_utf8_lossy(l).contains("\"public_key\"")).unwrap();

    // Edit a field of a plain record (re-canonical, so only the tree can tell).
    let mut edited = owned.clone();
    edited[1] =
        String::from_utf8(edited[1].clone()).unwrap().replacen("\"outcome\":\"", "\"outcome\":\"x", 1).into_bytes();
    let p = verify(&with(rebuild(&edited)), &Options::default()).unwrap_err();
    assert!(p.what.contains("altered") && p.record.is_some(), "edit: {p}");
    // Delete a record.
    let mut deleted = owned.clone();
    deleted.remove(2);
    let p = verify(&with(rebuild(&deleted)), &Options::default()).unwrap_err();
    assert_eq!(p.record, Some(3), "delete: {p}");
    // Reorder two.
    let mut swapped = owned.clone();
    swapped.swap(1, 2);
    let p = verify(&with(rebuild(&swapped)), &Options::default()).unwrap_err();
    assert_eq!(p.record, Some(2), "reorder: {p}");
    // Truncate the tail below the checkpoint.
    let p = verify(&with(rebuild(&owned[..owned.len() - 1])), &Options::default()).unwrap_err();
    assert!(p.what.contains("removed from the end"), "truncate: {p}");
    // Swap the approval's signature for another value.
    let mut forged = owned.clone();
    let mut rec: Value = serde_json::from_slice(&forged[approval]).unwrap();
    let sig = rec["details"]["assertion"]["signature"].as_str().unwrap().to_string();
    let mut bytes = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &sig).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    rec["details"]["assertion"]["signature"] =
        Value::String(base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &bytes));
    forged[approval] = serde_json_canonicalizer::to_vec(&rec).unwrap();
    let p = verify(&with(rebuild(&forged)), &Options::default()).unwrap_err();
    assert_eq!(p.record, Some(approval as u64 + 1), "signature: {p}");
    assert!(p.what.contains("does not verify"), "signature: {p}");
    // Replace the credential's registered public key with another valid one.
    let mut rekeyed = owned.clone();
    let mut rec: Value = serde_json::from_slice(&rekeyed[enrolled]).unwrap();
    let other = p256::ecdsa::SigningKey::from_slice(&[5u8; 32]).unwrap();
    rec["details"]["credential"]["public_key"] = Value::String(base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        other.verifying_key().to_encoded_point(false).as_bytes(),
    ));
    rekeyed[enrolled] = serde_json_canonicalizer::to_vec(&rec).unwrap();
    let p = verify(&with(rebuild(&rekeyed)), &Options::default()).unwrap_err();
    assert!(p.record.is_some() && (p.what.contains("does not verify") || p.what.contains("altered")), "key: {p}");
    // The auditor's own earlier checkpoint is consistent with the export...
    let ok = verify(good, &Options { trusted_checkpoint: Some(good.checkpoint.clone()), ..Default::default() });
    assert!(ok.is_ok(), "{ok:?}");
    // ...but a fork (the log signed another tree of the same size) is caught.
    let size = auditlog::Checkpoint::open(&good.checkpoint, &good.vkey).unwrap().size;
    let forked = key.sign_checkpoint(size, &[7u8; 32]).unwrap();
    let p = verify(good, &Options { trusted_checkpoint: Some(forked.note), ..Default::default() }).unwrap_err();
    assert!(p.what.contains("fork"), "fork: {p}");
    // And a checkpoint signed by another key is refused outright.
    let other = auditlog::AuditKey::from_seed(key.name(), [3u8; 32]).unwrap();
    let p = verify(good, &Options { vkey: Some(other.vkey()), ..Default::default() }).unwrap_err();
    assert!(p.what.contains("signature"), "wrong key: {p}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_are_refused_for_software_keys_on_hardware_vaults_stale_approvals_and_revoked_credentials() {
    let (s, to, _owner, (mut alice, ta), _carol) = restore_fixture().await;
    let r = request_restore(&s, &to, "hw").await;
    let id = r["approval_id"].as_str().unwrap();
    let (_, start, pkc) = sign_approval(&s, &mut alice, &ta, id).await;
    let (st, v) = s
        .post(
            &format!("/api/v1/approvals/{id}/finish"),
            json!({"ceremony_id": start["ceremony_id"], "credential": pkc}),
            Some(&ta),
        )
        .await;
    assert_eq!((st, code(&v)), (StatusCode::FORBIDDEN, "policy.hardware_required"), "{v}");
    // Approved, but the grant is asked for after the vault's freshness window.
    let r = request_restore(&s, &to, "prod").await;
    let id = r["approval_id"].as_str().unwrap();
    let (_, start, pkc) = sign_approval(&s, &mut alice, &ta, id).await;
    assert_eq!(
        s.post(
            &format!("/api/v1/approvals/{id}/finish"),
            json!({"ceremony_id": start["ceremony_id"], "credential": pkc}),
            Some(&ta)
        )
        .await
        .0,
        StatusCode::OK
    );
    s.state.clock.advance(301);
    let (st, v) = s.get(&format!("/api/v1/restores/{id}"), Some(&to)).await;
    assert_eq!((st, code(&v)), (StatusCode::FORBIDDEN, "policy.approval_too_old"), "{v}");
    // A revoked credential cannot approve, even if its holder strips the allow-list.
    let ta = s.token(&mut alice, Some("alice")).await;
    let to = {
        let mut k = _owner.0;
        s.token(&mut k, Some("owner")).await
    };
    let (_, link) = s.post("/api/v1/me/credentials/add", json!({}), Some(&ta)).await;
    let mut alice2 = SoftKey::new().unwrap();
    assert_eq!(s.enroll(&mut alice2, link["url"].as_str().unwrap()).await.0, StatusCode::OK);
    let ta2 = s.token(&mut alice2, Some("alice")).await;
    let (_, creds) = s.get("/api/v1/me/credentials", Some(&ta2)).await;
    let first = creds["credentials"].as_array().unwrap().iter().min_by_key(|c| c["created_at"].as_i64()).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let resp =
        s.http.delete(format!("{}/api/v1/me/credentials/{first}", s.base)).bearer_auth(&ta2).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let r = request_restore(&s, &to, "prod").await;
    let id = r["approval_id"].as_str().unwrap();
    let (st, start) = s.post(&format!("/api/v1/approvals/{id}/start"), json!({}), Some(&ta2)).await;
    assert_eq!(st, StatusCode::OK);
    let mut opts: webauthn_rs_proto::RequestChallengeResponse =
        serde_json::from_value(start["options"].clone()).unwrap();
    opts.public_key.allow_credentials.clear();
    let pkc = alice.assert(&s.base, opts).unwrap();
    let (st, v) = s
        .post(
            &format!("/api/v1/approvals/{id}/finish"),
            json!({"ceremony_id": start["ceremony_id"], "credential": pkc}),
            Some(&ta2),
        )
        .await;
    assert_eq!((st, code(&v)), (StatusCode::UNAUTHORIZED, "webauthn.unknown_credential"), "{v}");
    assert_eq!(s.get(&format!("/api/v1/approvals/{id}"), Some(&to)).await.1["status"], "pending");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_restore_grant_outlives_access_tokens_but_not_its_own_lifetime_and_reads_only_the_approved_snapshot() {
    let (s, to, mut owner, (mut alice, ta), _carol) = restore_fixture().await;
    let r = request_restore(&s, &to, "prod").await;
    let id = r["approval_id"].as_str().unwrap().to_string();
    let (_, start, pkc) = sign_approval(&s, &mut alice, &ta, &id).await;
    assert_eq!(
        s.post(
            &format!("/api/v1/approvals/{id}/finish"),
            json!({"ceremony_id": start["ceremony_id"], "credential": pkc}),
            Some(&ta)
        )
        .await
        .0,
        StatusCode::OK
    );
    let grant = s.get(&format!("/api/v1/restores/{id}"), Some(&to)).await.1["grant"].as_str().unwrap().to_string();
    // Two hours later every access token has expired; the job still runs on its grant.
    s.state.clock.advance(2 * 3600);
    assert_eq!(s.get("/api/v1/me", Some(&to)).await.0, StatusCode::UNAUTHORIZED);
    let with_grant = |method: reqwest::Method, path: String| {
        s.http.request(method, format!("{}{path}", s.base)).header("authorization", format!("Grant {grant}"))
    };
    let plan: Value = with_grant(reqwest::Method::GET, format!("/api/v1/restores/{id}/plan"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entries = plan["entries"].as_array().unwrap();
    assert!(entries.len() > 5);
    let chunk = entries
        .iter()
        .flat_map(|e| e["node"]["content"].as_array().cloned().unwrap_or_default())
        .find_map(|c| c["id"].as_str().map(str::to_string))
        .unwrap();
    let resp = with_grant(reqwest::Method::POST, format!("/api/v1/restores/{id}/chunks"))
        .json(&json!({"ids": [chunk]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.bytes().await.unwrap().len() > 36);
    // A chunk of another vault's snapshot is not part of this grant.
    let hw_repo = server::backups::open_repo(&s.state, "hw").await.unwrap();
    let foreign = tokio::task::spawn_blocking(move || {
        let (_, snap) = hw_repo.find_snapshot("latest").unwrap();
        let plan = repo::restore::plan(&hw_repo, &snap.tree, &[]).unwrap();
        plan.iter().flat_map(|e| e.node.content.clone()).find_map(|c| match c {
            repo::model::Content::Chunk { id, .. } => Some(id.to_hex()),
            _ => None,
        })
    })
    .await
    .unwrap()
    .unwrap();
    let resp = with_grant(reqwest::Method::POST, format!("/api/v1/restores/{id}/chunks"))
        .json(&json!({"ids": [foreign]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    // The metrics saw the refusal and the bytes that left (an Owner may read them).
    let tm = s.token(&mut owner.0, Some("owner")).await;
    let metrics =
        s.http.get(format!("{}/metrics", s.base)).bearer_auth(&tm).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("strongroom_bytes_out_total "), "{metrics}");
    assert!(metrics.contains("# TYPE strongroom_restores_total counter"));
    assert!(metrics.contains("strongroom_approval_latency_seconds_count 1"), "{metrics}");
    // A forged grant, or one past its lifetime, opens nothing.
    let resp = s
        .http
        .get(format!("{}/api/v1/restores/{id}/plan", s.base))
        .header("authorization", "Grant forged")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    s.state.clock.advance(server::approvals::GRANT_SECONDS);
    assert_eq!(
        with_grant(reqwest::Method::GET, format!("/api/v1/restores/{id}/plan")).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_runs_on_the_servers_commit_times_and_prune_never_overlaps_a_backup() {
    let (s, _, (mut owner, _), (mut alice, _), (mut carol, _)) = restore_fixture().await;
    let to = s.token(&mut owner, Some("owner")).await;
    let (_, list) = s.get("/api/v1/vaults/prod/snapshots", Some(&to)).await;
    let tree = list["snapshots"][0]["tree"].as_str().unwrap().to_string();

    // Four daily backups that each claim to be from 2001: the server records its own time.
    for day in 0..4 {
        let to = s.token(&mut owner, Some("owner")).await;
        let (st, b) = s.post("/api/v1/vaults/prod/backups", json!({}), Some(&to)).await;
        assert_eq!(st, StatusCode::OK, "{b}");
        let id = b["backup_id"].as_str().unwrap();
        let body = json!({"tree": tree, "paths": ["/srv"], "hostname": "web", "time": "2001-01-01T00:00:00Z"});
        let (st, c) = s.post(&format!("/api/v1/backups/{id}/commit"), body, Some(&to)).await;
        assert_eq!(st, StatusCode::OK, "{c}");
        let now = s.state.clock.now();
        assert!((c["time"].as_i64().unwrap() - now).abs() <= 2, "day {day}: {c} is not the server's time {now}");
        s.state.clock.advance(86_400);
    }
    // Two weeks on, the vault's retention (14 days) no longer protects the oldest ones.
    s.state.clock.advance(14 * 86_400);
    let to = s.token(&mut owner, Some("owner")).await;
    let (_, list) = s.get("/api/v1/vaults/prod/snapshots", Some(&to)).await;
    let snaps = list["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 5);
    assert!(snaps.iter().all(|x| !x["time"].as_str().unwrap().starts_with("2001")), "{list}");

    // Who may apply retention: not a reader, not a restore operator.
    let ta = s.token(&mut alice, Some("alice")).await;
    let tc = s.token(&mut carol, Some("carol")).await;
    for t in [&ta, &tc] {
        let (st, v) = s.post("/api/v1/vaults/prod/forget", json!({"keep_last": 1}), Some(t)).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
        assert_eq!(code(&v), "policy.no_role");
    }
    let (st, v) = s.post("/api/v1/vaults/prod/forget", json!({}), Some(&to)).await;
    assert_eq!((st, code(&v)), (StatusCode::BAD_REQUEST, "request.malformed"), "{v}");
    let (st, v) = s.post("/api/v1/vaults/prod/forget", json!({"keep_daily": 2, "keep_forever": 1}), Some(&to)).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "unknown rules are refused, not ignored: {v}");

    // A dry run shows the decision and deletes nothing.
    let (st, v) = s.post("/api/v1/vaults/prod/forget", json!({"keep_daily": 2, "dry_run": true}), Some(&to)).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!((v["removed"].as_u64(), v["kept"].as_u64()), (Some(2), Some(3)), "{v}");
    let (_, list) = s.get("/api/v1/vaults/prod/snapshots", Some(&to)).await;
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 5);

    // A backup in progress holds the vault: prune (alone or after forget) waits for it.
    let (_, open) = s.post("/api/v1/vaults/prod/backups", json!({}), Some(&to)).await;
    assert!(open["backup_id"].is_string());
    let (st, v) = s.post("/api/v1/vaults/prod/prune", json!({}), Some(&to)).await;
    assert_eq!((st, code(&v)), (StatusCode::CONFLICT, "request.conflict"), "{v}");
    let (st, v) = s.post("/api/v1/vaults/prod/forget", json!({"keep_daily": 2, "prune": true}), Some(&to)).await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    let (_, list) = s.get("/api/v1/vaults/prod/snapshots", Some(&to)).await;
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 5, "a refused forget+prune forgets nothing");

    // An abandoned session is closed after its idle time; then forget + prune run.
    s.state.clock.advance(server::backups::SESSION_IDLE_SECONDS + 1);
    let to = s.token(&mut owner, Some("owner")).await;
    let (st, v) = s.post("/api/v1/vaults/prod/forget", json!({"keep_daily": 2, "prune": true}), Some(&to)).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["removed"].as_u64(), Some(2), "{v}");
    assert!(v["prune"]["blobs_used"].as_u64().unwrap() > 0, "{v}");
    let (_, list) = s.get("/api/v1/vaults/prod/snapshots", Some(&to)).await;
    let left = list["snapshots"].as_array().unwrap();
    assert_eq!(left.len(), 3);
    assert_eq!(list["deleted"].as_array().unwrap().len(), 2, "forgotten snapshots are soft-deleted: {list}");
    assert_eq!(left.iter().filter(|x| x["hostname"] == "web").count(), 2);
    let (st, r) = s.post("/api/v1/vaults/prod/check", json!({"read_data": true}), Some(&to)).await;
    assert_eq!(st, StatusCode::OK);
    assert!(r["errors"].as_array().unwrap().is_empty(), "{r}");
    let kinds = s.audit_kinds().await;
    assert!(kinds.iter().any(|k| k == "vault.forget") && kinds.iter().any(|k| k == "vault.prune"), "{kinds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_no_longer_matches_its_signed_checkpoint_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = server::ServerConfig::new(dir.path().join("data"), url::Url::parse("http://localhost:8440").unwrap());
    {
        let state = server::open_state(&config, server::Clock::default()).await.unwrap();
        for i in 0..5 {
            server::routes::audit(&state, "test.event", "tester", "success", json!({"i": i})).await.unwrap();
        }
        let cp = state.audit_log.checkpoint(&state.store, state.clock.now()).await.unwrap().unwrap();
        assert_eq!(cp.size, 5);
    }
    assert!(server::open_state(&config, server::Clock::default()).await.is_ok(), "an untouched database opens");

    let db = dir.path().join("data/metadata.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display())).await.unwrap();
    let leaf: String =
        sqlx::query_scalar("SELECT leaf FROM audit_events WHERE seq = 3").fetch_one(&pool).await.unwrap();
    // Someone with database access rewrites a record (keeping it valid canonical JSON).
    let edited = leaf.replace("\"outcome\":\"success\"", "\"outcome\":\"refused\"");
    assert_ne!(edited, leaf);
    sqlx::query("UPDATE audit_events SET leaf = $1 WHERE seq = 3").bind(&edited).execute(&pool).await.unwrap();
    let err = server::open_state(&config, server::Clock::default()).await.err().expect("tampering must be refused");
    assert!(err.to_string().contains("no longer match"), "{err}");
    // Putting it back restores the log; deleting the newest record is refused too.
    sqlx::query("UPDATE audit_events SET leaf = $1 WHERE seq = 3").bind(&leaf).execute(&pool).await.unwrap();
    assert!(server::open_state(&config, server::Clock::default()).await.is_ok());
    sqlx::query("DELETE FROM audit_events WHERE seq = 5").execute(&pool).await.unwrap();
    assert!(server::open_state(&config, server::Clock::default()).await.is_err(), "a truncated log is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_keys_from_env_or_passphrase_and_a_data_directory_never_changes_key() {
    use repo::crypto::MasterSource;
    let open = |dir: &std::path::Path, master: Option<MasterSource>| {
        let config = server::ServerConfig {
            master,
            ..server::ServerConfig::new(dir.join("data"), url::Url::parse("http://localhost:8440").unwrap())
        };
        async move { server::open_state(&config, server::Clock::default()).await.map(|_| ()).map_err(|e| e.to_string()) }
    };
    // From an environment variable: no key file is ever written.
    let d = tempfile::tempdir().unwrap();
    let hex_a = "ab".repeat(32);
    open(d.path(), Some(MasterSource::Hex(hex_a.clone().into()))).await.unwrap();
    assert!(!d.path().join("data/keys/master.key").exists());
    open(d.path(), Some(MasterSource::Hex(hex_a.into()))).await.unwrap();
    let e = open(d.path(), Some(MasterSource::Hex("cd".repeat(32).into()))).await.unwrap_err();
    assert!(e.contains("does not match"), "{e}");
    let e = open(d.path(), None).await.unwrap_err();
    assert!(e.contains("env source") && !d.path().join("data/keys/master.key").exists(), "{e}");

    // From a passphrase (Argon2id; salt and cost kept beside the keys).
    let d = tempfile::tempdir().unwrap();
    let kdf = d.path().join("data/keys/master.kdf");
    let pass = |p: &str| Some(MasterSource::Passphrase { passphrase: p.to_string().into(), kdf_file: kdf.clone() });
    open(d.path(), pass("a long enough passphrase")).await.unwrap();
    assert!(kdf.exists());
    open(d.path(), pass("a long enough passphrase")).await.unwrap();
    let e = open(d.path(), pass("a long enough passphrasE")).await.unwrap_err();
    assert!(e.contains("wrong key or passphrase"), "{e}");

    // The default key file: created 0600 on first start, then required to match.
    let d = tempfile::tempdir().unwrap();
    open(d.path(), None).await.unwrap();
    std::fs::remove_file(d.path().join("data/keys/master.key")).unwrap();
    let e = open(d.path(), None).await.unwrap_err();
    assert!(e.contains("is missing"), "a lost key file is not silently replaced: {e}");
    assert!(!d.path().join("data/keys/master.key").exists());
}

/// Asks for the approved plan with a restore grant; returns the status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_tokens_and_grants_never_outlive_the_account_or_credential_behind_them() {
    use base64::Engine as _;
    let (s, _, (mut owner, _), (mut alice, _), _) = restore_fixture().await;
    let to = s.token(&mut owner, Some("owner")).await;
    let ta = s.token(&mut alice, Some("alice")).await;
    let (id, grant) = alices_grant(&s, &ta, &mut owner, &to).await;
    assert_eq!(plan_with_grant(&s, &id, &grant).await, StatusCode::OK);

    // The owner gives alice's account an end, 100 s from now.
    let end = s.state.clock.now() + 100;
    let (st, v) = s.post("/api/v1/users/alice/expiry", json!({"expires_at": end}), Some(&to)).await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
    let (st, _) = s.post("/api/v1/users/owner/expiry", json!({"expires_at": end}), Some(&to)).await;
    assert_eq!(st, StatusCode::CONFLICT, "not on oneself");
    // A token issued now ends with the account, not 15 minutes later.
    let ta2 = s.token(&mut alice, Some("alice")).await;
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(ta2.split('.').nth(1).unwrap()).unwrap(),
    )
    .unwrap();
    assert!(claims["exp"].as_i64().unwrap() <= end, "{claims}");
    s.state.clock.advance(101);
    assert_eq!(s.get("/api/v1/me", Some(&ta2)).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(plan_with_grant(&s, &id, &grant).await, StatusCode::UNAUTHORIZED, "the grant ends with the account");

    // Lifted again; a new grant works until the credential behind its session is revoked.
    let to = s.token(&mut owner, Some("owner")).await;
    let (st, _) = s.post("/api/v1/users/alice/expiry", json!({"expires_at": null}), Some(&to)).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let ta = s.token(&mut alice, Some("alice")).await;
    let (id, grant) = alices_grant(&s, &ta, &mut owner, &to).await;
    assert_eq!(plan_with_grant(&s, &id, &grant).await, StatusCode::OK);
    let (_, link) = s.post("/api/v1/me/credentials/add", json!({}), Some(&ta)).await;
    let mut second = SoftKey::new().unwrap();
    let (st, added) = s.enroll(&mut second, link["url"].as_str().unwrap()).await;
    assert_eq!(st, StatusCode::OK, "{added}");
    let tb = s.token(&mut second, Some("alice")).await;
    let (_, creds) = s.get("/api/v1/me/credentials", Some(&tb)).await;
    let first = creds["credentials"].as_array().unwrap().iter().find(|c| c["id"] != added["credential_id"]).unwrap()
        ["id"]
        .as_str()
        .unwrap()
        .to_string();
    let resp =
        s.http.delete(format!("{}/api/v1/me/credentials/{first}", s.base)).bearer_auth(&tb).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(plan_with_grant(&s, &id, &grant).await, StatusCode::UNAUTHORIZED, "the grant ends with the credential");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_rotates_a_vault_key_when_its_policy_says_it_is_due() {
    let s = spawn().await;
    let mut owner = SoftKey::new().unwrap();
    assert_eq!(s.enroll(&mut owner, &s.first_link().await).await.0, StatusCode::OK);
    let to = s.token(&mut owner, Some("owner")).await;
    let (st, v) = s.post("/api/v1/vaults", json!({"name": "rot", "rotate_key_days": 30}), Some(&to)).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(v["policy"]["rotate_key_days"], 30);
    let (st, _) = s.post("/api/v1/vaults", json!({"name": "bad", "rotate_key_days": 0}), Some(&to)).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(server::retention::rotate_due_keys(&s.state).await.unwrap().is_empty(), "not due yet");
    s.state.clock.advance(31 * 86_400);
    assert_eq!(server::retention::rotate_due_keys(&s.state).await.unwrap(), vec![("rot".to_string(), 2)]);
    assert!(server::retention::rotate_due_keys(&s.state).await.unwrap().is_empty(), "version 2 is new");
    let events = s.state.store.audit_events(0, 10_000).await.unwrap();
    let e = events.iter().find(|e| e.event.kind == "vault.rotate_key").unwrap();
    assert_eq!((e.event.actor.as_str(), e.event.outcome.as_str()), ("scheduler", "success"));
    assert!(e.event.details_json.contains("every 30 days"), "{}", e.event.details_json);
    // The rotated vault works: a fresh open writes under version 2.
    let repo = server::backups::open_repo(&s.state, "rot").await.unwrap();
    assert_eq!(repo.current_kek().0, 2);
}

// ---------------------------------------------------------------------------------------------
// Critical operations, soft delete, immutability
// ---------------------------------------------------------------------------------------------

/// Signs `user` in with `key` and votes on approval `id` (start, assertion, finish).
async fn vote(s: &Srv, key: &mut SoftKey, user: &str, id: &str) -> (StatusCode, Value) {
    let t = s.token(key, Some(user)).await;
    let (st, start, pkc) = sign_approval(s, key, &t, id).await;
    let Some(pkc) = pkc else { return (st, start) };
    s.post(
        &format!("/api/v1/approvals/{id}/finish"),
        json!({"ceremony_id": start["ceremony_id"], "credential": pkc}),
        Some(&t),
    )
    .await
}

struct People {
    owner: SoftKey,
    sa1: SoftKey,
    sa2: SoftKey,
    carol: SoftKey,
}

impl People {
    fn key(&mut self, user: &str) -> &mut SoftKey {
        match user {
            "owner" => &mut self.owner,
            "sa1" => &mut self.sa1,
            "sa2" => &mut self.sa2,
            "carol" => &mut self.carol,
            other => panic!("no key for {other}"),
        }
    }
}

/// Enrolls `user` with `role` from a link made on the server host (not by the owner, whose own
/// requests an account the owner enrolled could not approve).
async fn enroll_invited(s: &Srv, _to: &str, user: &str, role: &str) -> SoftKey {
    let link = s.link_for(user, role).await;
    let mut key = SoftKey::new().unwrap();
    assert_eq!(s.enroll(&mut key, &link).await.0, StatusCode::OK);
    key
}

/// The restore fixture plus two Security Admins: sa1 invited while there was none (the one
/// way in alone), sa2 made one through a critical operation the owner asked for and sa1 approved.
async fn critical_fixture() -> (Srv, People) {
    let (s, to, (owner, _), _alice, (carol, _)) = restore_fixture().await;
    let sa1 = enroll_invited(&s, &to, "sa1", "security-admin").await;
    let (st, v) = s.post("/api/v1/invites", json!({"username": "sa2", "role": "security-admin"}), Some(&to)).await;
    assert_eq!(st, StatusCode::CONFLICT, "with a Security Admin in place, invites cannot hand the role out: {v}");
    let sa2 = enroll_invited(&s, &to, "sa2", "reader").await;
    let mut people = People { owner, sa1, sa2, carol };
    let (st, r) = s.post("/api/v1/roles", json!({"username": "sa2", "role": "security-admin"}), Some(&to)).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{r}");
    let id = r["approval_id"].as_str().unwrap().to_string();
    assert!(r["approval_url"].as_str().unwrap().ends_with(&format!("/approvals/{id}")), "{r}");
    assert_eq!(vote(&s, people.key("owner"), "owner", &id).await.0, StatusCode::OK);
    let (st, v) = vote(&s, people.key("sa1"), "sa1", &id).await;
    assert_eq!((st, v["status"].as_str()), (StatusCode::OK, Some("executed")), "{v}");
    (s, people)
}

/// What the operations below can change, to compare before and after.
async fn probe(s: &Srv, to: &str) -> Value {
    let (_, prod) = s.get("/api/v1/vaults/prod", Some(to)).await;
    let (_, vaults) = s.get("/api/v1/vaults", Some(to)).await;
    let (_, roles) = s.get("/api/v1/roles", Some(to)).await;
    let (_, snaps) = s.get("/api/v1/vaults/prod/snapshots", Some(to)).await;
    let keys = server::backups::open_repo(&s.state, "prod").await.map(|r| r.kek_versions()).unwrap_or_default();
    let vaults: Vec<Value> =
        vaults["vaults"].as_array().unwrap().iter().map(|v| json!([v["name"], v["state"]])).collect();
    json!({
        "policy": prod["policy"], "vaults": vaults, "roles": roles["roles"], "keys": keys,
        "snapshots": snaps["snapshots"].as_array().map(|a| a.len()), "deleted": snaps["deleted"].as_array().map(|a| a.len()),
    })
}

async fn request_as(
    s: &Srv,
    people: &mut People,
    user: &str,
    method: &str,
    path: &str,
    body: &Value,
) -> (StatusCode, Value) {
    let t = s.token(people.key(user), Some(user)).await;
    match method {
        "DELETE" => s.delete(path, &t).await,
        _ => s.post(path, body.clone(), Some(&t)).await,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_critical_operation_needs_the_requesters_step_up_and_another_security_admin_and_runs_once() {
    let (s, mut people) = critical_fixture().await;
    let to = s.token(people.key("owner"), Some("owner")).await;
    let (_, list) = s.get("/api/v1/vaults/prod/snapshots", Some(&to)).await;
    let snap = list["snapshots"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(list["snapshots"][0]["protected"], true, "{list}");
    // (label, requester, method, path, body): every kind of critical operation.
    let ops: Vec<(&str, &str, &str, String, Value)> = vec![
        ("change policy", "sa1", "POST", "/api/v1/vaults/prod/policy".into(), json!({"require_hardware": true})),
        ("shorten retention", "owner", "POST", "/api/v1/vaults/prod/retention".into(), json!({"days": 7})),
        ("retire a key version", "owner", "POST", "/api/v1/vaults/prod/retire-key".into(), json!({"version": 1})),
        ("delete a protected snapshot", "owner", "DELETE", format!("/api/v1/vaults/prod/snapshots/{snap}"), json!({})),
        (
            "change immutability",
            "owner",
            "POST",
            "/api/v1/vaults/prod/immutability".into(),
            json!({"state": "enabled"}),
        ),
        ("grant owner", "owner", "POST", "/api/v1/roles".into(), json!({"username": "carol", "role": "owner"})),
        (
            "remove a security admin",
            "owner",
            "POST",
            "/api/v1/roles/revoke".into(),
            json!({"username": "sa2", "role": "security-admin"}),
        ),
        ("delete a vault", "owner", "DELETE", "/api/v1/vaults/hw".into(), json!({})),
    ];
    let mut executed = Vec::new();
    for (label, requester, method, path, body) in ops {
        let approver = if requester == "sa1" { "sa2" } else { "sa1" };
        let outsider = if requester == "owner" { "carol" } else { "owner" };
        let to = s.token(people.key("owner"), Some("owner")).await;
        let before = probe(&s, &to).await;

        // Denied: never runs, and takes no more votes.
        let (st, r) = request_as(&s, &mut people, requester, method, &path, &body).await;
        assert_eq!(st, StatusCode::ACCEPTED, "{label}: {r}");
        let id = r["approval_id"].as_str().unwrap().to_string();
        assert_eq!(vote(&s, people.key(requester), requester, &id).await.0, StatusCode::OK, "{label}");
        let t = s.token(people.key(approver), Some(approver)).await;
        let (st, d) = s.post(&format!("/api/v1/approvals/{id}/deny"), json!({}), Some(&t)).await;
        assert_eq!((st, d["denied"].as_bool()), (StatusCode::OK, Some(true)), "{label}: {d}");
        let (st, v) = vote(&s, people.key(approver), approver, &id).await;
        assert_eq!(st, StatusCode::CONFLICT, "{label}: a denied request takes no approval: {v}");
        let (_, shown) = s.get(&format!("/api/v1/approvals/{id}"), Some(&t)).await;
        assert_eq!(shown["status"], "denied", "{label}");
        assert_eq!(probe(&s, &to).await, before, "{label}: denied, nothing changed");

        // Expired: the same.
        let (st, r) = request_as(&s, &mut people, requester, method, &path, &body).await;
        assert_eq!(st, StatusCode::ACCEPTED, "{label}: {r}");
        let id = r["approval_id"].as_str().unwrap().to_string();
        assert_eq!(vote(&s, people.key(requester), requester, &id).await.0, StatusCode::OK, "{label}");
        s.state.clock.advance(server::critical::CRITICAL_SECONDS + 1);
        let (st, v) = vote(&s, people.key(approver), approver, &id).await;
        assert_eq!(st, StatusCode::CONFLICT, "{label}: an expired request takes no approval: {v}");
        let t = s.token(people.key(requester), Some(requester)).await;
        let (_, shown) = s.get(&format!("/api/v1/approvals/{id}"), Some(&t)).await;
        assert_eq!(shown["status"], "expired", "{label}");
        let to = s.token(people.key("owner"), Some("owner")).await;
        assert_eq!(probe(&s, &to).await, before, "{label}: expired, nothing changed");

        // Approved: the requester's own step-up does not count as an approval, nobody votes
        // twice, only a Security Admin approves; then it runs once.
        let (st, r) = request_as(&s, &mut people, requester, method, &path, &body).await;
        assert_eq!(st, StatusCode::ACCEPTED, "{label}: {r}");
        let id = r["approval_id"].as_str().unwrap().to_string();
        let (st, v) = vote(&s, people.key(requester), requester, &id).await;
        assert_eq!(st, StatusCode::OK, "{label}: {v}");
        assert_eq!((v["status"].as_str(), v["approvals_needed"].as_i64()), (Some("pending"), Some(1)), "{label}: {v}");
        assert_eq!(v["requester_confirmed"], true);
        let (st, v) = vote(&s, people.key(requester), requester, &id).await;
        assert_eq!(st, StatusCode::CONFLICT, "{label}: the requester cannot also approve: {v}");
        let (st, v) = vote(&s, people.key(outsider), outsider, &id).await;
        assert_eq!(
            (st, code(&v)),
            (StatusCode::FORBIDDEN, "policy.no_role"),
            "{label}: {outsider} is no Security Admin: {v}"
        );
        assert_eq!(probe(&s, &to).await, before, "{label}: one person alone changed nothing");
        let (st, v) = vote(&s, people.key(approver), approver, &id).await;
        assert_eq!((st, v["status"].as_str()), (StatusCode::OK, Some("executed")), "{label}: {v}");
        assert_eq!(v["approved_by"], json!([approver]), "{label}");
        let (st, v) = vote(&s, people.key(approver), approver, &id).await;
        assert_eq!(st, StatusCode::CONFLICT, "{label}: {v}");
        server::critical::resume(&s.state, true).await.unwrap();
        let to = s.token(people.key("owner"), Some("owner")).await;
        assert_ne!(probe(&s, &to).await, before, "{label}: it ran");
        executed.push(id);
    }
    // Each ran exactly once, and each vote is in the audit log with its passkey evidence.
    let events = s.state.store.audit_events(0, 100_000).await.unwrap();
    for id in &executed {
        let runs = events
            .iter()
            .filter(|e| e.event.kind == "critical.execute" && e.event.details_json.contains(id.as_str()))
            .count();
        assert_eq!(runs, 1, "approval {id} ran {runs} times");
    }
    let to = s.token(people.key("owner"), Some("owner")).await;
    let (_, prod) = s.get("/api/v1/vaults/prod", Some(&to)).await;
    assert_eq!(
        (prod["policy"]["require_hardware"].as_bool(), prod["policy"]["retention_days"].as_u64()),
        (Some(true), Some(7))
    );
    assert_eq!(prod["policy"]["immutability"], "enabled");
    assert_eq!(
        server::backups::open_repo(&s.state, "prod").await.unwrap().kek_versions(),
        vec![2],
        "version 1 retired"
    );
    let (_, vaults) = s.get("/api/v1/vaults", Some(&to)).await;
    assert!(
        vaults["vaults"].as_array().unwrap().iter().any(|v| v["name"] == "hw" && v["state"] == "deleted"),
        "{vaults}"
    );
    let (_, roles) = s.get("/api/v1/roles", Some(&to)).await;
    assert!(
        roles["roles"].as_array().unwrap().iter().any(|r| r["username"] == "carol" && r["role"] == "owner"),
        "{roles}"
    );
    assert!(!roles["roles"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["username"] == "sa2" && r["role"] == "security-admin"));
    // The retired key's vault still checks clean, every byte.
    let (st, r) = s.post("/api/v1/vaults/prod/check", json!({"read_data": true}), Some(&to)).await;
    assert_eq!(st, StatusCode::OK);
    assert!(r["errors"].as_array().unwrap().is_empty(), "{r}");
    // Offline, every vote re-verifies against the credential keys the log registered.
    let export = export_via_api(&s, &to).await;
    let report = auditlog::export::verify(&export, &Default::default()).unwrap();
    assert!(report.approvals_verified >= 2 * 8 + 2, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_vault_refuses_everything_that_would_weaken_it_even_when_approved() {
    let (s, mut people) = critical_fixture().await;
    let to = s.token(people.key("owner"), Some("owner")).await;
    // prod: a snapshot delete is requested and confirmed; meanwhile the vault gets locked.
    let (_, list) = s.get("/api/v1/vaults/prod/snapshots", Some(&to)).await;
    let snap = list["snapshots"][0]["id"].as_str().unwrap().to_string();
    let (st, del) = s.delete(&format!("/api/v1/vaults/prod/snapshots/{snap}"), &to).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{del}");
    let del = del["approval_id"].as_str().unwrap().to_string();
    assert_eq!(vote(&s, people.key("owner"), "owner", &del).await.0, StatusCode::OK);
    let (st, lock) = s.post("/api/v1/vaults/prod/immutability", json!({"state": "locked"}), Some(&to)).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{lock}");
    let lock = lock["approval_id"].as_str().unwrap().to_string();
    assert_eq!(vote(&s, people.key("owner"), "owner", &lock).await.0, StatusCode::OK);
    let (_, v) = vote(&s, people.key("sa1"), "sa1", &lock).await;
    assert_eq!(v["status"], "executed", "{v}");
    // The delete is approved now, and still does not run.
    let (st, v) = vote(&s, people.key("sa1"), "sa1", &del).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!((v["status"].as_str(), v["result"]["code"].as_str()), (Some("failed"), Some("policy.immutable")), "{v}");
    let (_, list) = s.get("/api/v1/vaults/prod/snapshots", Some(&to)).await;
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 1, "{list}");

    // Nothing that would weaken it gets as far as an approval.
    let to = s.token(people.key("owner"), Some("owner")).await;
    for (method, path, body, want) in [
        ("DELETE", format!("/api/v1/vaults/prod/snapshots/{snap}"), json!({}), "policy.immutable"),
        ("DELETE", "/api/v1/vaults/prod".to_string(), json!({}), "policy.immutable"),
        ("POST", "/api/v1/vaults/prod/retention".to_string(), json!({"days": 13}), "policy.immutable"),
        ("POST", "/api/v1/vaults/prod/retention".to_string(), json!({"days": 0}), "policy.immutable"),
        ("POST", "/api/v1/vaults/prod/immutability".to_string(), json!({"state": "disabled"}), "policy.locked"),
        ("POST", "/api/v1/vaults/prod/immutability".to_string(), json!({"state": "enabled"}), "policy.locked"),
    ] {
        let (st, v) = match method {
            "DELETE" => s.delete(&path, &to).await,
            _ => s.post(&path, body.clone(), Some(&to)).await,
        };
        assert_eq!((st, code(&v)), (StatusCode::FORBIDDEN, want), "{method} {path} {body}: {v}");
    }
    let kinds = s.audit_kinds().await;
    assert!(kinds.iter().filter(|k| *k == "critical.refuse").count() >= 6, "{kinds:?}");
    // Longer retention is no weakening: it takes effect at once, and cannot be undone either.
    let (st, v) = s.post("/api/v1/vaults/prod/retention", json!({"days": 30}), Some(&to)).await;
    assert_eq!((st, v["status"].as_str()), (StatusCode::OK, Some("done")), "{v}");
    let (st, v) = s.post("/api/v1/vaults/prod/retention", json!({"days": 14}), Some(&to)).await;
    assert_eq!((st, code(&v)), (StatusCode::FORBIDDEN, "policy.immutable"), "{v}");
    // A snapshot whose retention has ended can go (to soft delete) like anywhere else.
    s.state.clock.advance(400 * 86_400);
    let to = s.token(people.key("owner"), Some("owner")).await;
    let (st, v) = s.delete(&format!("/api/v1/vaults/prod/snapshots/{snap}"), &to).await;
    assert_eq!((st, v["status"].as_str()), (StatusCode::OK, Some("done")), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_snapshots_and_vaults_are_listed_recoverable_then_purged_on_the_servers_clock() {
    let (s, mut people) = critical_fixture().await;
    let to = s.token(people.key("owner"), Some("owner")).await;
    // A snapshot 20 days old (past the 14-day retention) next to the fixture's protected one.
    let repo = server::backups::open_repo(&s.state, "prod").await.unwrap();
    let src = s._dir.path().join("src-prod");
    let old_time = s.state.clock.now() - 20 * 86_400;
    let (old, _, _) = tokio::task::spawn_blocking(move || {
        repo::backup::backup_local(&repo, &[src], None, "h", testkit::fixed_time(old_time), &Default::default())
            .unwrap()
    })
    .await
    .unwrap();
    let old = old.to_hex();
    let (st, v) = s.delete(&format!("/api/v1/vaults/prod/snapshots/{}", &old[..8]), &to).await;
    assert_eq!((st, v["status"].as_str()), (StatusCode::OK, Some("done")), "past retention: deleted at once: {v}");
    let purge_at = v["result"]["purge_at"].as_i64().unwrap();
    assert_eq!(purge_at, s.state.clock.now() + 14 * 86_400);
    let (_, list) = s.get("/api/v1/vaults/prod/snapshots", Some(&to)).await;
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["deleted"][0]["id"], old.as_str(), "{list}");
    assert_eq!(list["deleted"][0]["deleted_by"], "owner");
    // A deleted snapshot cannot be restored, nor deleted twice.
    let (st, v) = s.post("/api/v1/vaults/prod/restores", json!({"snapshot": old, "target": "/tmp/x"}), Some(&to)).await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("undelete"), "{v}");
    let (st, _) = s.delete(&format!("/api/v1/vaults/prod/snapshots/{old}"), &to).await;
    assert_eq!(st, StatusCode::CONFLICT);
    // Prune keeps its data while it is recoverable.
    let (st, r) = s.post("/api/v1/vaults/prod/prune", json!({}), Some(&to)).await;
    assert_eq!(st, StatusCode::OK, "{r}");
    // Undelete brings it back; delete again; 14 days later it is purged.
    let (st, v) = s.post(&format!("/api/v1/vaults/prod/snapshots/{}/undelete", &old[..8]), json!({}), Some(&to)).await;
    assert_eq!((st, v["undeleted"].as_bool()), (StatusCode::OK, Some(true)), "{v}");
    let (st, r) = s.post("/api/v1/vaults/prod/restores", json!({"snapshot": old, "target": "/tmp/x"}), Some(&to)).await;
    assert_eq!(st, StatusCode::CREATED, "undeleted, it restores again: {r}");
    let (st, _) = s.delete(&format!("/api/v1/vaults/prod/snapshots/{old}"), &to).await;
    assert_eq!(st, StatusCode::OK);
    s.state.clock.advance(14 * 86_400 - 10);
    assert_eq!(server::critical::purge_due(&s.state).await.unwrap(), 0, "not yet");
    s.state.clock.advance(10);
    assert_eq!(server::critical::purge_due(&s.state).await.unwrap(), 1);
    let to = s.token(people.key("owner"), Some("owner")).await;
    let (_, list) = s.get("/api/v1/vaults/prod/snapshots", Some(&to)).await;
    assert!(list["deleted"].as_array().unwrap().is_empty(), "{list}");
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 1);
    let (st, _) = s.post(&format!("/api/v1/vaults/prod/snapshots/{old}/undelete"), json!({}), Some(&to)).await;
    assert_eq!(st, StatusCode::NOT_FOUND, "purged for good");
    let (st, r) = s.post("/api/v1/vaults/prod/check", json!({"read_data": true}), Some(&to)).await;
    assert_eq!(st, StatusCode::OK);
    assert!(r["errors"].as_array().unwrap().is_empty(), "{r}");

    // A vault: deleted through its approval, unusable but listed, recoverable, then purged.
    let (st, r) = s.delete("/api/v1/vaults/hw", &to).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{r}");
    let id = r["approval_id"].as_str().unwrap().to_string();
    vote(&s, people.key("owner"), "owner", &id).await;
    let (_, v) = vote(&s, people.key("sa1"), "sa1", &id).await;
    assert_eq!(v["status"], "executed", "{v}");
    let to = s.token(people.key("owner"), Some("owner")).await;
    let (st, v) = s.post("/api/v1/vaults/hw/backups", json!({}), Some(&to)).await;
    assert_eq!(st, StatusCode::CONFLICT, "a deleted vault takes no backups: {v}");
    let (_, shown) = s.get("/api/v1/vaults/hw", Some(&to)).await;
    assert_eq!(shown["state"], "deleted", "{shown}");
    let (st, v) = s.post("/api/v1/vaults", json!({"name": "hw"}), Some(&to)).await;
    assert_eq!(st, StatusCode::CONFLICT, "the name stays taken while it is recoverable: {v}");
    let (st, _) = s.post("/api/v1/vaults/hw/undelete", json!({}), Some(&to)).await;
    assert_eq!(st, StatusCode::OK);
    let (_, list) = s.get("/api/v1/vaults/hw/snapshots", Some(&to)).await;
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 1, "back with its snapshot: {list}");
    let (_, r) = s.delete("/api/v1/vaults/hw", &to).await;
    let id = r["approval_id"].as_str().unwrap().to_string();
    vote(&s, people.key("owner"), "owner", &id).await;
    let (_, v) = vote(&s, people.key("sa1"), "sa1", &id).await;
    assert_eq!(v["status"], "executed", "{v}");
    let dir = s._dir.path().join("data/vaults/hw");
    assert!(dir.exists(), "kept while recoverable");
    s.state.clock.advance(14 * 86_400 + 1);
    assert_eq!(server::critical::purge_due(&s.state).await.unwrap(), 1);
    assert!(!dir.exists(), "purged");
    let to = s.token(people.key("owner"), Some("owner")).await;
    let (st, _) = s.get("/api/v1/vaults/hw", Some(&to)).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, v) = s.post("/api/v1/vaults", json!({"name": "hw"}), Some(&to)).await;
    assert_eq!(st, StatusCode::CREATED, "the name is free again: {v}");
    let kinds = s.audit_kinds().await;
    for k in ["snapshot.purge", "vault.purge", "vault.undelete", "snapshot.undelete", "critical.direct"] {
        assert!(kinds.iter().any(|x| x == k), "no {k} in {kinds:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_operation_cut_off_by_a_crash_runs_at_the_next_start_exactly_once() {
    let (s, mut people) = critical_fixture().await;
    let to = s.token(people.key("owner"), Some("owner")).await;
    let (_, shown) = s.get("/api/v1/vaults/prod", Some(&to)).await;
    assert_eq!((shown["key_versions"].clone(), shown["current_key_version"].clone()), (json!([1]), json!(1)));
    // Two approved operations as a dying process leaves them: one approved but never claimed,
    // one claimed but without a result (the votes are recorded as the routes record them).
    let mut ids = Vec::new();
    for days in [20, 30] {
        let (st, r) = s.post("/api/v1/vaults/prod/retention", json!({"days": days}), Some(&to)).await;
        assert_eq!((st, r["status"].as_str()), (StatusCode::OK, Some("done")), "longer retention is direct: {r}");
    }
    for (path, body) in [("policy", json!({"approval_max_age": 600})), ("retention", json!({"days": 10}))] {
        let (st, r) = s.post(&format!("/api/v1/vaults/prod/{path}"), body, Some(&to)).await;
        assert_eq!(st, StatusCode::ACCEPTED, "{r}");
        let id = r["approval_id"].as_str().unwrap().to_string();
        let a = s.state.store.approval(&id).await.unwrap().unwrap();
        let sa1 = s.state.store.user_by_name("sa1").await.unwrap().unwrap();
        for (user, role) in [(a.requester_id.clone(), "requester"), (sa1.id, "approver")] {
            let v = store::Vote {
                approval_id: id.clone(),
                user_id: user,
                role: role.into(),
                evidence_json: "{}".into(),
                created_at: s.state.clock.now(),
            };
            assert!(s.state.store.add_vote(&v, &a.digest).await.unwrap());
        }
        assert!(s.state.store.complete_approval(&id, s.state.clock.now()).await.unwrap());
        ids.push(id);
    }
    assert!(s.state.store.claim_approved(&ids[1]).await.unwrap(), "the second was being run when the process died");
    // Housekeeping runs the unclaimed one; the interrupted one only at start.
    assert_eq!(server::critical::resume(&s.state, false).await.unwrap(), 1);
    let (_, v) = s.get(&format!("/api/v1/approvals/{}", ids[0]), Some(&to)).await;
    assert_eq!(v["status"], "executed", "{v}");
    let (_, v) = s.get(&format!("/api/v1/approvals/{}", ids[1]), Some(&to)).await;
    assert_eq!(v["status"], "running", "{v}");
    assert_eq!(server::critical::resume(&s.state, true).await.unwrap(), 1);
    let (_, v) = s.get(&format!("/api/v1/approvals/{}", ids[1]), Some(&to)).await;
    assert_eq!(v["status"], "executed", "{v}");
    assert_eq!(server::critical::resume(&s.state, true).await.unwrap(), 0, "nothing runs twice");
    let (_, prod) = s.get("/api/v1/vaults/prod", Some(&to)).await;
    assert_eq!(
        (prod["policy"]["approval_max_age"].as_i64(), prod["policy"]["retention_days"].as_u64()),
        (Some(600), Some(10))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_reads_browse_trees_list_the_inbox_and_run_server_side_restores() {
    let (s, to, (mut owner, _), (mut alice, _), (mut carol, _)) = restore_fixture().await;
    let tc = s.token(&mut carol, Some("carol")).await;
    // A reader browses a snapshot's tree, with sizes; names are checked, not trusted.
    let (st, root) = s.get("/api/v1/vaults/prod/snapshots/latest/tree", Some(&tc)).await;
    assert_eq!(st, StatusCode::OK, "{root}");
    let first_dir = root["entries"].as_array().unwrap().iter().find(|e| e["kind"] == "dir").unwrap()["name"]
        .as_str()
        .unwrap()
        .to_string();
    let (st, sub) = s.get(&format!("/api/v1/vaults/prod/snapshots/latest/tree?path={first_dir}"), Some(&tc)).await;
    assert_eq!(st, StatusCode::OK, "{sub}");
    assert!(
        sub["entries"].as_array().unwrap().iter().any(|e| e["kind"] == "file" && e["size"].as_u64().is_some()),
        "{sub}"
    );
    for bad in ["..", "a/../b", "/etc/passwd/../x"] {
        let (st, _) = s.get(&format!("/api/v1/vaults/prod/snapshots/latest/tree?path={bad}"), Some(&tc)).await;
        assert!(st == StatusCode::BAD_REQUEST || st == StatusCode::NOT_FOUND, "{bad}: {st}");
    }
    // The vault list carries size, snapshot count and last backup.
    let (_, list) = s.get("/api/v1/vaults", Some(&tc)).await;
    let prod = list["vaults"].as_array().unwrap().iter().find(|v| v["name"] == "prod").unwrap();
    assert!(prod["stats"]["stored_bytes"].as_u64().unwrap() > 0 && prod["stats"]["snapshots"] == 1, "{prod}");

    // Server-side restores: a relative new directory only.
    for bad in ["../escape", "/abs", "", "a/b"] {
        let body = json!({"snapshot": "latest", "target": bad, "on_server": true});
        let (st, v) = s.post("/api/v1/vaults/prod/restores", body, Some(&to)).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }
    let id = request_server_restore(&s, &to, "prod", "r1").await;
    let (_, shown) = s.get(&format!("/api/v1/approvals/{id}"), Some(&to)).await;
    assert_eq!(shown["operation"]["destination"], "server", "the approver sees where the data goes: {shown}");
    // The inbox: alice (restore operator) sees it waiting; the owner sees it as a request.
    let ta = s.token(&mut alice, Some("alice")).await;
    let (_, inbox) = s.get("/api/v1/approvals", Some(&ta)).await;
    assert!(inbox["waiting_for_me"].as_array().unwrap().iter().any(|a| a["approval_id"] == id.as_str()), "{inbox}");
    let (_, inbox) = s.get("/api/v1/approvals", Some(&to)).await;
    assert!(inbox["my_requests"].as_array().unwrap().iter().any(|a| a["approval_id"] == id.as_str()), "{inbox}");
    let (_, job) = s.get(&format!("/api/v1/restores/{id}/job"), Some(&to)).await;
    assert_eq!(job["status"], "pending");
    // Approved, the server restores by itself; nobody gets a grant for it.
    let (st, start, pkc) = sign_approval(&s, &mut alice, &ta, &id).await;
    assert_eq!(st, StatusCode::OK);
    let (st, v) = s
        .post(
            &format!("/api/v1/approvals/{id}/finish"),
            json!({"ceremony_id": start["ceremony_id"], "credential": pkc}),
            Some(&ta),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let job = wait_for_job(&s, &to, &id).await;
    assert_eq!(job["status"], "done", "{job}");
    assert_eq!(job["bytes_done"], job["bytes_total"]);
    testkit::assert_trees_equal(&s._dir.path().join("src-prod"), &s._dir.path().join("data/restores/r1/src-prod"));
    let (_, st2) = s.get(&format!("/api/v1/restores/{id}"), Some(&to)).await;
    assert!(st2["grant"].is_null(), "no grant is handed out for a server-side restore: {st2}");
    let (st, v) = s
        .post(
            "/api/v1/vaults/prod/restores",
            json!({"snapshot": "latest", "target": "r1", "on_server": true}),
            Some(&to),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "never into an existing directory: {v}");
    let kinds = s.audit_kinds().await;
    assert!(kinds.iter().filter(|k| *k == "restore.finish").count() == 1, "{kinds:?}");

    // The tar export holds the export files; the credential lookup names the authenticator.
    let to = s.token(&mut owner, Some("owner")).await;
    let resp = s.http.get(format!("{}/api/v1/audit/export", s.base)).bearer_auth(&to).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/x-tar");
    let tar = resp.bytes().await.unwrap();
    let mut names = Vec::new();
    for e in tar::Archive::new(&tar[..]).entries().unwrap() {
        names.push(e.unwrap().path().unwrap().to_string_lossy().into_owned());
    }
    for want in ["records.jsonl", "checkpoint", "audit.vkey"] {
        assert!(names.iter().any(|n| n.ends_with(want)), "{want} in {names:?}");
    }
    let cred = serde_json::from_str::<Value>(
        &s.state
            .store
            .audit_events(0, 10_000)
            .await
            .unwrap()
            .iter()
            .rev()
            .find(|e| e.event.kind == "restore.approve")
            .unwrap()
            .event
            .details_json,
    )
    .unwrap()["assertion"]["credential_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (st, c) = s.get(&format!("/api/v1/audit/credentials/{cred}"), Some(&to)).await;
    assert_eq!((st, c["user"].as_str()), (StatusCode::OK, Some("alice")), "{c}");
    let (st, _) = s.get(&format!("/api/v1/audit/credentials/{cred}"), Some(&tc)).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "a reader does not read the audit log");

    // A vault whose storage is damaged is still listed, without its figures.
    let snaps = s._dir.path().join("data/vaults/hw/snapshots");
    let victim = std::fs::read_dir(&snaps).unwrap().next().unwrap().unwrap().path();
    std::fs::write(&victim, b"not a snapshot").unwrap();
    let (st, list) = s.get("/api/v1/vaults", Some(&to)).await;
    assert_eq!(st, StatusCode::OK, "{list}");
    let by = |n: &str| list["vaults"].as_array().unwrap().iter().find(|v| v["name"] == n).unwrap().clone();
    assert!(by("hw")["stats"].is_null() && by("prod")["stats"]["snapshots"] == 1, "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_security_admin_comes_once_and_nothing_reopens_that_way() {
    let (s, to, (mut owner, _), (mut alice, _), (mut carol, _)) = restore_fixture().await;
    // While setting up, an invite may carry Owner; a vault-scoped Security Admin is no bootstrap.
    let (st, early_owner) = s.post("/api/v1/invites", json!({"username": "olga", "role": "owner"}), Some(&to)).await;
    assert_eq!(st, StatusCode::OK, "{early_owner}");
    let (st, v) = s
        .post("/api/v1/roles", json!({"username": "carol", "role": "security-admin", "vault": "prod"}), Some(&to))
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "a vault-scoped grant waits for an approval: {v}");
    // The first server-wide Security Admin: at once, and only once.
    let (st, inv) = s.post("/api/v1/invites", json!({"username": "sa1", "role": "security-admin"}), Some(&to)).await;
    assert_eq!(st, StatusCode::OK, "{inv}");
    assert_eq!(s.enroll(&mut SoftKey::new().unwrap(), inv["url"].as_str().unwrap()).await.0, StatusCode::OK);
    for (user, role) in [("x1", "security-admin"), ("x2", "owner")] {
        let (st, v) = s.post("/api/v1/invites", json!({"username": user, "role": role}), Some(&to)).await;
        assert_eq!(st, StatusCode::CONFLICT, "{role}: {v}");
    }
    // The owner invite made while setting up is void now.
    let mut olga = SoftKey::new().unwrap();
    let (st, v) = s.enroll(&mut olga, early_owner["url"].as_str().unwrap()).await;
    assert_eq!((st, code(&v)), (StatusCode::GONE, "enroll.link_invalid"), "{v}");
    // Disabling or expiring the Security Admin is critical, so the bootstrap cannot be reopened
    // by removing them; neither does a grant go through alone afterwards.
    let (st, v) = s.post("/api/v1/users/sa1/disable", json!({}), Some(&to)).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{v}");
    let (st, v) = s.post("/api/v1/users/sa1/expiry", json!({"expires_at": s.state.clock.now() + 60}), Some(&to)).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{v}");
    let (st, v) = s.post("/api/v1/roles", json!({"username": "alice", "role": "security-admin"}), Some(&to)).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{v}");
    let sa1 = s.state.store.user_by_name("sa1").await.unwrap().unwrap();
    assert!(!sa1.disabled && sa1.expires_at.is_none(), "nothing ran without an approval");
    // Users who are no Security Admins are disabled at once, as before.
    let (st, _) = s.post("/api/v1/users/carol/disable", json!({}), Some(&to)).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    // A reader sees no critical request; the owner (its requester) does.
    let id = v["approval_id"].as_str().unwrap().to_string();
    let ta = s.token(&mut alice, Some("alice")).await;
    let (st, _) = s.get(&format!("/api/v1/approvals/{id}"), Some(&ta)).await;
    assert_eq!(st, StatusCode::NOT_FOUND, "a restore operator is not among those who see it");
    let to = s.token(&mut owner, Some("owner")).await;
    let (st, _) = s.get(&format!("/api/v1/approvals/{id}"), Some(&to)).await;
    assert_eq!(st, StatusCode::OK);
    let _ = &mut carol;
}
