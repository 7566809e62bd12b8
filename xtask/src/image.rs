//! `cargo xtask image`: the OCI image `deploy/` runs, built offline with
//! umoci (Debian's, daemonless: no container engine is needed or used).
//!
//! The binaries are built through [`stable_only`], so the test stage that
//! builds this image also proves the shipped build needs nothing from rustup
//! but its stable toolchain. They are linked statically against glibc (the
//! only C library target installed; glibc ≥ 2.34 resolves names from
//! `/etc/hosts` and DNS without loading NSS modules), so the image holds
//! nothing else: no libc, no shell, no CA certificates (the mesh has its own
//! root, and the Kubernetes client reads the in-cluster CA file).
//!
//! Every bin target of [`PACKAGE`] goes in (cargo's list, not ours), so a new
//! binary such as `nodemesh-cni` joins without an edit here. Files that are
//! not binaries live in [`ROOTFS_FILES`], shared with `deploy/Containerfile`.
//! The image is reproducible: fixed times (`SOURCE_DATE_EPOCH`, else the
//! commit's), owners and modes, and a layer written by tar rather than umoci.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};
use object::read::elf::{ElfFile64, ProgramHeader as _};
use serde_json::Value;

use crate::{run, stable_only, test::stage};

/// The repository the image is published under; its tag is the version.
const REPOSITORY: &str = "ghcr.io/nodemesh/nodemesh";
/// The package whose binaries the image carries.
const PACKAGE: &str = "mesh-agent";
/// Where the binaries go: the manifests and the CNI installer name them there.
const BIN_DIR: &str = "usr/local/bin";
const ENTRYPOINT: &str = "/usr/local/bin/mesh-agent";
/// `kubectl exec … -- meshctl status` finds the CLI (a scratch image has no PATH).
const ENV_PATH: &str = "PATH=/usr/local/bin";
/// Root by default: the agent needs it for its capabilities to take effect
/// (a non-root user gets added capabilities in its bounding set only). The
/// CA and waypoint Deployments run as `nonroot` (65532, in `/etc/passwd`).
const USER: &str = "0:0";
/// Ports a role listens on in its own container: the waypoint's HBONE, the
/// CA, metrics, readiness. The agent's 15001, 15006 and 15008 open inside
/// each pod's network namespace, and its admin API on localhost only, so
/// they are not the container's to expose.
const PORTS: [u16; 4] = [15008, 15012, 15020, 15021];
/// Files besides the binaries, kept where `deploy/Containerfile` copies them from.
const ROOTFS_FILES: &str = "deploy/image/rootfs";
const OUT_DIR: &str = "target/image";

/// What [`build`] made.
pub struct Image {
    /// `REPOSITORY:version`, the layout's and the archive's reference.
    reference: String,
    version: String,
    revision: String,
    source: String,
    /// Names of the binaries, as in `/usr/local/bin`.
    binaries: Vec<String>,
    /// The layout as one `oci-archive` tarball.
    archive: PathBuf,
}

