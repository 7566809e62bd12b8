//! Which flows to show. One type for the admin API (as a query string) and
//! `meshctl flows` (as flags), so the two always agree. Criteria combine
//! with AND; each may be negated (Hubble's `--not`).
use std::{net::IpAddr, str::FromStr};

use super::{
    FlowRecord,
    record::{Endpoint, Hook, State},
};

/// Flows whose outcome is …
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// … open or relayed to their end.
    Allowed,
    Denied,
    Refused,
    Error,
}

impl FromStr for Outcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "allowed" => Self::Allowed,
            "denied" => Self::Denied,
            "refused" => Self::Refused,
            "error" => Self::Error,
            other => {
                return Err(format!(
                    "verdict {other:?}: expected allowed, denied, refused or error"
                ));
            }
        })
    }
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Denied => "denied",
            Self::Refused => "refused",
            Self::Error => "error",
        }
    }
}

/// One condition on a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Criterion {
    /// Either end is in this namespace.
    Namespace(String),
    /// Either end is this pod (`name` or `namespace/name`).
    Pod(String),
    /// Either end has this identity (SPIFFE ID, or a suffix like `sa/cart`).
    Identity(String),
    FromNamespace(String),
    ToNamespace(String),
    FromPod(String),
    ToPod(String),
    FromIp(IpAddr),
    ToIp(IpAddr),
    FromIdentity(String),
    ToIdentity(String),
    /// Destination port (the original one).
    Port(u16),
    Verdict(Outcome),
    /// Started at or after this time (ms since the Unix epoch).
    Since(u64),
    /// An HTTP request (at a waypoint) answered with this status; `5xx`
    /// style classes match a whole hundred.
    HttpStatus(StatusMatch),
    /// An HTTP request with this method (any case).
    Method(String),
    /// An HTTP request whose path (query included) starts with this.
    Path(String),
    /// Captured by this kernel hook (or by any): flows that arrived through
    /// the tunnel, and waypoint requests, were captured by none.
    Hook(HookMatch),
}

/// A capture hook, or `any` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookMatch {
    Any,
    Exact(Hook),
}

impl HookMatch {
    fn parse(text: &str) -> Result<Self, String> {
        if text == "any" {
            return Ok(Self::Any);
        }
        [Hook::Connect4, Hook::Connect6, Hook::SkLookup]
            .into_iter()
            .find(|h| h.as_str() == text)
            .map(Self::Exact)
            .ok_or_else(|| {
                format!("--hook {text:?}: expected connect4, connect6, sk_lookup or any")
            })
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Any => "any",
            Self::Exact(hook) => hook.as_str(),
        }
    }

    fn matches(self, hook: Option<Hook>) -> bool {
        match self {
            Self::Any => hook.is_some(),
            Self::Exact(wanted) => hook == Some(wanted),
        }
    }
}

/// A status, or a class like `5xx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusMatch {
    Exact(u16),
    Class(u16),
}

impl StatusMatch {
    fn parse(text: &str) -> Result<Self, String> {
        let bad =
            || format!("--http-status {text:?}: expected a status like 503 or a class like 5xx");
        match text.strip_suffix("xx") {
            Some(class) => match class.parse::<u16>() {
                Ok(c @ 1..=5) if class.len() == 1 => Ok(Self::Class(c)),
                _ => Err(bad()),
            },
            None => match text.parse::<u16>() {
                Ok(code @ 100..=599) => Ok(Self::Exact(code)),
                _ => Err(bad()),
            },
        }
    }

    fn matches(self, status: u16) -> bool {
        match self {
            Self::Exact(code) => status == code,
            Self::Class(class) => status / 100 == class,
        }
    }
}

impl std::fmt::Display for StatusMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact(code) => write!(f, "{code}"),
            Self::Class(class) => write!(f, "{class}xx"),
        }
    }
}

/// The query-string keys, in one table so encoding and parsing agree.
const KEYS: &[&str] = &[
    "namespace",
    "pod",
    "identity",
    "from-namespace",
    "to-namespace",
    "from-pod",
    "to-pod",
    "from-ip",
    "to-ip",
    "from-identity",
    "to-identity",
    "port",
    "verdict",
    "since",
    "http-status",
    "method",
    "path",
    "hook",
];

