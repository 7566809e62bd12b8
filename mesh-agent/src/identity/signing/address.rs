//! The CA's address as agents are given it: `host:port`, where the host may
//! be a DNS name (on Kubernetes, the CA's Service,
//! `nodemesh-ca.nodemesh-system.svc:15012`). The name is resolved at each
//! dial, never once at start, so a CA that moves is found again.
use std::{fmt, net::SocketAddr, str::FromStr};

/// `host:port`; IPv6 literals in brackets (`[fd00::1]:15012`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaAddr {
    host: String,
    port: u16,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "{input:?} is not a CA address: {reason} (expected host:port, e.g. 10.0.0.5:15012 or nodemesh-ca.nodemesh-system.svc:15012)"
)]
pub struct CaAddrError {
    input: String,
    reason: &'static str,
}

impl FromStr for CaAddr {
    type Err = CaAddrError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| CaAddrError {
            input: input.to_owned(),
            reason,
        };
        if let Ok(addr) = input.parse::<SocketAddr>() {
            return Ok(Self {
                host: addr.ip().to_string(),
                port: addr.port(),
            });
        }
        let (host, port) = input.rsplit_once(':').ok_or_else(|| err("no port"))?;
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| err("the port is not a number from 1 to 65535"))?;
        let name_ok = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
            && !host.starts_with(['-', '.']);
        if !name_ok {
            return Err(err(
                "the host is neither an IP address nor a DNS name (IPv6 goes in brackets)",
            ));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for CaAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl From<SocketAddr> for CaAddr {
    fn from(addr: SocketAddr) -> Self {
        Self {
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("resolving the CA's address {ca}: {source}")]
pub struct ResolveError {
    ca: CaAddr,
    #[source]
    source: std::io::Error,
}

impl CaAddr {
    /// The address to dial now: the first the resolver gives (a Service has
    /// one, its cluster IP). An IP literal resolves to itself.
    pub async fn resolve(&self) -> Result<SocketAddr, ResolveError> {
        let err = |source| ResolveError {
            ca: self.clone(),
            source,
        };
        tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(err)?
            .next()
            .ok_or_else(|| {
                err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the name has no address",
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::CaAddr;

    #[test]
    fn parses_addresses_and_names() {
        for (input, shown) in [
            ("10.0.0.5:15012", "10.0.0.5:15012"),
            ("[fd00::5]:15012", "[fd00::5]:15012"),
            (
                "nodemesh-ca.nodemesh-system.svc:15012",
                "nodemesh-ca.nodemesh-system.svc:15012",
            ),
        ] {
            let addr: CaAddr = input.parse().unwrap();
            assert_eq!(addr.to_string(), shown);
        }
        for (bad, why) in [
            ("nodemesh-ca", "no port"),
            ("nodemesh-ca:0", "1 to 65535"),
            ("nodemesh-ca:http", "1 to 65535"),
            ("fd00::5:15012", "IPv6 goes in brackets"),
            (":15012", "neither an IP"),
        ] {
            let err = bad.parse::<CaAddr>().unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[tokio::test]
    async fn names_and_literals_resolve() {
        let addr: CaAddr = "localhost:15012".parse().unwrap();
        let resolved = addr.resolve().await.unwrap();
        assert!(resolved.ip().is_loopback(), "{resolved}");
        assert_eq!(resolved.port(), 15012);
        let literal: CaAddr = "127.0.0.9:7".parse().unwrap();
        assert_eq!(literal.resolve().await.unwrap().to_string(), "127.0.0.9:7");
    }
}
