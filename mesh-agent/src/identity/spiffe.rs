//! SPIFFE IDs as nodemesh uses them: one per (namespace, service account).
use std::fmt;

use super::IdentityError;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

/// Trust domains: lowercase letters, digits, `.`, `-`, `_` (SPIFFE spec).
fn trust_domain_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// Namespaces and service accounts: Kubernetes DNS names.
fn k8s_name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-".contains(&b))
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
}

impl SpiffeId {
    /// Checks a trust domain on its own (e.g. the CA's).
    pub fn check_trust_domain(trust_domain: &str) -> Result<(), IdentityError> {
        if trust_domain_ok(trust_domain) {
            Ok(())
        } else {
            Err(IdentityError::InvalidTrustDomain(trust_domain.to_owned()))
        }
    }

    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdentityError> {
        let invalid = |reason| IdentityError::InvalidId {
            input: format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"),
            reason,
        };
        if !trust_domain_ok(trust_domain) {
            return Err(invalid(
                "the trust domain may hold only a-z, 0-9, '.', '-', '_'",
            ));
        }
        if !k8s_name_ok(namespace) {
            return Err(invalid("the namespace is not a Kubernetes name"));
        }
        if !k8s_name_ok(service_account) {
            return Err(invalid("the service account is not a Kubernetes name"));
        }
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        })
    }

    pub fn parse(uri: &str) -> Result<Self, IdentityError> {
        let invalid = |reason| IdentityError::InvalidId {
            input: uri.to_owned(),
            reason,
        };
        let rest = uri
            .strip_prefix("spiffe://")
            .ok_or(invalid("the scheme is not spiffe://"))?;
        let (trust_domain, path) = rest.split_once('/').ok_or(invalid("there is no path"))?;
        match path.split('/').collect::<Vec<_>>().as_slice() {
            ["ns", namespace, "sa", service_account] => {
                Self::new(trust_domain, namespace, service_account).map_err(|e| match e {
                    IdentityError::InvalidId { reason, .. } => invalid(reason),
                    other => other,
                })
            }
            _ => Err(invalid(
                "the path is not /ns/<namespace>/sa/<service-account>",
            )),
        }
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_the_same_id() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/cart").unwrap();
        assert_eq!(
            (id.trust_domain(), id.namespace(), id.service_account()),
            ("cluster.local", "shop", "cart")
        );
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/cart");
    }

    #[test]
    fn rejects_what_is_not_a_workload_id() {
        for bad in [
            "https://cluster.local/ns/shop/sa/cart",
            "spiffe://cluster.local",
            "spiffe://cluster.local/ns/shop",
            "spiffe://cluster.local/ns/shop/sa/cart/extra",
            "spiffe://cluster.local/sa/cart/ns/shop",
            "spiffe://Cluster.Local/ns/shop/sa/cart",
            "spiffe:///ns/shop/sa/cart",
            "spiffe://cluster.local/ns//sa/cart",
            "spiffe://cluster.local/ns/Shop/sa/cart",
            "spiffe://cluster.local/ns/shop/sa/-cart",
        ] {
            let err = SpiffeId::parse(bad).expect_err(bad).to_string();
            assert!(
                err.contains(bad) && err.contains("expected spiffe://"),
                "{err}"
            );
        }
    }
}
