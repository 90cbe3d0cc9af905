//! Everything the CLI writes: standard output (a closed pipe is a quiet stop, a full disk a
//! clear error, never a panic), notes on standard error (ignored if it is closed), and output
//! files, which are staged next to their destination and renamed into place only once every
//! output of the command is written, so that a failure leaves no partial file behind.

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Standard output was closed by its reader (`qlift dump M | head`): not a failure, the
/// command stops quietly (exit 0), as `cat` or `grep` would without SIGPIPE.
#[derive(Debug)]
pub(crate) struct ClosedPipe;

impl std::fmt::Display for ClosedPipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("standard output was closed")
    }
}

impl std::error::Error for ClosedPipe {}

/// Writes `text` to standard output and flushes it.
pub(crate) fn print(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(ClosedPipe.into()),
        Err(e) => Err(anyhow::Error::new(e).context("writing standard output")),
    }
}

/// `println!` through [`print`]: returns an error instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::output::print(&format!("{}\n", format_args!($($arg)*)))
    };
}
pub(crate) use outln;

/// `eprintln!` that ignores a closed standard error (notes are not worth failing for).
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
pub(crate) use note;

/// Checks, before any work, that `path` can be written as an output: not a directory, and
/// in a directory that exists.
pub(crate) fn check_writable(path: &Path, flag: &str) -> Result<()> {
    if path.as_os_str().is_empty() {
        bail!("{flag}: the output path is empty");
    }
    if path.is_dir() {
        bail!("{flag} {}: is a directory", path.display());
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        bail!(
            "{flag} {}: the directory {} does not exist",
            path.display(),
            parent.display()
        );
    }
    Ok(())
}

/// Output files written together: each is written to a temporary file beside it, and
/// [`Outputs::commit`] renames them all into place. Dropped without a commit (an error
/// anywhere), it removes the temporary files, so that no partial output is left.
#[derive(Default)]
pub(crate) struct Outputs {
    /// (temporary file, destination) pairs not yet renamed.
    staged: Vec<(PathBuf, PathBuf)>,
}

impl Outputs {
    /// Writes `bytes` for `path`. A destination that exists and is not a regular file
    /// (`/dev/null`, `/dev/stdout`, a pipe) is written directly: renaming over it would
    /// replace the device.
    pub(crate) fn write(&mut self, path: &Path, bytes: &[u8]) -> Result<()> {
        let special = std::fs::metadata(path).is_ok_and(|m| !m.is_file());
        if special {
            return write_all(path, bytes);
        }
        let name = path
            .file_name()
            .with_context(|| format!("{}: not a file name", path.display()))?;
        let temp = path.with_file_name(format!(
            ".{}.qlift-{}.tmp",
            name.to_string_lossy(),
            std::process::id()
        ));
        // Registered first, so that a failed write is cleaned up too.
        self.staged.push((temp.clone(), path.to_path_buf()));
        write_all(&temp, bytes).with_context(|| format!("writing {}", path.display()))
    }

    /// Renames every staged file into place.
    pub(crate) fn commit(mut self) -> Result<()> {
        for (temp, path) in std::mem::take(&mut self.staged) {
            if let Err(e) = std::fs::rename(&temp, &path) {
                let _ = std::fs::remove_file(&temp);
                return Err(anyhow::Error::new(e).context(format!("writing {}", path.display())));
            }
        }
        Ok(())
    }
}

impl Drop for Outputs {
    fn drop(&mut self) {
        for (temp, _) in &self.staged {
            let _ = std::fs::remove_file(temp);
        }
    }
}

/// Creates (or truncates) `path` and writes `bytes` to it, flushed to the disk: a full disk
/// is an error here, not later.
fn write_all(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    // `sync_all` fails on some special files (pipes, /dev/null): only regular files need it.
    if file.metadata().is_ok_and(|m| m.is_file()) {
        file.sync_all()
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
