//! Route tables built from routes written as users write them (YAML), asked
//! about requests written as one line (`GET host/path?query | name: value`).
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use super::*;
use crate::state::gateway::HttpRoute;

/// GRPCRoutes, alone and beside HTTPRoutes.
mod grpc;

fn parent() -> Parent {
    Parent {
        service_namespace: "shop".to_owned(),
        service_name: "cart".to_owned(),
        port: 8080,
        waypoint_namespace: "shop".to_owned(),
        waypoint_name: "waypoint".to_owned(),
    }
}

fn route(yaml: &str) -> HttpRoute {
    serde_yaml_ng::from_str(yaml)
        .unwrap_or_else(|e| panic!("test route does not parse: {e}\n{yaml}"))
}

fn indent(text: &str, by: usize) -> String {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| format!("{}{line}\n", " ".repeat(by)))
        .collect()
}

/// `shop/<name>`, attached to the cart Service; `metadata` and `spec` are
/// the lines under those keys, beyond name/namespace and parentRefs.
fn cart_route_with(name: &str, metadata: &str, spec: &str) -> HttpRoute {
    route(&format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: {name}\n  namespace: shop\n{}spec:\n  parentRefs:\n  - {{group: \"\", kind: Service, name: cart}}\n{}",
        indent(metadata, 2),
        indent(spec, 2)
    ))
}

fn cart_route(name: &str, spec: &str) -> HttpRoute {
    cart_route_with(name, "", spec)
}

fn created(at: &str) -> String {
    format!("creationTimestamp: \"{at}\"")
}

fn build(routes: &[HttpRoute]) -> RouteTable {
    let (table, problems) = RouteTable::build(routes, &[], &parent());
    assert!(problems.is_empty(), "unexpected problems: {problems:#?}");
    table
}

struct OwnedRequest {
    method: Method,
    host: String,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
}

impl OwnedRequest {
    fn view(&self) -> Request<'_> {
        Request {
            method: &self.method,
            host: &self.host,
            path: &self.path,
            query: self.query.as_deref(),
            headers: &self.headers,
        }
    }
}

/// `GET host/path?query | name: value | name: value`.
fn request(line: &str) -> OwnedRequest {
    let mut parts = line.split(" | ");
    let first = parts.next().expect("split yields at least one part");
    let (method, target) = first
        .split_once(' ')
        .expect("request line is `METHOD target`");
    let (host, rest) = target.split_at(target.find('/').expect("target has a path"));
    let (path, query) = match rest.split_once('?') {
        Some((path, query)) => (path, Some(query.to_owned())),
        None => (rest, None),
    };
    let mut headers = HeaderMap::new();
    for header in parts {
        let (name, value) = header.split_once(": ").expect("header is `name: value`");
        headers.append(
            HeaderName::from_bytes(name.as_bytes()).expect("test header name"),
            HeaderValue::from_str(value).expect("test header value"),
        );
    }
    OwnedRequest {
        method: Method::from_bytes(method.as_bytes()).expect("test method"),
        host: host.to_owned(),
        path: path.to_owned(),
        query,
        headers,
    }
}

/// `route#rule` of the winner, or `None`.
fn winner(table: &RouteTable, line: &str) -> Option<String> {
    let req = request(line);
    table
        .decide(&req.view())
        .map(|m| format!("{}#{}", m.route, m.rule_index))
}

#[test]
fn each_match_type_holds_exactly_where_it_should() {
    let cases: &[(&str, &[(&str, bool)])] = &[
        (
            "path: {type: Exact, value: /a}",
            &[
                ("GET cart/a", true),
                ("GET cart/a/", false),
                ("GET cart/ab", false),
                ("GET cart/A", false),
            ],
        ),
        (
            "path: {type: PathPrefix, value: /foo}",
            &[
                ("GET cart/foo", true),
                ("GET cart/foo/", true),
                ("GET cart/foo/bar", true),
                ("GET cart/foobar", false),
                ("GET cart/fo", false),
            ],
        ),
        (
            "path: {type: PathPrefix, value: /foo/}",
            &[
                ("GET cart/foo", true),
                ("GET cart/foo/bar", true),
                ("GET cart/foobar", false),
            ],
        ),
        (
            "path: {value: /}",
            &[("GET cart/", true), ("GET cart/anything/at/all", true)],
        ),
        (
            "path: {type: RegularExpression, value: '/items/[0-9]+'}",
            &[
                ("GET cart/items/12", true),
                ("GET cart/items/12/x", false),
                ("GET cart/x/items/12", false),
                ("GET cart/items/", false),
            ],
        ),
        (
            // Multi-line mode inside the pattern must not unanchor it.
            "path: {type: RegularExpression, value: '(?m)/a$'}",
            &[("GET cart/a", true), ("GET cart/a/b", false)],
        ),
        (
            "headers: [{name: X-Env, value: prod}]",
            &[
                ("GET cart/ | x-env: prod", true),
                ("GET cart/ | X-ENV: prod", true),
                ("GET cart/ | x-env: Prod", false),
                ("GET cart/ | x-env: production", false),
                ("GET cart/", false),
                ("GET cart/ | x-env: prod | x-env: dev", true),
                ("GET cart/ | x-env: dev | x-env: prod", false),
            ],
        ),
        (
            "headers: [{type: RegularExpression, name: x-version, value: 'v[0-9]+'}]",
            &[
                ("GET cart/ | x-version: v12", true),
                ("GET cart/ | x-version: v12a", false),
                ("GET cart/ | x-version: av1", false),
            ],
        ),
        (
            "queryParams: [{name: tier, value: gold}]",
            &[
                ("GET cart/?tier=gold", true),
                ("GET cart/?a=1&tier=gold", true),
                ("GET cart/?tier=g%6Fld", true),
                ("GET cart/?Tier=gold", false),
                ("GET cart/?tier=silver&tier=gold", false),
                ("GET cart/?tier=gold&tier=silver", true),
                ("GET cart/", false),
            ],
        ),
        (
            "queryParams: [{type: RegularExpression, name: id, value: '[0-9]{3}'}]",
            &[
                ("GET cart/?id=123", true),
                ("GET cart/?id=1234", false),
                ("GET cart/?id=12", false),
            ],
        ),
        (
            "method: POST",
            &[
                ("POST cart/", true),
                ("GET cart/", false),
                ("PUT cart/", false),
            ],
        ),
        (
            "{path: {value: /api}, method: GET, headers: [{name: x-a, value: '1'}], queryParams: [{name: q, value: '2'}]}",
            &[
                ("GET cart/api/x?q=2 | x-a: 1", true),
                ("POST cart/api/x?q=2 | x-a: 1", false),
                ("GET cart/other?q=2 | x-a: 1", false),
                ("GET cart/api/x?q=3 | x-a: 1", false),
                ("GET cart/api/x?q=2 | x-a: 0", false),
            ],
        ),
    ];
    for (written, probes) in cases {
        let spec = format!("rules:\n- matches:\n  - {written}\n");
        let table = build(&[cart_route("r", &spec)]);
        for (line, hits) in *probes {
            assert_eq!(
                winner(&table, line).is_some(),
                *hits,
                "match {written} against {line}"
            );
        }
    }
}

