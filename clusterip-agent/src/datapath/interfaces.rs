//! Network interfaces of the agent's network namespace, name patterns (`--tc-iface 'veth*'`)
//! and the names of per-interface link pins.
//!
//! Interfaces are listed with `if_nameindex(3)`, which asks the kernel over a netlink socket
//! in the calling thread's network namespace. /sys/class/net is not used: it shows the network
//! namespace sysfs was mounted in, which is not the agent's when it was started with setns().

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::io;

/// A shell-style interface name pattern: `*` matches any run of characters, `?` one character,
/// anything else itself. A name without wildcards is an exact name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    pub fn new(p: &str) -> Self {
        Self(p.to_string())
    }

    pub fn matches(&self, name: &str) -> bool {
        glob_match(self.0.as_bytes(), name.as_bytes())
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Iterative wildcard matching with backtracking to the last `*` (linear in practice).
fn glob_match(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, si));
                pi += 1;
            }
            Some(c) if *c == b'?' || *c == s[si] => {
                pi += 1;
                si += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    pi = sp + 1;
                    si = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    p[pi.min(p.len())..].iter().all(|c| *c == b'*')
}

/// Whether any of `patterns` matches `name`.
pub fn matches_any(patterns: &[Pattern], name: &str) -> bool {
    patterns.iter().any(|p| p.matches(name))
}

/// The interfaces of the calling thread's network namespace: name -> ifindex.
pub fn list() -> io::Result<BTreeMap<String, u32>> {
    // SAFETY: if_nameindex returns a heap array terminated by an entry with index 0 and a null
    // name, or null on error; it is freed with if_freenameindex below and not used afterwards.
    unsafe {
        let head = libc::if_nameindex();
        if head.is_null() {
            return Err(io::Error::last_os_error());
        }
        let mut out = BTreeMap::new();
        let mut cur = head;
        while (*cur).if_index != 0 && !(*cur).if_name.is_null() {
            let name = CStr::from_ptr((*cur).if_name)
                .to_string_lossy()
                .into_owned();
            out.insert(name, (*cur).if_index);
            cur = cur.add(1);
        }
        libc::if_freenameindex(head);
        Ok(out)
    }
}

/// The interfaces (name -> ifindex) among `all` that `patterns` select.
pub fn select(all: &BTreeMap<String, u32>, patterns: &[Pattern]) -> BTreeMap<String, u32> {
    all.iter()
        .filter(|(name, _)| matches_any(patterns, name))
        .map(|(n, i)| (n.clone(), *i))
        .collect()
}

/// What to do to go from the attached interfaces to the wanted ones.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// Wanted and not attached (or attached to an older interface of the same name).
    pub attach: Vec<(String, u32)>,
    /// Attached to an interface that is gone or no longer wanted.
    pub detach: Vec<String>,
}

/// Compares `attached` (name -> ifindex the link is on) with `wanted` (name -> ifindex now).
/// An interface deleted and re-created under the same name has a new ifindex: its old link is
/// dead, so it is detached and attached again.
pub fn diff(attached: &BTreeMap<String, u32>, wanted: &BTreeMap<String, u32>) -> Diff {
    let mut d = Diff::default();
    for (name, idx) in attached {
        if wanted.get(name) != Some(idx) {
            d.detach.push(name.clone());
        }
    }
    for (name, idx) in wanted {
        if attached.get(name) != Some(idx) {
            d.attach.push((name.clone(), *idx));
        }
    }
    d
}

/// The bpffs pin name of a per-interface link: `<prefix>_<ifname>`, with the characters bpffs
/// refuses or that would make names ambiguous ('.', '_' and anything not alphanumeric or '-')
/// written as `_xx` (hex), so the mapping can be reversed.
pub fn pin_name(prefix: &str, ifname: &str) -> String {
    let mut out = format!("{prefix}_");
    for b in ifname.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out
}

/// The interface name of a pin made by [`pin_name`] with `prefix`; None for other pins.
pub fn ifname_from_pin(prefix: &str, pin: &str) -> Option<String> {
    let rest = pin.strip_prefix(prefix)?.strip_prefix('_')?;
    let bytes = rest.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    if out.is_empty() {
        return None;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_patterns() {
        let p = Pattern::new("veth*");
        assert!(p.matches("veth0"));
        assert!(p.matches("veth"));
        assert!(!p.matches("eth0"));
        assert!(!p.matches("xveth0"));
        assert!(Pattern::new("*").matches("lo"));
        assert!(Pattern::new("c?p*x").matches("cip-abcx"));
        assert!(!Pattern::new("c?p*x").matches("cip-abcy"));
        assert!(Pattern::new("a*b*c").matches("aXbYbZc"));
        assert!(!Pattern::new("a*b*c").matches("aXbYbZ"));
        let exact = Pattern::new("eth0");
        assert!(exact.matches("eth0"));
        assert!(!exact.matches("eth00"));
        assert!(!Pattern::new("").matches("x"));
        assert!(Pattern::new("**").matches(""));
    }

    #[test]
    fn selects_only_matching_interfaces() {
        let all: BTreeMap<String, u32> = [("lo", 1), ("veth0", 2), ("eth0", 3), ("vethA", 4)]
            .into_iter()
            .map(|(n, i)| (n.to_string(), i))
            .collect();
        let sel = select(&all, &[Pattern::new("veth*")]);
        assert_eq!(sel.keys().collect::<Vec<_>>(), ["veth0", "vethA"]);
        assert!(select(&all, &[]).is_empty());
    }

    #[test]
    fn diffs_attachments() {
        let m = |v: &[(&str, u32)]| -> BTreeMap<String, u32> {
            v.iter().map(|(n, i)| (n.to_string(), *i)).collect()
        };
        let d = diff(
            &m(&[("a", 1), ("b", 2), ("c", 3)]),
            &m(&[("a", 1), ("b", 7), ("d", 4)]),
        );
        assert_eq!(d.detach, ["b", "c"]);
        assert_eq!(d.attach, [("b".to_string(), 7), ("d".to_string(), 4)]);
        assert_eq!(diff(&m(&[("a", 1)]), &m(&[("a", 1)])), Diff::default());
    }

    #[test]
    fn pin_names_round_trip_without_dots() {
        for name in ["veth0", "eth0.100", "br_int", "a-b", "x_2e", "über"] {
            let pin = pin_name("tc", name);
            assert!(!pin.contains('.'), "{pin}");
            assert_eq!(ifname_from_pin("tc", &pin).as_deref(), Some(name), "{pin}");
            assert_eq!(ifname_from_pin("xdp", &pin), None);
        }
        assert_eq!(pin_name("tc", "eth0.100"), "tc_eth0_2e100");
        assert_ne!(pin_name("tc", "a.b"), pin_name("tc", "a_b"));
        assert_eq!(ifname_from_pin("tc", "tc_"), None);
        assert_eq!(ifname_from_pin("tc", "tc_a_z"), None);
        assert_eq!(ifname_from_pin("tc", "connect4"), None);
    }

    #[test]
    fn lists_this_namespace() {
        // Every network namespace has a loopback interface.
        let all = list().expect("if_nameindex");
        assert!(all.contains_key("lo"), "{all:?}");
    }
}
