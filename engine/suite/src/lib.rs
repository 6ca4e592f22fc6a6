//! The engine test suite (our zdtm): run, checkpoint, kill, restore, check.
