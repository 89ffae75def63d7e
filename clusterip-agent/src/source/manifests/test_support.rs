//! Builders for tests that read manifests: here, and in the store's tests, which feed the store
//! from a [`super::ManifestSource`].

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

/// A unique temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "clusterip-manifests-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.0.join(name);
        fs::write(&path, content).unwrap();
        path
    }

    pub fn remove(&self, name: &str) {
        fs::remove_file(self.0.join(name)).unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A Service `t/<name>` with one port (80).
pub fn svc(name: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: t}}\n\
             spec: {{clusterIP: {ip}, ports: [{{port: 80}}]}}\n"
    )
}

/// An EndpointSlice `t/<name>` of Service `t/<service>`, port 8080, one endpoint per IP.
pub fn slice(name: &str, service: &str, ips: &[&str]) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: {name}, namespace: t, labels: {{kubernetes.io/service-name: {service}}}}}\n\
             addressType: IPv4\nports: [{{port: 8080}}]\nendpoints: [{}]\n",
        ips.iter()
            .map(|ip| format!("{{addresses: [{ip}]}}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// A Node, with its zone label when given.
pub fn node(name: &str, zone: Option<&str>) -> String {
    let labels = match zone {
        Some(z) => format!(", labels: {{topology.kubernetes.io/zone: {z}}}"),
        None => String::new(),
    };
    format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {name}{labels}}}\n")
}

/// VmRSS of this process, in KiB.
pub fn rss_kib() -> u64 {
    fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// `n` services, each with one slice of `eps` endpoints (as /tmp/lead/gen.py).
pub fn scale_yaml(n: usize, eps: usize) -> String {
    let mut out = String::new();
    for i in 0..n {
        let (a, b) = (i / 250, i % 250);
        out.push_str(&format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: bench}}\n\
                 spec:\n  clusterIP: 10.{}.{}.{}\n  ports: [{{name: http, port: 80, targetPort: 8080, protocol: TCP}}]\n\
                 ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {{name: svc-{i}-abc, namespace: bench, labels: {{kubernetes.io/service-name: svc-{i}}}}}\n\
                 addressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n",
                96 + a / 250,
                a % 250,
                b + 1
            ));
        for e in 0..eps {
            let k = i * eps + e;
            out.push_str(&format!(
                "- {{addresses: [100.{}.{}.{}], conditions: {{ready: true}}}}\n",
                64 + k / 65536,
                (k / 256) % 256,
                k % 256
            ));
        }
    }
    out
}
