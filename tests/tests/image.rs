//! The agent's container image (`cargo xtask image`), run the way deploy/daemonset.yaml runs
//! it: its init container mounts bpffs for the host without a shell, and the agent container
//! (host network and PID namespace, the host's bpffs and cgroup v2 mounted, the DaemonSet's
//! capabilities and memory limit, read-only root) serves a VIP to a client in a test cgroup.
//!
//! Runtime: podman with runc behind `cip-runc`, which clamps the OCI spec to what this
//! machine's root may set (`clusterip_tests::container` says what fails without it); the image
//! runs as an image, from its own entrypoint, not unpacked and run under unshare. `cargo xtask
//! test` builds the image and passes it in `CLUSTERIP_IMAGE`.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clusterip_tests::agent::DumpEntry;
use clusterip_tests::container::{Podman, SharedMount, is_bpffs};
use clusterip_tests::env::CGROUP2;
use clusterip_tests::fixture::{Fixture, TCP_PORT};
use clusterip_tests::manifests::{Service, tcp};
use clusterip_tests::netns::pod_ip;
use clusterip_tests::process::assert_spread_via;
use clusterip_tests::{ImageEnv, require_image, uniq};
use serde_json::Value;

/// Where the image keeps the agent (its entrypoint).
const AGENT_PATH: &str = "/usr/local/bin/clusterip-agent";
/// Where the agent container sees the test's manifests.
const MANIFESTS_IN_CONTAINER: &str = "/etc/clusterip/manifests";

/// A podman of the test's own with the image loaded: (podman, image name).
fn podman_with_image(img: &ImageEnv) -> (Podman, String) {
    let podman = Podman::new(Path::new(img.env.bins.runc_clamp)).unwrap();
    let image = podman.load(&img.archive).unwrap();
    let version = podman.output(&["--version"]).unwrap();
    let runc = std::process::Command::new("runc")
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    // Straight to stderr, not through eprintln! (which the test harness captures): which
    // runtime ran the image shows in every run's output, passing or not.
    let said = writeln!(
        std::io::stderr(),
        "image test: runtime {} with {runc} behind cip-runc (a container from the image, not \
         an unpacked root file system under unshare); image {image} from {}",
        version.trim(),
        img.archive.display()
    );
    if let Err(e) = said {
        eprintln!("stderr: {e}");
    }
    (podman, image)
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// What the test takes from deploy/daemonset.yaml, so that it runs what a cluster runs.
struct DaemonSet {
    /// The init container's command, the mount path of its Bidirectional bpffs volume and its
    /// memory limit (bytes).
    init_command: Vec<String>,
    init_bpffs: String,
    init_memory: u64,
    /// The agent container's added capabilities and memory limit (bytes).
    agent_caps: Vec<String>,
    agent_memory: u64,
}

impl DaemonSet {
    fn read() -> Self {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/daemonset.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let ds: Value = serde_saphyr::from_str(&text).unwrap();
        let pod = &ds["spec"]["template"]["spec"];
        let init = pod["initContainers"]
            .as_array()
            .and_then(|s| s.iter().find(|c| c["name"] == "mount-bpffs"))
            .expect("the mount-bpffs init container");
        let list = |v: &Value| -> Vec<String> {
            v.as_array()
                .expect("a list")
                .iter()
                .map(|s| s.as_str().expect("a string").to_string())
                .collect()
        };
        let init_bpffs = init["volumeMounts"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["mountPropagation"] == "Bidirectional"))
            .and_then(|m| m["mountPath"].as_str())
            .expect("a Bidirectional volume in the init container")
            .to_string();
        let agent = pod["containers"]
            .as_array()
            .and_then(|s| s.iter().find(|c| c["name"] == "agent"))
            .expect("the agent container");
        let memory = |c: &Value| {
            quantity_bytes(
                c["resources"]["limits"]["memory"]
                    .as_str()
                    .expect("a memory limit"),
            )
        };
        Self {
            init_command: list(&init["command"]),
            init_bpffs,
            init_memory: memory(init),
            agent_caps: list(&agent["securityContext"]["capabilities"]["add"]),
            agent_memory: memory(agent),
        }
    }
}

/// `128Mi` and the like, in bytes.
fn quantity_bytes(q: &str) -> u64 {
    let (digits, unit) = q.split_at(q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len()));
    let n: u64 = digits.parse().unwrap_or_else(|_| panic!("quantity {q:?}"));
    n * match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => panic!("quantity {q:?}: unit {unit:?} not handled here"),
    }
}

