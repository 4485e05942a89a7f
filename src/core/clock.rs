//! The time as a connection's task sees it while it is polled: the clock is read once,
//! on first use, and that reading is kept until the poll returns, as nginx keeps its
//! time per turn of its event loop.
//!
//! A proxied call read the clock some seventeen times: its start and the durations of
//! its metrics and access log line, the balancer's pick and RTT sample, the pool's idle
//! stamps, the try's start. Each read is a `clock_gettime` (~27 ns on a VM), which came
//! to ~8% of remora's own CPU per call. Within one poll the readings differ by
//! microseconds, which no timeout, duration or balancer needs.
//!
//! The listeners spawn each connection's future [`scoped`], and the pools each upstream
//! HTTP/2 connection's: while it is polled, [`now`] and [`std_now`] return the poll's
//! reading (HTTP/2 streams run in their connection's task, so they share it). Anywhere else, in background tasks and in tests calling a
//! function directly, they read the clock, so nothing off the request path changes.
//! hyper's connections read theirs through [`HyperTimer`].
//!
//! Two clocks, each read and kept apart: tokio's ([`now`]), which timers and
//! `CallInfo::arrived` count in and tests may pause, and std's ([`std_now`]), for
//! instants compared with others read from std's clock (a paused tokio clock's instant
//! is not one of those). Outside tests, tokio's clock is std's.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioTimer;
use pin_project_lite::pin_project;

/// One clock's reading for the thread.
#[derive(Clone, Copy)]
enum Reading<T> {
    /// No scope: every read is the clock's.
    Outside,
    /// In a scope, the clock not read yet.
    Unread,
    /// In a scope, the clock read.
    Read(T),
}

/// The thread's reading of each clock, a cell each: a read copies out its own clock's
/// reading only.
struct Readings {
    tokio: Cell<Reading<tokio::time::Instant>>,
    std: Cell<Reading<std::time::Instant>>,
}

thread_local! {
    /// `Unread` or `Read` while a [`Scoped`] future is polled on this thread.
    static READINGS: Readings = const {
        Readings {
            tokio: Cell::new(Reading::Outside),
            std: Cell::new(Reading::Outside),
        }
    };
}

/// Now by tokio's clock: the poll's reading inside a scope, the clock's outside.
#[inline]
pub fn now() -> tokio::time::Instant {
    read(|readings| &readings.tokio, tokio::time::Instant::now)
}

/// Now by std's clock: the poll's reading inside a scope, the clock's outside.
#[inline]
pub fn std_now() -> std::time::Instant {
    read(|readings| &readings.std, std::time::Instant::now)
}

/// How long since `earlier` by [`now`]; zero when `earlier` is later (read after this
/// poll's reading, by another task).
#[inline]
pub fn elapsed(earlier: tokio::time::Instant) -> Duration {
    now().saturating_duration_since(earlier)
}

/// How long since `earlier` by [`std_now`]; zero when `earlier` is later.
#[inline]
pub fn std_elapsed(earlier: std::time::Instant) -> Duration {
    std_now().saturating_duration_since(earlier)
}

/// The reading in `cell`, taken from `clock` on first use in a scope; `clock` itself
/// outside one.
#[inline]
fn read<T: Copy>(cell: fn(&Readings) -> &Cell<Reading<T>>, clock: fn() -> T) -> T {
    READINGS.with(|readings| {
        let cell = cell(readings);
        match cell.get() {
            Reading::Read(now) => now,
            Reading::Unread => {
                let now = clock();
                cell.set(Reading::Read(now));
                now
            }
            Reading::Outside => clock(),
        }
    })
}

/// Runs `f` in a scope of its own (no reading yet), then puts back the enclosing
/// scope's readings, or none, also when `f` unwinds.
fn in_scope<T>(f: impl FnOnce() -> T) -> T {
    /// The readings to put back.
    struct Restore(Reading<tokio::time::Instant>, Reading<std::time::Instant>);

    impl Drop for Restore {
        fn drop(&mut self) {
            READINGS.with(|readings| {
                readings.tokio.set(self.0);
                readings.std.set(self.1);
            });
        }
    }

    let _restore = READINGS.with(|readings| {
        Restore(
            readings.tokio.replace(Reading::Unread),
            readings.std.replace(Reading::Unread),
        )
    });
    f()
}

pin_project! {
    /// A future whose every poll is a scope: [`now`] and [`std_now`] read the clock at
    /// most once each per poll.
    #[must_use = "futures do nothing unless polled"]
    pub struct Scoped<F> {
        #[pin]
        future: F,
    }
}

