//! GRPCRoutes compiled into the table HTTPRoutes use: each method match
//! type, the GRPCRoute precedence, problems by field, and the conflict
//! between an HTTPRoute and a GRPCRoute on one parent.
use super::*;
use crate::state::gateway::GrpcRoute;

fn grpc_route(yaml: &str) -> GrpcRoute {
    serde_yaml_ng::from_str(yaml)
        .unwrap_or_else(|e| panic!("test route does not parse: {e}\n{yaml}"))
}

/// `shop/<name>`, a GRPCRoute attached to the cart Service.
fn cart_grpc_with(name: &str, metadata: &str, spec: &str) -> GrpcRoute {
    grpc_route(&format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata:\n  name: {name}\n  namespace: shop\n{}spec:\n  parentRefs:\n  - {{group: \"\", kind: Service, name: cart}}\n{}",
        indent(metadata, 2),
        indent(spec, 2)
    ))
}

fn cart_grpc(name: &str, spec: &str) -> GrpcRoute {
    cart_grpc_with(name, "", spec)
}

fn build_grpc(routes: &[GrpcRoute]) -> RouteTable {
    let (table, problems) = RouteTable::build(&[], routes, &parent());
    assert!(problems.is_empty(), "unexpected problems: {problems:#?}");
    table
}

/// A gRPC call to `host/service/method`, with more headers after ` | `.
fn call(target: &str) -> String {
    match target.split_once(" | ") {
        Some((target, headers)) => {
            format!("POST {target} | content-type: application/grpc | {headers}")
        }
        None => format!("POST {target} | content-type: application/grpc"),
    }
}

#[test]
fn each_method_match_type_holds_exactly_where_it_should() {
    let cases: &[(&str, &[(&str, bool)])] = &[
        (
            "method: {service: pkg.Greeter, method: Hello}",
            &[
                ("cart/pkg.Greeter/Hello", true),
                ("cart/pkg.Greeter/HelloAgain", false),
                ("cart/pkg.Greeter/hello", false),
                ("cart/other.Greeter/Hello", false),
            ],
        ),
        (
            "method: {type: Exact, service: pkg.Greeter}",
            &[
                ("cart/pkg.Greeter/Hello", true),
                ("cart/pkg.Greeter/Count", true),
                ("cart/pkg.GreeterV2/Hello", false),
            ],
        ),
        (
            "method: {method: Hello}",
            &[
                ("cart/pkg.Greeter/Hello", true),
                ("cart/a.B/Hello", true),
                ("cart/pkg.Greeter/HelloAgain", false),
                ("cart/Hello/Other", false),
            ],
        ),
        (
            "method: {type: RegularExpression, service: 'pkg\\.v[0-9]+\\.Greeter', method: 'Say.*'}",
            &[
                ("cart/pkg.v2.Greeter/SayHi", true),
                ("cart/pkg.v2.Greeter/Hello", false),
                ("cart/xpkg.v2.Greeter/SayHi", false),
                ("cart/pkg.vX.Greeter/SayHi", false),
            ],
        ),
        (
            "method: {type: RegularExpression, service: 'pkg\\..*'}",
            &[("cart/pkg.A/Any", true), ("cart/other.A/Any", false)],
        ),
        (
            "method: {type: RegularExpression, method: 'Get|List'}",
            &[
                ("cart/pkg.A/Get", true),
                ("cart/pkg.A/List", true),
                ("cart/pkg.A/GetAll", false),
            ],
        ),
        (
            "headers: [{name: X-Tenant, value: blue}]",
            &[
                ("cart/pkg.A/Any | x-tenant: blue", true),
                ("cart/pkg.A/Any | x-tenant: red", false),
                ("cart/pkg.A/Any", false),
            ],
        ),
        (
            "headers: [{type: RegularExpression, name: x-tenant, value: 'b.*'}]",
            &[
                ("cart/pkg.A/Any | x-tenant: blue", true),
                ("cart/pkg.A/Any | x-tenant: abc", false),
            ],
        ),
    ];
    for (written, requests) in cases {
        let table = build_grpc(&[cart_grpc(
            "r",
            &format!("rules:\n- matches:\n  - {written}\n  backendRefs: [{{name: v1}}]"),
        )]);
        for (target, expected) in *requests {
            assert_eq!(
                winner(&table, &call(target)).is_some(),
                *expected,
                "{written} against {target}"
            );
        }
    }
}

#[test]
fn only_grpc_calls_meet_a_grpcroute() {
    let table = build_grpc(&[cart_grpc("r", "rules:\n- backendRefs: [{name: v1}]")]);
    let cases = [
        (call("cart/pkg.A/B"), true),
        (
            "POST cart/pkg.A/B | content-type: application/grpc+proto".to_owned(),
            true,
        ),
        (
            "POST cart/pkg.A/B | content-type: application/grpc; charset=utf-8".to_owned(),
            true,
        ),
        (
            "POST cart/pkg.A/B | content-type: application/grpc-web".to_owned(),
            false,
        ),
        (
            "POST cart/pkg.A/B | content-type: application/json".to_owned(),
            false,
        ),
        ("POST cart/pkg.A/B".to_owned(), false),
        (
            "GET cart/pkg.A/B | content-type: application/grpc".to_owned(),
            false,
        ),
    ];
    for (line, expected) in cases {
        assert_eq!(winner(&table, &line).is_some(), expected, "{line}");
    }
}

#[test]
fn grpc_precedence_decides_between_competing_rules() {
    // (loser's match, winner's match, call, why); the loser is older and
    // first by name, so only the match criteria can make it lose.
    let old = created("2024-01-01T00:00:00Z");
    let new = created("2024-06-01T00:00:00Z");
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "method: {service: pkg.Greeter}",
            "method: {service: pkg.Greeter, method: Hello}",
            "cart/pkg.Greeter/Hello",
            "service and method beat service alone",
        ),
        (
            "method: {method: Hello}",
            "method: {service: pkg.Greeter}",
            "cart/pkg.Greeter/Hello",
            "service characters come before method characters",
        ),
        (
            "method: {service: pkg.Greeter}",
            "method: {service: pkg.Greeter.v2}",
            "cart/pkg.Greeter.v2/Hello",
            "more service characters win",
        ),
        (
            "method: {type: RegularExpression, service: 'pkg\\.Greeter', method: Hello}",
            "method: {method: Hello}",
            "cart/pkg.Greeter/Hello",
            "an exact method match beats a regex",
        ),
        (
            "headers: [{name: x-a, value: a}, {name: x-b, value: b}]",
            "method: {type: RegularExpression, service: '.*'}",
            "cart/pkg.Greeter/Hello | x-a: a | x-b: b",
            "a regex method match beats none, whatever the headers",
        ),
        (
            "method: {service: pkg.Greeter}\n    headers: [{name: x-a, value: a}]",
            "method: {service: pkg.Greeter}\n    headers: [{name: x-a, value: a}, {name: x-b, value: b}]",
            "cart/pkg.Greeter/Hello | x-a: a | x-b: b",
            "more header matches win",
        ),
    ];
    for (loser, winner_match, target, why) in cases {
        let routes = [
            cart_grpc_with(
                "a-loser",
                &old,
                &format!("rules:\n- matches:\n  - {loser}\n  backendRefs: [{{name: v1}}]"),
            ),
            cart_grpc_with(
                "b-winner",
                &new,
                &format!("rules:\n- matches:\n  - {winner_match}\n  backendRefs: [{{name: v2}}]"),
            ),
        ];
        let table = build_grpc(&routes);
        assert_eq!(
            winner(&table, &call(target)).as_deref(),
            Some("shop/b-winner#0"),
            "{why}"
        );
    }

    // Equal matches: the oldest route, then the first by name, then the
    // first rule.
    let equal = "rules:\n- matches: [{method: {service: pkg.A}}]\n  backendRefs: [{name: v1}]";
    let table = build_grpc(&[
        cart_grpc_with("a", &new, equal),
        cart_grpc_with("b", &old, equal),
    ]);
    assert_eq!(
        winner(&table, &call("cart/pkg.A/X")).as_deref(),
        Some("shop/b#0")
    );
    let table = build_grpc(&[cart_grpc("b", equal), cart_grpc("a", equal)]);
    assert_eq!(
        winner(&table, &call("cart/pkg.A/X")).as_deref(),
        Some("shop/a#0")
    );
    let table = build_grpc(&[cart_grpc(
        "r",
        "rules:\n- matches: [{method: {service: pkg.A}}]\n- matches: [{method: {service: pkg.A}}]",
    )]);
    assert_eq!(
        winner(&table, &call("cart/pkg.A/X")).as_deref(),
        Some("shop/r#0")
    );
}

