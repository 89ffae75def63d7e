//! `cargo xtask image`: the agent's OCI image, built without pulling any base image.
//!
//! The agent is built as a static musl binary (`IMAGE_TARGET`, profile `IMAGE_PROFILE`; why
//! musl: `toolchain.rs`), a root filesystem is staged under `target/image/rootfs` and buildah
//! (Debian's package) commits it `FROM scratch` into an OCI archive. buildah keeps its storage
//! in `target/image/buildah` for the build only: nothing is left in the machine's container
//! storage, and parallel worktrees do not share any.
//!
//! The image is reproducible: its timestamps are the HEAD commit's, so the same binary gives
//! the same digest.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::{
    proc::{cargo, command, output, probe, run},
    tasks::target_dir,
    toolchain::{IMAGE_PROFILE, IMAGE_TARGET, STABLE},
};

/// Where the agent lives in the image (the DaemonSet's init container names it).
pub const AGENT_PATH: &str = "/usr/local/bin/clusterip-agent";
/// The image's name in the archive (`podman load` makes it `localhost/<name>:<version>`).
pub const IMAGE_NAME: &str = "clusterip-agent";
/// The CA bundle of Debian's ca-certificates, copied into the image: the agent's TLS client
/// (rustls with the platform's roots) falls back to it for an API server whose kubeconfig
/// names no CA.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Empty directories of the image: mount points of the runtime (`/proc`, `/sys`, `/dev`, `/etc`
/// for resolv.conf and hosts) and of the DaemonSet (`/host/sys/fs/cgroup`). No `/tmp`: the agent
/// writes no files, and the DaemonSet runs it with a read-only root filesystem.
const DIRS: &[&str] = &["dev", "proc", "sys", "etc/ssl/certs", "host/sys/fs/cgroup"];

/// The archive `cargo xtask image` wrote.
#[derive(Debug)]
pub struct Image {
    pub archive: PathBuf,
    /// `clusterip-agent:0.1.0`.
    pub reference: String,
    /// The manifest's digest (`sha256:...`), what a registry reports after a push (layers
    /// are compressed already, so a push does not change it).
    pub digest: String,
    pub size: u64,
}

/// The cargo arguments of the image's agent; deploy/Dockerfile runs the same command (the
/// deploy_manifests test checks it).
pub fn cargo_args() -> Vec<String> {
    [
        "build",
        "--profile",
        IMAGE_PROFILE,
        "--locked",
        "-p",
        "clusterip-agent",
        "--target",
        IMAGE_TARGET,
    ]
    .map(String::from)
    .to_vec()
}

/// The agent binary [`cargo_args`] produces.
pub fn agent_binary(root: &Path) -> PathBuf {
    target_dir(root)
        .join(IMAGE_TARGET)
        .join(IMAGE_PROFILE)
        .join("clusterip-agent")
}

/// `cargo xtask image`: `setup`, then [`build`].
pub fn image(root: &Path) -> Result<()> {
    crate::setup::setup()?;
    let image = build(root)?;
    eprintln!(
        "run it: podman load -i {archive} && podman run --rm localhost/{reference} --help \
         (README: Container image); push it: skopeo copy oci-archive:{archive} \
         docker://REGISTRY/{reference}",
        archive = image.archive.display(),
        reference = image.reference,
    );
    Ok(())
}

