//! Snapshots of L1 for warm restarts: the file format (`format.rs`, pure) and the file
//! itself (`file.rs`: written atomically, read block by block). When and how the
//! service saves and loads them is `warm.rs`.

pub mod file;
pub mod format;

pub use file::{
    open, read, read_from, scan, write_parts, Part, RawBlock, ReadReport, Scan, SnapshotError,
    Written,
};
pub use format::{BlockBuilder, Header};
