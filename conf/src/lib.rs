//! Shared configuration: checkpoint intervals, plugstack.conf arguments, environment names.
#![forbid(unsafe_code)]
