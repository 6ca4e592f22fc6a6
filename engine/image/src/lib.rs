//! The torpor image format: a versioned, checksummed container for one process's state,
//! and the on-disk store of generations. See `docs/image-format.md`.
#![deny(unsafe_code)]

pub mod container;
pub mod meta;
#[allow(unsafe_code)]
pub mod safedir;
pub mod store;

pub use container::{ImageError, ImageReader, ImageWriter};
pub use meta::*;

/// Major version of the image format written. 2: chunks may be LZ4-compressed (ADR 0005).
/// 3: an image may be incremental (`ProcessMeta::parent`, `Region::inherit`): pages it
/// does not hold come from its parent generation (ADR 0009).
pub const FORMAT_MAJOR: u16 = 3;
/// Oldest major version still read: 1.x images hold raw chunks only and 2.x images are
/// all full, which 3.x readers handle unchanged. Readers reject majors outside `MIN_READ_MAJOR..=FORMAT_MAJOR`.
pub const MIN_READ_MAJOR: u16 = 1;
/// Minor version of the image format. New optional fields bump it; older readers still read
/// what they can restore. 1: gathered chunks (`Chunk::runs`) and the compact page run
/// lists of `Region::written`, which a 3.0 reader refuses rather than misreads.
pub const FORMAT_MINOR: u16 = 1;
/// Size of a page on the only supported architecture (x86_64).
pub const PAGE_SIZE: u64 = 4096;
