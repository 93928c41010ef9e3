//! Reads the desired-state files: from the commit tree at a ref (the default, what is applied),
//! or from the working tree (`--worktree`, preview only). Git objects are read with git2.

use std::path::{Component, Path, PathBuf};

use git2::{ObjectType, Repository, TreeWalkMode, TreeWalkResult};

use super::SourceOptions;

/// Default largest file read (1 MiB).
pub const DEFAULT_MAX_FILE_SIZE: u64 = 1 << 20;

/// One candidate file, as read (or why it cannot be used).
#[derive(Debug)]
pub struct SourceFile {
    /// Path relative to the repository root, `/`-separated.
    pub path: String,
    pub content: FileContent,
}

#[derive(Debug)]
pub enum FileContent {
    Bytes(Vec<u8>),
    /// A symbolic link: never followed (it could point outside the repository or the commit).
    Symlink,
    TooLarge(u64),
}

/// The files read and the commit they came from.
#[derive(Debug)]
pub struct SourceFiles {
    /// The resolved commit; for `--worktree`, HEAD (if any) that the edits sit on.
    pub commit: Option<String>,
    pub files: Vec<SourceFile>,
}

/// Why the source could not be read at all. Never treated as an empty desired state.
#[derive(Debug, thiserror::Error)]
pub enum ReadSourceError {
    #[error("{repo}: not a git repository ({message}); create one with `mirrorctl init DIR` or pass --repo")]
    NotARepository { repo: PathBuf, message: String },
    #[error("{repo}: the repository has no commits yet; commit the desired state first (uncommitted edits do nothing; preview them with --worktree)")]
    EmptyRepository { repo: PathBuf },
    #[error("{repo}: ref `{reference}` does not name a commit ({message})")]
    UnknownRef {
        repo: PathBuf,
        reference: String,
        message: String,
    },
    #[error("{repo}: path `{path}` does not exist in {place}")]
    MissingPath { repo: PathBuf, path: String, place: String },
    #[error("{repo}: path `{path}` is not a directory or a .yaml/.yml file in {place}")]
    NotADirectory { repo: PathBuf, path: String, place: String },
    #[error("--path `{path}` must be a relative path inside the repository, without `..`")]
    BadPath { path: String },
    #[error("{repo}: cannot read {what}: {message}")]
    Git {
        repo: PathBuf,
        what: String,
        message: String,
    },
    #[error("{path}: cannot read: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

pub fn is_yaml_name(name: &str) -> bool {
    (name.ends_with(".yaml") || name.ends_with(".yml")) && !name.starts_with('.')
}

/// Normalizes `--path` to `/`-separated components relative to the repository root.
fn normalize_path(path: &Path) -> Result<String, ReadSourceError> {
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
            _ => {
                return Err(ReadSourceError::BadPath {
                    path: path.display().to_string(),
                })
            }
        }
    }
    Ok(parts.join("/"))
}

fn open(repo_dir: &Path) -> Result<Repository, ReadSourceError> {
    Repository::open(repo_dir).map_err(|e| ReadSourceError::NotARepository {
        repo: repo_dir.to_path_buf(),
        message: e.message().to_string(),
    })
}

fn git_error(repo: &Path, what: &str, e: git2::Error) -> ReadSourceError {
    ReadSourceError::Git {
        repo: repo.to_path_buf(),
        what: what.to_string(),
        message: e.message().to_string(),
    }
}

/// Reads the files of the desired state as `options` say.
pub fn read(options: &SourceOptions) -> Result<SourceFiles, ReadSourceError> {
    let repo = open(&options.repo)?;
    let subdir = normalize_path(&options.path)?;
    if options.worktree {
        read_worktree(&repo, options, &subdir)
    } else {
        read_commit(&repo, options, &subdir)
    }
}

fn resolve_commit<'r>(repo: &'r Repository, options: &SourceOptions) -> Result<git2::Commit<'r>, ReadSourceError> {
    let reference = options.reference.as_str();
    if reference == "HEAD" && repo.head().is_err() && repo.is_empty().unwrap_or(false) {
        return Err(ReadSourceError::EmptyRepository {
            repo: options.repo.clone(),
        });
    }
    let object = repo.revparse_single(reference).map_err(|e| {
        if reference == "HEAD" {
            ReadSourceError::EmptyRepository {
                repo: options.repo.clone(),
            }
        } else {
            ReadSourceError::UnknownRef {
                repo: options.repo.clone(),
                reference: reference.to_string(),
                message: e.message().to_string(),
            }
        }
    })?;
    object.peel_to_commit().map_err(|e| ReadSourceError::UnknownRef {
        repo: options.repo.clone(),
        reference: reference.to_string(),
        message: e.message().to_string(),
    })
}

