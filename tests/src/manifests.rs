//! Service and EndpointSlice manifests in a directory the agent watches.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{Value, json};

/// `/tmp/cip-test-<uniq>/manifests` (what the agent reads) and `.../staging` (where files are
/// written before being renamed into place, so the agent never reads half a file).
/// Removed on drop.
#[derive(Debug)]
pub struct Manifests {
    root: PathBuf,
}

impl Manifests {
    pub fn new() -> Result<Self> {
        let root = std::env::temp_dir().join(format!("cip-test-{}", crate::uniq()));
        std::fs::create_dir_all(root.join("manifests"))
            .with_context(|| format!("mkdir {}", root.display()))?;
        std::fs::create_dir_all(root.join("staging"))?;
        Ok(Self { root })
    }

    /// The directory to pass to `--manifests`.
    pub fn dir(&self) -> PathBuf {
        self.root.join("manifests")
    }

    /// Atomically replaces `<dir>/<file>` with `text`.
    pub fn write_raw(&self, file: &str, text: &str) -> Result<()> {
        let staged = self.root.join("staging").join(file);
        std::fs::write(&staged, text).with_context(|| format!("writing {}", staged.display()))?;
        std::fs::rename(&staged, self.dir().join(file))
            .with_context(|| format!("renaming {} into place", staged.display()))
    }

    /// Atomically replaces `<dir>/<file>` with the objects as a multi-document YAML file.
    pub fn write(&self, file: &str, objects: &[Value]) -> Result<()> {
        let mut text = String::new();
        for o in objects {
            text.push_str("---\n");
            text.push_str(&serde_saphyr::to_string(o).context("serializing a manifest")?);
        }
        self.write_raw(file, &text)
    }

    pub fn remove(&self, file: &str) -> Result<()> {
        std::fs::remove_file(self.dir().join(file)).with_context(|| format!("removing {file}"))
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir().join(file)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Drop for Manifests {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.root) {
            eprintln!("cleanup: rm -r {}: {e}", self.root.display());
        }
    }
}

/// One port of a Service: `name`, `port` on the VIP, `target_port` on the pods, protocol.
#[derive(Clone, Debug)]
pub struct Port {
    pub name: String,
    pub port: u16,
    pub target_port: u16,
    pub protocol: &'static str,
    /// `nodePort` (NodePort and LoadBalancer services).
    pub node_port: Option<u16>,
}

pub fn tcp(name: &str, port: u16, target_port: u16) -> Port {
    Port {
        name: name.into(),
        port,
        target_port,
        protocol: "TCP",
        node_port: None,
    }
}

pub fn udp(name: &str, port: u16, target_port: u16) -> Port {
    Port {
        name: name.into(),
        port,
        target_port,
        protocol: "UDP",
        node_port: None,
    }
}

impl Port {
    pub fn node_port(mut self, node_port: u16) -> Self {
        self.node_port = Some(node_port);
        self
    }
}

/// A ClusterIP Service in namespace `default`.
#[derive(Clone, Debug)]
pub struct Service {
    pub name: String,
    /// A string so tests can write invalid addresses.
    pub cluster_ip: String,
    pub ports: Vec<Port>,
    pub affinity_timeout_s: Option<u32>,
    pub internal_traffic_local: bool,
    /// `spec.type`: ClusterIP, NodePort or LoadBalancer.
    pub type_: &'static str,
    /// `externalTrafficPolicy: Local`, with this `healthCheckNodePort`.
    pub external_local: Option<u16>,
    /// `status.loadBalancer.ingress[].ip`.
    pub lb_ips: Vec<String>,
    pub source_ranges: Vec<String>,
    pub external_ips: Vec<String>,
}

impl Service {
    pub fn new(name: &str, cluster_ip: impl ToString) -> Self {
        Self {
            name: name.into(),
            cluster_ip: cluster_ip.to_string(),
            ports: Vec::new(),
            affinity_timeout_s: None,
            internal_traffic_local: false,
            type_: "ClusterIP",
            external_local: None,
            lb_ips: Vec::new(),
            source_ranges: Vec::new(),
            external_ips: Vec::new(),
        }
    }

    /// `type: NodePort` (give the ports a `node_port`).
    pub fn node_port(mut self) -> Self {
        self.type_ = "NodePort";
        self
    }

    /// `type: LoadBalancer` with these ingress IPs in its status.
    pub fn load_balancer(mut self, ips: &[&str]) -> Self {
        self.type_ = "LoadBalancer";
        self.lb_ips = ips.iter().map(|s| s.to_string()).collect();
        self
    }

    /// `externalTrafficPolicy: Local` with `healthCheckNodePort: health_port`.
    pub fn external_traffic_local(mut self, health_port: u16) -> Self {
        self.external_local = Some(health_port);
        self
    }

