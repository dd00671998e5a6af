//! Orderly shutdown on SIGINT/SIGTERM without an async runtime: the signals are blocked in every
//! thread (the mask is inherited, so [`block_shutdown_signals`] must run before any thread starts)
//! and one call to [`wait_for_shutdown_signal`] takes them synchronously with `sigwait`.

fn shutdown_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a sigset_t we own; no other preconditions.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    }
}

/// Blocks SIGINT and SIGTERM in the calling thread and every thread it starts afterwards.
pub fn block_shutdown_signals() -> std::io::Result<()> {
    let set = shutdown_set();
    // SAFETY: pthread_sigmask with a valid, initialised set and a null old-set pointer.
    let result = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if result != 0 {
        return Err(std::io::Error::from_raw_os_error(result));
    }
    Ok(())
}

/// Waits until SIGINT or SIGTERM arrives and returns its name.
pub fn wait_for_shutdown_signal() -> std::io::Result<&'static str> {
    let set = shutdown_set();
    let mut signal: libc::c_int = 0;
    // SAFETY: sigwait with a valid set (blocked by block_shutdown_signals) and a valid out pointer.
    let result = unsafe { libc::sigwait(&set, &mut signal) };
    if result != 0 {
        return Err(std::io::Error::from_raw_os_error(result));
    }
    Ok(if signal == libc::SIGINT { "SIGINT" } else { "SIGTERM" })
}
