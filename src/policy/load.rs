//! Loading policy files and directories: reading files, collecting every error, unique API names.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::located::{line_col, shown};
use super::read::read_text;
use super::validate::parse_policy;
use super::{Policy, PolicyContext, PolicyError};

/// The outcome of loading several policy files: the valid policies and every error found.
/// A broken file never prevents the others from loading.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Valid policies, in load order (paths in the order given, directory entries sorted).
    pub policies: Vec<Policy>,
    /// Every problem, grouped by file in load order.
    pub errors: Vec<PolicyError>,
}

impl LoadReport {
    /// Whether nothing went wrong.
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// A policy with where its `api` value sits, for duplicate messages.
struct Loaded {
    policy: Policy,
    api_location: (usize, usize),
}

fn unlocated(file: &Path, message: String) -> PolicyError {
    PolicyError {
        file: file.to_path_buf(),
        line: 0,
        col: 0,
        message,
    }
}

fn load_one(path: &Path, context: PolicyContext<'_>) -> Result<Loaded, Vec<PolicyError>> {
    let text = read_text(path).map_err(|e| vec![e])?;
    let (policy, api_span): (Policy, Range<usize>) = parse_policy(&text, path, context)?;
    Ok(Loaded {
        policy,
        api_location: line_col(&text, api_span.start),
    })
}

/// Reads and validates one policy file. With `channels`, alert names must be among them.
pub fn load_file(path: &Path, channels: Option<&[String]>) -> Result<Policy, Vec<PolicyError>> {
    let context = PolicyContext {
        channels,
        consul_prefix: None,
    };
    load_one(path, context).map(|l| l.policy)
}

/// Loads every `*.toml` file directly inside `dir` (sorted by name; hidden files skipped). An
/// entry that is not a regular file (a FIFO, a socket) is reported, never read.
pub fn load_dir(dir: &Path, channels: Option<&[String]>) -> LoadReport {
    load_paths(&[dir.to_path_buf()], channels)
}

/// Loads files and directories (each directory as in [`load_dir`]). API names must be unique
/// across everything loaded: a repeat is reported on the later file's `api` line.
pub fn load_paths(paths: &[PathBuf], channels: Option<&[String]>) -> LoadReport {
    let context = PolicyContext {
        channels,
        consul_prefix: None,
    };
    load_paths_in(paths, context)
}

/// [`load_paths`], checking each policy against `context` (see [`crate::policy::Config::load_policies`]).
pub fn load_paths_in(paths: &[PathBuf], context: PolicyContext<'_>) -> LoadReport {
    let mut files = Vec::new();
    let mut report = LoadReport::default();
    for path in paths {
        if path.is_dir() {
            match toml_files(path) {
                Ok(found) => files.extend(found),
                Err(e) => report.errors.push(e),
            }
        } else {
            files.push(path.clone());
        }
    }

    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    for file in files {
        match load_one(&file, context) {
            Ok(loaded) => {
                let api = loaded.policy.api.clone();
                if let Some(first) = seen.get(&api) {
                    let (line, col) = loaded.api_location;
                    report.errors.push(PolicyError {
                        file: file.clone(),
                        line,
                        col,
                        message: format!(
                            "api {} is already defined in {}; API names must be unique",
                            shown(&api),
                            first.display()
                        ),
                    });
                } else {
                    seen.insert(api, file);
                    report.policies.push(loaded.policy);
                }
            }
            Err(errors) => report.errors.extend(errors),
        }
    }
    report
}

/// The `*.toml` files directly inside `dir`, sorted; hidden files (editor droppings) skipped.
pub(super) fn toml_files(dir: &Path) -> Result<Vec<PathBuf>, PolicyError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| unlocated(dir, format!("cannot read directory: {e}")))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| unlocated(dir, format!("cannot read directory: {e}")))?;
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        let is_toml = path.extension().is_some_and(|e| e == "toml");
        if is_toml && !hidden && !path.is_dir() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(api: &str) -> String {
        format!(
            r#"api = "{api}"

[traffic]
haproxy = {{ backend = "b_{api}", blue = "blue", green = "green" }}

[[check]]
name = "errors"
kind = "error_rate"
requests = 'sum(increase(http_requests_total{{job="{api}",cluster="{{color}}"}}[{{interval}}]))'
errors = 'sum(increase(http_requests_total{{job="{api}",cluster="{{color}}",code=~"5.."}}[{{interval}}]))'
"#
        )
    }

    #[test]
    fn directory_loads_sorted_toml_files_and_skips_others() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.toml"), policy("bravo")).unwrap();
        std::fs::write(dir.path().join("a.toml"), policy("alpha")).unwrap();
        std::fs::write(dir.path().join("notes.md"), "not a policy").unwrap();
        std::fs::write(dir.path().join(".#a.toml"), "garbage").unwrap();
        let report = load_dir(dir.path(), None);
        assert!(report.is_ok(), "{:?}", report.errors);
        let apis: Vec<_> = report.policies.iter().map(|p| p.api.as_str()).collect();
        assert_eq!(apis, vec!["alpha", "bravo"]);
        assert_eq!(
            report.policies[0].source.as_deref(),
            Some(dir.path().join("a.toml").as_path())
        );
    }

    #[test]
    fn broken_file_does_not_stop_the_others() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.toml"), "api = ").unwrap();
        std::fs::write(dir.path().join("b.toml"), policy("bravo")).unwrap();
        let report = load_dir(dir.path(), None);
        assert_eq!(report.policies.len(), 1);
        assert_eq!(report.errors.len(), 1);
        assert_eq!(report.errors[0].file, dir.path().join("a.toml"));
        assert_eq!(report.errors[0].line, 1);
    }

    #[test]
    fn duplicate_api_is_reported_on_the_second_file() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("a.toml");
        let second = dir.path().join("b.toml");
        std::fs::write(&first, policy("same")).unwrap();
        std::fs::write(&second, format!("# copy\n{}", policy("same"))).unwrap();
        let report = load_paths(&[first.clone(), second.clone()], None);
        assert_eq!(report.policies.len(), 1);
        assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
        let e = &report.errors[0];
        assert_eq!((e.file.as_path(), e.line, e.col), (second.as_path(), 2, 7));
        assert!(e.message.contains(&first.display().to_string()), "{e}");
    }

    /// Runs `f` on another thread; fails the test if it has not returned within 20 s.
    fn within_deadline<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(std::time::Duration::from_secs(20))
            .expect("loading did not return: blocked on a file")
    }

    #[test]
    fn fifo_named_toml_does_not_hang_load_dir() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.toml"), policy("alpha")).unwrap();
        let fifo = dir.path().join("b.toml");
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) }, 0);
        let path = dir.path().to_path_buf();
        let report = within_deadline(move || load_dir(&path, None));
        assert_eq!(report.policies.len(), 1);
        assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
        assert_eq!(report.errors[0].file, fifo);
        assert!(
            report.errors[0].message.starts_with("not a regular file"),
            "{}",
            report.errors[0]
        );
    }

    #[test]
    fn missing_path_is_an_unlocated_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        let err = load_file(&missing, None).unwrap_err();
        assert_eq!(err.len(), 1);
        assert_eq!((err[0].line, err[0].col), (0, 0));
        assert!(err[0]
            .to_string()
            .starts_with(&format!("{}: cannot read", missing.display())));
        let report = load_paths(&[missing], None);
        assert_eq!((report.policies.len(), report.errors.len()), (0, 1));
    }
}
