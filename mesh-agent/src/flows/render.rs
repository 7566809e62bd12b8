//! Flow records as a table for people (`meshctl flows`): aligned columns,
//! human byte counts and durations, colour only when asked (a terminal).
use super::{
    FlowRecord,
    record::{Endpoint, Hook, Path, State},
};

/// How column widths are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Each column as wide as its widest cell: a finished listing.
    Fit,
    /// Widths that fit typical cells, fixed, so rows printed one at a time
    /// (`--follow`) line up; a longer cell widens only its own row.
    Stream,
}

/// [`Layout::Stream`]'s widths, column by column (the last one, free text,
/// is never padded).
const STREAM_WIDTHS: [usize; 16] = [12, 8, 24, 28, 11, 30, 8, 8, 8, 6, 8, 9, 44, 44, 7, 0];
/// The column painted by verdict.
const VERDICT_COLUMN: usize = 5;

/// `wide` adds ids, hooks, identities, TLS and errors.
pub fn table(records: &[FlowRecord], wide: bool, colour: bool, layout: Layout) -> String {
    let mut header = vec![
        "TIME",
        "DIRECTION",
        "SOURCE",
        "DESTINATION",
        "PATH",
        "VERDICT",
        "SENT",
        "RECEIVED",
        "DURATION",
    ];
    if wide {
        header.extend([
            "ID",
            "NODE",
            "HOOK",
            "SOURCE IDENTITY",
            "DESTINATION IDENTITY",
            "TLS",
            "DETAIL",
        ]);
    }
    let rows: Vec<(Vec<String>, Option<&str>)> = records
        .iter()
        .map(|r| {
            let (verdict, paint) = verdict(r);
            let mut row = vec![
                clock(r.start_unix_ms),
                r.direction.as_str().to_owned(),
                end_name(&r.source, false),
                destination(r),
                path(r),
                verdict,
                bytes(r.bytes_sent),
                bytes(r.bytes_received),
                r.duration_ms().map_or_else(|| "open".to_owned(), duration),
            ];
            if wide {
                row.extend([
                    r.id.to_string(),
                    r.node.to_string(),
                    r.hook.map_or("-", Hook::as_str).to_owned(),
                    r.source.identity.as_deref().unwrap_or("-").to_owned(),
                    r.destination.identity.as_deref().unwrap_or("-").to_owned(),
                    r.tls
                        .as_ref()
                        .map_or_else(|| "-".into(), |t| t.version.to_string()),
                    detail(r),
                ]);
            }
            (row, paint)
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    if layout == Layout::Stream {
        for (w, fixed) in widths.iter_mut().zip(STREAM_WIDTHS) {
            *w = (*w).max(fixed);
        }
    }
    for (row, _) in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String], paint: Option<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            let padded = if i + 1 == cells.len() {
                cell.clone()
            } else {
                format!("{cell:<w$}  ")
            };
            match paint.filter(|_| colour && i == VERDICT_COLUMN) {
                Some(code) => {
                    out.push_str(&format!("\x1b[{code}m{}\x1b[0m", padded.trim_end()));
                    out.push_str(&" ".repeat(padded.len() - padded.trim_end().len()));
                }
                None => out.push_str(&padded),
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let header: Vec<String> = header.into_iter().map(str::to_owned).collect();
    let mut out = line(&header, None);
    for (row, paint) in &rows {
        out.push_str(&line(row, *paint));
    }
    out
}

/// What went wrong, or for a request the route and backend that served it.
fn detail(r: &FlowRecord) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(h) = &r.http {
        parts.extend(h.route.as_ref().map(|x| format!("route {x}")));
        parts.extend(h.backend.as_ref().map(|x| format!("backend {x}")));
        if h.retries > 0 {
            parts.push(format!("retries {}", h.retries));
        }
        parts.extend(h.reason.clone());
    } else if let Some(w) = &r.waypoint {
        parts.push(format!("waypoint {w}"));
    }
    parts.extend(r.error.clone());
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join("; ")
    }
}

