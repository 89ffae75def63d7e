//! `clusterip-agent probe`: kernel features (being written).

use crate::cli::ProbeArgs;

pub fn main(_args: ProbeArgs) -> anyhow::Result<()> {
    anyhow::bail!("probe: not implemented yet")
}
