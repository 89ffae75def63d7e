//! `clusterip-agent probe`: what the running kernel offers the datapath, and what the agent
//! does without what is missing.

use crate::cli::ProbeArgs;
use crate::datapath::probe::{Features, kernel_release};

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
