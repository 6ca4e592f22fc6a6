//! The torpor SPANK plugin: options, plugstack config, task environment.
