//! Reading policy and config files: regular files only, of bounded size, UTF-8 with the first
//! bad byte located.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use super::located::line_col;
use super::PolicyError;

/// The largest policy or config file read (1 MiB); real ones are a few kilobytes.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

fn unlocated(path: &Path, message: String) -> PolicyError {
    PolicyError {
        file: path.to_path_buf(),
        line: 0,
        col: 0,
        message,
    }
}

/// Opens `path` for reading without ever blocking: a FIFO opened for reading waits for a
/// writer, so the file is opened non-blocking and anything but a regular file is refused.
fn open_regular(path: &Path) -> Result<File, PolicyError> {
    let cannot = |e: std::io::Error| unlocated(path, format!("cannot read file: {e}"));
    let not_regular = || {
        unlocated(
            path,
            "not a regular file; only regular files are read (a FIFO, socket or device never is)"
                .into(),
        )
    };
    // Cheap early refusal; the check on the open handle below is the one that counts.
    if !std::fs::metadata(path).map_err(cannot)?.is_file() {
        return Err(not_regular());
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(cannot)?;
    if !file.metadata().map_err(cannot)?.is_file() {
        return Err(not_regular());
    }
    Ok(file)
}

/// The text of the regular file at `path`: at most [`MAX_FILE_BYTES`], valid UTF-8. A file that
/// is not UTF-8 is reported at the `line:col` of its first bad byte.
pub(super) fn read_text(path: &Path) -> Result<String, PolicyError> {
    let file = open_regular(path)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| unlocated(path, format!("cannot read file: {e}")))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(unlocated(
            path,
            format!(
                "file is larger than {} KiB; a policy or config file is a few kilobytes",
                MAX_FILE_BYTES / 1024
            ),
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let bytes = e.into_bytes();
        let prefix = std::str::from_utf8(&bytes[..valid]).unwrap_or_default();
        let (line, col) = line_col(prefix, valid);
        PolicyError {
            file: path.to_path_buf(),
            line,
            col,
            message: format!(
                "not valid UTF-8 (byte 0x{:02x} at offset {valid}); save the file as UTF-8",
                bytes[valid]
            ),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_utf8_file_is_located_at_its_first_bad_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, b"api = \"x\"\n# caf\xe9 latin-1\n").unwrap();
        let e = read_text(&path).unwrap_err();
        assert_eq!((e.line, e.col), (2, 6), "{e}");
        assert!(e.message.contains("not valid UTF-8 (byte 0xe9"), "{e}");
    }

    #[test]
    fn oversized_file_is_refused_without_reading_it_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.toml");
        let line = "# padding padding padding padding padding padding padding\n";
        let text = line.repeat((MAX_FILE_BYTES as usize / line.len()) + 1);
        std::fs::write(&path, text).unwrap();
        let e = read_text(&path).unwrap_err();
        assert!(e.message.starts_with("file is larger than 1024 KiB"), "{e}");
        assert!(e.to_string().len() < 200, "{e}");
    }

    #[test]
    fn directory_is_not_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_text(dir.path()).unwrap_err();
        assert!(e.message.starts_with("not a regular file"), "{e}");
    }
}
