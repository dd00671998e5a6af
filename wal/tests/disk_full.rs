//! ENOSPC on a real, tiny filesystem (a tmpfs mounted for the test): the error is typed, the
//! durable prefix stays intact, no half-made segment is left, and freeing space lets the same
//! `Wal` carry on. Needs CAP_SYS_ADMIN to mount; without it the test says so and returns.

mod common;

use common::*;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use wal::{Wal, WalError, WalOptions};

const FILESYSTEM_BYTES: u64 = 256 * 1024;
const SEGMENT_BYTES: u64 = 64 * 1024;

struct Mount(PathBuf);

impl Mount {
    fn tmpfs(target: &Path) -> Option<Mount> {
        let c_target = CString::new(target.as_os_str().as_bytes()).expect("no nul in path");
        let options = CString::new(format!("size={FILESYSTEM_BYTES}")).expect("no nul");
        // SAFETY: all pointers are valid nul-terminated strings that outlive the call.
        let result =
            unsafe { libc::mount(c"tmpfs".as_ptr(), c_target.as_ptr(), c"tmpfs".as_ptr(), 0, options.as_ptr().cast()) };
        (result == 0).then(|| Mount(target.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let target = CString::new(self.0.as_os_str().as_bytes()).expect("no nul in path");
        // SAFETY: valid nul-terminated path; MNT_DETACH never blocks on busy files.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

#[test]
fn disk_full_is_typed_and_leaves_the_durable_prefix_intact() {
    let root = tempfile::tempdir().expect("tempdir");
    let Some(mount) = Mount::tmpfs(root.path()) else {
        eprintln!("SKIPPED: cannot mount tmpfs ({})", std::io::Error::last_os_error());
        return;
    };
    let dir = mount.0.join("log");
    let options = WalOptions { segment_bytes: SEGMENT_BYTES, ..small_options() };
    let (mut wal, _) = Wal::open(&dir, options.clone()).expect("open");
    let mut next = 1;
    let error = loop {
        append_range(&mut wal, next, next + 99, 1);
        next += 100;
        if let Err(error) = wal.wait() {
            break error;
        }
        assert!(next < 100_000, "a 256 KiB filesystem must fill up");
    };
    assert!(matches!(error, WalError::DiskFull { .. }), "got {error:?}");
    let durable = wal.durable_index();
    assert!(durable > 0 && durable < wal.last_index());
    assert!(!std::fs::read_dir(&dir).expect("list").any(|e| e
        .expect("entry")
        .path()
        .to_string_lossy()
        .ends_with(".tmp")));

    wal.remove_prefix(durable).expect("free space by dropping old segments");
    assert_eq!(wal.wait().expect("retry once space is free"), wal.last_index());
    let last = wal.last_index();
    drop(wal);
    let (wal, _) = Wal::open(&dir, options).expect("reopen");
    assert_eq!(wal.last_index(), last);
    verify(&wal, |_| 1);
}
