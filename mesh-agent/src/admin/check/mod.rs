//! `meshctl check`: can this node run the agent ([`preflight`]), and does
//! an installed mesh work ([`post_install`])? Each check is judged by a pure
//! function from facts gathered first, so every failure message is tested
//! without breaking a machine; the gathering around it is thin.
pub mod post_install;
pub mod preflight;

use serde::{Deserialize, Serialize};

/// One check's outcome: one line of `meshctl check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// What was checked: `kernel`, `bpffs`, `CA`, …
    pub check: String,
    /// The node it is about (post-install, once the agent said its name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The agent that was asked (post-install).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// On failure: what to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    pub fn pass(check: &str, detail: impl Into<String>) -> Self {
        Self {
            check: check.to_owned(),
            node: None,
            agent: None,
            ok: true,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn fail(check: &str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            ok: false,
            fix: Some(fix.into()),
            ..Self::pass(check, detail)
        }
    }
}

/// Every check of one run; `ok` when all passed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub ok: bool,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn new(checks: Vec<Check>) -> Self {
        Self {
            ok: checks.iter().all(|c| c.ok),
            checks,
        }
    }

    /// One line per check: `ok`/`FAIL`, where (post-install: the node, or
    /// the agent when it did not answer), what, what was found and, on
    /// failure, what to do.
    pub fn table(&self, colour: bool) -> String {
        let place = |c: &Check| c.node.clone().or_else(|| c.agent.clone());
        let place_width = self
            .checks
            .iter()
            .filter_map(|c| place(c).map(|p| p.chars().count()))
            .max();
        let check_width = self.checks.iter().map(|c| c.check.len()).max().unwrap_or(0);
        let mut out = String::new();
        for c in &self.checks {
            let verdict = match (c.ok, colour) {
                (true, _) => "ok  ".to_owned(),
                (false, true) => "\x1b[31mFAIL\x1b[0m".to_owned(),
                (false, false) => "FAIL".to_owned(),
            };
            let place = place_width.map_or_else(String::new, |w| {
                format!("{:<w$}  ", place(c).unwrap_or_default())
            });
            let fix = c
                .fix
                .as_deref()
                .map(|f| format!(" Fix: {f}"))
                .unwrap_or_default();
            out.push_str(&format!(
                "{verdict}  {place}{:<check_width$}  {}{fix}\n",
                c.check, c.detail
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_one_line_per_check_with_the_fix_on_failures() {
        let report = Report::new(vec![
            Check::pass("kernel", "Linux 6.1 (5.17 or newer needed)"),
            Check::fail("bpffs", "not mounted.", "mount it."),
        ]);
        assert!(!report.ok);
        assert_eq!(
            report.table(false),
            "ok    kernel  Linux 6.1 (5.17 or newer needed)\n\
             FAIL  bpffs   not mounted. Fix: mount it.\n"
        );
        let mut on_nodes = report.checks.clone();
        on_nodes[0].node = Some("n1".into());
        on_nodes[1].agent = Some("/run/x.sock".into());
        assert_eq!(
            Report::new(on_nodes).table(false),
            "ok    n1           kernel  Linux 6.1 (5.17 or newer needed)\n\
             FAIL  /run/x.sock  bpffs   not mounted. Fix: mount it.\n"
        );
        assert!(Report::new(vec![Check::pass("a", "b")]).ok);
    }
}