#[test]
fn each_invalid_grpc_field_is_reported_at_its_path() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "rules: [{matches: [{method: {service: 'pkg/Greeter'}}]}]",
            "spec.rules[0].matches[0].method.service",
            "not a gRPC service name",
        ),
        (
            "rules: [{matches: [{}, {method: {service: pkg.A, method: 'Say-Hi'}}]}]",
            "spec.rules[0].matches[1].method.method",
            "not a gRPC method name",
        ),
        (
            "rules: [{matches: [{method: {type: Exact}}]}]",
            "spec.rules[0].matches[0].method",
            "needs a service, a method or both",
        ),
        (
            "rules: [{matches: [{method: {type: RegularExpression, service: '(pkg', method: Hi}}]}]",
            "spec.rules[0].matches[0].method.service",
            "does not compile",
        ),
        (
            "rules: [{matches: [{method: {type: RegularExpression, method: '[a'}}]}]",
            "spec.rules[0].matches[0].method.method",
            "does not compile",
        ),
        (
            "rules: [{matches: [{headers: [{name: 'bad header', value: x}]}]}]",
            "spec.rules[0].matches[0].headers[0].name",
            "not a valid HTTP header name",
        ),
        (
            "rules: [{filters: [{type: URLRewrite}]}]",
            "spec.rules[0].filters[0].type",
            "unknown filter type \"URLRewrite\" for a GRPCRoute",
        ),
        (
            "rules: [{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: m}}}]}]",
            "spec.rules[0].filters[0].type",
            "every gRPC call has one",
        ),
        (
            "rules: [{backendRefs: [{name: v1, filters: [{type: RequestHeaderModifier}]}]}]",
            "spec.rules[0].backendRefs[0].filters[0].requestHeaderModifier",
            "needs its settings",
        ),
        (
            "rules: [{backendRefs: [{name: v1, kind: ServiceImport}]}]",
            "spec.rules[0].backendRefs[0].kind",
            "not supported",
        ),
        (
            "hostnames: ['*']",
            "spec.hostnames[0]",
            "not a valid hostname",
        ),
    ];
    for (spec, field, message) in cases {
        let (table, problems) = RouteTable::build(&[], &[cart_grpc("bad", spec)], &parent());
        assert!(
            table.is_empty(),
            "{spec}: an invalid route must not be served"
        );
        assert_eq!(problems.len(), 1, "{spec}: {problems:#?}");
        let problem = &problems[0];
        assert_eq!(
            (problem.kind, problem.route.as_str(), problem.field.as_str()),
            (RouteKind::Grpc, "shop/bad", *field),
            "{spec}"
        );
        assert!(
            problem.message.contains(message),
            "{spec}: {}",
            problem.message
        );
        assert!(
            problem
                .to_string()
                .starts_with(&format!("GRPCRoute shop/bad {field}: ")),
            "{problem}"
        );
    }
}

