//! The git directories an agent's sandbox is built around: a worktree's common and own git
//! directories, and `packed-refs` moved where agents can lock it.

use std::path::{Path, PathBuf};

/// The repository's common git directory and the worktree's own administrative directory, read
/// from the worktree's `.git` file; `None` for a directory that is not a linked worktree.
pub fn git_dirs(worktree: &Path) -> Option<(PathBuf, PathBuf)> {
    let text = std::fs::read_to_string(worktree.join(".git")).ok()?;
    let own = text.trim().strip_prefix("gitdir:")?.trim();
    let own = worktree.join(own).canonicalize().ok()?;
    let common = std::fs::read_to_string(own.join("commondir")).ok()?;
    let common = own.join(common.trim()).canonicalize().ok()?;
    Some((common, own))
}

/// Where `packed-refs` lives, inside the common git directory, so that agents can lock it.
///
/// Every `git commit` deletes the `AUTO_MERGE` ref, and git locks `packed-refs` for any ref
/// deletion by creating `packed-refs.lock` beside the file `packed-refs` resolves to. The git
/// directory itself stays closed to agents (a new `config` or hook would run their code in
/// prodigy's own git), so without this the lock fails and every agent commit prints
/// `error: Unable to create '.../packed-refs.lock': Permission denied`. `packed-refs` becomes a
/// symlink into this directory, where agents may make regular files only (a symlink there could
/// make prodigy's git write through it); git and libgit2 follow it when reading and locking.
pub const PACKED_REFS_DIR: &str = "packed-refs.d";

/// Moves `common`'s `packed-refs` into [`PACKED_REFS_DIR`] (once; a symlink is left in its
/// place) and returns that directory; `None` when `packed-refs` is someone else's symlink, or
/// git holds its lock right now (agents then cannot delete refs this time).
pub fn packed_refs_apart(common: &Path) -> Option<PathBuf> {
    let dir = common.join(PACKED_REFS_DIR);
    let link = common.join("packed-refs");
    let target = Path::new(PACKED_REFS_DIR).join("packed-refs");
    match std::fs::read_link(&link) {
        Ok(t) if t == target => return dir.canonicalize().ok(),
        Ok(_) => return None,
        Err(_) => {}
    }
    std::fs::create_dir_all(&dir).ok()?;
    // git's own lock: no git rewrites packed-refs while it moves.
    let lock = common.join("packed-refs.lock");
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&lock)
        .ok()?;
    let moved = move_packed_refs(common, &link, &target);
    let _ = std::fs::remove_file(&lock);
    if let Err(e) = moved {
        tracing::warn!(dir = %common.display(), error = %e, "cannot move packed-refs where agents can lock it");
        return None;
    }
    dir.canonicalize().ok()
}

/// Under git's lock: `target` gets `link`'s file (a second name for it, so readers see the refs
/// at every moment), then `link` becomes a symlink to `target`, atomically.
fn move_packed_refs(common: &Path, link: &Path, target: &Path) -> std::io::Result<()> {
    let file = common.join(target);
    let _ = std::fs::remove_file(&file);
    if link.is_file() {
        std::fs::hard_link(link, &file)?;
    }
    let tmp = common.join("packed-refs.prodigy-link");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    std::fs::rename(&tmp, link)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_refs_move_once_keeping_their_refs_and_foreign_symlinks_stay() {
        let tmp = tempfile::tempdir().unwrap();
        let common = tmp.path();
        std::fs::write(common.join("packed-refs"), "abc refs/heads/main\n").unwrap();
        let dir = packed_refs_apart(common).unwrap();
        assert_eq!(dir, common.join(PACKED_REFS_DIR).canonicalize().unwrap());
        let link = common.join("packed-refs");
        assert!(link.symlink_metadata().unwrap().is_symlink());
        assert_eq!(
            std::fs::read_to_string(&link).unwrap(),
            "abc refs/heads/main\n"
        );
        assert_eq!(packed_refs_apart(common), Some(dir.clone()), "idempotent");
        assert!(!common.join("packed-refs.lock").exists());

        // A repository without packed refs gets a dangling link, as git expects.
        let empty = tempfile::tempdir().unwrap();
        assert!(packed_refs_apart(empty.path()).is_some());
        assert!(!empty.path().join("packed-refs").exists());

        // Held by git right now: left alone, this time.
        let busy = tempfile::tempdir().unwrap();
        std::fs::write(busy.path().join("packed-refs.lock"), "").unwrap();
        assert_eq!(packed_refs_apart(busy.path()), None);
        assert!(!busy.path().join("packed-refs").exists());

        // The user's own symlink is theirs.
        let own = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("elsewhere", own.path().join("packed-refs")).unwrap();
        assert_eq!(packed_refs_apart(own.path()), None);
    }
}
