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
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

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

    /// Text with what canonicalisation must escape or keep: quotes, backslashes, controls,
    /// non-ASCII, and lone surrogates' neighbours.
    pub(crate) fn text() -> impl Strategy<Value = String> {
        let awkward = "\"\\\u{7f}\u{2028}\u{feff}\u{10ffff}".to_string();
        prop_oneof![3 => "[a-z._-]{0,10}", 1 => "(?s).{0,12}", 1 => Just(awkward)]
    }

    /// Any JSON value, nested a little: integers past 2^53, fractions, exponents, odd keys.
    pub(crate) fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            prop_oneof![any::<f64>().prop_filter("finite", |f| f.is_finite()), Just(1e300), Just(-0.0), Just(5e-324)]
                .prop_map(serde_json::Value::from),
            text().prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 5, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::Array),
                proptest::collection::btree_map(text(), inner, 0..5)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    pub(crate) fn record() -> impl Strategy<Value = Record> {
        let small = prop_oneof![0u64..1000, any::<u64>()];
        let time = prop_oneof![-1000i64..2_000_000_000, any::<i64>()];
        (small, time, text(), text(), text(), proptest::option::of(text()), proptest::option::of(text()), json_value())
            .prop_map(|(seq, time, kind, actor, outcome, vault, reason, details)| Record {
                seq,
                time,
                kind,
                actor,
                outcome,
                vault,
                reason,
                details,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// A leaf of any bytes is a record only if it is exactly that record's canonical form.
        #[test]
        fn arbitrary_bytes_never_panic_record_parsing(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            seq in any::<u64>(),
        ) {
            match Record::from_canonical(seq, &bytes) {
                Ok(r) => prop_assert_eq!(r.canonical().ok(), Some(bytes)),
                Err(e) => prop_assert!(matches!(e, AuditError::BadRecord { .. } | AuditError::Canonical(_)), "{e}"),
            }
        }

        /// Records of any contents canonicalise (or say why not), their canonical bytes parse
        /// back to the same record whenever its numbers are exact in a double, and any edit of
        /// those bytes is refused or is the canonical form of another record.
        #[test]
        fn canonical_records_round_trip_and_edits_never_panic_the_parser(
            r in record(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let Ok(bytes) = r.canonical() else { return Ok(()) };
            let exact = |n: f64| n.abs() < 9_007_199_254_740_992.0;
            let parsed = Record::from_canonical(r.seq, &bytes);
            if exact(r.seq as f64) && exact(r.time as f64) {
                prop_assert!(parsed.is_ok(), "{parsed:?} for {}", String::from_utf8_lossy(&bytes));
            }
            let mut edited = bytes.clone();
            let i = at.index(edited.len());
            edited[i] = byte;
            if let Ok(other) = Record::from_canonical(r.seq, &edited) {
                prop_assert_eq!(other.canonical().ok(), Some(edited));
            }
        }
    }
}
