//! Random secrets handed to people and programs (enrollment tokens, session tokens, device and
//! user codes) and the hashes under which they are stored, so a database leak reveals none.

use base64::Engine as _;
use rand_core::CryptoRngCore;

/// A 256-bit random token, base64url without padding (43 characters).
pub fn random_token(rng: &mut impl CryptoRngCore) -> String {
    let mut b = [0u8; 32];
    rng.fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// The storage form of a secret token: BLAKE3 in hex. Tokens are 256-bit random values, so a
/// fast unsalted hash is enough; lookups by hash also avoid timing leaks on the secret itself.
pub fn token_hash(token: &str) -> String {
    blake3::hash(token.as_bytes()).to_hex().to_string()
}

/// RFC 8628 §6.1: user codes from a 20-letter alphabet with no vowels (no words) and no
/// look-alikes; 8 characters ≈ 34.5 bits, shown as `XXXX-XXXX`.
const USER_CODE_ALPHABET: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";

/// A fresh user code `XXXX-XXXX`.
pub fn user_code(rng: &mut impl CryptoRngCore) -> String {
    let mut out = String::with_capacity(9);
    for i in 0..8 {
        if i == 4 {
            out.push('-');
        }
        // Rejection sampling keeps the distribution uniform.
        let c = loop {
            let b = (rng.next_u32() & 0xff) as u8;
            if b < 240 {
                break USER_CODE_ALPHABET[(b % 20) as usize];
            }
        };
        out.push(c as char);
    }
    out
}

/// Normalises what a person typed: upper case, letters of the alphabet only, `XXXX-XXXX`.
/// `None` if it cannot be a user code.
pub fn normalize_user_code(input: &str) -> Option<String> {
    let letters: Vec<char> =
        input.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_uppercase()).collect();
    if letters.len() != 8 || !letters.iter().all(|c| USER_CODE_ALPHABET.contains(&(*c as u8))) {
        return None;
    }
    let s: String = letters.into_iter().collect();
    Some(format!("{}-{}", &s[..4], &s[4..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    #[test]
    fn user_codes_have_the_documented_shape_and_normalise() {
        for _ in 0..100 {
            let c = user_code(&mut OsRng);
            assert_eq!(c.len(), 9);
            assert_eq!(normalize_user_code(&c.to_lowercase().replace('-', " ")), Some(c.clone()));
        }
        assert_eq!(normalize_user_code("AAAA-BBBB"), None);
        assert_eq!(normalize_user_code("BCDF"), None);
    }

    #[test]
    fn tokens_are_long_and_hashes_differ_from_them() {
        let t = random_token(&mut OsRng);
        assert_eq!(t.len(), 43);
        assert_ne!(token_hash(&t), t);
        assert_eq!(token_hash(&t), token_hash(&t));
    }
}
