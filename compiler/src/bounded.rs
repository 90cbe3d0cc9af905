//! Bounded reading: every file qlift opens (ONNX models, their external data, `.qir` text,
//! `.npy` tensors) is opened and read through here, so that no size written in a file and no
//! special file can make qlift allocate or read without bound.
//!
//! - A regular file's real length is known before reading: it is checked against the
//!   limit first, and a header's declared sizes are checked against it by the format readers.
//! - A pipe (`<(cmd)`, `/dev/stdin` fed by a pipe) has no length: it is read through
//!   `take(limit + 1)`, so a writer that never stops costs at most the limit.
//! - Devices (`/dev/zero`, `/dev/urandom`, a terminal), directories and sockets are refused
//!   before they are read: they are never model or tensor files, and some never end.

use crate::Error;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// What kind of file a path names, as far as reading it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A regular file of this many bytes.
    File(u64),
    /// A pipe (FIFO): its length is unknown until it ends.
    Pipe,
}

/// An opened file with what is known about its length.
pub struct Opened {
    /// The open file.
    pub file: File,
    /// A regular file and its length, or a pipe.
    pub source: Source,
}

fn refused(path: &Path, message: &str) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, message.to_string()),
    }
}

/// What kind of file `path` is, without opening it (opening a pipe waits for a writer).
/// Devices, directories and sockets are an error.
pub fn classify(path: &Path) -> Result<Source, Error> {
    let meta = std::fs::metadata(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let kind = meta.file_type();
    if kind.is_file() {
        return Ok(Source::File(meta.len()));
    }
    if kind.is_dir() {
        return Err(refused(path, "is a directory, not a file"));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return Ok(Source::Pipe);
        }
        if kind.is_char_device() || kind.is_block_device() {
            return Err(refused(
                path,
                "is a device, not a file (qlift reads regular files and pipes)",
            ));
        }
    }
    Err(refused(path, "is not a regular file or a pipe"))
}

/// Opens `path` for reading after [`classify`] accepted it.
pub fn open(path: &Path) -> Result<Opened, Error> {
    let source = classify(path)?;
    let file = File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // The length again from the open file: the path may have been replaced in between.
    let source = match source {
        Source::File(_) => Source::File(
            file.metadata()
                .map_err(|source| Error::Io {
                    path: path.to_path_buf(),
                    source,
                })?
                .len(),
        ),
        Source::Pipe => Source::Pipe,
    };
    Ok(Opened { file, source })
}

/// Reads all of `path`, refusing more than `limit` bytes: a regular file longer than the
/// limit is refused before anything is read, a pipe once it has given `limit + 1` bytes.
/// `what` names the file in the limit error ("model file", "IR text").
pub fn read_to_end(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>, Error> {
    let Opened { file, source } = open(path)?;
    let too_large = |value: u64| Error::Limit {
        what: format!("{what} {}", path.display()),
        value,
        limit,
    };
    let capacity = match source {
        Source::File(len) if len > limit => return Err(too_large(len)),
        Source::File(len) => len,
        Source::Pipe => 0,
    };
    let mut bytes = Vec::with_capacity(usize::try_from(capacity).unwrap_or(0));
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
    if bytes.len() as u64 > limit {
        return Err(Error::Limit {
            what: format!("{what} {} (a pipe, read up to the limit)", path.display()),
            value: bytes.len() as u64,
            limit,
        });
    }
    Ok(bytes)
}

/// Reads exactly `len` bytes from `reader` into a new buffer: `Ok(Err(n))` when the stream
/// ends after `n` bytes. The buffer is allocated whole when `source` is a regular file (whose
/// length the caller checked), else it grows with the data that arrives, so a pipe that
/// ends early never costs the declared length.
pub fn read_exact_vec(
    reader: &mut impl Read,
    len: u64,
    source: Source,
) -> io::Result<Result<Vec<u8>, usize>> {
    let capacity = match source {
        Source::File(_) => len,
        Source::Pipe => len.min(1 << 20),
    };
    let mut bytes = Vec::with_capacity(usize::try_from(capacity).unwrap_or(0));
    reader.take(len).read_to_end(&mut bytes)?;
    if (bytes.len() as u64) < len {
        return Ok(Err(bytes.len()));
    }
    Ok(Ok(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("qlift-bounded-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn regular_files_are_checked_against_the_limit_before_reading() {
        let path = temp("ten.bin");
        std::fs::write(&path, [7u8; 10]).unwrap();
        assert_eq!(read_to_end(&path, 10, "test file").unwrap(), vec![7u8; 10]);
        let err = read_to_end(&path, 9, "test file").unwrap_err();
        assert!(
            matches!(
                err,
                Error::Limit {
                    value: 10,
                    limit: 9,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn devices_and_directories_are_refused_without_reading() {
        let start = std::time::Instant::now();
        let err = read_to_end(Path::new("/dev/zero"), u64::MAX, "model file").unwrap_err();
        assert!(err.to_string().contains("is a device"), "{err}");
        let err = read_to_end(&std::env::temp_dir(), u64::MAX, "model file").unwrap_err();
        assert!(err.to_string().contains("is a directory"), "{err}");
        assert!(start.elapsed().as_secs() < 5);
    }

    #[cfg(unix)]
    #[test]
    fn a_pipe_that_never_ends_is_cut_at_the_limit() {
        let path = temp("endless.fifo");
        let _ = std::fs::remove_file(&path);
        let status = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success());
        // A writer that would go on forever: it stops when the reader closes the pipe.
        let writer_path = path.clone();
        let writer = std::thread::spawn(move || {
            let mut w = std::fs::OpenOptions::new()
                .write(true)
                .open(&writer_path)
                .unwrap();
            let block = [0u8; 4096];
            while std::io::Write::write_all(&mut w, &block).is_ok() {}
        });
        let err = read_to_end(&path, 1 << 20, "model file").unwrap_err();
        assert!(matches!(err, Error::Limit { limit: 1048576, .. }), "{err}");
        writer.join().unwrap();
    }
}