/// Polls `future` in a scope each time (see [`Scoped`]).
pub fn scoped<F: Future>(future: F) -> Scoped<F> {
    Scoped { future }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let future = self.project().future;
        in_scope(|| future.poll(cx))
    }
}

/// hyper's timer (tokio's), whose clock is [`now`]: hyper reads it per HTTP/2 DATA frame
/// that comes in (the keep-alive's last read, the window's pings), ~8 times per gRPC
/// call, and per HTTP/1 head it waits for.
#[derive(Clone, Debug, Default)]
pub struct HyperTimer(TokioTimer);

impl hyper::rt::Timer for HyperTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.0.sleep(duration)
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.0.sleep_until(deadline)
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: std::time::Instant) {
        self.0.reset(sleep, new_deadline);
    }

    /// tokio's clock, as `TokioTimer`'s.
    fn now(&self) -> std::time::Instant {
        now().into_std()
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;
    use std::task::Waker;
    use std::thread::sleep;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Pending on its first poll, ready on the next.
    async fn yield_once() {
        let mut yielded = false;
        std::future::poll_fn(|_| {
            if std::mem::replace(&mut yielded, true) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }

    #[test]
    fn outside_a_scope_every_read_is_the_clocks() {
        let (first, tokio_first) = (std_now(), now());
        sleep(MS);
        assert!(std_now() >= first + MS);
        assert!(now() >= tokio_first + MS);
        assert!(std_elapsed(first) >= MS);
        assert!(elapsed(tokio_first) >= MS);
    }

    #[test]
    fn in_a_scope_the_clock_is_read_on_first_use_and_kept() {
        in_scope(|| {
            let entered = std::time::Instant::now();
            sleep(MS);
            // Read now, not when the scope began.
            let (first, tokio_first) = (std_now(), now());
            assert!(first >= entered + MS);
            assert!(tokio_first.into_std() >= entered + MS);
            sleep(MS);
            assert_eq!(std_now(), first);
            assert_eq!(now(), tokio_first);
            assert_eq!(std_elapsed(first), Duration::ZERO);
            assert_eq!(elapsed(tokio_first), Duration::ZERO);
        });
        // A reading later than the scope's counts as no time at all.
        in_scope(|| {
            let kept = std_now();
            sleep(MS);
            assert_eq!(std_elapsed(std::time::Instant::now()), Duration::ZERO);
            assert_eq!(std_now(), kept);
        });
    }

    #[test]
    fn a_nested_scope_has_its_own_reading_and_restores_the_enclosing_one() {
        in_scope(|| {
            let outer = std_now();
            sleep(MS);
            let inner = in_scope(|| {
                let inner = std_now();
                assert_eq!(std_now(), inner);
                inner
            });
            assert!(inner >= outer + MS);
            assert_eq!(std_now(), outer);
        });
        // Outside again.
        let first = std_now();
        sleep(MS);
        assert!(std_now() >= first + MS);
    }

    #[test]
    fn a_scoped_future_reads_once_per_poll_and_only_while_polled() {
        let mut future = pin!(scoped(async {
            let first = (std_now(), std_now());
            yield_once().await;
            (first, std_now())
        }));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(future.as_mut().poll(&mut cx).is_pending());
        // Between polls the thread is outside any scope.
        let between = std_now();
        sleep(MS);
        assert!(std_now() >= between + MS);
        let Poll::Ready(((first, again), second)) = future.poll(&mut cx) else {
            panic!("the future ends on its second poll");
        };
        assert_eq!(first, again);
        assert!(second >= between + MS, "the second poll reads again");
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_readings_follow_a_paused_clock_and_std_readings_the_real_one() {
        tokio::time::advance(Duration::from_secs(3600)).await;
        scoped(async {
            let started = now();
            // The paused clock is an hour ahead of std's.
            assert!(started.into_std() > std::time::Instant::now() + Duration::from_secs(1800));
            assert!(std_now() <= std::time::Instant::now());
            // Advancing yields: the next poll takes a new reading.
            tokio::time::advance(Duration::from_secs(2)).await;
            assert_eq!(elapsed(started), Duration::from_secs(2));
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn hypers_timer_reads_tokios_clock_through_the_scope() {
        use hyper::rt::Timer;

        let timer = HyperTimer::default();
        tokio::time::advance(Duration::from_secs(3600)).await;
        // tokio's clock, paused an hour ahead, as `TokioTimer` reads it.
        assert_eq!(timer.now(), tokio::time::Instant::now().into_std());
        in_scope(|| {
            let first = timer.now();
            assert_eq!(first, now().into_std());
            sleep(MS);
            assert_eq!(timer.now(), first);
        });
    }
}
