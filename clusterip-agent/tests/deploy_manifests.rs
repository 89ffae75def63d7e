//! The manifests under deploy/: every document parses into its Kubernetes type with nothing
//! left over (k8s-openapi ignores unknown fields, so each object is re-serialized and compared
//! with what the file says: a misspelt or misplaced field fails with its path), and the
//! invariants the agent relies on hold (RBAC, host network, mounts, probes, CLI arguments).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use clap::Parser;
use clusterip_agent::{
    cli::{Cli, Command, RunArgs},
    metrics,
};
use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{Container, HTTPGetAction, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("deploy")
}

/// One YAML document of a file under deploy/, as JSON.
struct Doc {
    file: String,
    index: usize,
    json: Value,
}

impl Doc {
    fn what(&self) -> String {
        format!("{} (document {})", self.file, self.index)
    }

    fn kind(&self) -> &str {
        self.json
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
}

fn yaml_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(deploy_dir())
        .expect("deploy/ exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
}

fn documents() -> Vec<Doc> {
    let mut docs = Vec::new();
    for path in yaml_files() {
        let text = fs::read_to_string(&path).expect("readable");
        let file = path
            .file_name()
            .expect("a name")
            .to_string_lossy()
            .into_owned();
        // Empty documents (a trailing `---`) are skipped by serde-saphyr.
        let values: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|e| panic!("{file}: invalid YAML: {e}"));
        for (index, json) in values.into_iter().enumerate() {
            docs.push(Doc {
                file: file.clone(),
                index,
                json,
            });
        }
    }
    docs
}

/// Paths where `got` differs from `want`: a field of `want` that `got` lacks (dropped as
/// unknown), or a value that changed.
fn diff(want: &Value, got: &Value, path: &str, out: &mut Vec<String>) {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, wv) in w {
                let p = format!("{path}.{k}");
                match g.get(k) {
                    Some(gv) => diff(wv, gv, &p, out),
                    None => out.push(format!("{p}: unknown field (not in the Kubernetes type)")),
                }
            }
            for k in g.keys().filter(|k| !w.contains_key(*k)) {
                out.push(format!("{path}.{k}: added by the type"));
            }
        }
        (Value::Array(w), Value::Array(g)) if w.len() == g.len() => {
            for (i, (wv, gv)) in w.iter().zip(g).enumerate() {
                diff(wv, gv, &format!("{path}[{i}]"), out);
            }
        }
        _ if want == got => {}
        _ => out.push(format!("{path}: {want} became {got}")),
    }
}

/// The typed object, or every path the type does not account for.
fn strict<T: DeserializeOwned + Serialize>(json: &Value) -> Result<T, Vec<String>> {
    let typed: T = serde_json::from_value(json.clone()).map_err(|e| vec![format!("$: {e}")])?;
    let back = serde_json::to_value(&typed).map_err(|e| vec![format!("$: {e}")])?;
    let mut problems = Vec::new();
    diff(json, &back, "$", &mut problems);
    if problems.is_empty() {
        Ok(typed)
    } else {
        Err(problems)
    }
}

fn parse<T: DeserializeOwned + Serialize>(doc: &Doc) -> T {
    strict(&doc.json).unwrap_or_else(|problems| {
        panic!(
            "{}: {}:\n  {}",
            doc.what(),
            doc.kind(),
            problems.join("\n  ")
        )
    })
}

#[derive(Default)]
struct Objects {
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    daemonsets: Vec<DaemonSet>,
    /// file -> its `resources`
    kustomizations: Vec<(String, Vec<String>)>,
}

