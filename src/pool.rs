//! The one bounded worker pool (`backup-fetch`'s and `verify`'s partitions, `verify
//! --wal-deep`'s segments) and the cancellation that really stops its work.
//!
//! Work that runs on blocking threads (extraction, decoding) cannot be aborted from
//! outside: dropping the task that waits for it leaves the thread running. So the pool
//! never aborts. When an item fails it raises a [`Cancellation`], which the blocking
//! work checks between tar members and on every read of its input ([`Cancellation::reader`]),
//! and the async work races against ([`Cancellation::cancelled`]) where dropping it is safe;
//! then it waits for every task to end before it returns the error. When the caller
//! sees the error, nothing of the pool is still writing.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

use crate::error::Error;

/// A flag raised once, seen by blocking and async work alike.
#[derive(Debug, Clone, Default)]
pub struct Cancellation {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    raised: AtomicBool,
    notify: Notify,
}

impl Cancellation {
    /// A flag not raised yet.
    pub fn new() -> Cancellation {
        Cancellation::default()
    }

    /// Raises the flag: every reader and waiter sees it.
    pub fn cancel(&self) {
        self.inner.raised.store(true, Ordering::SeqCst);
        self.inner.notify.notify_waiters();
    }

    /// Whether the flag is raised.
    pub fn is_cancelled(&self) -> bool {
        self.inner.raised.load(Ordering::SeqCst)
    }

    /// Resolves once the flag is raised.
    pub async fn cancelled(&self) {
        loop {
            // Registered before the check, so a raise in between is not missed.
            let notified = self.inner.notify.notified();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }

    /// `inner`, whose every read fails once the flag is raised.
    pub fn reader<R: Read>(&self, inner: R) -> CancellableRead<R> {
        CancellableRead {
            inner,
            cancellation: self.clone(),
        }
    }
}

/// Raises `cancellation` at the first SIGINT or SIGTERM, for the commands that clean up
/// after themselves (the process no longer dies of these signals: the command ends with
/// [`Error::Interrupted`] once its work has stopped). Aborted when dropped.
pub fn cancel_on_signals(cancellation: &Cancellation) -> SignalWatch {
    use tokio::signal::unix::{SignalKind, signal};
    let cancellation = cancellation.clone();
    let (interrupt, terminate) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    );
    let task = tokio::spawn(async move {
        let (Ok(mut interrupt), Ok(mut terminate)) = (interrupt, terminate) else {
            tracing::debug!("cannot watch SIGINT and SIGTERM");
            return;
        };
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        tracing::debug!("{name}: stopping");
        cancellation.cancel();
    });
    SignalWatch { task }
}

/// The task [`cancel_on_signals`] started.
#[derive(Debug)]
pub struct SignalWatch {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SignalWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A reader that stops when its [`Cancellation`] is raised.
#[derive(Debug)]
pub struct CancellableRead<R> {
    inner: R,
    cancellation: Cancellation,
}

impl<R: Read> Read for CancellableRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cancellation.is_cancelled() {
            // Not `ErrorKind::Interrupted`: every `read_exact` loop (std's, lzop's, tar's)
            // retries that kind at once, and would spin here for ever.
            return Err(io::Error::other(
                "cancelled: the operation failed elsewhere or was interrupted",
            ));
        }
        self.inner.read(buf)
    }
}

/// Runs `work` on every item, at most `pool` at a time, and hands each result to `each`
/// as it finishes. The first error (from `each`, or a task that panicked) raises
/// `cancellation`, starts nothing more, and waits for every running task to end before it
/// is returned. A `cancellation` raised from outside (a signal) ends the loop the same way,
/// with [`Error::Interrupted`] unless an item failed first.
pub async fn for_each_bounded<T, R, Fut>(
    items: impl IntoIterator<Item = T>,
    pool: usize,
    cancellation: &Cancellation,
    mut work: impl FnMut(T) -> Fut,
    mut each: impl FnMut(R) -> Result<(), Error>,
) -> Result<(), Error>
where
    Fut: std::future::Future<Output = R> + Send + 'static,
    R: Send + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    let mut pending = items.into_iter();
    let mut failure = None;
    loop {
        while failure.is_none() && !cancellation.is_cancelled() && tasks.len() < pool.max(1) {
            let Some(item) = pending.next() else {
                break;
            };
            tasks.spawn(work(item));
        }
        let Some(finished) = tasks.join_next().await else {
            break;
        };
        if failure.is_some() {
            continue;
        }
        if let Err(err) = finished.map_err(Error::from).and_then(&mut each) {
            cancellation.cancel();
            failure = Some(err);
        }
    }
    match failure {
        Some(err) => Err(err),
        None if cancellation.is_cancelled() => Err(Error::Interrupted),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failure_stops_blocking_work_and_waits_for_it() {
        let cancellation = Cancellation::new();
        let writes_after_return = Arc::new(AtomicUsize::new(0));
        let returned = Arc::new(AtomicBool::new(false));
        let work = |item: usize| {
            let (cancellation, writes, returned) = (
                cancellation.clone(),
                writes_after_return.clone(),
                returned.clone(),
            );
            async move {
                if item == 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return Err(Error::Internal("partition 0 is corrupt".into()));
                }
                tokio::task::spawn_blocking(move || {
                    // A long extraction that reads its input in small pieces.
                    let mut input = cancellation.reader(io::repeat(0));
                    let mut buffer = [0u8; 4096];
                    loop {
                        if input.read(&mut buffer).is_err() {
                            std::thread::sleep(Duration::from_millis(20));
                            if returned.load(Ordering::SeqCst) {
                                writes.fetch_add(1, Ordering::SeqCst);
                            }
                            return Err(Error::Interrupted);
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                })
                .await
                .unwrap()
            }
        };
        let result = for_each_bounded(0..4, 4, &cancellation, work, |r| r).await;
        returned.store(true, Ordering::SeqCst);
        assert!(matches!(result, Err(Error::Internal(_))), "{result:?}");
        assert!(cancellation.is_cancelled());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(writes_after_return.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn cancelled_resolves_for_a_flag_raised_before_or_after() {
        let cancellation = Cancellation::new();
        let waiter = tokio::spawn({
            let c = cancellation.clone();
            async move { c.cancelled().await }
        });
        tokio::task::yield_now().await;
        cancellation.cancel();
        waiter.await.unwrap();
        cancellation.cancelled().await;
        let items: Vec<usize> = Vec::new();
        let raised = Cancellation::new();
        raised.cancel();
        let result = for_each_bounded(items, 2, &raised, |_| async {}, |()| Ok(())).await;
        assert!(matches!(result, Err(Error::Interrupted)));
    }

    #[test]
    fn a_cancelled_reader_ends_read_exact_instead_of_spinning() {
        let cancellation = Cancellation::default();
        let mut reader = cancellation.reader(std::io::repeat(7));
        let mut buf = [0u8; 4];
        reader.read_exact(&mut buf).unwrap();
        cancellation.cancel();
        assert!(reader.read_exact(&mut buf).is_err());
    }
}
