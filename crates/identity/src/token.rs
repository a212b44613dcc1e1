//! Access tokens: JWTs signed with Ed25519 (EdDSA), a `kid` per signing key, the JWKS that
//! publishes the public halves, and verification that takes `now` rather than reading a clock.

use std::collections::BTreeMap;

use base64::Engine as _;
use ed25519_dalek::SigningKey;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::IdentityError;

/// Lifetime of an access token.
pub const ACCESS_TOKEN_SECONDS: i64 = 15 * 60;
/// Tolerated clock difference between issuer and verifier.
pub const LEEWAY_SECONDS: i64 = 30;

/// The claims of a Strongroom access token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Issuer: the server's public URL.
    pub iss: String,
    /// Subject: the user id.
    pub sub: String,
    /// Audience.
    pub aud: String,
    /// Expiry (unix seconds).
    pub exp: i64,
    /// Issued at (unix seconds).
    pub iat: i64,
    /// When the user last authenticated with a passkey (unix seconds).
    pub auth_time: i64,
    /// RFC 8176 authentication methods.
    pub amr: Vec<String>,
    /// Authentication context class (`phrh` or `phr`).
    pub acr: String,
    /// Session id: revoking the session invalidates the token.
    pub sid: String,
    /// Token id.
    pub jti: String,
}

/// Signs and verifies access tokens with a set of Ed25519 keys; the newest signs, all verify
/// (so keys can be rotated without cutting off tokens already issued).
pub struct TokenSigner {
    issuer: String,
    audience: String,
    keys: BTreeMap<String, (SigningKey, i64)>,
    current: String,
}

/// One signing key as stored: id, 32-byte seed, creation time.
#[derive(Clone, Serialize, Deserialize)]
pub struct StoredKey {
    /// Key id (`kid`).
    pub kid: String,
    /// The Ed25519 seed, hex (wiped from memory when dropped).
    pub seed_hex: Zeroizing<String>,
    /// Creation time (unix seconds); the newest key signs.
    pub created: i64,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoredKey({})", self.kid)
    }
}

impl StoredKey {
    /// A new random key.
    pub fn generate(rng: &mut impl CryptoRngCore, now: i64) -> StoredKey {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut_slice());
        let key = SigningKey::from_bytes(&seed);
        let kid = kid_of(&key);
        StoredKey { kid, seed_hex: Zeroizing::new(hex::encode(key.to_bytes())), created: now }
    }
}