fn objects() -> Objects {
    let mut o = Objects::default();
    for doc in documents() {
        let api = doc
            .json
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        match (api, doc.kind()) {
            ("v1", "ServiceAccount") => o.service_accounts.push(parse(&doc)),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => o.cluster_roles.push(parse(&doc)),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => o.bindings.push(parse(&doc)),
            ("apps/v1", "DaemonSet") => o.daemonsets.push(parse(&doc)),
            ("kustomize.config.k8s.io/v1beta1", "Kustomization") => {
                let map = doc.json.as_object().expect("a mapping");
                let unknown: Vec<&String> = map
                    .keys()
                    .filter(|k| {
                        !["apiVersion", "kind", "resources", "images"].contains(&k.as_str())
                    })
                    .collect();
                assert!(
                    unknown.is_empty(),
                    "{}: unexpected fields {unknown:?}",
                    doc.what()
                );
                let resources = map
                    .get("resources")
                    .and_then(Value::as_array)
                    .expect("resources: a list")
                    .iter()
                    .map(|r| r.as_str().expect("a resource path").to_string())
                    .collect();
                o.kustomizations.push((doc.file.clone(), resources));
            }
            (api, kind) => panic!(
                "{}: apiVersion {api:?} kind {kind:?} is not one this test knows; add it here",
                doc.what()
            ),
        }
    }
    o
}

#[test]
fn every_document_is_a_known_kind_with_no_unknown_field() {
    let o = objects();
    assert_eq!(o.service_accounts.len(), 1);
    assert_eq!(o.cluster_roles.len(), 1);
    assert_eq!(o.bindings.len(), 1);
    assert_eq!(o.daemonsets.len(), 1);
    assert_eq!(o.kustomizations.len(), 1);
}

#[test]
fn the_strict_check_catches_typos_and_misplaced_fields() {
    let ds = documents()
        .into_iter()
        .find(|d| d.kind() == "DaemonSet")
        .expect("a DaemonSet");
    assert!(strict::<DaemonSet>(&ds.json).is_ok());

    let mut typo = ds.json.clone();
    typo["spec"]["template"]["spec"]["hostNetwrok"] = Value::Bool(true);
    let problems = strict::<DaemonSet>(&typo).expect_err("a typo is caught");
    assert_eq!(
        problems,
        ["$.spec.template.spec.hostNetwrok: unknown field (not in the Kubernetes type)"]
    );

    // A real field at the wrong level.
    let mut misplaced = ds.json.clone();
    misplaced["spec"]["template"]["spec"]["containers"][0]["hostNetwork"] = Value::Bool(true);
    let problems = strict::<DaemonSet>(&misplaced).expect_err("a misplaced field is caught");
    assert!(
        problems[0].starts_with("$.spec.template.spec.containers[0].hostNetwork"),
        "{problems:?}"
    );

    // A wrong kind or type fails to deserialize at all.
    let mut wrong_type = ds.json.clone();
    wrong_type["spec"]["template"]["spec"]["hostNetwork"] = Value::String("yes".into());
    assert!(strict::<DaemonSet>(&wrong_type).is_err());
    assert!(strict::<ClusterRole>(&ds.json).is_err());
}

#[test]
fn kustomization_lists_exactly_the_other_manifests() {
    let o = objects();
    let (file, resources) = &o.kustomizations[0];
    let listed: BTreeSet<&str> = resources.iter().map(String::as_str).collect();
    assert_eq!(listed.len(), resources.len(), "{file}: duplicates");
    let files: Vec<String> = yaml_files()
        .iter()
        .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
        .filter(|f| f != file)
        .collect();
    let on_disk: BTreeSet<&str> = files.iter().map(String::as_str).collect();
    assert_eq!(listed, on_disk, "{file} must list every other manifest");
}

#[test]
fn rbac_grants_exactly_what_the_agent_uses() {
    let o = objects();
    let role = &o.cluster_roles[0];
    let mut granted = BTreeSet::new();
    for rule in role.rules.as_deref().unwrap_or_default() {
        assert!(rule.resource_names.is_none(), "{rule:?}");
        assert!(rule.non_resource_urls.is_none(), "{rule:?}");
        for group in rule.api_groups.as_deref().unwrap_or_default() {
            for resource in rule.resources.as_deref().unwrap_or_default() {
                for verb in &rule.verbs {
                    assert!(
                        granted.insert((group.as_str(), resource.as_str(), verb.as_str())),
                        "granted twice: {group} {resource} {verb}"
                    );
                }
            }
        }
    }
    let want: BTreeSet<(&str, &str, &str)> = [
        ("", "services", "list"),
        ("", "services", "watch"),
        ("discovery.k8s.io", "endpointslices", "list"),
        ("discovery.k8s.io", "endpointslices", "watch"),
        ("", "nodes", "get"),
        ("", "nodes", "list"),
        ("", "nodes", "watch"),
    ]
    .into();
    assert_eq!(granted, want);

    let sa = &o.service_accounts[0];
    let binding = &o.bindings[0];
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(
        binding.role_ref.api_group.as_deref(),
        Some("rbac.authorization.k8s.io")
    );
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let subjects = binding.subjects.as_deref().unwrap_or_default();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(&subjects[0].name), sa.metadata.name.as_ref());
    assert_eq!(subjects[0].namespace, sa.metadata.namespace);
    assert_eq!(sa.metadata.namespace.as_deref(), Some("kube-system"));
}