    pub fn source_ranges(mut self, ranges: &[&str]) -> Self {
        self.source_ranges = ranges.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn external_ips(mut self, ips: &[&str]) -> Self {
        self.external_ips = ips.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn port(mut self, p: Port) -> Self {
        self.ports.push(p);
        self
    }

    pub fn affinity(mut self, timeout_s: u32) -> Self {
        self.affinity_timeout_s = Some(timeout_s);
        self
    }

    pub fn internal_traffic_local(mut self) -> Self {
        self.internal_traffic_local = true;
        self
    }

    fn family(&self) -> &'static str {
        if self.cluster_ip.contains(':') {
            "IPv6"
        } else {
            "IPv4"
        }
    }

    pub fn to_value(&self) -> Value {
        let ports: Vec<Value> = self
            .ports
            .iter()
            .map(|p| {
                let mut v = json!({"name": p.name, "port": p.port, "targetPort": p.target_port,
                       "protocol": p.protocol});
                if let Some(np) = p.node_port {
                    v["nodePort"] = json!(np);
                }
                v
            })
            .collect();
        let mut spec = json!({
            "type": self.type_,
            "clusterIP": self.cluster_ip,
            "clusterIPs": [self.cluster_ip],
            "ipFamilies": [self.family()],
            "ipFamilyPolicy": "SingleStack",
            "ports": ports,
            "sessionAffinity": "None",
            "internalTrafficPolicy": if self.internal_traffic_local { "Local" } else { "Cluster" },
        });
        if let Some(t) = self.affinity_timeout_s {
            spec["sessionAffinity"] = json!("ClientIP");
            spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": t}});
        }
        if self.type_ != "ClusterIP" {
            spec["externalTrafficPolicy"] = json!("Cluster");
        }
        if let Some(hc) = self.external_local {
            spec["externalTrafficPolicy"] = json!("Local");
            spec["healthCheckNodePort"] = json!(hc);
        }
        if !self.source_ranges.is_empty() {
            spec["loadBalancerSourceRanges"] = json!(self.source_ranges);
        }
        if !self.external_ips.is_empty() {
            spec["externalIPs"] = json!(self.external_ips);
        }
        let mut svc = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": self.name, "namespace": "default"},
            "spec": spec,
        });
        if !self.lb_ips.is_empty() {
            let ingress: Vec<Value> = self.lb_ips.iter().map(|ip| json!({"ip": ip})).collect();
            svc["status"] = json!({"loadBalancer": {"ingress": ingress}});
        }
        svc
    }

    /// An EndpointSlice for this service with the same port names and protocols, each on its
    /// `target_port`, and no endpoints yet.
    pub fn slice(&self, suffix: &str) -> EndpointSlice {
        EndpointSlice {
            name: format!("{}-{suffix}", self.name),
            service: self.name.clone(),
            address_type: self.family(),
            ports: self.ports.clone(),
            endpoints: Vec::new(),
        }
    }
}

/// One endpoint: address (a string so tests can write invalid ones), conditions, node.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub address: String,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node: String,
}

impl Endpoint {
    /// Ready, serving, not terminating, on node-a (the agent's node unless a test names
    /// another: [`crate::agent::DEFAULT_NODE_NAME`]).
    pub fn ready(addr: IpAddr) -> Self {
        Self {
            address: addr.to_string(),
            ready: true,
            serving: true,
            terminating: false,
            node: crate::agent::DEFAULT_NODE_NAME.into(),
        }
    }

    pub fn on_node(mut self, node: &str) -> Self {
        self.node = node.into();
        self
    }

    pub fn conditions(mut self, ready: bool, serving: bool, terminating: bool) -> Self {
        self.ready = ready;
        self.serving = serving;
        self.terminating = terminating;
        self
    }
}

#[derive(Clone, Debug)]
pub struct EndpointSlice {
    pub name: String,
    pub service: String,
    pub address_type: &'static str,
    pub ports: Vec<Port>,
    pub endpoints: Vec<Endpoint>,
}

impl EndpointSlice {
    pub fn endpoint(mut self, e: Endpoint) -> Self {
        self.endpoints.push(e);
        self
    }

    /// Ready endpoints on node-a for the given addresses.
    pub fn ready(mut self, addrs: impl IntoIterator<Item = IpAddr>) -> Self {
        self.endpoints
            .extend(addrs.into_iter().map(Endpoint::ready));
        self
    }

    /// Ready endpoints on node `node` (its `nodeName`) for the given addresses: several
    /// agents reading the same slice each see only their own node's endpoints as local.
    pub fn ready_on(mut self, node: &str, addrs: impl IntoIterator<Item = IpAddr>) -> Self {
        self.endpoints
            .extend(addrs.into_iter().map(|a| Endpoint::ready(a).on_node(node)));
        self
    }

    pub fn to_value(&self) -> Value {
        let ports: Vec<Value> = self
            .ports
            .iter()
            .map(|p| json!({"name": p.name, "port": p.target_port, "protocol": p.protocol}))
            .collect();
        let endpoints: Vec<Value> = self
            .endpoints
            .iter()
            .map(|e| {
                json!({
                    "addresses": [e.address],
                    "conditions": {"ready": e.ready, "serving": e.serving,
                                   "terminating": e.terminating},
                    "nodeName": e.node,
                })
            })
            .collect();
        json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": self.name,
                "namespace": "default",
                "labels": {"kubernetes.io/service-name": self.service},
            },
            "addressType": self.address_type,
            "ports": ports,
            "endpoints": endpoints,
        })
    }
}