fn read_commit(repo: &Repository, options: &SourceOptions, subdir: &str) -> Result<SourceFiles, ReadSourceError> {
    let commit = resolve_commit(repo, options)?;
    let sha = commit.id().to_string();
    let place = format!("commit {}", &sha[..12]);
    let root = commit.tree().map_err(|e| git_error(&options.repo, &place, e))?;
    let mut files = Vec::new();

    let tree = if subdir.is_empty() {
        root
    } else {
        let entry = root
            .get_path(Path::new(subdir))
            .map_err(|_| ReadSourceError::MissingPath {
                repo: options.repo.clone(),
                path: subdir.to_string(),
                place: place.clone(),
            })?;
        match entry.kind() {
            Some(ObjectType::Tree) => {
                let object = entry.to_object(repo).map_err(|e| git_error(&options.repo, subdir, e))?;
                object.peel_to_tree().map_err(|e| git_error(&options.repo, subdir, e))?
            }
            Some(ObjectType::Blob) if is_yaml_name(subdir.rsplit('/').next().unwrap_or(subdir)) => {
                files.push(read_blob(
                    repo,
                    options,
                    subdir.to_string(),
                    entry.id(),
                    entry.filemode(),
                )?);
                return Ok(SourceFiles {
                    commit: Some(sha),
                    files,
                });
            }
            _ => {
                return Err(ReadSourceError::NotADirectory {
                    repo: options.repo.clone(),
                    path: subdir.to_string(),
                    place,
                })
            }
        }
    };

    let mut failure = None;
    let prefix = if subdir.is_empty() {
        String::new()
    } else {
        format!("{subdir}/")
    };
    tree.walk(TreeWalkMode::PreOrder, |dir, entry| {
        let name = entry.name().unwrap_or("");
        if name.starts_with('.') {
            return TreeWalkResult::Skip;
        }
        // Every symlink is reported, not only `*.yaml` ones: a linked directory would otherwise
        // hide its resources without a word.
        let is_symlink = entry.filemode() == 0o120000;
        if entry.kind() != Some(ObjectType::Blob) || !(is_symlink || is_yaml_name(name)) {
            return TreeWalkResult::Ok;
        }
        let path = format!("{prefix}{dir}{name}");
        match read_blob(repo, options, path, entry.id(), entry.filemode()) {
            Ok(file) => {
                files.push(file);
                TreeWalkResult::Ok
            }
            Err(e) => {
                failure = Some(e);
                TreeWalkResult::Abort
            }
        }
    })
    .or_else(|e| {
        if failure.is_some() {
            Ok(())
        } else {
            Err(git_error(&options.repo, &place, e))
        }
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(SourceFiles {
        commit: Some(sha),
        files,
    })
}

fn read_blob(
    repo: &Repository,
    options: &SourceOptions,
    path: String,
    id: git2::Oid,
    filemode: i32,
) -> Result<SourceFile, ReadSourceError> {
    if filemode == 0o120000 {
        return Ok(SourceFile {
            path,
            content: FileContent::Symlink,
        });
    }
    // A missing object (a broken or shallow clone) is an error, never an empty file.
    let (size, _) = repo
        .odb()
        .and_then(|odb| odb.read_header(id))
        .map_err(|e| git_error(&options.repo, &format!("{path} (object {id})"), e))?;
    if size as u64 > options.max_file_size {
        return Ok(SourceFile {
            path,
            content: FileContent::TooLarge(size as u64),
        });
    }
    let blob = repo
        .find_blob(id)
        .map_err(|e| git_error(&options.repo, &format!("{path} (object {id})"), e))?;
    Ok(SourceFile {
        path,
        content: FileContent::Bytes(blob.content().to_vec()),
    })
}

fn read_worktree(repo: &Repository, options: &SourceOptions, subdir: &str) -> Result<SourceFiles, ReadSourceError> {
    let workdir = repo.workdir().ok_or_else(|| ReadSourceError::NotADirectory {
        repo: options.repo.clone(),
        path: subdir.to_string(),
        place: "the working tree (the repository is bare)".into(),
    })?;
    let commit = repo
        .head()
        .ok()
        .and_then(|h| h.peel_to_commit().ok())
        .map(|c| c.id().to_string());
    let start = workdir.join(subdir);
    let place = "the working tree".to_string();
    let metadata = std::fs::symlink_metadata(&start).map_err(|_| ReadSourceError::MissingPath {
        repo: options.repo.clone(),
        path: subdir.to_string(),
        place: place.clone(),
    })?;
    let mut files = Vec::new();
    if metadata.is_file() && is_yaml_name(&start.file_name().unwrap_or_default().to_string_lossy()) {
        files.push(read_fs_file(&start, subdir.to_string(), options)?);
    } else if metadata.is_dir() {
        walk_dir(repo, workdir, &start, options, &mut files)?;
    } else {
        return Err(ReadSourceError::NotADirectory {
            repo: options.repo.clone(),
            path: subdir.to_string(),
            place,
        });
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(SourceFiles { commit, files })
}

fn walk_dir(
    repo: &Repository,
    workdir: &Path,
    dir: &Path,
    options: &SourceOptions,
    files: &mut Vec<SourceFile>,
) -> Result<(), ReadSourceError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ReadSourceError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| ReadSourceError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let full = entry.path();
        let relative = full
            .strip_prefix(workdir)
            .unwrap_or(&full)
            .to_string_lossy()
            .replace('\\', "/");
        // Ignored files never reach a commit, so a preview leaves them out too.
        if repo.is_path_ignored(Path::new(&relative)).unwrap_or(false) {
            continue;
        }
        let kind = entry.file_type().map_err(|source| ReadSourceError::Io {
            path: full.clone(),
            source,
        })?;
        if kind.is_symlink() {
            files.push(SourceFile {
                path: relative,
                content: FileContent::Symlink,
            });
        } else if kind.is_dir() {
            walk_dir(repo, workdir, &full, options, files)?;
        } else if is_yaml_name(&name) {
            files.push(read_fs_file(&full, relative, options)?);
        }
    }
    Ok(())
}

fn read_fs_file(full: &Path, relative: String, options: &SourceOptions) -> Result<SourceFile, ReadSourceError> {
    let io = |source| ReadSourceError::Io {
        path: full.to_path_buf(),
        source,
    };
    let size = std::fs::metadata(full).map_err(io)?.len();
    if size > options.max_file_size {
        return Ok(SourceFile {
            path: relative,
            content: FileContent::TooLarge(size),
        });
    }
    Ok(SourceFile {
        path: relative,
        content: FileContent::Bytes(std::fs::read(full).map_err(io)?),
    })
}
