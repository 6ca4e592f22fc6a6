//! Restore stage 1: validates an image and prepares the plan for stage 2.