impl Image {
    fn labels(&self) -> [(&'static str, &str); 3] {
        [
            ("org.opencontainers.image.source", &self.source),
            ("org.opencontainers.image.version", &self.version),
            ("org.opencontainers.image.revision", &self.revision),
        ]
    }
}

/// The config's form of [`PORTS`].
fn exposed_ports() -> Vec<String> {
    PORTS.iter().map(|port| format!("{port}/tcp")).collect()
}

/// Builds the binaries (release, static, stable-only rustup), checks each is
/// static, and writes the image layout and its archive under `target/image`.
pub fn build(root: &Path) -> anyhow::Result<Image> {
    let package = package_metadata(root)?;
    let arch = oci_architecture(&stable_only::host_triple()?)?;
    let release_dir = stable_only::release(root, PACKAGE)?;
    for name in &package.binaries {
        ensure_static(&release_dir.join(name))?;
    }

    let out = root.join(OUT_DIR);
    let rootfs = out.join("rootfs");
    fresh_dir(&rootfs)?;
    copy_tree(&root.join(ROOTFS_FILES), &rootfs)?;
    let bin_dir = rootfs.join(BIN_DIR);
    std::fs::create_dir_all(&bin_dir)?;
    for name in &package.binaries {
        std::fs::copy(release_dir.join(name), bin_dir.join(name))
            .with_context(|| format!("copying {name} into {}", bin_dir.display()))?;
    }

    let epoch = source_date_epoch(root)?;
    let created = rfc3339(epoch)?;
    let built = Image {
        reference: format!("{REPOSITORY}:{}", package.version),
        revision: git_revision(root)?,
        archive: out.join(format!("nodemesh-{}.oci.tar", package.version)),
        version: package.version,
        source: package.source,
        binaries: package.binaries,
    };
    let layer = out.join("layer.tar");
    reproducible_tar(&layer, &rootfs, epoch)?;

    let layout = out.join("oci");
    remove_if_present(&layout)?;
    let image = format!("oci:{}", built.reference);
    let umoci = |args: &[&str]| run::status(Command::new("umoci").current_dir(&out).args(args));
    umoci(&["init", "--layout", "oci"])?;
    umoci(&["new", "--image", &image])?;
    let comment = format!("{} (static, release)", built.binaries.join(", "));
    umoci(&[
        "raw",
        "add-layer",
        "--image",
        &image,
        "--history.created",
        &created,
        "--history.created_by",
        "cargo xtask image",
        "--history.comment",
        &comment,
        "layer.tar",
    ])?;
    let mut config: Vec<String> = [
        "config",
        "--image",
        &image,
        "--no-history",
        "--created",
        &created,
        "--os",
        "linux",
        "--architecture",
        arch,
        "--config.entrypoint",
        ENTRYPOINT,
        "--config.env",
        ENV_PATH,
        "--config.user",
        USER,
    ]
    .map(str::to_owned)
    .into();
    for port in exposed_ports() {
        config.extend(["--config.exposedports".into(), port]);
    }
    for (key, value) in built.labels() {
        config.extend(["--config.label".into(), format!("{key}={value}")]);
    }
    umoci(&config.iter().map(String::as_str).collect::<Vec<_>>())?;
    // umoci keeps every blob it replaced; drop them so the layout is only the image.
    umoci(&["gc", "--layout", "oci"])?;
    std::fs::remove_file(&layer)?;

    reproducible_tar(&built.archive, &layout, epoch)?;
    println!(
        "image {reference} ({binaries}), revision {revision}:\n  layout  {layout}\n  \
         archive {archive}\n\
         Load it with one of:\n  \
         skopeo copy oci-archive:{archive} docker-daemon:{reference}\n  \
         podman load -i {archive}\n  \
         ctr -n k8s.io images import {archive}    # containerd, in the kubelet's namespace",
        reference = built.reference,
        binaries = built.binaries.join(", "),
        revision = built.revision,
        layout = layout.display(),
        archive = built.archive.display(),
    );
    Ok(built)
}

/// Unpacks the archive (what people load) with umoci and checks what a node
/// would run: exactly the expected files, each binary static and executable,
/// `mesh-agent --version` from the unpacked root, and the config's
/// entrypoint, user, environment, ports and labels. Leaves what it unpacked
/// under `target/image/check` when a check fails.
pub fn verify(root: &Path, image: &Image) -> anyhow::Result<()> {
    let check = root.join(OUT_DIR).join("check");
    fresh_dir(&check)?;
    run::status(
        Command::new("tar")
            .arg("--extract")
            .arg("--file")
            .arg(&image.archive)
            .arg("--directory")
            .arg(&check),
    )?;
    let euid_root = nix::unistd::geteuid().is_root();
    let mut unpack = Command::new("umoci");
    unpack.current_dir(&check).arg("unpack");
    if !euid_root {
        unpack.arg("--rootless");
    }
    run::status(
        unpack
            .args(["--image", &format!(".:{}", image.reference)])
            .arg("bundle"),
    )?;
    let rootfs = check.join("bundle/rootfs");

    let mut expected = files_under(&root.join(ROOTFS_FILES), Path::new(""))?;
    expected.extend(image.binaries.iter().map(|b| Path::new(BIN_DIR).join(b)));
    expected.sort();
    let found = files_under(&rootfs, Path::new(""))?;
    ensure!(
        found == expected,
        "the unpacked image holds {found:?}, expected {expected:?}"
    );
    for name in &image.binaries {
        let path = rootfs.join(BIN_DIR).join(name);
        let mode = std::os::unix::fs::PermissionsExt::mode(&path.metadata()?.permissions());
        ensure!(
            mode & 0o111 == 0o111,
            "{} is not executable by everyone (mode {mode:o})",
            path.display()
        );
        ensure_static(&path)?;
    }

    // Chrooted into the image when we may: proof that it needs no file the
    // image lacks. With the environment the image gives, and nothing else
    // (so chroot is named by its path: PATH is the image's).
    let mut version = if euid_root {
        let mut cmd = Command::new("/usr/sbin/chroot");
        cmd.arg(&rootfs).arg(ENTRYPOINT);
        cmd
    } else {
        Command::new(rootfs.join(ENTRYPOINT.trim_start_matches('/')))
    };
    let (name, value) = ENV_PATH.split_once('=').context("ENV_PATH is NAME=value")?;
    let output = version
        .arg("--version")
        .env_clear()
        .env(name, value)
        .output()
        .with_context(|| format!("running {version:?}"))?;
    let printed = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success() && printed.trim() == format!("mesh-agent {}", image.version),
        "{version:?} printed {printed:?} ({}), expected \"mesh-agent {}\"; stderr: {}",
        output.status,
        image.version,
        String::from_utf8_lossy(&output.stderr)
    );

