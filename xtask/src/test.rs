//! `cargo xtask test`: the one test command, locally and in CI.
//!
//! Order is cheapest first, so a formatting slip fails in seconds rather than
//! after the end-to-end suite; a quick benchmark run closes it, so the
//! instrument never rots.
use std::time::Instant;

use anyhow::bail;

use crate::{ebpf_toolchain, run, setup};

/// The manifests' test that runs kubernetes-validate (tests/manifests).
const VALIDATE_TEST: &str = "kubernetes_validate_strict_accepts_every_document";

#[derive(clap::Args)]
pub struct TestArgs {
    /// Skip rustfmt and clippy.
    #[arg(long)]
    no_lint: bool,
    /// Arguments for the test binaries, e.g. `-- capture` to run only tests
    /// whose name contains "capture".
    #[arg(last = true)]
    test_args: Vec<String>,
}

pub fn run(args: &TestArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let root = run::workspace_root();
    let cargo = run::cargo;

    stage("setup", || setup::run().map(|_| ()))?;
    if !args.no_lint {
        stage("rustfmt", || {
            run::status(cargo().args(["fmt", "--all", "--check"]))
        })?;
        stage("clippy (host crates)", || {
            run::status(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))
        })?;
        stage("clippy (eBPF crate, BPF target)", || lint_ebpf(&root))?;
    }
    // The image's release build is the proof that rustup's stable toolchain
    // suffices, and the benchmark at the end reuses it.
    stage(
        "image: release static build with only rustup's stable toolchain (no nightly visible)",
        || crate::image::build(&root).and_then(|image| crate::image::verify(&root, &image)),
    )?;
    stage("unit tests", || {
        run::status(
            cargo()
                .args(["test", "--lib", "--bins", "--"])
                .args(&args.test_args),
        )
    })?;
    // The manifests in deploy/ (no API server, no root): typed and policy
    // checks first, then the external validator, which `setup` installed.
    let manifests = || {
        let mut cmd = cargo();
        cmd.args([
            "test",
            "--package",
            "nodemesh-tests",
            "--test",
            "manifests",
            "--",
        ]);
        cmd
    };
    stage("manifests: typed round-trip and privileges", || {
        run::status(manifests().args(["--skip", VALIDATE_TEST]))
    })?;
    stage(
        "manifests: kubernetes-validate --strict, several Kubernetes versions",
        || {
            run::status(
                manifests()
                    .args(["--exact", VALIDATE_TEST])
                    .env("KUBERNETES_VALIDATE", setup::kubernetes_validate()),
            )
        },
    )?;
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "the end-to-end tests need root (they create network namespaces, cgroups and load \
             eBPF programs); nothing was skipped silently. Run: sudo -E cargo xtask test"
        );
    }
    stage(
        "end-to-end tests (namespaces, eBPF, real processes)",
        || {
            // The tests start the real agent binary, which `cargo test` of
            // the tests package does not build by itself.
            run::status(cargo().args(["build", "--package", "mesh-agent", "--bins"]))?;
            run::status(
                cargo()
                    .args(["test", "--package", "nodemesh-tests", "--test", "e2e", "--"])
                    .args(&args.test_args),
            )
        },
    )?;
    // The benchmark must keep working: a quick, unjudged run of every
    // scenario (figures are printed, never asserted).
    crate::bench::quick_or_full(&["--quick".to_owned()])?;
    println!("xtask test: all stages passed in {:.0?}", started.elapsed());
    Ok(())
}

/// Lints `mesh-ebpf` for the BPF target with the toolchain that builds it;
/// linting it inside the host workspace would unify `mesh-common`'s `user`
/// feature into it and give it two panic handlers.
fn lint_ebpf(root: &std::path::Path) -> anyhow::Result<()> {
    let Some(tc) = ebpf_toolchain::find() else {
        bail!("no eBPF toolchain found after setup; run `cargo xtask setup` and read its output");
    };
    let mut cmd = tc.clippy();
    cmd.current_dir(root)
        .args(["--target-dir", "target/ebpf-lint", "--", "-D", "warnings"]);
    run::status(&mut cmd)
}

pub fn stage<T>(name: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    println!("==> {name}");
    let started = Instant::now();
    let result = f();
    let verdict = if result.is_ok() { "ok" } else { "FAILED" };
    println!("<== {name}: {verdict} in {:.1?}", started.elapsed());
    result
}