#[test]
fn a_rule_matches_when_any_of_its_matches_holds_and_without_matches_everything() {
    let table = build(&[cart_route(
        "r",
        r#"
rules:
- matches:
  - path: {type: Exact, value: /a}
  - method: DELETE
"#,
    )]);
    assert!(winner(&table, "GET cart/a").is_some());
    assert!(winner(&table, "DELETE cart/b").is_some());
    assert!(winner(&table, "GET cart/b").is_none());

    let table = build(&[cart_route(
        "r",
        "rules:\n- backendRefs: [{name: cart, port: 8080}]",
    )]);
    let req = request("PATCH cart/any/path?x=1");
    let matched = table
        .decide(&req.view())
        .expect("a rule without matches matches all");
    assert_eq!(matched.matched_prefix, Some("/"));
}

#[test]
fn a_route_without_rules_matches_everything_and_has_no_backend() {
    let table = build(&[cart_route("r", "hostnames: [cart.shop]")]);
    let req = request("GET cart.shop/x");
    let matched = table.decide(&req.view()).expect("matches everything");
    assert_eq!(
        matched.rule.pick(7),
        None,
        "no backend: the caller answers 500"
    );
}

#[test]
fn precedence_decides_between_competing_rules() {
    // Each case: two routes; the one that would win every later tie-break
    // (older, alphabetically first) is the one that must lose.
    let old = created("2024-01-01T00:00:00Z");
    let new = created("2024-06-01T00:00:00Z");
    let cases: &[(&str, &str, &str, &str)] = &[
        // (loser's match, winner's match, request, why)
        (
            "path: {value: /a}",
            "path: {type: Exact, value: /a/b}",
            "GET cart/a/b",
            "Exact beats PathPrefix",
        ),
        (
            "path: {value: /a}",
            "path: {value: /a/b}",
            "GET cart/a/b/c",
            "the longer prefix wins",
        ),
        (
            "path: {type: RegularExpression, value: '/a/.*'}",
            "path: {value: /a}",
            "GET cart/a/b",
            "a prefix beats a regex",
        ),
        (
            "path: {type: RegularExpression, value: '/a/b'}",
            "path: {type: Exact, value: /a/b}",
            "GET cart/a/b",
            "Exact beats a regex",
        ),
        (
            "path: {value: /a}",
            "{path: {value: /a}, method: GET}",
            "GET cart/a",
            "a method match beats none",
        ),
        (
            "headers: [{name: x-a, value: '1'}]",
            "headers: [{name: x-a, value: '1'}, {name: x-b, value: '2'}]",
            "GET cart/ | x-a: 1 | x-b: 2",
            "more header matches win",
        ),
        (
            "queryParams: [{name: a, value: '1'}]",
            "queryParams: [{name: a, value: '1'}, {name: b, value: '2'}]",
            "GET cart/?a=1&b=2",
            "more query matches win",
        ),
        (
            "{path: {value: /a}, method: GET}",
            "path: {value: /a/b}",
            "GET cart/a/b",
            "the path outranks a method",
        ),
        (
            "headers: [{name: x-a, value: '1'}, {name: x-b, value: '2'}]",
            "method: GET",
            "GET cart/ | x-a: 1 | x-b: 2",
            "a method outranks headers",
        ),
        (
            "queryParams: [{name: a, value: '1'}, {name: b, value: '2'}]",
            "headers: [{name: x-a, value: '1'}]",
            "GET cart/?a=1&b=2 | x-a: 1",
            "headers outrank query parameters",
        ),
        (
            // Repeated names count once, so this is one header match.
            "headers: [{name: x-a, value: '1'}, {name: X-A, value: '1'}]",
            "headers: [{name: x-a, value: '1'}, {name: x-b, value: '2'}]",
            "GET cart/ | x-a: 1 | x-b: 2",
            "a repeated header name counts once",
        ),
    ];
    for (loser, winner_match, line, why) in cases {
        let routes = [
            cart_route_with("a", &old, &format!("rules:\n- matches:\n  - {loser}")),
            cart_route_with(
                "b",
                &new,
                &format!("rules:\n- matches:\n  - {winner_match}"),
            ),
        ];
        let table = build(&routes);
        assert_eq!(winner(&table, line).as_deref(), Some("shop/b#0"), "{why}");
        // Input order must not matter.
        let reversed = [routes[1].clone(), routes[0].clone()];
        assert_eq!(
            winner(&build(&reversed), line).as_deref(),
            Some("shop/b#0"),
            "{why}, reversed"
        );
    }
}

