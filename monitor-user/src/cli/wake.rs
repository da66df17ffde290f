//! Waking the loop when the backend has events (a task's process exited,
//! a module was exec'd), instead of polling for them.

/// Waits for the backend's event fd to become readable; never wakes when
/// the backend has none (or on systems without one).
pub struct EventWaker {
    #[cfg(unix)]
    fd: Option<tokio::io::unix::AsyncFd<RawFd>>,
}

#[cfg(unix)]
struct RawFd(i32);

#[cfg(unix)]
impl std::os::fd::AsRawFd for RawFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}

impl EventWaker {
    /// `fd` stays owned by the backend, which outlives the waker.
    pub fn new(fd: Option<i32>) -> Self {
        #[cfg(unix)]
        {
            // SAFETY: the backend keeps the fd open for as long as the
            // engine, which outlives this waker, and never replaces it.
            let registered = |fd| unsafe { tokio::io::unix::AsyncFd::register(RawFd(fd)) };
            let fd = fd.and_then(|fd| match registered(fd) {
                Ok(fd) => Some(fd),
                Err(err) => {
                    tracing::debug!("polling for events instead of waiting on them: {err}");
                    None
                }
            });
            EventWaker { fd }
        }
        #[cfg(not(unix))]
        {
            let _ = fd;
            EventWaker {}
        }
    }

    /// Resolves when there may be events; the caller then drains them.
    pub async fn ready(&mut self) {
        #[cfg(unix)]
        if let Some(fd) = &self.fd {
            if let Ok(mut guard) = fd.readable().await {
                // Edge-triggered: the next wait is for events after these.
                guard.clear_ready();
            }
            return;
        }
        std::future::pending::<()>().await
    }
}
