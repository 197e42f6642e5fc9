//! Placeholder: loading policy files and directories.
