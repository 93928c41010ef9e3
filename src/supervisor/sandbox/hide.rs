//! Hidden paths as Landlock rules. Landlock only grants: a process restricted for reads may
//! read beneath the paths a rule names and nowhere else. "Everything but the state dir and the
//! credential stores" is therefore turned into the paths to grant: every entry of `/` except
//! those that are hidden, and, for a directory with something hidden beneath it, its entries
//! in turn (pure: the directory tree is a parameter).
//!
//! What follows from granting entries rather than a directory: inside a directory that holds
//! a hidden path (`/`, `$HOME`, `$HOME/.local`, ...), an entry created after the agent started
//! is not readable to it, nor can it list that directory. Everywhere else (`/usr`, `/tmp`,
//! `/proc`, ...) reads are as before. A symbolic link is granted only when its target neither is
//! nor holds a hidden path (the rule follows the link).

use std::path::{Component, Path, PathBuf};

/// What a directory entry is, without following symbolic links.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    Symlink,
    Other,
}

/// The directory tree the walk looks at: the real file system, or a test's.
pub trait Tree {
    /// The entries of `dir` (full paths), in any order; none when it cannot be read.
    fn children(&self, dir: &Path) -> Vec<(PathBuf, EntryKind)>;
    /// Where the symbolic link `link` leads, fully resolved; None when it dangles.
    fn resolve(&self, link: &Path) -> Option<PathBuf>;
}

/// The real file system.
pub struct FileSystem;

impl Tree for FileSystem {
    fn children(&self, dir: &Path) -> Vec<(PathBuf, EntryKind)> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .map(|entry| {
                let kind = match entry.file_type() {
                    Ok(t) if t.is_symlink() => EntryKind::Symlink,
                    Ok(t) if t.is_dir() => EntryKind::Dir,
                    _ => EntryKind::Other,
                };
                (entry.path(), kind)
            })
            .collect()
    }

    fn resolve(&self, link: &Path) -> Option<PathBuf> {
        std::fs::canonicalize(link).ok()
    }
}

/// `path` absolute, without `.`/`..` and with symbolic links resolved as far as it exists (a
/// hidden path that does not exist yet is kept beneath its resolved parent), so it compares with
/// the walk's real paths.
pub fn normalize(path: &Path) -> PathBuf {
    let mut absolute = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::ParentDir => {
                absolute.pop();
            }
            Component::Normal(part) => absolute.push(part),
            _ => {}
        }
    }
    let mut missing = Vec::new();
    let mut existing = absolute.as_path();
    loop {
        if let Ok(real) = std::fs::canonicalize(existing) {
            let mut out = real;
            out.extend(missing.iter().rev());
            return out;
        }
        match (existing.file_name(), existing.parent()) {
            (Some(name), Some(parent)) => {
                missing.push(name.to_owned());
                existing = parent;
            }
            _ => return absolute,
        }
    }
}

/// The paths to grant reads on so that everything is readable but `hidden` (absolute,
/// [`normalize`]d): `/` itself when nothing is hidden.
pub fn readable_roots(hidden: &[PathBuf], tree: &dyn Tree) -> Vec<PathBuf> {
    let root = Path::new("/");
    if hidden.is_empty() {
        return vec![root.to_path_buf()];
    }
    let mut out = Vec::new();
    if !is_hidden(hidden, root) {
        walk(root, hidden, tree, &mut out);
    }
    out.sort();
    out
}

/// `path` is hidden or beneath a hidden path.
fn is_hidden(hidden: &[PathBuf], path: &Path) -> bool {
    hidden.iter().any(|h| path.starts_with(h))
}

/// Something hidden lies strictly beneath `dir`.
fn holds_hidden(hidden: &[PathBuf], dir: &Path) -> bool {
    hidden.iter().any(|h| h.starts_with(dir) && h != dir)
}

fn walk(dir: &Path, hidden: &[PathBuf], tree: &dyn Tree, out: &mut Vec<PathBuf>) {
    for (child, kind) in tree.children(dir) {
        if is_hidden(hidden, &child) {
            continue;
        }
        match kind {
            EntryKind::Symlink => {
                if let Some(target) = tree.resolve(&child) {
                    if !is_hidden(hidden, &target) && !holds_hidden(hidden, &target) {
                        out.push(child);
                    }
                }
            }
            EntryKind::Dir if holds_hidden(hidden, &child) => walk(&child, hidden, tree, out),
            _ => out.push(child),
        }
    }
}

/// The credential stores of a user, beneath their home: hidden from every agent by default
/// (a policy's `hidePaths` adds to them). README "Agents" lists them too.
pub const CREDENTIAL_STORES: &[&str] = &[
    ".ssh",
    ".gnupg",
    ".aws",
    ".azure",
    ".config/gcloud",
    ".kube",
    ".docker",
    ".netrc",
    ".git-credentials",
    ".config/git/credentials",
    ".config/gh",
    ".config/hub",
    ".password-store",
    ".local/share/keyrings",
    ".pki",
    ".npmrc",
    ".pypirc",
    ".cargo/credentials",
    ".cargo/credentials.toml",
    ".vault-token",
    ".terraform.d/credentials.tfrc.json",
    ".config/sops",
    ".config/op",
    ".config/mirrorctl",
    ".mozilla",
    ".config/google-chrome",
    ".config/chromium",
    "Library/Keychains",
    "Library/Application Support/mirrorctl",
    // Model hubs and coding assistants keep tokens too.
    ".cache/huggingface/token",
    ".huggingface",
    ".ollama/id_ed25519",
    ".claude",
    ".codex",
    ".config/openai",
    ".local/share/kwalletd",
    // Where a daemon's keys often come from (exported in a login shell or a user unit).
    ".config/environment.d",
    ".config/systemd",
    ".profile",
    ".bash_profile",
    ".bashrc",
    ".bash_history",
    ".zshrc",
    ".zshenv",
    ".zprofile",
    ".zsh_history",
    ".config/fish",
    ".python_history",
];

