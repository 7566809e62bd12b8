//! The demo as a user runs it: its summary says what really happened, a
//! printed pod command works as printed and shows up in `meshctl flows`,
//! and it leaves nothing behind.
use std::{process::Command, time::Duration};

use anyhow::{Context as _, ensure};
use libtest_mimic::Trial;
use mesh_agent::flows::FlowRecord;
use nodemesh_tests::{PodChild, leaks, mesh::workspace_binary, process::spawn_here};

use crate::support::trial;

pub fn trials() -> Vec<Trial> {
    vec![trial(
        "demo::summary_is_true_printed_commands_work_and_nothing_is_left",
        demo,
    )]
}

fn demo() -> anyhow::Result<()> {
    let summary_path = std::env::temp_dir().join(format!("nmt-{}-demo.json", std::process::id()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nodemesh-demo"));
    cmd.args(["--duration", "10", "--summary-json"])
        .arg(&summary_path);
    let mut demo = spawn_here(cmd)?;
    let prefix = format!("nmdemo-{}-", demo.pid());
    if let Err(e) = checks(&mut demo, &summary_path) {
        // Stop it as a user would (Ctrl-C), so it removes what it made: a
        // demo killed by the drop would leave its cluster behind.
        let _ = demo.interrupt(Duration::from_secs(60));
        if let Ok(left) = leaks::find(&prefix)
            && !left.is_empty()
        {
            let _ = leaks::sweep(&left);
        }
        return Err(e);
    }
    let (status, rest) = demo.wait_output(Duration::from_secs(60))?;
    ensure!(
        status.success() && rest.contains("nothing is left behind"),
        "the demo ended with {status}: {rest}"
    );
    let left = leaks::find(&prefix)?;
    ensure!(left.is_empty(), "the demo left resources behind: {left}");
    Ok(())
}

/// What the running demo printed and summarised is true.
fn checks(demo: &mut PodChild, summary_path: &std::path::Path) -> anyhow::Result<()> {
    let mut printed = Vec::new();
    while printed.last().map(String::as_str) != Some("demo is up") {
        printed.push(demo.next_line(Duration::from_secs(90)).with_context(|| {
            format!(
                "the demo did not come up; it printed:\n{}",
                printed.join("\n")
            )
        })?);
    }
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(summary_path)?)?;
    std::fs::remove_file(summary_path)?;

    let pair = |from: &str, to: &str| {
        summary["pairs"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["from"] == from && p["to"] == to))
            .cloned()
            .with_context(|| format!("no {from} → {to} in the summary: {summary:#}"))
    };
    let service = pair("shop/frontend", "shop/cart (Service)")?;
    ensure!(
        service["connections"] == 5
            && service["captured"] == true
            && service["encrypted"] == true
            && service["verdict"] == "allowed"
            && service["source_identity"] == "spiffe://cluster.local/ns/shop/sa/frontend"
            && service["destination_identity"] == "spiffe://cluster.local/ns/shop/sa/waypoint",
        "{service:#}"
    );
    let waypoint = &summary["waypoint"];
    let (v1, v2) = (
        waypoint["canary"]["shop/cart-1"].as_u64().unwrap_or(0),
        waypoint["canary"]["shop/cart-2"].as_u64().unwrap_or(0),
    );
    // The two curls and the 200 requests of the load; Binomial(202, 0.1):
    // mean 20, standard deviation 4.3.
    ensure!(
        v1 + v2 == 202 && (4..=40).contains(&v2),
        "the canary split: {waypoint:#}"
    );
    ensure!(
        waypoint["denied_status"] == 403
            && waypoint["denied_rule"] == "shop/cart-no-delete rule 0"
            && waypoint["denied_request"] == "DELETE /cart/items",
        "the L7 refusal: {waypoint:#}"
    );
    let allowed = pair("shop/frontend", "shop/payments")?;
    ensure!(
        allowed["destination_identity"] == "spiffe://cluster.local/ns/shop/sa/payments"
            && allowed["verdict"] == "allowed"
            && allowed["rule"] == "shop/payments-from-frontend rule 0"
            && allowed["bytes_sent"] == 20 * 1024,
        "{allowed:#}"
    );
    let denied = pair("shop/cart-1", "shop/payments")?;
    ensure!(
        denied["verdict"] == "denied"
            && denied["rule"]
                .as_str()
                .is_some_and(|r| r.contains("shop/payments-from-frontend"))
            && denied["bytes_sent"] == 0,
        "{denied:#}"
    );
    let legacy = pair("legacy/client", "shop/cart-2")?;
    ensure!(
        legacy["encrypted"] == false
            && legacy["captured"] == true
            && legacy["verdict"] == "allowed",
        "{legacy:#}"
    );

    // The printed curl command, run exactly as printed.
    let curl = printed
        .iter()
        .skip_while(|l| !l.contains("curl from inside the frontend pod"))
        .find_map(|l| l.trim().strip_prefix("$ "))
        .context("the demo printed no pod command")?
        .to_owned();
    ensure!(
        curl == summary["commands"]["curl"],
        "the printed command differs from the summary's"
    );
    let started_ms = mesh_agent::flows::record::unix_ms_now();
    let out = Command::new("sh").args(["-c", &curl]).output()?;
    let answer = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && answer.starts_with("hello from cart-"),
        "`{curl}` answered {answer:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n1 = summary["agents"]["n1"].as_str().context("n1's socket")?;
    let flows = Command::new(workspace_binary("meshctl")?)
        .args([
            "--agent",
            n1,
            "flows",
            "--from-pod",
            "frontend",
            "-o",
            "json",
        ])
        .output()?;
    let flows: Vec<FlowRecord> = serde_json::from_slice(&flows.stdout)
        .with_context(|| String::from_utf8_lossy(&flows.stderr).into_owned())?;
    ensure!(
        flows.iter().any(|f| f.start_unix_ms >= started_ms
            && f.service.as_deref() == Some("shop/cart")
            && f.hook.is_some()),
        "the printed command's connection is not in meshctl flows: {flows:#?}"
    );
    Ok(())
}