/// The image is what the DaemonSet expects: the agent as entrypoint with `run` as CMD, labels
/// naming version and source, a minimal layout without /tmp, and a binary that runs with
/// nothing else in the image (static).
#[test]
fn image_is_the_static_agent_from_scratch() {
    let img = require_image!();
    let (podman, image) = podman_with_image(&img);

    let inspect = podman
        .output(&["image", "inspect", "--format", "json", &image])
        .unwrap();
    let inspect: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    let config = &inspect[0]["Config"];
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!([AGENT_PATH]),
        "{config}"
    );
    assert_eq!(config["Cmd"], serde_json::json!(["run"]), "{config}");
    let labels = &config["Labels"];
    let version = labels["org.opencontainers.image.version"]
        .as_str()
        .unwrap_or_else(|| panic!("a version label: {labels}"));
    assert!(
        labels["org.opencontainers.image.source"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "a source label: {labels}"
    );
    assert_eq!(inspect[0]["Os"], "linux");

    // The layout, from the image's own file system.
    let root = PathBuf::from(podman.output(&["image", "mount", &image]).unwrap().trim());
    let mut found = BTreeSet::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let rel = entry.path().strip_prefix(&root).unwrap().to_path_buf();
            if entry.file_type().unwrap().is_dir() {
                dirs.push(entry.path());
            }
            found.insert(format!("/{}", rel.display()));
        }
    }
    podman.output(&["image", "unmount", &image]).unwrap();
    eprintln!("image layout: {found:?}");
    for want in [
        AGENT_PATH,
        "/etc/ssl/certs/ca-certificates.crt",
        "/proc",
        "/sys",
        "/dev",
    ] {
        assert!(found.contains(want), "{want} missing from {found:?}");
    }
    assert!(!found.contains("/tmp"), "no /tmp: {found:?}");
    assert!(!found.contains("/bin"), "no shell, no tools: {found:?}");
    // The agent plus a few directories and the CA bundle: nothing else came along.
    assert!(found.len() < 20, "a minimal layout: {found:?}");

    // The entrypoint runs in the image alone, and is the version the label says.
    let ran = podman
        .run_to_end(
            &format!("cip-version-{}", uniq()),
            &strings(&["--network", "none"]),
            &image,
            &strings(&["--version"]),
            Duration::from_secs(60),
        )
        .unwrap();
    assert!(ran.status.success(), "{ran:?}");
    assert!(
        ran.lines
            .iter()
            .any(|l| l == &format!("out: clusterip-agent {version}")),
        "{ran:?}"
    );
}

/// The init container, as the kubelet runs it (privileged, the volume Bidirectional, its
/// command from the manifest), mounts a bpffs that the host sees, and a second run finds it
/// there. The "host's /sys/fs/bpf" is a shared mount of the test's own.
#[test]
fn init_container_mounts_bpffs_for_the_host_without_a_shell() {
    let img = require_image!();
    let (podman, image) = podman_with_image(&img);
    let ds = DaemonSet::read();
    let host = SharedMount::new().unwrap();
    assert!(!is_bpffs(host.path()).unwrap());

    let (entrypoint, args) = ds.init_command.split_first().expect("a command");
    let options = vec![
        "--privileged".to_string(),
        "--memory".into(),
        ds.init_memory.to_string(),
        "--network".into(),
        "host".into(),
        "--pid".into(),
        "host".into(),
        "--volume".into(),
        // Bidirectional is rshared for the runtime.
        format!("{}:{}:rshared", host.path().display(), ds.init_bpffs),
        "--entrypoint".into(),
        entrypoint.clone(),
    ];
    let run = |what: &str| {
        let ran = podman
            .run_to_end(
                &format!("cip-init-{}", uniq()),
                &options,
                &image,
                args,
                Duration::from_secs(60),
            )
            .unwrap();
        assert!(ran.status.success(), "{what}: {ran:?}");
        ran
    };
    let first = run("first run");
    assert!(
        first.lines.iter().any(|l| l.contains("mounted bpffs at")),
        "{first:?}"
    );
    assert!(
        is_bpffs(host.path()).unwrap(),
        "the bpffs the init container mounted is the host's: {first:?}"
    );
    let second = run("second run");
    assert!(
        second
            .lines
            .iter()
            .any(|l| l.contains("already a bpf filesystem")),
        "{second:?}"
    );
}