/// The verdict column, and its colour (ANSI SGR code).
fn verdict(r: &FlowRecord) -> (String, Option<&'static str>) {
    if let Some(h) = &r.http {
        let paint = match h.status {
            200..=399 => "32",
            400..=499 => "33",
            _ => "31",
        };
        return (format!("{} {} {}", h.status, h.method, h.path), Some(paint));
    }
    let rule = r
        .verdict
        .as_ref()
        .and_then(|v| Some(format!("{}#{}", v.policy.as_ref()?, v.rule?)));
    match r.state {
        State::Open | State::Closed => (
            rule.map_or_else(|| "allowed".into(), |p| format!("allowed ({p})")),
            Some("32"),
        ),
        State::Denied => (
            match (rule, &r.verdict) {
                (Some(p), _) => format!("denied ({p})"),
                (None, Some(_)) => "denied (no ALLOW rule)".into(),
                // A source whose destination did not say which rule.
                (None, None) => "denied (rule not reported)".into(),
            },
            Some("31"),
        ),
        State::Refused => ("refused".into(), Some("33")),
        State::Error => ("error".into(), Some("31")),
    }
}

/// The record's own spelling (as in JSON and `meshctl why`), except that a
/// waypoint's request records say `http`.
fn path(r: &FlowRecord) -> String {
    match r.path {
        Path::Waypoint if r.http.is_some() => "http",
        other => other.as_str(),
    }
    .to_owned()
}

/// The destination as the app asked for it, and for a Service the endpoint
/// it was sent to: `shop/payments:80 → shop/b:8080`.
fn destination(r: &FlowRecord) -> String {
    let Some(service) = &r.service else {
        return end_name(&r.destination, true);
    };
    let asked = format!("{service}:{}", r.destination.port);
    match (r.endpoint, &r.destination.pod) {
        (Some(endpoint), Some(pod)) => format!("{asked} → {pod}:{}", endpoint.port()),
        (Some(endpoint), None) => format!("{asked} → {endpoint}"),
        (None, _) => asked,
    }
}

/// `namespace/pod` (with the port for a destination), else the address.
fn end_name(e: &Endpoint, with_port: bool) -> String {
    match (&e.pod, with_port) {
        (Some(pod), true) => format!("{pod}:{}", e.port),
        (Some(pod), false) => pod.to_string(),
        (None, _) => e.addr().to_string(),
    }
}

/// UTC wall-clock time of day with milliseconds.
fn clock(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60,
        unix_ms % 1000
    )
}

