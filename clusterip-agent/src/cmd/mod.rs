//! The agent's commands: `run` (load, attach, follow the source), `dump`, `explain`,
//! `probe`, `cleanup`.

pub mod dump;
pub mod explain;
pub mod probe;
pub mod run;

pub use run::{main, run};