#[test]
fn equal_rules_go_to_the_oldest_route_then_by_name_then_by_position() {
    let same = "rules:\n- matches:\n  - path: {value: /}";
    // (routes as (name, creationTimestamp or ""), winner, why)
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: &[Case] = &[
        (
            &[("a", "2024-01-02T00:00:00Z"), ("b", "2024-01-01T00:00:00Z")],
            "shop/b#0",
            "older beats alphabetical",
        ),
        (
            // 01:00+02:00 is 23:00 the day before in UTC.
            &[
                ("a", "2024-01-01T00:00:00Z"),
                ("b", "2024-01-01T01:00:00+02:00"),
            ],
            "shop/b#0",
            "offsets are compared as instants",
        ),
        (
            &[
                ("a", "2024-01-01T00:00:00.5Z"),
                ("b", "2024-01-01T00:00:00.25Z"),
            ],
            "shop/b#0",
            "fractions of seconds count",
        ),
        (
            &[("a", ""), ("b", "2030-01-01T00:00:00Z")],
            "shop/b#0",
            "a missing timestamp sorts after any present one",
        ),
        (
            &[("b", "2024-01-01T00:00:00Z"), ("a", "2024-01-01T00:00:00Z")],
            "shop/a#0",
            "same age: alphabetical",
        ),
        (&[("b", ""), ("a", "")], "shop/a#0", "no ages: alphabetical"),
    ];
    for (routes, expected, why) in cases {
        let routes: Vec<HttpRoute> = routes
            .iter()
            .map(|(name, at)| {
                let metadata = if at.is_empty() {
                    String::new()
                } else {
                    created(at)
                };
                cart_route_with(name, &metadata, same)
            })
            .collect();
        assert_eq!(
            winner(&build(&routes), "GET cart/x").as_deref(),
            Some(*expected),
            "{why}"
        );
    }

    // The namespace is part of the name compared.
    let other_namespace = route(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: z, namespace: alpha}
spec:
  parentRefs: [{kind: Service, name: cart, namespace: shop}]
"#,
    );
    let table = build(&[cart_route("a", same), other_namespace]);
    assert_eq!(winner(&table, "GET cart/x").as_deref(), Some("alpha/z#0"));
}

#[test]
fn within_a_route_precedence_first_then_rule_order_then_match_order() {
    let table = build(&[cart_route(
        "r",
        r#"
rules:
- matches: [{path: {value: /}}]
- matches: [{path: {type: Exact, value: /x}}]
- matches: [{path: {value: /b/}}, {path: {value: /b}}]
- matches: [{path: {value: /b}}]
"#,
    )]);
    assert_eq!(
        winner(&table, "GET cart/x").as_deref(),
        Some("shop/r#1"),
        "precedence over list order"
    );
    assert_eq!(winner(&table, "GET cart/y").as_deref(), Some("shop/r#0"));
    let req = request("GET cart/b/c");
    let matched = table.decide(&req.view()).expect("rules 2 and 3 match");
    assert_eq!(matched.rule_index, 2, "the earlier of equal rules");
    assert_eq!(
        matched.matched_prefix,
        Some("/b/"),
        "the first of equal matches"
    );
}

#[test]
fn hostnames_match_exactly_or_by_wildcard_in_any_case() {
    let table = build(&[cart_route(
        "r",
        "hostnames: [shop.example.com, '*.apps.example.com']",
    )]);
    let cases = [
        ("shop.example.com", true),
        ("Shop.Example.COM", true),
        ("a.apps.example.com", true),
        ("A.B.Apps.Example.com", true),
        ("apps.example.com", false),
        ("xapps.example.com", false),
        (".apps.example.com", false),
        ("other.example.com", false),
    ];
    for (host, hits) in cases {
        assert_eq!(
            winner(&table, &format!("GET {host}/")).is_some(),
            hits,
            "{host}"
        );
    }
}