/// Builds the agent and the image (after `setup`); prints and returns the archive.
pub fn build(root: &Path) -> Result<Image> {
    let started = Instant::now();
    eprintln!("==> image: the agent for {IMAGE_TARGET} (profile {IMAGE_PROFILE})");
    run(cargo(STABLE).current_dir(root).args(cargo_args()))?;
    let agent = agent_binary(root);
    let elf = fs::read(&agent).with_context(|| format!("reading {}", agent.display()))?;
    if has_interpreter(&elf).with_context(|| format!("{} is not ELF64", agent.display()))? {
        bail!(
            "{} is dynamically linked: a FROM scratch image has no loader for it",
            agent.display()
        );
    }
    // Run once on the host: a binary that cannot even print its version must not be shipped.
    let version = output(command(&agent).arg("--version"))?;
    let version = version
        .split_whitespace()
        .nth(1)
        .with_context(|| format!("`clusterip-agent --version` printed {version:?}"))?
        .to_string();

    let out = target_dir(root).join("image");
    let rootfs = stage_rootfs(&out, &agent)?;
    let git = Git::read(root);
    let reference = format!("{IMAGE_NAME}:{version}");
    let archive = out.join(format!("{IMAGE_NAME}-{version}.oci.tar"));
    eprintln!("==> image: {reference} FROM scratch with buildah");
    let buildah = Buildah::new(out.join("buildah"))?;
    let ctr = buildah.output(&["from", "scratch"])?;
    let ctr = ctr.trim();
    let rootfs_src = format!("{}/", rootfs.display());
    buildah.run(&["copy", "--chown", "0:0", ctr, &rootfs_src, "/"])?;
    let entrypoint = format!("[\"{AGENT_PATH}\"]");
    let mut config: Vec<String> = [
        "config",
        "--entrypoint",
        &entrypoint,
        "--cmd",
        "[\"run\"]",
        "--workingdir",
        "/",
        "--os",
        "linux",
        "--arch",
        "amd64",
    ]
    .map(String::from)
    .to_vec();
    for (key, value) in labels(&version, &git) {
        config.push("--label".into());
        config.push(format!("{key}={value}"));
    }
    config.push(ctr.to_string());
    buildah.run(&config.iter().map(String::as_str).collect::<Vec<_>>())?;
    if archive.exists() {
        fs::remove_file(&archive).with_context(|| format!("removing {}", archive.display()))?;
    }
    buildah.run(&[
        "commit",
        "--format",
        "oci",
        // gzip layers, as registries serve them (buildah's default is uncompressed).
        "--disable-compression=false",
        "--timestamp",
        &git.commit_time.to_string(),
        "--rm",
        "--quiet",
        ctr,
        &format!("oci-archive:{}:{reference}", archive.display()),
    ])?;
    drop(buildah);

    // buildah 1.28 writes neither a digest nor an id file for an archive: the manifest's
    // digest is the first of the archive's index.json, the image id (the config's digest,
    // what `podman images` shows) the first of the manifest.
    let read = |name: &str| output(command("tar").arg("-xOf").arg(&archive).arg(name));
    let index = read("index.json")?;
    let digest = first_digest(&index)
        .with_context(|| format!("no manifest digest in the archive's index.json: {index}"))?;
    let manifest = read(&format!(
        "blobs/sha256/{}",
        digest.trim_start_matches("sha256:")
    ))?;
    let id = first_digest(&manifest)
        .with_context(|| format!("no config digest in the manifest: {manifest}"))?;
    let size = fs::metadata(&archive)
        .with_context(|| format!("{} was not written", archive.display()))?
        .len();
    let image = Image {
        archive,
        reference,
        digest,
        size,
    };
    println!(
        "image: {} ({}), {:.1} MiB, digest {} (image id {id})",
        image.archive.display(),
        image.reference,
        image.size as f64 / (1024.0 * 1024.0),
        image.digest
    );
    eprintln!(
        "==> image: built in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(image)
}

/// The first `"digest":"sha256:<hex>"` of an OCI JSON document: an index's (first) manifest, a
/// manifest's config.
fn first_digest(json: &str) -> Option<String> {
    let start = json.find("\"digest\"")?;
    let rest = json[start..].split_once(':')?.1.trim_start();
    let value = rest.strip_prefix('"')?.split('"').next()?;
    let hex = value.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| value.to_string())
}

/// OCI labels: what, which version, from which source and revision.
fn labels(version: &str, git: &Git) -> Vec<(&'static str, String)> {
    let mut labels = vec![
        ("org.opencontainers.image.title", IMAGE_NAME.to_string()),
        (
            "org.opencontainers.image.description",
            "clusterip node agent: Kubernetes ClusterIP Services in eBPF".to_string(),
        ),
        ("org.opencontainers.image.version", version.to_string()),
        (
            "org.opencontainers.image.licenses",
            "Apache-2.0".to_string(),
        ),
        ("org.opencontainers.image.revision", git.revision.clone()),
    ];
    // The repository's URL when the checkout has one; else the revision is all there is to
    // trace the image back to its source.
    let source = git
        .origin
        .clone()
        .unwrap_or_else(|| format!("clusterip@{}", git.revision));
    labels.push(("org.opencontainers.image.source", source));
    labels
}

/// `target/image/rootfs`: the image's whole file system, staged afresh.
fn stage_rootfs(out: &Path, agent: &Path) -> Result<PathBuf> {
    let rootfs = out.join("rootfs");
    if rootfs.exists() {
        fs::remove_dir_all(&rootfs).with_context(|| format!("removing {}", rootfs.display()))?;
    }
    for dir in DIRS {
        let dir = rootfs.join(dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let bin = rootfs.join(AGENT_PATH.trim_start_matches('/'));
    let bin_dir = bin.parent().context("the agent's path has a directory")?;
    fs::create_dir_all(bin_dir).with_context(|| format!("creating {}", bin_dir.display()))?;
    fs::copy(agent, &bin).with_context(|| format!("copying {}", agent.display()))?;
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755))?;
    let ca = rootfs.join(CA_BUNDLE.trim_start_matches('/'));
    fs::copy(CA_BUNDLE, &ca).with_context(|| {
        format!("copying {CA_BUNDLE} (Debian's ca-certificates; `cargo xtask setup` installs it)")
    })?;
    fs::set_permissions(&ca, fs::Permissions::from_mode(0o644))?;
    // Directories 0755 whatever the umask.
    let mut dirs = vec![rootfs.clone()];
    while let Some(dir) = dirs.pop() {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                dirs.push(entry.path());
            }
        }
    }
    Ok(rootfs)
}