/// `512 B`, `1.5 KiB`, `64.0 MiB`, …
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `850ms`, `1.2s`, `3m04s`, `2h05m`.
pub fn duration(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{:02}s", ms / 60_000, ms / 1000 % 60),
        _ => format!("{}h{:02}m", ms / 3_600_000, ms / 60_000 % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        flows::record::{Direction, FlowVerdict, Hook, Tls},
        policy::Decision,
    };

    fn records() -> Vec<FlowRecord> {
        let end = |pod: Option<&str>, ip: &str, port, id: Option<&str>| Endpoint {
            pod: pod.map(Into::into),
            ip: ip.parse().unwrap(),
            port,
            identity: id.map(Into::into),
        };
        let base = FlowRecord {
            id: 7,
            node: "n1".into(),
            start_unix_ms: 1_764_676_800_123,
            end_unix_ms: Some(1_764_676_801_323),
            direction: Direction::Outbound,
            hook: Some(Hook::Connect4),
            path: Path::Tunnel,
            source: end(
                Some("shop/frontend"),
                "10.1.0.11",
                40312,
                Some("spiffe://cluster.local/ns/shop/sa/frontend"),
            ),
            destination: end(
                Some("shop/payments"),
                "10.2.0.12",
                8080,
                Some("spiffe://cluster.local/ns/shop/sa/payments"),
            ),
            service: None,
            endpoint: None,
            tls: Some(Tls {
                peer_identity: "spiffe://cluster.local/ns/shop/sa/payments".into(),
                version: "TLSv1.3".into(),
            }),
            verdict: Some(FlowVerdict {
                decision: Decision::Allow,
                policy: Some("shop/frontend-only".into()),
                rule: Some(0),
                reason: "allowed by shop/frontend-only rule 0".into(),
                dry_run: Vec::new(),
            }),
            bytes_sent: 1536,
            bytes_received: 67_108_864,
            state: State::Closed,
            end: Some("closed".into()),
            error: None,
            waypoint: None,
            http: None,
            parent: None,
        };
        let mut denied = base.clone();
        denied.id = 8;
        denied.source = end(Some("legacy/client"), "10.1.0.12", 50000, None);
        denied.path = Path::Passthrough;
        denied.tls = None;
        denied.state = State::Refused;
        denied.bytes_sent = 0;
        denied.bytes_received = 0;
        denied.end_unix_ms = Some(denied.start_unix_ms + 2);
        denied.error = Some("plaintext refused: STRICT".into());
        let mut open = base.clone();
        open.id = 9;
        open.destination = end(None, "192.0.2.1", 443, None);
        open.path = Path::Passthrough;
        open.verdict = None;
        open.state = State::Open;
        open.end_unix_ms = None;
        open.bytes_sent = 0;
        open.bytes_received = 0;
        vec![base, denied, open]
    }

    #[test]
    fn a_denial_names_its_rule_or_says_it_is_not_known() {
        let mut denied = records().remove(0);
        denied.state = State::Denied;
        let by_rule = FlowVerdict {
            decision: Decision::Deny,
            policy: Some("shop/deny-bad".into()),
            rule: Some(0),
            reason: "denied by shop/deny-bad rule 0 (DENY)".into(),
            dry_run: Vec::new(),
        };
        let no_rule = FlowVerdict {
            policy: None,
            rule: None,
            reason: "denied: no rule of the ALLOW policies shop/a matched".into(),
            ..by_rule.clone()
        };
        for (recorded, shown) in [
            (Some(by_rule), "denied (shop/deny-bad#0)"),
            (Some(no_rule), "denied (no ALLOW rule)"),
            (None, "denied (rule not reported)"),
        ] {
            denied.verdict = recorded;
            assert_eq!(verdict(&denied).0, shown);
        }
    }

    #[test]
    fn the_table_is_aligned_and_human() {
        let expected = "\
TIME          DIRECTION  SOURCE         DESTINATION         PATH         VERDICT                         SENT     RECEIVED  DURATION
12:00:00.123  outbound   shop/frontend  shop/payments:8080  tunnel       allowed (shop/frontend-only#0)  1.5 KiB  64.0 MiB  1.2s
12:00:00.123  outbound   legacy/client  shop/payments:8080  passthrough  refused                         0 B      0 B       2ms
12:00:00.123  outbound   shop/frontend  192.0.2.1:443       passthrough  allowed                         0 B      0 B       open
";
        assert_eq!(table(&records(), false, false, Layout::Fit), expected);
    }

    #[test]
    fn a_service_flow_names_the_service_and_the_endpoint() {
        let mut r = records().remove(0);
        r.destination.ip = "10.96.0.10".parse().unwrap();
        r.destination.port = 80;
        r.service = Some("shop/payments".into());
        r.endpoint = Some("10.2.0.12:8080".parse().unwrap());
        assert_eq!(destination(&r), "shop/payments:80 → shop/payments:8080");
        r.destination.pod = None;
        assert_eq!(destination(&r), "shop/payments:80 → 10.2.0.12:8080");
    }

    #[test]
    fn streamed_rows_line_up_whatever_their_content() {
        // Each row of `--follow` is rendered alone: with fixed widths the
        // columns start at the same offsets in every one of them.
        let starts = |line: &str| -> Vec<usize> {
            let mut at = vec![0];
            let bytes = line.as_bytes();
            for i in 2..bytes.len() {
                if bytes[i - 2] == b' ' && bytes[i - 1] == b' ' && bytes[i] != b' ' {
                    at.push(i);
                }
            }
            at
        };
        let rows: Vec<String> = records()
            .iter()
            .map(|r| table(std::slice::from_ref(r), false, false, Layout::Stream))
            .map(|t| t.lines().nth(1).unwrap().to_owned())
            .collect();
        let header = table(&[], false, false, Layout::Stream);
        let expected = starts(header.lines().next().unwrap());
        for row in &rows {
            assert_eq!(starts(row), expected, "{row}\n{header}");
        }
    }

    #[test]
    fn wide_adds_identities_and_colour_only_paints_the_verdict() {
        let wide = table(&records(), true, false, Layout::Fit);
        assert!(
            wide.lines().next().unwrap().ends_with("TLS      DETAIL"),
            "{wide}"
        );
        assert!(
            wide.contains("spiffe://cluster.local/ns/shop/sa/payments  TLSv1.3"),
            "{wide}"
        );
        assert!(wide.contains("plaintext refused: STRICT"), "{wide}");
        let coloured = table(&records(), false, true, Layout::Fit);
        assert!(coloured.contains("\x1b[32mallowed (shop/frontend-only#0)\x1b[0m"));
        assert!(coloured.contains("\x1b[33mrefused\x1b[0m"));
        assert_eq!(
            coloured.matches("\x1b[").count(),
            6,
            "three verdict cells, nothing else"
        );
    }

    #[test]
    fn units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024 * 1024 * 3 / 2), "1.5 MiB");
        assert_eq!(duration(999), "999ms");
        assert_eq!(duration(61_000), "1m01s");
        assert_eq!(duration(7_500_000), "2h05m");
    }
}