#[test]
fn hostname_specificity_comes_before_the_match_criteria() {
    // The less specific the hostname, the more specific the path, so only
    // hostname precedence can explain each winner.
    let table = build(&[
        cart_route(
            "exact",
            "hostnames: [a.b.example.com]\nrules:\n- matches: [{path: {value: /}}]",
        ),
        cart_route(
            "long-wildcard",
            "hostnames: ['*.b.example.com']\nrules:\n- matches: [{path: {value: /x}}]",
        ),
        cart_route(
            "short-wildcard",
            "hostnames: ['*.example.com']\nrules:\n- matches: [{path: {value: /x/y}}]",
        ),
        cart_route(
            "any",
            "rules:\n- matches: [{path: {type: Exact, value: /x/y}}]",
        ),
    ]);
    let cases = [
        ("a.b.example.com", "shop/exact#0"),
        ("c.b.example.com", "shop/long-wildcard#0"),
        ("c.example.com", "shop/short-wildcard#0"),
        ("cart.shop.svc.cluster.local", "shop/any#0"),
    ];
    for (host, expected) in cases {
        assert_eq!(
            winner(&table, &format!("GET {host}/x/y")).as_deref(),
            Some(expected),
            "{host}"
        );
    }
    // A more specific hostname's rules that do not match leave the request
    // to the next hostname in the order.
    let table = build(&[
        cart_route(
            "exact",
            "hostnames: [a.example.com]\nrules:\n- matches: [{path: {value: /admin}}]",
        ),
        cart_route("any", ""),
    ]);
    assert_eq!(
        winner(&table, "GET a.example.com/admin").as_deref(),
        Some("shop/exact#0")
    );
    assert_eq!(
        winner(&table, "GET a.example.com/shop").as_deref(),
        Some("shop/any#0")
    );
}

#[test]
fn routes_attach_to_their_service_port_or_the_waypoint_only() {
    let cases = [
        ("[{kind: Service, name: cart}]", true),
        ("[{group: '', kind: Service, name: cart}]", true),
        ("[{group: core, kind: Service, name: cart}]", true),
        ("[{kind: Service, name: cart, namespace: shop}]", true),
        ("[{kind: Service, name: cart, port: 8080}]", true),
        ("[{kind: Service, name: cart, port: 9090}]", false),
        ("[{kind: Service, name: cart, namespace: other}]", false),
        ("[{kind: Service, name: orders}]", false),
        ("[{group: example.com, kind: Service, name: cart}]", false),
        ("[{name: cart}]", false),
        ("[{name: waypoint}]", true),
        (
            "[{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]",
            true,
        ),
        (
            "[{kind: Gateway, name: waypoint, namespace: istio-system}]",
            false,
        ),
        ("[{kind: Gateway, name: ingress}]", false),
        (
            "[{kind: Service, name: orders}, {kind: Service, name: cart}]",
            true,
        ),
        ("[]", false),
    ];
    for (refs, attached) in cases {
        let routes = [route(&format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: shop}}\nspec:\n  parentRefs: {refs}\n"
        ))];
        let (table, problems) = RouteTable::build(&routes, &[], &parent());
        assert!(problems.is_empty());
        assert_eq!(!table.is_empty(), attached, "{refs}");
    }
    // The reference's namespace defaults to the route's, and the route's to
    // `default`.
    for metadata in ["{name: r, namespace: other}", "{name: r}"] {
        let routes = [route(&format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {metadata}\nspec:\n  parentRefs: [{{kind: Service, name: cart}}]\n"
        ))];
        assert!(
            RouteTable::build(&routes, &[], &parent()).0.is_empty(),
            "{metadata}"
        );
    }
}

#[test]
fn an_unattached_invalid_route_is_not_ours_to_report() {
    let foreign = route(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: theirs, namespace: shop}
spec:
  parentRefs: [{kind: Service, name: orders}]
  rules: [{matches: [{path: {value: no-slash}}]}]
"#,
    );
    let (table, problems) = RouteTable::build(&[foreign], &[], &parent());
    assert!(table.is_empty());
    assert!(problems.is_empty());
}

