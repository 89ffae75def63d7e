//! The agent's commands: `run` (load, attach, follow the source), `dump`, `explain`,
//! `probe`, `cleanup`, `mount-bpffs`.

pub mod dump;
pub mod explain;
pub mod probe;
pub mod run;

pub use run::{main, run};