    let config = image_config(&check, &image.reference)?;
    let labels: BTreeMap<&str, &str> = image.labels().into();
    let ports = exposed_ports();
    let checks = [
        (
            "Entrypoint",
            config["Entrypoint"] == serde_json::json!([ENTRYPOINT]),
        ),
        ("User", config["User"] == USER),
        ("Env", config["Env"] == serde_json::json!([ENV_PATH])),
        (
            "ExposedPorts",
            config["ExposedPorts"]
                .as_object()
                .is_some_and(|p| p.keys().eq(ports.iter())),
        ),
        ("Labels", config["Labels"] == serde_json::json!(labels)),
    ];
    for (field, ok) in checks {
        ensure!(ok, "image config {field} is wrong: {config:#}");
    }
    std::fs::remove_dir_all(&check)?;
    println!(
        "image {} verified from its archive: {} static in /{BIN_DIR}; `mesh-agent --version` \
         ran {}; config as built",
        image.reference,
        image.binaries.join(", "),
        if euid_root {
            "chrooted in the image"
        } else {
            "from the unpacked image (not root: no chroot)"
        },
    );
    Ok(())
}

/// The runtime part (`config`) of the image config `reference` names in
/// the layout at `layout`.
fn image_config(layout: &Path, reference: &str) -> anyhow::Result<Value> {
    let blob = |digest: &Value| -> anyhow::Result<Value> {
        let digest = digest.as_str().context("a descriptor without a digest")?;
        let path = layout.join("blobs").join(digest.replacen(':', "/", 1));
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
    };
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)
        .context("parsing index.json")?;
    let descriptor = index["manifests"]
        .as_array()
        .and_then(|m| {
            m.iter()
                .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == reference)
        })
        .with_context(|| format!("index.json has no manifest named {reference}: {index:#}"))?;
    let manifest = blob(&descriptor["digest"])?;
    Ok(blob(&manifest["config"]["digest"])?["config"].take())
}

#[derive(clap::Args)]
pub struct ImageArgs {
    /// Then unpack the archive with umoci and check it as `cargo xtask test`
    /// does: the files, static binaries, `mesh-agent --version`, the config.
    #[arg(long)]
    verify: bool,
}