#[test]
fn each_invalid_field_is_reported_at_its_path() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "rules: [{matches: [{path: {type: Exact, value: a}}]}]",
            "spec.rules[0].matches[0].path.value",
            "does not start with '/'",
        ),
        (
            "rules: [{matches: [{path: {value: /ok}}, {path: {value: foo}}]}]",
            "spec.rules[0].matches[1].path.value",
            "does not start with '/'",
        ),
        (
            "rules: [{matches: [{path: {type: RegularExpression, value: '[a'}}]}]",
            "spec.rules[0].matches[0].path.value",
            "regex \"[a\" does not compile",
        ),
        (
            "rules: [{matches: [{headers: [{name: '', value: x}]}]}]",
            "spec.rules[0].matches[0].headers[0].name",
            "header name is empty",
        ),
        (
            "rules: [{matches: [{headers: [{name: 'bad header', value: x}]}]}]",
            "spec.rules[0].matches[0].headers[0].name",
            "not a valid HTTP header name",
        ),
        (
            "rules: [{matches: [{headers: [{type: RegularExpression, name: x, value: '('}]}]}]",
            "spec.rules[0].matches[0].headers[0].value",
            "does not compile",
        ),
        (
            "rules: [{matches: [{queryParams: [{type: RegularExpression, name: x, value: '+'}]}]}]",
            "spec.rules[0].matches[0].queryParams[0].value",
            "does not compile",
        ),
        (
            "rules: [{matches: [{queryParams: [{name: '', value: x}]}]}]",
            "spec.rules[0].matches[0].queryParams[0].name",
            "name is empty",
        ),
        (
            "rules: [{matches: [{method: FETCH}]}]",
            "spec.rules[0].matches[0].method",
            "method \"FETCH\"",
        ),
        (
            "rules: [{matches: [{method: get}]}]",
            "spec.rules[0].matches[0].method",
            "use one of GET",
        ),
        (
            "rules: [{filters: [{type: Teleport}]}]",
            "spec.rules[0].filters[0].type",
            "unknown filter type \"Teleport\"",
        ),
        (
            "rules: [{filters: [{type: RequestHeaderModifier}]}]",
            "spec.rules[0].filters[0].requestHeaderModifier",
            "needs its settings",
        ),
        (
            "rules: [{filters: [{type: RequestMirror}]}]",
            "spec.rules[0].filters[0].requestMirror",
            "needs its settings",
        ),
        (
            "rules: [{filters: [{type: ExtensionRef, extensionRef: {group: example.com, kind: Auth, name: a}}]}]",
            "spec.rules[0].filters[0].type",
            "not supported",
        ),
        (
            "rules: [{filters: [{type: URLRewrite, urlRewrite: {hostname: a.example.com}, requestRedirect: {}}]}]",
            "spec.rules[0].filters[0].requestRedirect",
            "set on a filter of type URLRewrite",
        ),
        (
            "rules: [{filters: [{type: RequestRedirect, requestRedirect: {}}, {type: URLRewrite, urlRewrite: {}}]}]",
            "spec.rules[0].filters[1].type",
            "cannot be used together",
        ),
        (
            "rules: [{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {}}, {type: RequestHeaderModifier, requestHeaderModifier: {}}]}]",
            "spec.rules[0].filters[1].type",
            "merge it into the first",
        ),
        (
            "rules: [{matches: [{path: {value: /a}}, {path: {type: Exact, value: /b}}], filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /c}}}]}]",
            "spec.rules[0].filters[0].urlRewrite.path.replacePrefixMatch",
            "matches[1] is Exact",
        ),
        (
            "rules: [{filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplaceFullPath}}}]}]",
            "spec.rules[0].filters[0].requestRedirect.path.replaceFullPath",
            "needs replaceFullPath",
        ),
        (
            "rules: [{filters: [{type: URLRewrite, urlRewrite: {path: {type: Replace, replaceFullPath: /x}}}]}]",
            "spec.rules[0].filters[0].urlRewrite.path.type",
            "unknown path modifier type",
        ),
        (
            "rules: [{filters: [{type: RequestRedirect, requestRedirect: {statusCode: 307}}]}]",
            "spec.rules[0].filters[0].requestRedirect.statusCode",
            "use 301 or 302",
        ),
        (
            "rules: [{filters: [{type: RequestRedirect, requestRedirect: {scheme: ftp}}]}]",
            "spec.rules[0].filters[0].requestRedirect.scheme",
            "use \"http\" or \"https\"",
        ),
        (
            "rules: [{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: 'a b', value: x}]}}]}]",
            "spec.rules[0].filters[0].requestHeaderModifier.set[0].name",
            "not a valid HTTP header name",
        ),
        (
            "rules: [{filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: x, value: \"a\\nb\"}]}}]}]",
            "spec.rules[0].filters[0].responseHeaderModifier.add[0].value",
            "characters HTTP does not allow",
        ),
        (
            "rules: [{filters: [{type: RequestMirror, requestMirror: {backendRef: {kind: Pod, name: p}}}]}]",
            "spec.rules[0].filters[0].requestMirror.backendRef.kind",
            "use kind Service",
        ),
        (
            "rules: [{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: p}, percent: 101}}]}]",
            "spec.rules[0].filters[0].requestMirror.percent",
            "use 0-100",
        ),
        (
            "rules: [{timeouts: {request: '10'}}]",
            "spec.rules[0].timeouts.request",
            "ends without a unit",
        ),
        (
            "rules: [{timeouts: {request: 5s, backendRequest: 10s}}]",
            "spec.rules[0].timeouts.backendRequest",
            "longer than request",
        ),
        (
            "rules: [{backendRefs: [{kind: ConfigMap, name: c}]}]",
            "spec.rules[0].backendRefs[0].kind",
            "use kind Service",
        ),
        (
            "rules: [{backendRefs: [{group: apps, kind: Service, name: c}]}]",
            "spec.rules[0].backendRefs[0].group",
            "only Services",
        ),
        (
            "rules: [{backendRefs: [{name: c, weight: 1000001}]}]",
            "spec.rules[0].backendRefs[0].weight",
            "more than 1000000",
        ),
        (
            "rules: [{backendRefs: [{name: c, filters: [{type: ExtensionRef}]}]}]",
            "spec.rules[0].backendRefs[0].filters[0].type",
            "not supported",
        ),
        (
            "rules: [{retry: {attempts: 11}}]",
            "spec.rules[0].retry.attempts",
            "at most 10",
        ),
        (
            "rules: [{retry: {backoff: 1d}}]",
            "spec.rules[0].retry.backoff",
            "unknown unit",
        ),
        (
            "rules: [{retry: {codes: [200]}}]",
            "spec.rules[0].retry.codes[0]",
            "400 to 599",
        ),
        (
            "hostnames: [Shop.Example.com]",
            "spec.hostnames[0]",
            "lowercase",
        ),
        (
            "hostnames: ['a.*.com']",
            "spec.hostnames[0]",
            "not a valid hostname",
        ),
        ("hostnames: ['10.0.0.1']", "spec.hostnames[0]", "IP address"),
        (
            "rules: [{}, {matches: [{path: {value: x}}]}]",
            "spec.rules[1].matches[0].path.value",
            "write an absolute path such as \"/x\"",
        ),
    ];
    for (spec, field, message) in cases {
        let (table, problems) = RouteTable::build(&[cart_route("bad", spec)], &[], &parent());
        assert!(
            table.is_empty(),
            "{spec}: an invalid route must not be served"
        );
        assert_eq!(problems.len(), 1, "{spec}: {problems:#?}");
        let problem = &problems[0];
        assert_eq!(problem.route, "shop/bad");
        assert_eq!(problem.field, *field, "{spec}");
        assert!(
            problem.message.contains(message),
            "{spec}: {}",
            problem.message
        );
        assert!(
            problem.message.contains(';'),
            "{spec}: says what to do: {}",
            problem.message
        );
    }
}