#[test]
fn an_invalid_grpcroute_is_left_out_and_valid_routes_still_serve() {
    let bad = cart_grpc(
        "bad",
        "rules:\n- matches: [{method: {service: 'no/slash'}}]\n  backendRefs: [{name: v1, weight: 2000000}]",
    );
    let good = cart_grpc("good", "rules:\n- backendRefs: [{name: v2}]");
    let (table, problems) = RouteTable::build(&[], &[bad, good], &parent());
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.rules[0].matches[0].method.service",
            "spec.rules[0].backendRefs[0].weight"
        ]
    );
    assert_eq!(
        winner(&table, &call("cart/no.slash/X")).as_deref(),
        Some("shop/good#0")
    );
}

#[test]
fn grpc_filters_and_weighted_backends_are_typed() {
    let table = build_grpc(&[cart_grpc(
        "r",
        r#"
rules:
- filters:
  - type: RequestHeaderModifier
    requestHeaderModifier: {set: [{name: x-a, value: "1"}]}
  - type: ResponseHeaderModifier
    responseHeaderModifier: {remove: [x-b]}
  backendRefs:
  - {name: v1, port: 80, weight: 3}
  - name: v2
    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: x-v, value: two}]}}]
"#,
    )]);
    let req = request(&call("cart/pkg.A/B"));
    let rule = table.decide(&req.view()).expect("the rule matches").rule;
    let header = |name: &'static str, value: &'static str| {
        (
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        )
    };
    assert_eq!(
        rule.filters,
        [
            Filter::RequestHeaders(HeaderEdit {
                set: vec![header("x-a", "1")],
                ..HeaderEdit::default()
            }),
            Filter::ResponseHeaders(HeaderEdit {
                remove: vec![HeaderName::from_static("x-b")],
                ..HeaderEdit::default()
            }),
        ]
    );
    let backends: Vec<(&str, Option<u16>, u32)> = rule
        .backends
        .iter()
        .map(|b| (b.name.as_str(), b.port, b.weight))
        .collect();
    assert_eq!(backends, [("v1", Some(80), 3), ("v2", None, 1)]);
    assert_eq!(
        rule.backends[1].filters,
        [Filter::RequestHeaders(HeaderEdit {
            add: vec![header("x-v", "two")],
            ..HeaderEdit::default()
        })]
    );
    assert_eq!(
        (rule.timeouts, rule.retry.is_none()),
        (Timeouts::default(), true)
    );
}