impl Criterion {
    /// Builds a criterion from its key (a flag name without `--`) and value.
    pub fn parse(key: &str, value: &str) -> Result<Self, String> {
        let ip = |v: &str| {
            v.parse::<IpAddr>()
                .map_err(|_| format!("--{key} {v:?}: not an IP address"))
        };
        let s = value.to_owned();
        Ok(match key {
            "namespace" => Self::Namespace(s),
            "pod" => Self::Pod(s),
            "identity" => Self::Identity(s),
            "from-namespace" => Self::FromNamespace(s),
            "to-namespace" => Self::ToNamespace(s),
            "from-pod" => Self::FromPod(s),
            "to-pod" => Self::ToPod(s),
            "from-ip" => Self::FromIp(ip(value)?),
            "to-ip" => Self::ToIp(ip(value)?),
            "from-identity" => Self::FromIdentity(s),
            "to-identity" => Self::ToIdentity(s),
            "port" => Self::Port(
                value
                    .parse()
                    .map_err(|_| format!("--port {value:?}: not a port (1-65535)"))?,
            ),
            "verdict" => Self::Verdict(value.parse()?),
            "since" => Self::Since(
                value
                    .parse()
                    .map_err(|_| format!("since {value:?}: not milliseconds since the epoch"))?,
            ),
            "http-status" => Self::HttpStatus(StatusMatch::parse(value)?),
            "method" => Self::Method(value.to_ascii_uppercase()),
            "path" => Self::Path(s),
            "hook" => Self::Hook(HookMatch::parse(value)?),
            other => return Err(format!("unknown flow filter {other:?}; known: {KEYS:?}")),
        })
    }

    fn key_value(&self) -> (&'static str, String) {
        match self {
            Self::Namespace(v) => ("namespace", v.clone()),
            Self::Pod(v) => ("pod", v.clone()),
            Self::Identity(v) => ("identity", v.clone()),
            Self::FromNamespace(v) => ("from-namespace", v.clone()),
            Self::ToNamespace(v) => ("to-namespace", v.clone()),
            Self::FromPod(v) => ("from-pod", v.clone()),
            Self::ToPod(v) => ("to-pod", v.clone()),
            Self::FromIp(v) => ("from-ip", v.to_string()),
            Self::ToIp(v) => ("to-ip", v.to_string()),
            Self::FromIdentity(v) => ("from-identity", v.clone()),
            Self::ToIdentity(v) => ("to-identity", v.clone()),
            Self::Port(v) => ("port", v.to_string()),
            Self::Verdict(v) => ("verdict", v.as_str().to_owned()),
            Self::Since(v) => ("since", v.to_string()),
            Self::HttpStatus(v) => ("http-status", v.to_string()),
            Self::Method(v) => ("method", v.clone()),
            Self::Path(v) => ("path", v.clone()),
            Self::Hook(v) => ("hook", v.as_str().to_owned()),
        }
    }

    pub fn matches(&self, r: &FlowRecord) -> bool {
        let (from, to) = (&r.source, &r.destination);
        match self {
            Self::Namespace(ns) => in_namespace(from, ns) || in_namespace(to, ns),
            Self::Pod(p) => is_pod(from, p) || is_pod(to, p),
            Self::Identity(id) => has_identity(from, id) || has_identity(to, id),
            Self::FromNamespace(ns) => in_namespace(from, ns),
            Self::ToNamespace(ns) => in_namespace(to, ns),
            Self::FromPod(p) => is_pod(from, p),
            Self::ToPod(p) => is_pod(to, p),
            Self::FromIp(ip) => from.ip == ip.to_canonical(),
            Self::ToIp(ip) => to.ip == ip.to_canonical(),
            Self::FromIdentity(id) => has_identity(from, id),
            Self::ToIdentity(id) => has_identity(to, id),
            Self::Port(port) => to.port == *port,
            Self::Verdict(outcome) => {
                let actual = match r.state {
                    State::Open | State::Closed => Outcome::Allowed,
                    State::Denied => Outcome::Denied,
                    State::Refused => Outcome::Refused,
                    State::Error => Outcome::Error,
                };
                actual == *outcome
            }
            Self::Since(ms) => r.start_unix_ms >= *ms,
            Self::HttpStatus(m) => r.http.as_ref().is_some_and(|h| m.matches(h.status)),
            Self::Method(method) => r.http.as_ref().is_some_and(|h| *h.method == **method),
            Self::Path(prefix) => r.http.as_ref().is_some_and(|h| h.path.starts_with(prefix)),
            Self::Hook(m) => m.matches(r.hook),
        }
    }
}

fn in_namespace(e: &Endpoint, ns: &str) -> bool {
    e.namespace() == Some(ns)
}