fn run_args(container: &Container) -> RunArgs {
    let mut argv = vec!["clusterip-agent".to_string()];
    argv.extend(container.args.iter().flatten().cloned());
    match Cli::try_parse_from(&argv) {
        Ok(Cli {
            command: Command::Run(run),
        }) => run,
        Ok(other) => panic!("{argv:?} is not `run`: {other:?}"),
        Err(e) => panic!("the agent rejects {argv:?}:\n{e}"),
    }
}

fn env_value<'a>(
    container: &'a Container,
    name: &str,
) -> Option<&'a k8s_openapi::api::core::v1::EnvVar> {
    container.env.iter().flatten().find(|e| e.name == name)
}

/// The port a probe's `port` names, through the container's named ports.
fn probe_port(container: &Container, action: &HTTPGetAction) -> u16 {
    let port = match &action.port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => {
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .unwrap_or_else(|| panic!("probe port {name:?} is not a named container port"))
                .container_port
        }
    };
    u16::try_from(port).expect("a TCP port")
}

#[test]
fn daemonset_runs_the_agent_as_the_datapath_needs() {
    let o = objects();
    let ds = &o.daemonsets[0];
    assert_eq!(ds.metadata.namespace.as_deref(), Some("kube-system"));
    let spec = &ds.spec;
    let template_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let selector = spec.selector.match_labels.clone().unwrap_or_default();
    assert!(!selector.is_empty());
    assert!(
        selector
            .iter()
            .all(|(k, v)| template_labels.get(k) == Some(v)),
        "the selector must match the template's labels"
    );

    let strategy = spec.update_strategy.as_ref().expect("updateStrategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    assert_eq!(
        strategy
            .rolling_update
            .as_ref()
            .and_then(|r| r.max_unavailable.clone()),
        Some(IntOrString::Int(1))
    );

    let pod = spec.template.spec.as_ref().expect("pod spec");
    assert_eq!(
        pod.service_account_name, o.service_accounts[0].metadata.name,
        "runs as the bound ServiceAccount"
    );
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert!(pod.termination_grace_period_seconds.is_some());
    assert!(
        pod.tolerations
            .iter()
            .flatten()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "tolerates every taint"
    );

    // The image's entrypoint is the agent: other containers must say what they run, and the
    // image (FROM scratch) has nothing but the agent to run: no shell, no mount(8).
    let entrypoint = dockerfile_entrypoint();
    let mut mounts_bpffs = false;
    for init in pod.init_containers.iter().flatten() {
        let command = init
            .command
            .as_deref()
            .unwrap_or_else(|| panic!("init container {} has no command", init.name));
        assert_eq!(
            command.first(),
            Some(&entrypoint),
            "init container {}: the image has only the agent to run",
            init.name
        );
        let argv: Vec<String> = command
            .iter()
            .chain(init.args.iter().flatten())
            .cloned()
            .collect();
        let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| {
            panic!(
                "init container {}: the agent rejects {argv:?}:\n{e}",
                init.name
            )
        });
        if let Command::MountBpffs(args) = cli.command {
            // It mounts where the host's bpffs volume is, and that mount propagates back.
            let mount = init
                .volume_mounts
                .iter()
                .flatten()
                .find(|m| Path::new(&m.mount_path) == args.dir)
                .unwrap_or_else(|| {
                    panic!(
                        "{}: mounts bpffs at {}, which is no volume",
                        init.name,
                        args.dir.display()
                    )
                });
            assert_eq!(
                mount.mount_propagation.as_deref(),
                Some("Bidirectional"),
                "{}: a bpffs mounted in the container must be the host's",
                init.name
            );
            mounts_bpffs = true;
        }
    }
    assert!(
        mounts_bpffs,
        "an init container runs `clusterip-agent mount-bpffs`"
    );

    let agent = pod
        .containers
        .iter()
        .find(|c| c.args.as_ref().and_then(|a| a.first()).map(String::as_str) == Some("run"))
        .expect("a container running `clusterip-agent run`");
    let run = run_args(agent);
    assert!(
        run.source.manifests.is_none(),
        "the Kubernetes API is the source"
    );
    assert!(run.source.kubeconfig.is_none(), "in-cluster configuration");

    // NODE_NAME from the downward API.
    let node_name = env_value(agent, "NODE_NAME").expect("NODE_NAME");
    let field = node_name
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .expect("NODE_NAME from a fieldRef");
    assert_eq!(field.field_path, "spec.nodeName");

    // The API server's address, given literally: not the `kubernetes` Service VIP.
    let host = env_value(agent, "KUBERNETES_SERVICE_HOST")
        .and_then(|e| e.value.as_deref())
        .expect("KUBERNETES_SERVICE_HOST set literally");
    assert!(!host.is_empty());
    env_value(agent, "KUBERNETES_SERVICE_PORT")
        .and_then(|e| e.value.as_deref())
        .expect("KUBERNETES_SERVICE_PORT set literally")
        .parse::<u16>()
        .expect("KUBERNETES_SERVICE_PORT is a port");

    // Probes on the metrics server, reachable where it listens.
    let metrics_addr: SocketAddr = metrics::parse_addr(&run.metrics_addr)
        .expect("a valid --metrics-addr")
        .expect("metrics enabled: the probes need them");
    for (probe, path) in [
        (agent.liveness_probe.as_ref(), "/healthz"),
        (agent.readiness_probe.as_ref(), "/readyz"),
    ] {
        let action = probe
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("an httpGet probe on {path}"));
        assert_eq!(action.path.as_deref(), Some(path));
        assert_eq!(
            probe_port(agent, action),
            metrics_addr.port(),
            "{path}: not the metrics port"
        );
        assert!(
            matches!(action.scheme.as_deref(), None | Some("HTTP")),
            "{path}: plain HTTP"
        );
        match action.host.as_deref() {
            // The kubelet probes the pod IP, which is the node's on the host network.
            None => assert!(
                metrics_addr.ip().is_unspecified(),
                "{path}: the server listens on {metrics_addr} only: set the probe's host"
            ),
            Some(host) => assert!(
                metrics_addr.ip().is_unspecified()
                    || host.parse::<std::net::IpAddr>().ok() == Some(metrics_addr.ip()),
                "{path}: probes {host} but the server listens on {metrics_addr}"
            ),
        }
    }

    // Memory limit: the eBPF maps (~160 MiB, charged to the container's memory cgroup on
    // kernels >= 5.11) and the agent (~76 MiB at 10,000 services) must fit; tests/tests/image.rs
    // loads the datapath under this very limit.
    let limits = agent
        .resources
        .as_ref()
        .and_then(|r| r.limits.clone())
        .unwrap_or_default();
    // Derived in deploy/README.md ("Memory"); tests/tests/memory_limit.rs runs the agent under
    // exactly this limit.
    assert_eq!(limits.get("memory").map(|q| q.0.as_str()), Some("192Mi"));
    assert!(
        agent
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .is_some_and(|r| r.contains_key("memory") && r.contains_key("cpu"))
    );

    // Privileges: privileged, or the capabilities the datapath needs.
    let sc = agent.security_context.as_ref().expect("securityContext");
    if sc.privileged != Some(true) {
        let added: BTreeSet<&str> = sc
            .capabilities
            .as_ref()
            .and_then(|c| c.add.as_ref())
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        for cap in ["BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN"] {
            assert!(added.contains(cap), "missing capability {cap}: {added:?}");
        }
    }

    // Rules the API server validates, which parsing does not catch.
    for c in pod.init_containers.iter().flatten().chain(&pod.containers) {
        if let Some(sc) = &c.security_context
            && sc.allow_privilege_escalation == Some(false)
        {
            let sys_admin = sc
                .capabilities
                .as_ref()
                .and_then(|c| c.add.as_ref())
                .into_iter()
                .flatten()
                .any(|cap| cap == "SYS_ADMIN" || cap == "CAP_SYS_ADMIN");
            assert!(
                sc.privileged != Some(true) && !sys_admin,
                "{}: allowPrivilegeEscalation false contradicts privileged / SYS_ADMIN",
                c.name
            );
        }
        for port in c.ports.iter().flatten() {
            assert!(
                port.host_port.is_none() || port.host_port == Some(port.container_port),
                "{}: on the host network hostPort must equal containerPort",
                c.name
            );
        }
    }

    // Volumes by host path.
    let volumes: BTreeMap<&str, &str> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| Some((v.name.as_str(), v.host_path.as_ref()?.path.as_str())))
        .collect();
    let volume_of = |host: &str| -> String {
        volumes
            .iter()
            .find(|(_, p)| **p == host)
            .map(|(name, _)| name.to_string())
            .unwrap_or_else(|| panic!("no hostPath volume for {host}"))
    };
    let bpffs_volume = volume_of("/sys/fs/bpf");
    let cgroup_volume = volume_of("/sys/fs/cgroup");

    // Bidirectional propagation is only valid in a privileged container (API validation).
    let mut bidirectional_bpffs = false;
    for c in pod.init_containers.iter().flatten().chain(&pod.containers) {
        for m in c.volume_mounts.iter().flatten() {
            if m.mount_propagation.as_deref() == Some("Bidirectional") {
                assert_eq!(
                    c.security_context.as_ref().and_then(|s| s.privileged),
                    Some(true),
                    "{}: Bidirectional mount {} in a container that is not privileged",
                    c.name,
                    m.name
                );
                bidirectional_bpffs |= m.name == bpffs_volume;
            }
        }
    }
    assert!(
        bidirectional_bpffs,
        "the host's bpffs is mounted Bidirectional somewhere, so that a bpffs mounted in the pod is the host's"
    );

    let agent_mount = |volume: &str| {
        agent
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == volume)
            .unwrap_or_else(|| panic!("the agent does not mount {volume}"))
    };
    let bpffs = agent_mount(&bpffs_volume);
    assert!(
        run.bpffs.starts_with(&bpffs.mount_path),
        "--bpffs {} is not in the host's bpffs mounted at {}",
        run.bpffs.display(),
        bpffs.mount_path
    );
    assert!(
        matches!(
            bpffs.mount_propagation.as_deref(),
            Some("HostToContainer" | "Bidirectional")
        ),
        "the agent sees a bpffs mounted on the host later"
    );
    assert_ne!(bpffs.read_only, Some(true), "pins are written");
    let cgroup = agent_mount(&cgroup_volume);
    assert_eq!(
        run.cgroup.as_deref(),
        Some(Path::new(&cgroup.mount_path)),
        "--cgroup must name the host's cgroup v2 root as mounted"
    );
}