#[test]
fn an_httproute_and_a_grpcroute_sharing_hostnames_accept_only_the_senior() {
    let old = created("2024-01-01T00:00:00Z");
    let new = created("2024-06-01T00:00:00Z");
    let http = |name: &str, meta: &str, hosts: &str| {
        cart_route_with(
            name,
            meta,
            &format!("{hosts}rules:\n- backendRefs: [{{name: v1}}]"),
        )
    };
    let grpc = |name: &str, meta: &str, hosts: &str| {
        cart_grpc_with(
            name,
            meta,
            &format!("{hosts}rules:\n- backendRefs: [{{name: v2}}]"),
        )
    };

    // The older route wins; the other is reported at its hostnames.
    for (http_age, grpc_age, loser, senior) in [
        (&old, &new, "GRPCRoute shop/g", "HTTPRoute shop/h"),
        (&new, &old, "HTTPRoute shop/h", "GRPCRoute shop/g"),
    ] {
        let (table, problems) = RouteTable::build(
            &[http("h", http_age, "")],
            &[grpc("g", grpc_age, "")],
            &parent(),
        );
        assert_eq!(problems.len(), 1, "{problems:#?}");
        let text = problems[0].to_string();
        assert!(
            text.starts_with(&format!("{loser} spec.hostnames: {senior} is attached")),
            "{text}"
        );
        let served = if loser.starts_with("GRPCRoute") {
            "shop/h#0"
        } else {
            "shop/g#0"
        };
        assert_eq!(
            winner(&table, &call("cart/pkg.A/B")).as_deref(),
            Some(served)
        );
    }

    // Equal ages: the first by namespace/name wins.
    let (_, problems) = RouteTable::build(&[http("b", "", "")], &[grpc("a", "", "")], &parent());
    assert_eq!(
        problems
            .iter()
            .map(|p| (p.kind, p.route.as_str()))
            .collect::<Vec<_>>(),
        [(RouteKind::Http, "shop/b")]
    );

    // Overlap through a wildcard conflicts; disjoint hostnames do not, and
    // each host then has its own kind of route.
    let (_, problems) = RouteTable::build(
        &[http("h", &old, "hostnames: ['*.example.com']\n")],
        &[grpc("g", &new, "hostnames: [api.example.com]\n")],
        &parent(),
    );
    assert_eq!(problems.len(), 1, "{problems:#?}");
    let (table, problems) = RouteTable::build(
        &[http("h", &old, "hostnames: [web.example.com]\n")],
        &[grpc("g", &new, "hostnames: ['*.api.example.com']\n")],
        &parent(),
    );
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(
        winner(&table, &call("x.api.example.com/pkg.A/B")).as_deref(),
        Some("shop/g#0")
    );
    assert_eq!(
        winner(&table, "GET web.example.com/").as_deref(),
        Some("shop/h#0")
    );
    assert_eq!(winner(&table, "GET x.api.example.com/"), None);

    // An invalid route takes no part: it cannot push a valid one out.
    let (table, problems) = RouteTable::build(
        &[http("h", &old, "hostnames: ['10.0.0.1']\n")],
        &[grpc("g", &new, "")],
        &parent(),
    );
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(problems[0].field, "spec.hostnames[0]");
    assert_eq!(
        winner(&table, &call("cart/pkg.A/B")).as_deref(),
        Some("shop/g#0")
    );
}
