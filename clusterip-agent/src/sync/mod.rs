//! From events to maps: the [`store`] keeps the objects and the desired table (built by the
//! model), the [`syncer`] writes what changed to the pinned maps, make-before-break, with
//! [`maglev`] tables for the per-packet path.

pub mod maglev;
pub mod store;
pub mod syncer;
