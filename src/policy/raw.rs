//! Placeholder: raw serde types.
