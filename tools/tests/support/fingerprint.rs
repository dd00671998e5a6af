//! What an audit must leave untouched: every file and folder under a data directory, with its size,
//! permissions and a hash of its content. Times are left out: reading may move an access time, and a
//! lock taken (flock) changes nothing on disk.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hasher};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, PartialEq, Eq)]
pub enum Entry {
    Dir { mode: u32 },
    File { mode: u32, bytes: u64, content_hash: u64 },
}

pub fn tree_fingerprint(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("list {}: {e}", dir.display())) {
            let path = entry.expect("directory entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("metadata");
            let relative = path.strip_prefix(root).expect("under root").to_path_buf();
            let mode = meta.permissions().mode();
            if meta.is_dir() {
                out.insert(relative, Entry::Dir { mode });
                pending.push(path);
            } else {
                out.insert(relative, Entry::File { mode, bytes: meta.len(), content_hash: content_hash(&path) });
            }
        }
    }
    out
}

fn content_hash(path: &Path) -> u64 {
    let mut file = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut hasher = DefaultHasher::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer).expect("read");
        if read == 0 {
            return hasher.finish();
        }
        hasher.write(&buffer[..read]);
    }
}

/// Panics naming every path that appeared, disappeared or changed.
pub fn assert_unchanged(before: &BTreeMap<PathBuf, Entry>, after: &BTreeMap<PathBuf, Entry>, what: &str) {
    let mut differences = Vec::new();
    for (path, entry) in before {
        match after.get(path) {
            None => differences.push(format!("removed {}", path.display())),
            Some(now) if now != entry => differences.push(format!("changed {}: {entry:?} -> {now:?}", path.display())),
            Some(_) => {}
        }
    }
    for path in after.keys().filter(|path| !before.contains_key(*path)) {
        differences.push(format!("created {}", path.display()));
    }
    assert!(differences.is_empty(), "{what} changed the data directory it audited:\n{}", differences.join("\n"));
}
