//! The policy decision a destination agent reports to the source on a
//! refused CONNECT ([`crate::tunnel::VERDICT_HEADER`]), so that both ends'
//! flow records name the same deciding rule; a bare 401 told the source
//! only that it was denied, not by what.
//!
//! The value is the verdict's [`Reason`] as JSON. A source believes it only
//! from the identity it dialled (the destination pod's, or the waypoint's),
//! which the TLS handshake verified: any other peer could make a source's
//! records blame a rule that never decided.
use crate::{
    identity::SpiffeId,
    policy::{Decision, Verdict, eval::Reason},
    tunnel::Reported,
};

/// A report longer than this (an ALLOW-policy list gone wild) is not sent;
/// the source then says it does not know the rule.
const MAX_LEN: usize = 4 << 10;

/// The header value for a denying `verdict` (dry-run results stay with the
/// destination's own record).
pub fn encode(verdict: &Verdict) -> Option<String> {
    if verdict.decision != Decision::Deny {
        return None;
    }
    serde_json::to_string(&verdict.reason)
        .ok()
        .filter(|v| v.len() <= MAX_LEN)
}

/// The denial in `reported`, if it came from `expected` and is one.
pub fn decode(reported: Option<&Reported>, expected: &SpiffeId) -> Option<Verdict> {
    let reported = reported.filter(|r| r.by == *expected)?;
    let reason: Reason = serde_json::from_str(&reported.verdict).ok()?;
    matches!(
        reason,
        Reason::DeniedBy { .. } | Reason::NoAllowRuleMatched { .. }
    )
    .then_some(Verdict {
        decision: Decision::Deny,
        reason,
        dry_run: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(sa: &str) -> SpiffeId {
        SpiffeId::new("cluster.local", "shop", sa).unwrap()
    }

    fn denied(reason: Reason) -> Verdict {
        Verdict {
            decision: Decision::Deny,
            reason,
            dry_run: Vec::new(),
        }
    }

    #[test]
    fn a_denial_crosses_intact_from_the_expected_peer_only() {
        let by_rule = denied(Reason::DeniedBy {
            policy: "shop/deny-bad".into(),
            rule: 2,
        });
        let no_rule = denied(Reason::NoAllowRuleMatched {
            policies: vec!["shop/a".into(), "shop/b".into()],
        });
        for verdict in [by_rule, no_rule] {
            let reported = Reported {
                by: id("payments"),
                verdict: encode(&verdict).unwrap(),
            };
            assert_eq!(decode(Some(&reported), &id("payments")), Some(verdict));
            assert_eq!(
                decode(Some(&reported), &id("cart")),
                None,
                "a report from another identity than the one dialled"
            );
        }
        assert_eq!(decode(None, &id("payments")), None);
    }

    #[test]
    fn only_denials_are_reported_or_believed() {
        let allowed = Verdict {
            decision: Decision::Allow,
            reason: Reason::NoAllowPolicy,
            dry_run: Vec::new(),
        };
        assert_eq!(encode(&allowed), None);
        for verdict in [
            serde_json::to_string(&Reason::NoAllowPolicy).unwrap(),
            "not json".to_owned(),
            r#"{"kind":"denied_by","policy":"shop/x"}"#.to_owned(),
        ] {
            let reported = Reported {
                by: id("payments"),
                verdict,
            };
            assert_eq!(decode(Some(&reported), &id("payments")), None);
        }
    }
}