/// `cargo xtask image`.
pub fn run(args: &ImageArgs) -> anyhow::Result<()> {
    let root = run::workspace_root();
    stage("setup", || crate::setup::run().map(|_| ()))?;
    let image = stage("image", || build(&root))?;
    if args.verify {
        stage("verify", || verify(&root, &image))?;
    }
    Ok(())
}

struct Package {
    version: String,
    source: String,
    binaries: Vec<String>,
}

/// Version, repository and bin targets of [`PACKAGE`], as cargo reads them.
fn package_metadata(root: &Path) -> anyhow::Result<Package> {
    let output = run::cargo()
        .current_dir(root)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .output()
        .context("running cargo metadata")?;
    ensure!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value =
        serde_json::from_slice(&output.stdout).context("cargo metadata's JSON")?;
    let package = metadata["packages"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == PACKAGE))
        .with_context(|| format!("cargo metadata lists no package {PACKAGE}"))?;
    let text = |field: &str| {
        package[field].as_str().map(str::to_owned).with_context(|| {
            format!("{PACKAGE}/Cargo.toml sets no `{field}`; the image's labels need it")
        })
    };
    let mut binaries: Vec<String> = package["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| {
            t["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"))
        })
        .filter_map(|t| t["name"].as_str().map(str::to_owned))
        .collect();
    binaries.sort();
    ensure!(
        binaries
            .iter()
            .any(|b| ENTRYPOINT.ends_with(&format!("/{b}"))),
        "{PACKAGE} has no bin target for the entrypoint {ENTRYPOINT} (it has {binaries:?})"
    );
    Ok(Package {
        version: text("version")?,
        source: text("repository")?,
        binaries,
    })
}

/// The OCI (Go) name of the triple's architecture.
fn oci_architecture(triple: &str) -> anyhow::Result<&'static str> {
    Ok(match triple.split('-').next() {
        Some("x86_64") => "amd64",
        Some("aarch64") => "arm64",
        _ => bail!("no OCI architecture known for {triple}; add it to oci_architecture"),
    })
}

/// Fails unless `path` is an ELF executable that needs no program
/// interpreter (dynamic loader) and no shared library.
fn ensure_static(path: &Path) -> anyhow::Result<()> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let elf = ElfFile64::<object::Endianness>::parse(&*data)
        .with_context(|| format!("{} is not a 64-bit ELF file", path.display()))?;
    let endian = elf.endian();
    for header in elf.elf_program_headers() {
        if let Some(interpreter) = header.interpreter(endian, &*data)? {
            bail!(
                "{} is dynamically linked: it asks for the loader {}. The image has no libc, so it \
                 would not start; check that the build passed {} for its target",
                path.display(),
                String::from_utf8_lossy(interpreter),
                stable_only::STATIC_RUSTFLAGS,
            );
        }
    }
    let dynamic = elf.elf_dynamic_table()?;
    let needed: Vec<String> = dynamic
        .iter()
        .filter(|d| d.tag == object::elf::DT_NEEDED)
        .map(|d| {
            dynamic
                .string(d)
                .map(|s| String::from_utf8_lossy(s).into_owned())
        })
        .collect::<Result<_, _>>()?;
    ensure!(
        needed.is_empty(),
        "{} needs shared libraries {needed:?}, which the image does not have",
        path.display()
    );
    Ok(())
}

/// `SOURCE_DATE_EPOCH` when set, else the time of the commit built.
fn source_date_epoch(root: &Path) -> anyhow::Result<u64> {
    let text = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(text) => text,
        Err(_) => git(root, &["log", "-1", "--format=%ct"])?,
    };
    text.trim()
        .parse()
        .with_context(|| format!("SOURCE_DATE_EPOCH {text:?} is not whole seconds since 1970"))
}