#[test]
fn an_invalid_timestamp_is_reported_and_a_route_without_namespace_is_in_default() {
    let written = route(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, creationTimestamp: yesterday}
spec:
  parentRefs: [{name: waypoint, namespace: shop}]
"#,
    );
    let (_, problems) = RouteTable::build(&[written], &[], &parent());
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].route, "default/r");
    assert_eq!(problems[0].field, "metadata.creationTimestamp");
}

#[test]
fn every_problem_of_a_route_is_reported_and_valid_routes_still_serve() {
    let bad = cart_route(
        "bad",
        r#"
rules:
- matches: [{path: {type: Exact, value: /a}, method: FETCH}]
  backendRefs: [{name: c, weight: 2000000}]
"#,
    );
    let good = cart_route("good", "rules:\n- matches: [{path: {value: /}}]");
    let (table, problems) = RouteTable::build(&[bad, good], &[], &parent());
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.rules[0].matches[0].method",
            "spec.rules[0].backendRefs[0].weight"
        ]
    );
    assert!(problems.iter().all(|p| p.route == "shop/bad"));
    assert_eq!(winner(&table, "GET cart/a").as_deref(), Some("shop/good#0"));
    assert!(
        problems[0]
            .to_string()
            .starts_with("HTTPRoute shop/bad spec.rules[0].matches[0].method: ")
    );
}

#[test]
fn weighted_pick_follows_the_weights_exactly() {
    let table = build(&[cart_route(
        "r",
        r#"
rules:
- backendRefs:
  - {name: a, port: 80, weight: 1}
  - {name: b, port: 80, weight: 3}
  - {name: never, port: 80, weight: 0}
  - {name: c, namespace: other, weight: 2}
"#,
    )]);
    let req = request("GET cart/");
    let rule = table.decide(&req.view()).expect("matches").rule;
    let picks: Vec<&str> = (0..6)
        .map(|roll| rule.pick(roll).expect("weights > 0").name.as_str())
        .collect();
    assert_eq!(picks, ["a", "b", "b", "b", "c", "c"]);
    assert_eq!(
        rule.pick(6).map(|b| b.name.as_str()),
        Some("a"),
        "the roll wraps"
    );
    assert_eq!(
        rule.pick(u64::MAX).map(|b| b.name.as_str()),
        Some("b"),
        "u64::MAX % 6 = 3"
    );
    let c = &rule.backends[3];
    assert_eq!((c.namespace.as_str(), c.port), ("other", None));
    assert_eq!(
        rule.backends[0].namespace, "shop",
        "a backend defaults to the route's namespace"
    );

    let table = build(&[cart_route(
        "r",
        "rules:\n- backendRefs: [{name: a}, {name: b}]",
    )]);
    let rule = table.decide(&req.view()).expect("matches").rule;
    let picks: Vec<&str> = (0..4)
        .map(|roll| rule.pick(roll).expect("default weight 1").name.as_str())
        .collect();
    assert_eq!(picks, ["a", "b", "a", "b"]);

    let table = build(&[cart_route(
        "r",
        "rules:\n- backendRefs: [{name: a, weight: 0}]",
    )]);
    let rule = table.decide(&req.view()).expect("matches").rule;
    assert!((0..10).all(|roll| rule.pick(roll).is_none()));
}

fn only_rule(spec: &str) -> Rule {
    let table = build(&[cart_route("r", spec)]);
    let req = request("GET cart/");
    table
        .decide(&req.view())
        .expect("the rule matches /")
        .rule
        .clone()
}

#[test]
fn header_edits_set_add_and_remove_case_insensitively() {
    let rule = only_rule(
        r#"
rules:
- filters:
  - type: RequestHeaderModifier
    requestHeaderModifier:
      set: [{name: X-Set, value: new}]
      add: [{name: X-Add, value: two}, {name: x-fresh, value: one}]
      remove: [X-Gone]
"#,
    );
    let Filter::RequestHeaders(edit) = &rule.filters[0] else {
        panic!("expected a request header edit: {:?}", rule.filters);
    };
    let mut headers = request(
        "GET cart/ | x-set: old1 | x-set: old2 | x-add: one | x-gone: a | x-gone: b | x-kept: k",
    )
    .headers;
    edit.apply(&mut headers);
    let values = |name: &str| -> Vec<&str> {
        headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().expect("ASCII"))
            .collect()
    };
    assert_eq!(values("x-set"), ["new"]);
    assert_eq!(values("x-add"), ["one", "two"]);
    assert_eq!(values("x-fresh"), ["one"]);
    assert!(values("x-gone").is_empty());
    assert_eq!(values("x-kept"), ["k"]);

    let rule = only_rule(
        "rules:\n- filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {remove: [server]}}]",
    );
    assert!(matches!(&rule.filters[0], Filter::ResponseHeaders(edit) if edit.remove == ["server"]));
}

