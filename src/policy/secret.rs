//! Secrets: references to a file or an environment variable, read when needed, never printed.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Serialize, Serializer};

use super::PolicyError;

/// A secret read when needed, from a file or an environment variable; never printed.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// Contents of this file, without the trailing newline.
    File(PathBuf),
    /// Value of this environment variable, without the trailing newline.
    Env(String),
}

/// Why a secret could not be read. Never contains the secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {var} is not set")]
    EnvUnset { var: String },
    #[error("environment variable {var} is not valid UTF-8")]
    EnvNotUnicode { var: String },
    #[error("cannot read secret file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("secret from {origin} is empty")]
    Empty { origin: String },
}

impl Secret {
    /// Reads the secret now; trailing newlines are removed.
    pub fn resolve(&self) -> Result<String, SecretError> {
        let (value, origin) = match self {
            Secret::Env(var) => match std::env::var(var) {
                Ok(v) => (v, format!("environment variable {var}")),
                Err(std::env::VarError::NotPresent) => {
                    return Err(SecretError::EnvUnset { var: var.clone() })
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(SecretError::EnvNotUnicode { var: var.clone() })
                }
            },
            Secret::File(path) => match std::fs::read_to_string(path) {
                Ok(v) => (v, format!("file {}", path.display())),
                Err(source) => {
                    return Err(SecretError::Read {
                        path: path.clone(),
                        source,
                    })
                }
            },
        };
        let trimmed = value.trim_end_matches(['\n', '\r']);
        if trimmed.is_empty() {
            return Err(SecretError::Empty { origin });
        }
        Ok(trimmed.to_string())
    }

    /// Like [`Secret::resolve`], but an unset environment variable means "no secret" (`None`).
    /// For optional credentials such as the Consul token. A missing file is still an error.
    pub fn resolve_optional(&self) -> Result<Option<String>, SecretError> {
        match self.resolve() {
            Ok(v) => Ok(Some(v)),
            Err(SecretError::EnvUnset { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A secret as written in a config file, for checking at start that it can be read.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct SecretRef {
    /// The key that names it, e.g. `consul.token`.
    field: String,
    secret: Secret,
    file: PathBuf,
    line: usize,
    col: usize,
}

impl SecretRef {
    pub(super) fn new(field: String, secret: &Secret, file: &Path, at: (usize, usize)) -> Self {
        SecretRef {
            field,
            secret: secret.clone(),
            file: file.to_path_buf(),
            line: at.0,
            col: at.1,
        }
    }

    /// The problem reading it, if any; never the secret itself.
    pub(super) fn check(&self) -> Option<PolicyError> {
        self.secret.resolve().err().map(|e| PolicyError {
            file: self.file.clone(),
            line: self.line,
            col: self.col,
            message: format!("{}: {e}", self.field),
        })
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_and_resolved_lazily() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "hunter2\n").unwrap();
        let secret = Secret::File(path.clone());
        assert_eq!(format!("{secret:?}"), "<redacted>");
        assert_eq!(secret.to_string(), "<redacted>");
        assert_eq!(serde_json::to_string(&secret).unwrap(), "\"<redacted>\"");
        assert_eq!(secret.resolve().unwrap(), "hunter2");

        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(secret.resolve(), Err(SecretError::Empty { .. })));
        let missing = Secret::File(dir.path().join("nope"));
        assert!(matches!(missing.resolve(), Err(SecretError::Read { .. })));
        assert!(missing.resolve_optional().is_err());

        let unset = Secret::Env("GREENLIGHT_TEST_SURELY_UNSET_VARIABLE".into());
        assert!(matches!(unset.resolve(), Err(SecretError::EnvUnset { .. })));
        assert_eq!(unset.resolve_optional().unwrap(), None);
    }
}
