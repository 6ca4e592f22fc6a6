//! The LD_PRELOAD agent.
