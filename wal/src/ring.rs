//! The io_uring edge: one linked write + fdatasync pair at a time. The kernel only starts the
//! fdatasync after the write succeeded, so one completion pair proves one batch durable.

use io_uring::{opcode, squeue, types, IoUring};
use std::io;
use std::os::fd::RawFd;

const RING_ENTRIES: u32 = 8;
const USER_DATA_WRITE: u64 = 1;
const USER_DATA_SYNC: u64 = 2;

/// Results of the two linked operations, as raw kernel results (bytes or -errno).
#[derive(Debug, Clone, Copy)]
pub struct PairOutcome {
    pub written: i32,
    pub synced: i32,
}

pub struct SyncWriter {
    ring: IoUring,
    busy: bool,
    written: Option<i32>,
    synced: Option<i32>,
}

impl SyncWriter {
    pub fn new() -> io::Result<SyncWriter> {
        Ok(SyncWriter { ring: IoUring::new(RING_ENTRIES)?, busy: false, written: None, synced: None })
    }

    /// Queues `bytes` at `offset` of `fd` followed by fdatasync, and enters the kernel once.
    ///
    /// # Safety
    /// `bytes` and `fd` must stay valid and unmoved until `reap` returns the outcome.
    pub unsafe fn submit(&mut self, fd: RawFd, bytes: &[u8], offset: u64) -> io::Result<()> {
        assert!(!self.busy, "one pair in flight at a time");
        let len = u32::try_from(bytes.len()).expect("batches are bounded by the segment size");
        let write = opcode::Write::new(types::Fd(fd), bytes.as_ptr(), len)
            .offset(offset)
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(USER_DATA_WRITE);
        let sync =
            opcode::Fsync::new(types::Fd(fd)).flags(types::FsyncFlags::DATASYNC).build().user_data(USER_DATA_SYNC);
        // SAFETY: the caller keeps the buffer and fd alive until the completions are reaped;
        // the ring is idle (asserted above) so the queue has room for both entries.
        unsafe {
            self.ring.submission().push_multiple(&[write, sync]).expect("idle ring of 8 entries has room for 2");
        }
        self.ring.submit()?;
        self.busy = true;
        Ok(())
    }

    /// The kernel signals `eventfd` on every completion posted to this ring.
    pub fn register_eventfd(&self, eventfd: RawFd) -> io::Result<()> {
        self.ring.submitter().register_eventfd(eventfd)
    }

    /// Non-blocking: collects completions already posted; returns the outcome once both arrived.
    pub fn reap(&mut self) -> Option<PairOutcome> {
        for entry in self.ring.completion() {
            match entry.user_data() {
                USER_DATA_WRITE => self.written = Some(entry.result()),
                USER_DATA_SYNC => self.synced = Some(entry.result()),
                other => unreachable!("unknown io_uring user_data {other}"),
            }
        }
        let (written, synced) = (self.written?, self.synced?);
        self.written = None;
        self.synced = None;
        self.busy = false;
        Some(PairOutcome { written, synced })
    }

    /// Blocks until at least one more completion is posted (or the pair already finished).
    pub fn wait_for_completion(&mut self) -> io::Result<()> {
        if !self.busy || !self.ring.completion().is_empty() {
            return Ok(());
        }
        match self.ring.submit_and_wait(1) {
            Err(error) if error.raw_os_error() == Some(libc::EINTR) => Ok(()),
            other => other.map(|_| ()),
        }
    }
}