/// The agent container serves a VIP: the datapath loads under the DaemonSet's memory limit
/// (the maps are charged to the container), the client in the test cgroup reaches both
/// backends through it, the pins are in the host's bpffs, /readyz answers on the host's
/// loopback, SIGTERM exits 0 and the VIP keeps working after.
#[test]
fn agent_container_serves_a_vip() {
    let img = require_image!();
    let (podman, image) = podman_with_image(&img);
    let ds = DaemonSet::read();
    let mut fx = Fixture::new(img.env.clone(), 2).unwrap();
    fx.standard_backends(2).unwrap();
    let svc = Service::new("web", "10.96.0.10").port(tcp("http", 80, TCP_PORT));
    let slice = svc.slice("a").ready((0..2).map(|i| pod_ip(i, false)));
    fx.manifests
        .write("web.yaml", &[svc.to_value(), slice.to_value()])
        .unwrap();

    let bounding = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    eprintln!(
        "capabilities {:?} from deploy/daemonset.yaml (bounding set here {bounding}: \
         cip-runc drops what it lacks, e.g. SYS_RESOURCE, which matters before 5.11 only)",
        ds.agent_caps
    );
    let cgroup = fx
        .cgroup
        .path()
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap()
        .to_string();
    let options = vec![
        // hostNetwork, hostPID.
        "--network".to_string(),
        "host".into(),
        "--pid".into(),
        "host".into(),
        // readOnlyRootFilesystem: nothing writable, no /tmp tmpfs either.
        "--read-only".into(),
        "--read-only-tmpfs=false".into(),
        "--cap-drop".into(),
        "ALL".into(),
        "--cap-add".into(),
        ds.agent_caps.join(","),
        "--memory".into(),
        ds.agent_memory.to_string(),
        // The host's bpffs, where the pins outlive the container. The DaemonSet mounts it
        // HostToContainer, which needs the host's /sys/fs/bpf to be a shared mount; it is
        // private here and is left so (the init container test covers propagation). The
        // pins land in the same bpffs either way.
        "--volume".into(),
        "/sys/fs/bpf:/sys/fs/bpf".into(),
        "--volume".into(),
        format!("{CGROUP2}:/host/sys/fs/cgroup:ro"),
        "--volume".into(),
        format!(
            "{}:{MANIFESTS_IN_CONTAINER}:ro",
            fx.manifests.dir().display()
        ),
        "--env".into(),
        "NODE_NAME=node-a".into(),
        "--env".into(),
        format!("RUST_LOG={}", clusterip_tests::agent::DEFAULT_RUST_LOG),
        "--env".into(),
        "NO_COLOR=1".into(),
    ];
    let args = vec![
        "run".to_string(),
        "--manifests".into(),
        MANIFESTS_IN_CONTAINER.into(),
        // The test's cgroup, not the root the DaemonSet names.
        "--cgroup".into(),
        format!("/host/sys/fs/cgroup/{cgroup}"),
        "--bpffs".into(),
        fx.pins.path().display().to_string(),
        "--metrics-addr".into(),
        "127.0.0.1:0".into(),
    ];
    let mut agent = podman
        .start(&format!("cip-agent-{}", uniq()), &options, &image, &args)
        .unwrap();
    agent
        .wait_line(&["synced"], Duration::from_secs(60))
        .unwrap();

    let vip: SocketAddr = "10.96.0.10:80".parse().unwrap();
    let replies = fx.client().tcp(vip, 30).unwrap();
    assert_spread_via(&replies, "10.96.0.10:80", "10.200.0.1", &["be-0", "be-1"]);

    // The pins are in the host's bpffs: the host's own agent binary reads them back.
    assert_eq!(
        fx.dump().unwrap(),
        [DumpEntry::new(
            "10.96.0.10",
            80,
            "TCP",
            &["10.200.0.11:8080", "10.200.0.12:8080"],
            None
        )]
    );

    // The probes' endpoint, on the host's loopback (host network).
    let line = agent
        .wait_line(&["serving /metrics"], Duration::from_secs(5))
        .unwrap();
    let metrics: SocketAddr = line
        .split("addr=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    assert_eq!(http_status(metrics, "/readyz"), 200);

    // SIGTERM (what the kubelet sends): exit 0, and the datapath stays.
    let code = agent.stop(Duration::from_secs(10)).unwrap();
    assert_eq!(code, 0, "exit code after SIGTERM: {:#?}", agent.lines());
    let replies = fx.client().tcp(vip, 10).unwrap();
    assert_spread_via(&replies, "10.96.0.10:80", "10.200.0.1", &["be-0", "be-1"]);
}

/// GET `path` on `addr`: the status code.
fn http_status(addr: SocketAddr, path: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}
