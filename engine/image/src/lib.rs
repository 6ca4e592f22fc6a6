//! The torpor image format.
#![forbid(unsafe_code)]
