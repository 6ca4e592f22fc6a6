//! The checkpoint engine: capture (run by the agent's writer child) and restore planning
//! (run by `torpor-restore`), shared by the agent and the restorer.

pub mod capture;
pub mod lz4;
pub mod plan;
pub mod procmaps;
pub mod rawclone;
pub mod records;
pub mod restore;