#[test]
fn redirects_answer_with_the_location_the_specification_describes() {
    // (redirect settings, match prefix, request, request scheme, listener
    // port, status, Location)
    let cases: &[(&str, &str, &str, &str, u16, u16, &str)] = &[
        (
            "{}",
            "/",
            "GET cart/a?x=1",
            "http",
            80,
            302,
            "http://cart/a?x=1",
        ),
        (
            "{}",
            "/",
            "GET cart/a",
            "http",
            8080,
            302,
            "http://cart:8080/a",
        ),
        (
            "{scheme: https}",
            "/",
            "GET cart/a?x=1",
            "http",
            8080,
            302,
            "https://cart/a?x=1",
        ),
        (
            "{scheme: http}",
            "/",
            "GET cart/a",
            "https",
            443,
            302,
            "http://cart/a",
        ),
        (
            "{scheme: https, port: 8443}",
            "/",
            "GET cart/a",
            "http",
            80,
            302,
            "https://cart:8443/a",
        ),
        (
            "{port: 80}",
            "/",
            "GET cart/a",
            "http",
            8080,
            302,
            "http://cart/a",
        ),
        (
            "{hostname: new.example.com, statusCode: 301}",
            "/",
            "GET cart/a",
            "http",
            80,
            301,
            "http://new.example.com/a",
        ),
        (
            "{path: {type: ReplaceFullPath, replaceFullPath: /new}}",
            "/old",
            "GET cart/old/deep?q=2",
            "http",
            80,
            302,
            "http://cart/new?q=2",
        ),
        (
            "{path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}",
            "/v1",
            "GET cart/v1/items?q=2",
            "http",
            80,
            302,
            "http://cart/v2/items?q=2",
        ),
        (
            "{path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}",
            "/v1/",
            "GET cart/v1",
            "http",
            80,
            302,
            "http://cart/",
        ),
    ];
    for (settings, prefix, line, scheme, port, status, location) in cases {
        let spec = format!(
            "rules:\n- matches: [{{path: {{value: '{prefix}'}}}}]\n  filters: [{{type: RequestRedirect, requestRedirect: {settings}}}]"
        );
        let table = build(&[cart_route("r", &spec)]);
        let req = request(line);
        let matched = table.decide(&req.view()).expect("the rule matches");
        let Filter::Redirect(redirect) = &matched.rule.filters[0] else {
            panic!("expected a redirect: {:?}", matched.rule.filters);
        };
        let answer = redirect.answer(&req.view(), scheme, *port, matched.matched_prefix);
        assert_eq!(
            (answer.0, answer.1.as_str()),
            (
                StatusCode::from_u16(*status).expect("test status"),
                *location
            ),
            "{settings} for {line}"
        );
    }
}

#[test]
fn rewrites_replace_the_host_and_the_full_path_or_the_matched_prefix() {
    let rule = only_rule(
        "rules:\n- filters: [{type: URLRewrite, urlRewrite: {hostname: upstream.internal, path: {type: ReplaceFullPath, replaceFullPath: /fixed}}}]",
    );
    let Filter::Rewrite(rewrite) = &rule.filters[0] else {
        panic!("expected a rewrite: {:?}", rule.filters);
    };
    assert_eq!(
        rewrite.apply("/any/thing", Some("/")),
        (
            Some("upstream.internal".to_owned()),
            Some("/fixed".to_owned())
        )
    );

    // The specification's table for ReplacePrefixMatch.
    let cases = [
        ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
        ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
        ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
        ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
        ("/foo", "/foo", "/xyz", "/xyz"),
        ("/foo/", "/foo", "/xyz", "/xyz/"),
        ("/foo/bar", "/foo", "", "/bar"),
        ("/foo/", "/foo", "", "/"),
        ("/foo", "/foo", "", "/"),
        ("/foo/", "/foo", "/", "/"),
        ("/foo", "/foo", "/", "/"),
        ("/anything", "/", "/api", "/api/anything"),
    ];
    for (path, prefix, replacement, expected) in cases {
        let rewrite = Rewrite {
            hostname: None,
            path: Some(PathChange::Prefix(replacement.to_owned())),
        };
        assert_eq!(
            rewrite.apply(path, Some(prefix)),
            (None, Some(expected.to_owned())),
            "{path} with prefix {prefix} -> {replacement}"
        );
    }
    let prefix_only = Rewrite {
        hostname: None,
        path: Some(PathChange::Prefix("/x".to_owned())),
    };
    assert_eq!(
        prefix_only.apply("/foo", None),
        (None, None),
        "no prefix: unchanged"
    );
    assert_eq!(
        prefix_only.apply("/foobar", Some("/foo")),
        (None, None),
        "not a prefix: unchanged"
    );

    // Through the table: the matched prefix comes with the decision.
    let table = build(&[cart_route(
        "r",
        "rules:\n- matches: [{path: {value: /shop/}}]\n  filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}]",
    )]);
    let req = request("GET cart/shop/items/7");
    let matched = table.decide(&req.view()).expect("matches");
    let Filter::Rewrite(rewrite) = &matched.rule.filters[0] else {
        panic!("expected a rewrite");
    };
    assert_eq!(
        rewrite.apply(req.view().path, matched.matched_prefix),
        (None, Some("/items/7".to_owned()))
    );
}

