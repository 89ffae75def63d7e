//! `clusterip-agent probe`: what the running kernel offers the datapath, and what the agent
//! does without what is missing.

use crate::cli::ProbeArgs;
use crate::cmd::run::node_memory;
use crate::datapath::migrate::possible_cpus;
use crate::datapath::probe::{Features, kernel_release};
use crate::datapath::sizing::{Mib, Sizing, SizingInput};

/// The default sizes of the maps on this node: with the socket hooks only, and with the
/// per-packet path too.
fn default_sizings() -> Option<[(&'static str, Sizing); 2]> {
    let memory = node_memory().ok()?;
    let cpus = u32::try_from(possible_cpus()).unwrap_or(u32::MAX);
    Some([
        (
            "socket-level only",
            Sizing::compute(&SizingInput::defaults(memory, cpus, true, false)),
        ),
        (
            "socket-level and per-packet (--tc-iface/--xdp-iface)",
            Sizing::compute(&SizingInput::defaults(memory, cpus, true, true)),
        ),
    ])
}

pub fn main(args: ProbeArgs) -> anyhow::Result<()> {
    let features = Features::detect();
    let lines = features.report();
    let release = kernel_release();
    let fatal = features.fatal();
    if args.json {
        let doc = serde_json::json!({
            "kernel": release,
            "features": lines,
            "missing": lines.iter().filter(|l| !l.found).map(|l| l.name.as_str()).collect::<Vec<_>>(),
            "socket_lb": features.socket_lb(),
            "runnable": fatal.is_none(),
            "fatal": fatal,
            "maps": default_sizings().map(|s| s.map(|(what, sizing)| serde_json::json!({
                "paths": what,
                "bytes": sizing.fixed_bytes(),
                "sizing": sizing,
            }))),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!("kernel {release}");
        let width = lines.iter().map(|l| l.name.len()).max().unwrap_or(0);
        for l in &lines {
            println!(
                "{:<7} {:<width$}  {}: {}",
                if l.found { "found" } else { "missing" },
                l.name,
                l.what,
                l.action,
            );
        }
        if let Some(sizings) = default_sizings() {
            let node = &sizings[0].1;
            println!(
                "maps at their default sizes on this node ({} of memory, ratio {}: {} for \
                 the flow and socket state maps):",
                Mib(node.node_memory),
                node.ratio,
                Mib(node.budget)
            );
            for (what, sizing) in &sizings {
                let detail: Vec<String> = sizing
                    .maps
                    .iter()
                    .map(|m| format!("{} {}", m.name, m.entries))
                    .collect();
                println!(
                    "  {what}: {} of kernel memory empty ({})",
                    Mib(sizing.fixed_bytes()),
                    detail.join(", ")
                );
            }
        }
        match &fatal {
            None => println!(
                "datapath: can run (socket-level load balancing {})",
                if features.socket_lb() {
                    "available"
                } else {
                    "NOT available"
                }
            ),
            Some(why) => println!("datapath: cannot run: {why}"),
        }
    }
    match fatal {
        None => Ok(()),
        Some(why) => anyhow::bail!("the datapath cannot run on this kernel: {why}"),
    }
}