fn rfc3339(epoch: u64) -> anyhow::Result<String> {
    let output = Command::new("date")
        .args(["-u", "-d", &format!("@{epoch}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .context("running date")?;
    ensure!(output.status.success(), "date could not format {epoch}");
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The commit built, marked `-dirty` when tracked files differ from it.
fn git_revision(root: &Path) -> anyhow::Result<String> {
    let commit = git(root, &["rev-parse", "HEAD"])?;
    let changes = git(root, &["status", "--porcelain", "--untracked-files=no"])?;
    Ok(if changes.trim().is_empty() {
        commit.trim().to_owned()
    } else {
        format!("{}-dirty", commit.trim())
    })
}

fn git(root: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("git")
        .current_dir(root)
        .args(args)
        .output()
        .with_context(|| format!("running git {args:?}"))?;
    ensure!(
        output.status.success(),
        "git {args:?} failed (the image is labelled with its git revision: build it from a \
         clone): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Tars `dir`'s contents into `file` the same way every time: sorted names,
/// one time, root owner, normalised modes, no access or change times.
fn reproducible_tar(file: &Path, dir: &Path, epoch: u64) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    run::status(
        Command::new("tar")
            .arg("--create")
            .arg("--file")
            .arg(file)
            .arg("--directory")
            .arg(dir)
            .args(["--sort=name", "--format=posix", "--numeric-owner"])
            .args(["--owner=0", "--group=0", "--mode=u=rwX,go=rX"])
            .arg(format!("--mtime=@{epoch}"))
            .arg("--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime")
            .args(entries),
    )
}

/// Paths of the files (not directories) under `dir`, relative to it, sorted.
fn files_under(dir: &Path, prefix: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let relative = prefix.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            files.extend(files_under(&entry.path(), &relative)?);
        } else {
            files.push(relative);
        }
    }
    files.sort();
    Ok(files)
}

fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    for file in files_under(from, Path::new(""))? {
        let target = to.join(&file);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(from.join(&file), &target)
            .with_context(|| format!("copying {} to {}", file.display(), to.display()))?;
    }
    Ok(())
}

fn fresh_dir(dir: &Path) -> anyhow::Result<()> {
    remove_if_present(dir)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

fn remove_if_present(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The check refuses a dynamically linked executable: this test binary
    /// (the static case is the image stage of `cargo xtask test`).
    #[test]
    fn dynamic_executable_refused() {
        let me = std::env::current_exe().unwrap();
        let err = ensure_static(&me).unwrap_err().to_string();
        assert!(
            err.contains("dynamically linked") && err.contains("ld-linux"),
            "{err}"
        );
    }

    /// `deploy/Containerfile` describes the same image for container
    /// engines; CI never builds it, so this keeps it in step.
    #[test]
    fn containerfile_matches_xtask() {
        let root = run::workspace_root();
        let text = std::fs::read_to_string(root.join("deploy/Containerfile")).unwrap();
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        let ports: Vec<String> = PORTS.iter().map(u16::to_string).collect();
        for line in [
            format!("ENTRYPOINT [\"{ENTRYPOINT}\"]"),
            format!("ENV {ENV_PATH}"),
            format!("USER {USER}"),
            format!("EXPOSE {}", ports.join(" ")),
            format!("COPY {ROOTFS_FILES}/ /"),
            format!("COPY --from=build /out/bin/ /{BIN_DIR}/"),
            format!("ARG VERSION={}", env!("CARGO_PKG_VERSION")),
        ] {
            assert!(
                lines.contains(&line.as_str()),
                "deploy/Containerfile lacks the line `{line}` (xtask/src/image.rs builds the image so)"
            );
        }
        for part in [
            // Escaped as it stands inside the shell's double quotes.
            stable_only::STATIC_RUSTFLAGS.replace('"', "\\\""),
            format!("--path {PACKAGE} "),
            format!(
                "bpf-linker --locked --version {}",
                crate::setup::BPF_LINKER_VERSION
            ),
            format!(
                "rustup toolchain link {} /usr",
                crate::ebpf_toolchain::DEBIAN_TOOLCHAIN
            ),
        ] {
            assert!(
                text.contains(&part),
                "deploy/Containerfile lacks `{part}` (what xtask builds the image with)"
            );
        }
    }
}