/// Whether an ELF64 little-endian file has a PT_INTERP program header (needs a dynamic
/// loader). `None` when it is not such a file.
pub fn has_interpreter(elf: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let u16_at = |at: usize| Some(u16::from_le_bytes(elf.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(elf.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(elf.get(at..at + 8)?.try_into().ok()?));
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    for i in 0..phnum {
        if u32_at(phoff.checked_add(i.checked_mul(phentsize)?)?)? == PT_INTERP {
            return Some(true);
        }
    }
    Some(false)
}

/// What the image says about its source.
struct Git {
    /// HEAD's commit, `-dirty` when the work tree has changes; `unknown` outside git.
    revision: String,
    /// HEAD's commit time (the image's timestamps), 0 outside git.
    commit_time: u64,
    origin: Option<String>,
}

impl Git {
    fn read(root: &Path) -> Self {
        let git = |args: &[&str]| -> Option<String> {
            probe(command("git").current_dir(root).args(args))
                .ok()
                .flatten()
                .map(|s| s.trim().to_string())
        };
        let revision = match git(&["rev-parse", "HEAD"]) {
            Some(head) => match git(&["status", "--porcelain"]) {
                Some(status) if status.is_empty() => head,
                _ => format!("{head}-dirty"),
            },
            None => "unknown".to_string(),
        };
        let commit_time = git(&["log", "-1", "--format=%ct"])
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        let origin = git(&["remote", "get-url", "origin"]).filter(|url| !url.is_empty());
        Self {
            revision,
            commit_time,
            origin,
        }
    }
}

/// buildah with storage of its own under `dir`, removed (with any working container) on drop.
struct Buildah {
    dir: PathBuf,
}

impl Buildah {
    fn new(dir: PathBuf) -> Result<Self> {
        if dir.exists() {
            // Left by an interrupted build.
            fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self { dir })
    }

    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = command("buildah");
        // vfs: plain directories, no overlay mounts to leave behind; the image is one layer.
        cmd.arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .args(["--storage-driver", "vfs"])
            .args(args);
        cmd
    }

    fn run(&self, args: &[&str]) -> Result<()> {
        run(&mut self.command(args))
    }

    fn output(&self, args: &[&str]) -> Result<String> {
        output(&mut self.command(args))
    }
}

impl Drop for Buildah {
    fn drop(&mut self) {
        if let Err(e) = output(&mut self.command(&["rm", "--all"])) {
            eprintln!("image: buildah rm --all: {e:#}");
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("image: removing {}: {e}", self.dir.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_interpreter_of_a_dynamic_binary() {
        // This test binary is a dynamically linked glibc program.
        let exe = std::env::current_exe().expect("current_exe");
        let elf = fs::read(exe).expect("readable");
        assert_eq!(has_interpreter(&elf), Some(true));
        assert_eq!(has_interpreter(b"#!/bin/sh\n"), None);
        assert_eq!(has_interpreter(&elf[..64]), None);
    }

    #[test]
    fn the_agent_is_built_for_the_image_target_and_profile() {
        assert_eq!(
            cargo_args().join(" "),
            format!(
                "build --profile {IMAGE_PROFILE} --locked -p clusterip-agent --target {IMAGE_TARGET}"
            )
        );
        assert!(
            agent_binary(Path::new("/r"))
                .ends_with(format!("{IMAGE_TARGET}/{IMAGE_PROFILE}/clusterip-agent"))
        );
    }

    #[test]
    fn reads_the_first_digest_of_an_oci_document() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{digest}","size":496}}]}}"#
        );
        assert_eq!(first_digest(&index), Some(digest));
        assert_eq!(first_digest(r#"{"digest":"sha256:short"}"#), None);
        assert_eq!(first_digest("{}"), None);
    }

    #[test]
    fn labels_name_version_and_source() {
        let git = Git {
            revision: "abc".into(),
            commit_time: 1,
            origin: None,
        };
        let labels: std::collections::BTreeMap<_, _> = labels("1.2.3", &git).into_iter().collect();
        assert_eq!(labels["org.opencontainers.image.version"], "1.2.3");
        assert_eq!(labels["org.opencontainers.image.revision"], "abc");
        assert_eq!(labels["org.opencontainers.image.source"], "clusterip@abc");
    }
}
