//! How strongly a user authenticated, in the vocabulary tokens carry: RFC 8176 `amr` values and
//! an `acr` level that policies compare.

use serde::{Deserialize, Serialize};

/// Authentication strength of one sign-in or approval.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Strength {
    /// The key is in hardware whose attestation chains to a configured trusted root.
    pub hardware: bool,
    /// The authenticator verified the user (PIN or biometric).
    pub user_verified: bool,
}

/// `acr` for a phishing-resistant login with attested hardware.
pub const ACR_HARDWARE: &str = "phrh";
/// `acr` for a phishing-resistant login.
pub const ACR_PASSKEY: &str = "phr";

impl Strength {
    /// RFC 8176 method references: `hwk` or `swk`, plus `user` when the user was verified.
    pub fn amr(&self) -> Vec<String> {
        let mut v = vec![if self.hardware { "hwk" } else { "swk" }.to_string()];
        if self.user_verified {
            v.push("user".to_string());
        }
        v
    }

    /// The authentication context class: `phrh` for attested hardware, `phr` otherwise.
    pub fn acr(&self) -> &'static str {
        if self.hardware {
            ACR_HARDWARE
        } else {
            ACR_PASSKEY
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn software_keys_never_claim_hardware() {
        let s = Strength { hardware: false, user_verified: true };
        assert_eq!(s.amr(), vec!["swk", "user"]);
        assert_eq!(s.acr(), "phr");
        let h = Strength { hardware: true, user_verified: true };
        assert_eq!(h.amr(), vec!["hwk", "user"]);
        assert_eq!(h.acr(), "phrh");
    }
}
