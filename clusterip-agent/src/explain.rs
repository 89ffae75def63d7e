//! `clusterip-agent explain VIP:PORT[/PROTOCOL]` (being written).

use crate::cli::ExplainArgs;

pub fn main(args: ExplainArgs) -> anyhow::Result<()> {
    anyhow::bail!("explain {}: not implemented yet", args.frontend)
}