fn repo_file(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The value of `const NAME: ... = "value";` in xtask/src/toolchain.rs.
fn toolchain_constant(name: &str) -> String {
    let toolchain = repo_file("xtask/src/toolchain.rs");
    let line = toolchain
        .lines()
        .find(|l| l.contains(&format!("const {name}:")))
        .unwrap_or_else(|| panic!("{name} in toolchain.rs"));
    line.split('=')
        .nth(1)
        .expect("a value")
        .trim()
        .trim_end_matches(';')
        .trim_matches('"')
        .to_string()
}

/// The Dockerfile's instructions (continuation lines joined, comments dropped), by stage: each
/// stage starts with its FROM.
fn dockerfile_stages() -> Vec<Vec<String>> {
    let text = repo_file("deploy/Dockerfile");
    let mut instructions: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (current.is_empty() && trimmed.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part.trim());
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    let mut stages: Vec<Vec<String>> = Vec::new();
    for instruction in instructions {
        if instruction.starts_with("FROM ") || stages.is_empty() {
            stages.push(Vec::new());
        }
        if let Some(stage) = stages.last_mut() {
            stage.push(instruction);
        }
    }
    stages
}

/// The image's entrypoint (exec form) in the Dockerfile's final stage.
fn dockerfile_entrypoint() -> String {
    let stages = dockerfile_stages();
    let last = stages.last().expect("a stage");
    let json = last
        .iter()
        .find_map(|i| i.strip_prefix("ENTRYPOINT "))
        .expect("an ENTRYPOINT in the final stage");
    let argv: Vec<String> =
        serde_json::from_str(json).expect("ENTRYPOINT in exec form: there is no shell");
    assert_eq!(argv.len(), 1, "ENTRYPOINT is the agent alone: {argv:?}");
    argv[0].clone()
}

/// The Dockerfile builds what `cargo xtask image` builds: the toolchain versions xtask pins,
/// the same cargo command for the same target and profile (flags come from the repository's
/// Cargo.toml and .cargo/config.toml, not from the Dockerfile), and a final stage FROM
/// scratch with the agent as entrypoint and `run` as command.
#[test]
fn dockerfile_builds_what_xtask_image_builds() {
    let dockerfile = repo_file("deploy/Dockerfile");
    let nightly = toolchain_constant("EBPF_NIGHTLY");
    let linker = toolchain_constant("BPF_LINKER_VERSION");
    let llvm = toolchain_constant("LLVM_MAJOR");
    let target = toolchain_constant("IMAGE_TARGET");
    let profile = toolchain_constant("IMAGE_PROFILE");
    // xtask/src/image.rs `cargo_args()`, whose unit test pins the same string.
    let build =
        format!("cargo build --profile {profile} --locked -p clusterip-agent --target {target}");
    for want in [
        format!("ARG EBPF_NIGHTLY={nightly}"),
        format!("ARG BPF_LINKER_VERSION={linker}"),
        format!("llvm-{llvm}-dev"),
        format!("--features llvm-{llvm}"),
        format!("LLVM_PREFIX=/usr/lib/llvm-{llvm}"),
        "musl-tools".to_string(),
        format!("rustup target add {target}"),
        build.clone(),
        format!("target/{target}/{profile}/clusterip-agent"),
    ] {
        assert!(
            dockerfile.contains(&want),
            "deploy/Dockerfile lacks {want:?}"
        );
    }
    // Nothing in the Dockerfile changes how cargo builds.
    for env in [
        "RUSTFLAGS",
        "CARGO_PROFILE",
        "CARGO_BUILD",
        "CARGO_ENCODED",
        "CC_",
        "CFLAGS",
    ] {
        assert!(
            !dockerfile.contains(env),
            "deploy/Dockerfile sets {env}: put it in the repository's cargo config"
        );
    }
    let ignore = repo_file("deploy/Dockerfile.dockerignore");
    for needed in [".cargo", "Cargo.toml", "Cargo.lock"] {
        assert!(
            !ignore.lines().any(|l| l.trim() == needed),
            "the build context must include {needed}"
        );
    }
    let profile_section = format!("[profile.{profile}]");
    assert!(
        repo_file("Cargo.toml").contains(&profile_section),
        "Cargo.toml defines {profile_section}"
    );

    let stages = dockerfile_stages();
    let last = stages.last().expect("stages");
    assert_eq!(
        last.first().map(String::as_str),
        Some("FROM scratch"),
        "the final stage"
    );
    assert!(
        stages[..stages.len() - 1]
            .iter()
            .any(|stage| stage.iter().any(|i| i.contains(&build))),
        "the agent is built in an earlier stage"
    );
    assert_eq!(dockerfile_entrypoint(), "/usr/local/bin/clusterip-agent");
    assert!(last.contains(&"CMD [\"run\"]".to_string()), "{last:?}");
    for label in [
        "org.opencontainers.image.version",
        "org.opencontainers.image.source",
    ] {
        assert!(
            last.iter()
                .any(|i| i.starts_with("LABEL ") && i.contains(label)),
            "{label}"
        );
    }
}
