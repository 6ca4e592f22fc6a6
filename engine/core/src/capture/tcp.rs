//! Capture, TCP sockets: loopback connections between processes of a tree.

use torpor_image::meta::{FdKind, FdMeta};

use super::CaptureError;
use crate::records::FdSnap;

/// A TCP socket the tree restore can recreate; `None` otherwise (refused by the caller).
pub(super) fn tcp_meta(_s: &FdSnap, _m: &mut FdMeta) -> Result<Option<FdKind>, CaptureError> {
    Ok(None)
}
