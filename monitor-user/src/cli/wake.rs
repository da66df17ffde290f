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

/// Waits until an instant, with one exact wake-up. tokio's timer wheel
/// wakes up to a slot (64 ms at a 1 s distance) early and waits again,
/// and registering each round's new `Sleep` wakes its driver through an
/// eventfd: per round, two extra system calls and an extra wake-up of
/// the agent. On Linux this is one timerfd, re-armed only when the
/// instant changes; elsewhere (or if the timerfd cannot be made) tokio's
/// sleep.
pub struct Alarm {
    #[cfg(target_os = "linux")]
    timer: Option<linux::Timer>,
}

impl Default for Alarm {
    fn default() -> Self {
        Self::new()
    }
}

impl Alarm {
    pub fn new() -> Self {
        #[cfg(target_os = "linux")]
        {
            let timer = linux::Timer::new()
                .inspect_err(|err| tracing::debug!("waking with tokio's timer: {err}"))
                .ok();
            Alarm { timer }
        }
        #[cfg(not(target_os = "linux"))]
        Alarm {}
    }

    /// Resolves at `at` (at once if it has passed). Cancel-safe: a wait
    /// dropped before `at` leaves the alarm set for the next one.
    pub async fn until(&mut self, at: std::time::Instant) {
        #[cfg(target_os = "linux")]
        if let Some(timer) = &mut self.timer {
            match timer.until(at).await {
                Ok(()) => return,
                Err(err) => {
                    tracing::debug!("timerfd failed ({err}), waking with tokio's timer");
                    self.timer = None;
                }
            }
        }
        tokio::time::sleep_until(at.into()).await;
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::{
        os::fd::{AsFd, AsRawFd, RawFd},
        time::Instant,
    };

    use nix::{
        errno::Errno,
        sys::{
            time::TimeSpec,
            timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags},
        },
    };
    use tokio::io::unix::AsyncFd;

    struct Fd(TimerFd);

    impl AsRawFd for Fd {
        fn as_raw_fd(&self) -> RawFd {
            self.0.as_fd().as_raw_fd()
        }
    }

    pub struct Timer {
        fd: AsyncFd<Fd>,
        /// The instant the timer is set for, until it has been waited out.
        set_for: Option<Instant>,
    }

    impl Timer {
        pub fn new() -> std::io::Result<Self> {
            let flags = TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC;
            let timer = TimerFd::new(ClockId::CLOCK_MONOTONIC, flags)?;
            // SAFETY: `Fd` owns the timerfd, which stays open, unchanged,
            // for as long as the AsyncFd holding it.
            let fd = unsafe { AsyncFd::register(Fd(timer)) }.map_err(std::io::Error::from)?;
            Ok(Timer { fd, set_for: None })
        }

        pub async fn until(&mut self, at: Instant) -> std::io::Result<()> {
            if self.set_for != Some(at) {
                self.set(at)?;
            }
            loop {
                let mut ready = self.fd.readable().await?;
                let mut expirations = [0u8; 8];
                match nix::unistd::read(self.fd.get_ref().0.as_fd(), &mut expirations) {
                    Ok(_) => {
                        // Read out: not readable until it is set again.
                        ready.clear_ready();
                        self.set_for = None;
                        return Ok(());
                    }
                    // Not yet (readiness from a time set before): wait on.
                    Err(Errno::EAGAIN) => ready.clear_ready(),
                    Err(err) => return Err(err.into()),
                }
            }
        }

        /// Arms the timer for `at` on CLOCK_MONOTONIC, the clock `Instant`
        /// reads on Linux; re-arming discards an expiry not yet read.
        fn set(&mut self, at: Instant) -> std::io::Result<()> {
            // In this order, so that it rings at `at` or just after.
            let ahead = at.saturating_duration_since(Instant::now());
            let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)?;
            // A zero time would disarm it; CLOCK_MONOTONIC is never zero.
            let when = now + TimeSpec::from_duration(ahead);
            self.fd.get_ref().0.set(
                Expiration::OneShot(when),
                TimerSetTimeFlags::TFD_TIMER_ABSTIME,
            )?;
            self.set_for = Some(at);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use tokio::time::{sleep, timeout};

    use super::Alarm;

    #[tokio::test(flavor = "current_thread")]
    async fn the_alarm_rings_at_its_instant_not_before() {
        let mut alarm = Alarm::new();
        #[cfg(target_os = "linux")]
        assert!(
            alarm.timer.is_some(),
            "no timerfd: the test would try tokio's timer"
        );
        for ms in [0, 30, 60, 30] {
            let at = Instant::now() + Duration::from_millis(ms);
            alarm.until(at).await;
            assert!(Instant::now() >= at, "rang before its instant ({ms} ms)");
        }
        let past = Instant::now() - Duration::from_millis(5);
        timeout(Duration::from_secs(60), alarm.until(past))
            .await
            .expect("an instant already past rings at once");
    }

    /// The agent's loop drops a wait when an event or a signal comes
    /// first, then waits for another instant.
    #[tokio::test(flavor = "current_thread")]
    async fn a_dropped_wait_neither_rings_early_nor_blocks_the_next() {
        let mut alarm = Alarm::new();
        let later = Instant::now() + Duration::from_secs(3600);
        assert!(
            timeout(Duration::from_millis(20), alarm.until(later))
                .await
                .is_err()
        );
        let sooner = Instant::now() + Duration::from_millis(20);
        timeout(Duration::from_secs(60), alarm.until(sooner))
            .await
            .expect("rings for an earlier instant than the abandoned one");
        assert!(Instant::now() >= sooner);

        // Set, abandoned, and expired unread: the next, later instant
        // must not take that expiry for its own.
        let soon = Instant::now() + Duration::from_millis(10);
        assert!(
            timeout(Duration::from_millis(1), alarm.until(soon))
                .await
                .is_err()
        );
        sleep(Duration::from_millis(40)).await;
        let next = Instant::now() + Duration::from_millis(50);
        alarm.until(next).await;
        assert!(
            Instant::now() >= next,
            "rang for an abandoned, expired instant"
        );
    }
}