#[test]
fn mirrors_timeouts_and_retries_are_typed_with_their_defaults() {
    let rule = only_rule(
        r#"
rules:
- name: main
  filters:
  - {type: RequestMirror, requestMirror: {backendRef: {name: shadow, port: 9090}, percent: 10}}
  - {type: RequestMirror, requestMirror: {backendRef: {name: audit, namespace: sec}}}
  timeouts: {request: 1m30s, backendRequest: 500ms}
  retry: {codes: [503, 504]}
"#,
    );
    assert_eq!(rule.name.as_deref(), Some("main"));
    let mirrors: Vec<(&str, &str, Option<u16>, u32)> = rule
        .filters
        .iter()
        .map(|f| match f {
            Filter::Mirror { backend, percent } => (
                backend.namespace.as_str(),
                backend.name.as_str(),
                backend.port,
                *percent,
            ),
            other => panic!("expected mirrors: {other:?}"),
        })
        .collect();
    assert_eq!(
        mirrors,
        [
            ("shop", "shadow", Some(9090), 10),
            ("sec", "audit", None, 100)
        ]
    );
    assert_eq!(
        rule.timeouts,
        Timeouts {
            request: Some(Duration::from_secs(90)),
            backend_request: Some(Duration::from_millis(500)),
        }
    );
    assert_eq!(
        rule.retry,
        Some(Retry {
            codes: vec![503, 504],
            attempts: 1,
            backoff: Duration::from_millis(25),
        })
    );

    // `0s` disables a timeout, and a disabled request timeout bounds nothing.
    let rule = only_rule(
        "rules:\n- timeouts: {request: 0s, backendRequest: 30s}\n  retry: {attempts: 3, backoff: 100ms}",
    );
    assert_eq!(
        rule.timeouts,
        Timeouts {
            request: None,
            backend_request: Some(Duration::from_secs(30)),
        }
    );
    assert_eq!(
        rule.retry.as_ref().map(|r| (r.attempts, r.backoff)),
        Some((3, Duration::from_millis(100)))
    );
    assert_eq!(only_rule("rules:\n- {}").timeouts, Timeouts::default());
    assert_eq!(only_rule("rules:\n- {}").retry, None);
}

#[test]
fn durations_follow_the_gateway_api_grammar() {
    let valid = [
        ("0s", Duration::ZERO),
        ("1h", Duration::from_secs(3600)),
        ("1m30s", Duration::from_secs(90)),
        ("500ms", Duration::from_millis(500)),
        ("1h2m3s4ms", Duration::from_millis(3_723_004)),
        ("99999ms", Duration::from_millis(99_999)),
        ("1s1s", Duration::from_secs(2)),
        ("00010s", Duration::from_secs(10)),
    ];
    for (text, expected) in valid {
        assert_eq!(parse_duration(text), Ok(expected), "{text}");
    }
    let invalid = [
        ("", "empty"),
        ("10", "without a unit"),
        ("1d", "unknown unit"),
        ("1.5s", "unknown unit"),
        ("100000s", "at most 5"),
        ("1h1m1s1ms1h", "more than four parts"),
        ("-1s", "where a number was expected"),
        (" 1s", "where a number was expected"),
        ("s", "where a number was expected"),
        ("1S", "unknown unit"),
    ];
    for (text, message) in invalid {
        let error = parse_duration(text).expect_err(text);
        assert!(error.contains(message), "{text}: {error}");
        assert!(
            error.contains("e.g. \"1m30s\""),
            "{text}: says what to write: {error}"
        );
    }
}

#[test]
fn timestamps_parse_as_instants() {
    use super::timestamp::parse_rfc3339;
    let cases = [
        ("1970-01-01T00:00:00Z", Ok((0, 0))),
        ("2024-02-29T12:00:00Z", Ok((1_709_208_000, 0))),
        ("2024-01-01T02:00:00+02:00", Ok((1_704_067_200, 0))),
        ("2023-12-31T19:00:00-05:00", Ok((1_704_067_200, 0))),
        (
            "2024-01-01T00:00:00.123456789Z",
            Ok((1_704_067_200, 123_456_789)),
        ),
        ("2024-01-01t00:00:00z", Ok((1_704_067_200, 0))),
    ];
    for (text, expected) in cases {
        assert_eq!(parse_rfc3339(text).map_err(|_| ()), expected, "{text}");
    }
    for text in [
        "2023-02-29T00:00:00Z",
        "2024-13-01T00:00:00Z",
        "2024-01-01T24:00:00Z",
        "2024-01-01T00:00:00",
        "2024-01-01 00:00:00+0200",
        "2024-01-01T00:00:00.Z",
        "yesterday",
    ] {
        assert!(parse_rfc3339(text).is_err(), "{text}");
    }
}
