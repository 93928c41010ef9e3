//! Log files of started processes: `<log_dir>/<name>.log` opened for appending (private
//! modes), and rotation, before a start or under a running writer (copy and truncate).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{SpawnError, SpawnSpec};

/// Mode of log files created by [`spawn`]: services may print secrets.
const LOG_FILE_MODE: u32 = 0o600;
/// Mode of a log directory created by [`spawn`].
const LOG_DIR_MODE: u32 = 0o700;

pub(super) fn log_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.log"))
}

pub(super) fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

pub(super) fn open_log(spec: &SpawnSpec) -> Result<File, SpawnError> {
    let path = log_path(spec.log_dir, spec.name);
    let error = |source| SpawnError::LogFile {
        path: path.clone(),
        source,
    };
    if spec.name.is_empty() || spec.name.contains('/') || spec.name.starts_with('.') {
        return Err(error(io::Error::other("a log name must be a plain file name")));
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(LOG_DIR_MODE)
        .create(spec.log_dir)
        .map_err(|source| SpawnError::LogFile {
            path: spec.log_dir.to_path_buf(),
            source,
        })?;
    rotate_log(&path, spec.log_max_size, spec.log_max_files).map_err(error)?;
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(LOG_FILE_MODE)
        .open(&path)
        .map_err(error)
}

/// Rotates `path` when it is at least `max_size` bytes (0: never): `path.N-1` -> `path.N`, ...,
/// `path` -> `path.1`, keeping `max_files` rotated files (older ones, also those left by a
/// larger earlier setting, are removed). Returns whether it rotated. For a log no process is
/// writing to (before a start); see [`rotate_running_log`] for one in use.
pub fn rotate_log(path: &Path, max_size: u64, max_files: u32) -> io::Result<bool> {
    if !needs_rotation(path, max_size)? {
        return Ok(false);
    }
    if max_files == 0 {
        fs::remove_file(path)?;
        remove_from(path, 1)?;
        return Ok(true);
    }
    remove_from(path, max_files)?;
    for n in (1..max_files).rev() {
        match fs::rename(numbered(path, n), numbered(path, n + 1)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    fs::rename(path, numbered(path, 1))?;
    Ok(true)
}

/// Rotates a log a running process appends to (`O_APPEND`): copies it to `path.1` (shifting
/// older files as [`rotate_log`] does) and truncates it in place, so the process keeps
/// writing to the same file. Lines written between the copy and the truncation are lost
/// (logrotate's `copytruncate`). A log far past `max_size` (a process flooding it between
/// checks) keeps only its last `max_size` bytes in `path.1`: the copy never chases the writer,
/// and no rotated file exceeds the bound. Returns whether it rotated.
pub fn rotate_running_log(path: &Path, max_size: u64, max_files: u32) -> io::Result<bool> {
    if !needs_rotation(path, max_size)? {
        return Ok(false);
    }
    if max_files > 0 {
        remove_from(path, max_files)?;
        for n in (1..max_files).rev() {
            match fs::rename(numbered(path, n), numbered(path, n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        let copy = numbered(path, 1);
        let mut source = File::open(path)?;
        let mut target = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(LOG_FILE_MODE)
            .open(&copy)?;
        let len = source.metadata()?.len();
        let keep = len.min(max_size);
        io::Seek::seek(&mut source, io::SeekFrom::Start(len - keep))?;
        io::copy(&mut io::Read::take(&mut source, keep), &mut target)?;
    } else {
        remove_from(path, 1)?;
    }
    OpenOptions::new().write(true).open(path)?.set_len(0)?;
    Ok(true)
}

fn needs_rotation(path: &Path, max_size: u64) -> io::Result<bool> {
    match fs::metadata(path) {
        Ok(meta) => Ok(max_size > 0 && meta.len() >= max_size),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes `path.n`, `path.n+1`, ... until one is missing.
fn remove_from(path: &Path, mut n: u32) -> io::Result<()> {
    loop {
        match fs::remove_file(numbered(path, n)) {
            Ok(()) => n += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}
