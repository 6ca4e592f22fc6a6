//! The checkpoint engine: capture and restore logic shared by the agent and the restorer.
