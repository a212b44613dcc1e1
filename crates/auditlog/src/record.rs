//! One audit record and its canonical bytes (RFC 8785 JSON Canonicalization Scheme), which
//! are exactly the Merkle leaf. Integers stay below 2^53 (JCS writes numbers as doubles):
//! sequence numbers and Unix seconds do; ids and hashes are strings.

use serde::{Deserialize, Serialize};

use crate::{AuditError, Result};

/// A security-relevant event. The summary fields say who did what to which vault, with what
/// outcome and why; `details` holds the machine evidence (for approvals: the full WebAuthn
/// assertion, the operation and its digest).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Position in the log, from 1 (its Merkle leaf index is `seq - 1`).
    pub seq: u64,
    /// Server time, Unix seconds.
    pub time: i64,
    /// What happened (`login`, `enroll`, `restore.approve`, `access.decision`, …).
    pub kind: String,
    /// Who (a user name, or `-`).
    pub actor: String,
    /// How it ended (`success`, `refused`, `approved`, `denied`, …).
    pub outcome: String,
    /// The vault concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<String>,
    /// Why (for refusals and decisions), if said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Evidence and context.
    #[serde(default)]
    pub details: serde_json::Value,
}

impl Record {
    /// The canonical bytes: the Merkle leaf, and one line of an export.
    pub fn canonical(&self) -> Result<Vec<u8>> {
        serde_json_canonicalizer::to_vec(self).map_err(|e| AuditError::Canonical(e.to_string()))
    }

    /// Parses a leaf, refusing anything that is not exactly its own canonical form (so two
    /// byte strings can never stand for the same record).
    pub fn from_canonical(seq: u64, bytes: &[u8]) -> Result<Record> {
        let r: Record = serde_json::from_slice(bytes)
            .map_err(|e| AuditError::BadRecord { seq, why: format!("not a record: {e}") })?;
        if r.canonical()? != bytes {
            return Err(AuditError::BadRecord { seq, why: "not in canonical (RFC 8785) form".into() });
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form_sorts_keys_and_round_trips() {
        let r = Record {
            seq: 3,
            time: 1_800_000_000,
            kind: "login".into(),
            actor: "alice".into(),
            outcome: "success".into(),
            vault: None,
            reason: None,
            details: serde_json::json!({"b": 1, "a": "x\u{20ac}"}),
        };
        let c = r.canonical().unwrap();
        assert_eq!(
            String::from_utf8(c.clone()).unwrap(),
            r#"{"actor":"alice","details":{"a":"x€","b":1},"kind":"login","outcome":"success","seq":3,"time":1800000000}"#
        );
        assert_eq!(Record::from_canonical(3, &c).unwrap(), r);
        let spaced = r#"{"actor": "alice","details":{"a":"x€","b":1},"kind":"login","outcome":"success","seq":3,"time":1800000000}"#;
        assert!(Record::from_canonical(3, spaced.as_bytes()).is_err());
    }

    #[test]
    fn rfc8785_known_answer() {
        let v: serde_json::Value = serde_json::from_str(r#"{"b": false, "c": 12e1, "a": "Hello!"}"#).unwrap();
        assert_eq!(serde_json_canonicalizer::to_string(&v).unwrap(), r#"{"a":"Hello!","b":false,"c":120}"#);
    }
}
