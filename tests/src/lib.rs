//! Test harnesses: a real Slurm cluster in a temp dir, and the engine suite runner.