fn kid_of(key: &SigningKey) -> String {
    let h = blake3::hash(key.verifying_key().as_bytes());
    hex::encode(&h.as_bytes()[..8])
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// PKCS#8 v1 DER of an Ed25519 private key (RFC 8410): the fixed 16-byte prefix, then the seed.
fn pkcs8_v1(seed: &[u8; 32]) -> Zeroizing<Vec<u8>> {
    let mut der = Zeroizing::new(Vec::with_capacity(48));
    der.extend_from_slice(&[
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
    ]);
    der.extend_from_slice(seed);
    der
}

impl TokenSigner {
    /// A signer for `issuer`/`audience` with these keys (at least one).
    pub fn new(issuer: &str, audience: &str, keys: &[StoredKey]) -> Result<TokenSigner, IdentityError> {
        let mut map = BTreeMap::new();
        let mut current: Option<(i64, String)> = None;
        for k in keys {
            let mut seed = Zeroizing::new([0u8; 32]);
            hex::decode_to_slice(k.seed_hex.as_str(), seed.as_mut_slice())
                .map_err(|_| IdentityError::Config(format!("signing key {} is not 64 hex digits", k.kid)))?;
            let key = SigningKey::from_bytes(&seed);
            if kid_of(&key) != k.kid {
                return Err(IdentityError::Config(format!("signing key {} does not match its id", k.kid)));
            }
            if current.as_ref().is_none_or(|(t, _)| k.created >= *t) {
                current = Some((k.created, k.kid.clone()));
            }
            map.insert(k.kid.clone(), (key, k.created));
        }
        let current = current.ok_or_else(|| IdentityError::Config("no token signing key".into()))?.1;
        Ok(TokenSigner { issuer: issuer.to_string(), audience: audience.to_string(), keys: map, current })
    }

    /// The issuer URL.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The audience tokens carry.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Signs claims with the newest key.
    pub fn sign(&self, claims: &AccessClaims) -> Result<String, IdentityError> {
        let (key, _) = self.keys.get(&self.current).ok_or_else(|| IdentityError::Config("no signing key".into()))?;
        let enc = EncodingKey::from_ed_der(&pkcs8_v1(&key.to_bytes()));
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.current.clone());
        jsonwebtoken::encode(&header, claims, &enc).map_err(|e| IdentityError::Config(e.to_string()))
    }

    /// Verifies signature, algorithm, issuer, audience and lifetime at `now`.
    pub fn verify(&self, token: &str, now: i64) -> Result<AccessClaims, IdentityError> {
        let bad = |why: &str| IdentityError::InvalidToken(why.to_string());
        if token.len() > 8192 {
            return Err(bad("too long"));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| bad("malformed header (or unsupported alg)"))?;
        if header.alg != Algorithm::EdDSA {
            return Err(bad("algorithm not allowed"));
        }
        let kid = header.kid.ok_or_else(|| bad("no key id"))?;
        let (key, _) = self.keys.get(&kid).ok_or_else(|| bad("unknown key id"))?;
        let dec = DecodingKey::from_ed_der(key.verifying_key().as_bytes());
        let mut v = Validation::new(Algorithm::EdDSA);
        // Time is checked below against the caller's `now`, not the system clock.
        v.validate_exp = false;
        v.required_spec_claims = Default::default();
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        let data = jsonwebtoken::decode::<AccessClaims>(token, &dec, &v).map_err(|e| bad(&format!("{e}")))?;
        let c = data.claims;
        // In i128: times anywhere in the i64 range neither overflow nor wrap into a lifetime
        // that looks short.
        let (exp, iat, at) = (i128::from(c.exp), i128::from(c.iat), i128::from(now));
        let leeway = i128::from(LEEWAY_SECONDS);
        if at >= exp + leeway {
            return Err(bad("expired"));
        }
        if iat > at + leeway || exp - iat > i128::from(ACCESS_TOKEN_SECONDS) {
            return Err(bad("issued in the future or with too long a lifetime"));
        }
        Ok(c)
    }

    /// The JSON Web Key Set with every verification key.
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<serde_json::Value> = self
            .keys
            .iter()
            .map(|(kid, (key, _))| {
                serde_json::json!({
                    "kty": "OKP", "crv": "Ed25519", "x": b64(key.verifying_key().as_bytes()),
                    "kid": kid, "use": "sig", "alg": "EdDSA"
                })
            })
            .collect();
        serde_json::json!({ "keys": keys })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    fn claims(now: i64) -> AccessClaims {
        AccessClaims {
            iss: "http://localhost:8440".into(),
            sub: "u1".into(),
            aud: "strongroom".into(),
            exp: now + ACCESS_TOKEN_SECONDS,
            iat: now,
            auth_time: now,
            amr: vec!["swk".into(), "user".into()],
            acr: "phr".into(),
            sid: "s1".into(),
            jti: "j1".into(),
        }
    }

    #[test]
    fn sign_verify_rotate_expire_and_refuse_forgeries() {
        let now = 1_800_000_000;
        let k1 = StoredKey::generate(&mut OsRng, now - 100);
        let s1 = TokenSigner::new("http://localhost:8440", "strongroom", std::slice::from_ref(&k1)).unwrap();
        let t1 = s1.sign(&claims(now)).unwrap();
        assert_eq!(s1.verify(&t1, now).unwrap(), claims(now));
        assert!(s1.verify(&t1, now + ACCESS_TOKEN_SECONDS + LEEWAY_SECONDS).is_err(), "expired");
        // Rotation: a new key signs, the old one still verifies.
        let k2 = StoredKey::generate(&mut OsRng, now);
        let s2 = TokenSigner::new("http://localhost:8440", "strongroom", &[k1, k2]).unwrap();
        assert!(s2.verify(&t1, now).is_ok());
        assert_ne!(
            jsonwebtoken::decode_header(s2.sign(&claims(now)).unwrap()).unwrap().kid,
            jsonwebtoken::decode_header(&t1).unwrap().kid
        );
        assert_eq!(s2.jwks()["keys"].as_array().map(Vec::len), Some(2));
        // Tampered payload, alg none, another issuer's key.
        let mut parts: Vec<String> = t1.split('.').map(str::to_string).collect();
        parts[1] = b64(br#"{"iss":"http://localhost:8440","sub":"admin"}"#);
        assert!(s1.verify(&parts.join("."), now).is_err());
        let none = format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), t1.split('.').nth(1).unwrap());
        assert!(s1.verify(&none, now).is_err());
        let other =
            TokenSigner::new("http://localhost:8440", "strongroom", &[StoredKey::generate(&mut OsRng, now)]).unwrap();
        assert!(other.verify(&t1, now).is_err());
        let wrong_aud = TokenSigner::new("http://localhost:8440", "other", &[]).err();
        assert!(wrong_aud.is_some(), "a signer needs a key");
    }

    use proptest::prelude::*;

    /// One signer for every case (a fixed seed: the tests stay deterministic).
    fn signer() -> TokenSigner {
        let seed = hex::encode([7u8; 32]);
        let kid = kid_of(&SigningKey::from_bytes(&[7u8; 32]));
        let key = StoredKey { kid, seed_hex: Zeroizing::new(seed), created: 0 };
        TokenSigner::new("http://localhost:8440", "strongroom", &[key]).unwrap()
    }

    fn is_invalid_token(r: &Result<AccessClaims, IdentityError>) -> bool {
        matches!(r, Err(IdentityError::InvalidToken(_)))
    }

    /// Headers an attacker would try: our algorithm or others (`none`, HMAC with the public
    /// key as secret), our key id or another, and headers that are not JSON objects at all.
    fn header() -> impl Strategy<Value = Vec<u8>> {
        let alg = prop::sample::select(vec!["EdDSA", "none", "HS256", "RS256", "ES256", "eddsa", ""]);
        let kid = prop_oneof![
            Just(None),
            Just(Some(kid_of(&SigningKey::from_bytes(&[7u8; 32])))),
            "[0-9a-f]{0,20}".prop_map(Some)
        ];
        prop_oneof![
            3 => (alg, kid).prop_map(|(alg, kid)| {
                let mut h = serde_json::json!({ "alg": alg, "typ": "JWT" });
                if let Some(kid) = kid {
                    h["kid"] = serde_json::json!(kid);
                }
                serde_json::to_vec(&h).unwrap()
            }),
            1 => proptest::collection::vec(any::<u8>(), 0..80),
            1 => Just(b"[]".to_vec()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any string presented as a bearer token is refused as an invalid token.
        #[test]
        fn arbitrary_strings_are_refused_as_invalid_tokens(token in "(?s).{0,300}", now in any::<i64>()) {
            prop_assert!(is_invalid_token(&signer().verify(&token, now)));
        }

        /// Three base64url parts of garbage, or of a plausible header and payload with a forged
        /// signature, are refused as invalid tokens.
        #[test]
        fn three_base64_parts_of_garbage_are_refused(
            header in header(),
            payload in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..120),
                Just(br#"{"iss":"http://localhost:8440","sub":"u1","aud":"strongroom","exp":9e99,"iat":0}"#.to_vec()),
            ],
            signature in proptest::collection::vec(any::<u8>(), 0..80),
            now in any::<i64>(),
        ) {
            let token = format!("{}.{}.{}", b64(&header), b64(&payload), b64(&signature));
            prop_assert!(is_invalid_token(&signer().verify(&token, now)));
        }

        /// A token really signed by our key but carrying any times (expiry, issue time, at any
        /// `now`, including the ends of the i64 range) is accepted only if it is within its
        /// lifetime, and never makes verification panic.
        #[test]
        fn signed_tokens_with_any_times_never_panic_verification(
            exp in prop_oneof![any::<i64>(), Just(i64::MAX), Just(i64::MIN), -2000i64..2000],
            iat in prop_oneof![any::<i64>(), Just(i64::MAX), Just(i64::MIN), -2000i64..2000],
            now in prop_oneof![any::<i64>(), Just(i64::MAX), Just(i64::MIN), -2000i64..2000],
        ) {
            let s = signer();
            let mut c = claims(0);
            c.exp = exp;
            c.iat = iat;
            let token = s.sign(&c).unwrap();
            match s.verify(&token, now) {
                Ok(back) => {
                    prop_assert_eq!(back, c);
                    let (exp, iat, now) = (i128::from(exp), i128::from(iat), i128::from(now));
                    let leeway = i128::from(LEEWAY_SECONDS);
                    prop_assert!(now < exp + leeway && iat <= now + leeway);
                    prop_assert!(exp - iat <= i128::from(ACCESS_TOKEN_SECONDS));
                }
                Err(e) => prop_assert!(matches!(e, IdentityError::InvalidToken(_)), "{e}"),
            }
        }
    }
}
