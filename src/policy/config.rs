//! Placeholder: the daemon configuration.
