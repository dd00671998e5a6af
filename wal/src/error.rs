use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("wal i/o error during {operation} on {path}: {source}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no space left on device while {operation} {path}; the log is unchanged")]
    DiskFull { operation: &'static str, path: PathBuf },
    #[error("corrupt segment {segment} at byte {offset}: {reason}")]
    Corrupt { segment: PathBuf, offset: u64, reason: String },
    #[error("write or fdatasync failed ({reason}); the wal refuses further writes")]
    WriteFailed { reason: String },
    #[error("the wal failed earlier ({reason}) and refuses further writes")]
    Poisoned { reason: String },
    #[error("append index {got} is not the next index {expected}")]
    IndexNotNext { expected: u64, got: u64 },
    #[error("append term {got} is below the last term {last}")]
    TermRegressed { last: u64, got: u64 },
    #[error("payload of {bytes} bytes exceeds payload_bytes_max {max}")]
    PayloadTooLarge { bytes: usize, max: usize },
    #[error("pending buffer would exceed pending_bytes_max {max}; submit and poll first")]
    PendingFull { max: usize },
    #[error("index {index} is outside the log [{first}, {last}]")]
    IndexOutOfRange { index: u64, first: u64, last: u64 },
    #[error("invalid options: {reason}")]
    InvalidOptions { reason: String },
    #[error("the log in {dir} was opened read-only (for audit); it refuses every write")]
    ReadOnly { dir: PathBuf },
}

impl WalError {
    /// Maps ENOSPC to the dedicated variant so callers can free space and retry.
    pub(crate) fn io(operation: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        if source.raw_os_error() == Some(libc::ENOSPC) {
            WalError::DiskFull { operation, path }
        } else {
            WalError::Io { operation, path, source }
        }
    }
}