fn is_pod(e: &Endpoint, pod: &str) -> bool {
    e.pod
        .as_deref()
        .is_some_and(|p| p == pod || (!pod.contains('/') && p.rsplit('/').next() == Some(pod)))
}

fn has_identity(e: &Endpoint, id: &str) -> bool {
    e.identity
        .as_deref()
        .is_some_and(|have| have == id || have.ends_with(&format!("/{id}")))
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// (negated, criterion), all of which must hold.
    pub criteria: Vec<(bool, Criterion)>,
    /// Only the newest `last` matching flows.
    pub last: Option<usize>,
}

impl Filter {
    pub fn matches(&self, r: &FlowRecord) -> bool {
        self.criteria.iter().all(|(not, c)| c.matches(r) != *not)
    }

    /// As a URL query string (`not.` marks a negated criterion).
    pub fn to_query(&self) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (not, c) in &self.criteria {
            let (key, value) = c.key_value();
            let key = if *not {
                format!("not.{key}")
            } else {
                key.to_owned()
            };
            query.append_pair(&key, &value);
        }
        if let Some(last) = self.last {
            query.append_pair("last", &last.to_string());
        }
        query.finish()
    }

    /// Parses [`Filter::to_query`]'s output (and hand-written queries).
    pub fn from_query(query: &str) -> Result<Self, String> {
        let mut filter = Self::default();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            if key == "last" {
                filter.last = Some(
                    value
                        .parse()
                        .map_err(|_| format!("last {value:?}: not a count"))?,
                );
                continue;
            }
            let (not, key) = match key.strip_prefix("not.") {
                Some(k) => (true, k),
                None => (false, key.as_ref()),
            };
            filter.criteria.push((not, Criterion::parse(key, &value)?));
        }
        Ok(filter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::record::{Direction, Path};

    fn record(id: u64, from: (&str, &str), to: (&str, &str, u16), state: State) -> FlowRecord {
        let end = |pod: &str, ip: &str, port| Endpoint {
            pod: (!pod.is_empty()).then(|| pod.into()),
            ip: ip.parse().unwrap(),
            port,
            identity: pod.split_once('/').map(|(ns, _)| {
                format!("spiffe://cluster.local/ns/{ns}/sa/{}", &pod[ns.len() + 1..]).into()
            }),
        };
        FlowRecord {
            id,
            node: "n1".into(),
            start_unix_ms: 1000 * id,
            end_unix_ms: Some(1000 * id + 5),
            direction: Direction::Outbound,
            hook: None,
            path: Path::Tunnel,
            source: end(from.0, from.1, 40000),
            destination: end(to.0, to.1, to.2),
            service: None,
            endpoint: None,
            tls: None,
            verdict: None,
            bytes_sent: 1,
            bytes_received: 2,
            state,
            end: None,
            error: None,
            waypoint: None,
            http: None,
            parent: None,
        }
    }

    fn flows() -> Vec<FlowRecord> {
        let mut all = vec![
            record(
                1,
                ("shop/frontend", "10.1.0.11"),
                ("shop/cart", "10.2.0.11", 8080),
                State::Closed,
            ),
            record(
                2,
                ("legacy/client", "10.1.0.12"),
                ("shop/cart", "10.2.0.11", 8080),
                State::Refused,
            ),
            record(
                3,
                ("shop/frontend", "10.1.0.11"),
                ("shop/payments", "10.2.0.12", 9090),
                State::Denied,
            ),
            record(4, ("", "10.9.0.1"), ("", "10.9.0.2", 53), State::Error),
        ];
        all[0].hook = Some(Hook::Connect4);
        all[1].hook = Some(Hook::SkLookup);
        all
    }

    fn ids(query: &str) -> Vec<u64> {
        let filter = Filter::from_query(query).unwrap();
        flows()
            .into_iter()
            .filter(|r| filter.matches(r))
            .map(|r| r.id)
            .collect()
    }

    #[test]
    fn every_criterion_narrows() {
        assert_eq!(ids(""), [1, 2, 3, 4]);
        assert_eq!(ids("namespace=legacy"), [2]);
        assert_eq!(ids("pod=cart"), [1, 2]);
        assert_eq!(ids("pod=shop%2Fpayments"), [3]);
        assert_eq!(ids("from-pod=frontend"), [1, 3]);
        assert_eq!(ids("to-pod=frontend"), Vec::<u64>::new());
        assert_eq!(ids("from-namespace=shop&to-namespace=shop"), [1, 3]);
        assert_eq!(ids("from-ip=10.1.0.12"), [2]);
        assert_eq!(ids("to-ip=10.2.0.12"), [3]);
        assert_eq!(ids("identity=sa%2Fclient"), [2]);
        assert_eq!(
            ids("to-identity=spiffe%3A%2F%2Fcluster.local%2Fns%2Fshop%2Fsa%2Fcart"),
            [1, 2]
        );
        assert_eq!(ids("from-identity=sa%2Ffrontend"), [1, 3]);
        assert_eq!(ids("port=9090"), [3]);
        assert_eq!(ids("verdict=allowed"), [1]);
        assert_eq!(ids("verdict=denied"), [3]);
        assert_eq!(ids("verdict=refused"), [2]);
        assert_eq!(ids("verdict=error"), [4]);
        assert_eq!(ids("since=2500"), [3, 4]);
        assert_eq!(ids("not.namespace=shop"), [4]);
        assert_eq!(ids("hook=connect4"), [1]);
        assert_eq!(ids("hook=sk_lookup"), [2]);
        assert_eq!(ids("hook=any"), [1, 2]);
        assert_eq!(ids("not.hook=any"), [3, 4]);
        assert_eq!(ids("hook=connect6"), Vec::<u64>::new());
        assert_eq!(ids("pod=cart&not.verdict=refused"), [1]);
    }

    #[test]
    fn http_criteria_match_only_requests() {
        use crate::flows::record::HttpRecord;
        let request = |id, method: &str, path: &str, status| {
            let mut r = record(
                id,
                ("shop/a", "10.1.0.1"),
                ("", "10.96.0.1", 80),
                State::Closed,
            );
            r.http = Some(HttpRecord {
                method: method.into(),
                path: path.into(),
                status,
                ..HttpRecord::default()
            });
            r
        };
        let all = [
            request(1, "GET", "/api/x", 200),
            request(2, "POST", "/api/y", 503),
            request(3, "GET", "/other", 404),
            record(
                4,
                ("shop/a", "10.1.0.1"),
                ("", "10.96.0.1", 80),
                State::Closed,
            ),
        ];
        let ids = |query: &str| -> Vec<u64> {
            let filter = Filter::from_query(query).unwrap();
            all.iter()
                .filter(|r| filter.matches(r))
                .map(|r| r.id)
                .collect()
        };
        assert_eq!(ids("http-status=503"), [2]);
        assert_eq!(ids("http-status=5xx"), [2]);
        assert_eq!(ids("http-status=2xx"), [1]);
        assert_eq!(ids("method=get"), [1, 3]);
        assert_eq!(ids("path=%2Fapi%2F"), [1, 2]);
        assert_eq!(ids("not.method=GET"), [2, 4]);
        for bad in [
            "http-status=5x",
            "http-status=99",
            "http-status=6xx",
            "http-status=ok",
        ] {
            let err = Filter::from_query(bad).unwrap_err();
            assert!(err.contains("expected a status like 503"), "{bad}: {err}");
        }
        let filter = Filter::from_query("http-status=4xx&method=PUT&path=%2Fa").unwrap();
        assert_eq!(Filter::from_query(&filter.to_query()).unwrap(), filter);
    }

    #[test]
    fn the_query_string_round_trips_and_bad_input_says_what_is_wrong() {
        let filter = Filter {
            criteria: vec![
                (
                    false,
                    Criterion::ToIdentity("spiffe://cluster.local/ns/a b/sa/c&d".into()),
                ),
                (true, Criterion::Port(80)),
                (false, Criterion::FromIp("fd00::1".parse().unwrap())),
            ],
            last: Some(3),
        };
        assert_eq!(Filter::from_query(&filter.to_query()).unwrap(), filter);
        let hooks = Filter::from_query("hook=sk_lookup&not.hook=any").unwrap();
        assert_eq!(Filter::from_query(&hooks.to_query()).unwrap(), hooks);
        let err = Filter::from_query("hook=tc").unwrap_err();
        assert!(
            err.contains("expected connect4, connect6, sk_lookup or any"),
            "{err}"
        );
        let err = Filter::from_query("verdict=maybe").unwrap_err();
        assert!(
            err.contains("expected allowed, denied, refused or error"),
            "{err}"
        );
        assert!(
            Filter::from_query("port=http")
                .unwrap_err()
                .contains("not a port")
        );
        assert!(
            Filter::from_query("colour=red")
                .unwrap_err()
                .contains("unknown flow filter")
        );
    }
}