/// Secrets of the system itself (readable to a root daemon's agents, which run as uid 0 without
/// capabilities and so still own root's files), and the terminals of people.
pub const SYSTEM_SECRETS: &[&str] = &[
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/ssh/ssh_host_rsa_key",
    "/etc/ssh/ssh_host_ecdsa_key",
    "/etc/ssh/ssh_host_ed25519_key",
    "/etc/ssh/ssh_host_dsa_key",
    "/etc/sudoers",
    "/etc/sudoers.d",
    "/root/.ssh",
    "/dev/pts",
];

/// The default hidden paths of a user whose home is `home`.
pub fn credential_stores(home: &Path) -> Vec<PathBuf> {
    CREDENTIAL_STORES.iter().map(|p| home.join(p)).collect()
}

/// A policy's hidden path: `~/x` is beneath `home`.
pub fn expand_home(path: &Path, home: &Path) -> PathBuf {
    match path.strip_prefix("~") {
        Ok(rest) => home.join(rest),
        Err(_) => path.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// A tree given as `path -> kind` (symlinks: `path -> target`).
    struct Fake {
        entries: BTreeMap<PathBuf, EntryKind>,
        links: BTreeMap<PathBuf, PathBuf>,
    }

    impl Fake {
        fn new(dirs: &[&str], files: &[&str], links: &[(&str, &str)]) -> Fake {
            let mut entries = BTreeMap::new();
            for d in dirs {
                entries.insert(PathBuf::from(d), EntryKind::Dir);
            }
            for f in files {
                entries.insert(PathBuf::from(f), EntryKind::Other);
            }
            for (l, _) in links {
                entries.insert(PathBuf::from(l), EntryKind::Symlink);
            }
            Fake {
                entries,
                links: links
                    .iter()
                    .map(|(l, t)| (PathBuf::from(l), PathBuf::from(t)))
                    .collect(),
            }
        }
    }

    impl Tree for Fake {
        fn children(&self, dir: &Path) -> Vec<(PathBuf, EntryKind)> {
            self.entries
                .iter()
                .filter(|(p, _)| p.parent() == Some(dir))
                .map(|(p, k)| (p.clone(), *k))
                .collect()
        }
        fn resolve(&self, link: &Path) -> Option<PathBuf> {
            self.links.get(link).filter(|t| self.entries.contains_key(*t)).cloned()
        }
    }

    fn paths(list: &[&str]) -> Vec<PathBuf> {
        list.iter().map(PathBuf::from).collect()
    }

    #[test]
    fn nothing_hidden_grants_the_root() {
        let tree = Fake::new(&["/usr"], &[], &[]);
        assert_eq!(readable_roots(&[], &tree), paths(&["/"]));
    }

    #[test]
    fn hidden_paths_and_only_they_are_left_out() {
        let tree = Fake::new(
            &[
                "/usr",
                "/usr/lib",
                "/tmp",
                "/home",
                "/home/me",
                "/home/me/.ssh",
                "/home/me/.local",
                "/home/me/.local/state",
                "/home/me/.local/state/mirrorctl",
                "/home/me/.local/state/mirrorctl/sandboxes",
                "/home/me/.local/state/other",
                "/home/me/src",
                "/home/you",
            ],
            &["/home/me/notes.txt", "/home/me/.local/state/mirrorctl/truth.db"],
            &[
                ("/lib", "/usr/lib"),
                ("/home/me/state", "/home/me/.local/state/mirrorctl"),
                ("/home/me/all", "/home/me/.local"),
                ("/home/me/dangling", "/nowhere"),
            ],
        );
        let hidden = paths(&["/home/me/.ssh", "/home/me/.local/state/mirrorctl", "/home/me/.gnupg"]);
        assert_eq!(
            readable_roots(&hidden, &tree),
            paths(&[
                "/home/me/.local/state/other",
                "/home/me/notes.txt",
                "/home/me/src",
                "/home/you",
                "/lib",
                "/tmp",
                "/usr",
            ]),
            "links into (or above) hidden paths and dangling links are not granted"
        );
    }

    #[test]
    fn a_hidden_root_grants_nothing() {
        let tree = Fake::new(&["/usr"], &[], &[]);
        assert!(readable_roots(&paths(&["/"]), &tree).is_empty());
    }

    #[test]
    fn normalize_resolves_what_exists_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let real = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir(real.join("a")).unwrap();
        std::os::unix::fs::symlink(real.join("a"), real.join("link")).unwrap();
        assert_eq!(normalize(&real.join("link/not/yet")), real.join("a/not/yet"));
        assert_eq!(normalize(&real.join("a/../a/./x")), real.join("a/x"));
    }

    #[test]
    fn home_is_expanded_and_credential_stores_are_under_it() {
        let home = Path::new("/home/me");
        assert_eq!(
            expand_home(Path::new("~/secret"), home),
            PathBuf::from("/home/me/secret")
        );
        assert_eq!(expand_home(Path::new("/etc/x"), home), PathBuf::from("/etc/x"));
        let stores = credential_stores(home);
        assert!(stores.contains(&PathBuf::from("/home/me/.ssh")));
        assert!(stores.contains(&PathBuf::from("/home/me/.config/mirrorctl")));
    }
}
