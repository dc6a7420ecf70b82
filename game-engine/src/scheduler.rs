//! The deadline scheduler: one thread that sleeps until the earliest phase deadline of any
//! room, wakes exactly the rooms that are due, and sleeps again.
//!
//! This is mini-redis's expiry task (an ordered set of `(deadline, key)`, sleeping until the
//! first, woken early only when a new deadline becomes the first), on an OS thread instead of
//! a tokio task. Two reasons, both measured in docs/benchmarks.md: tokio's timer rounds every
//! sleep up to the next millisecond, and its hierarchical wheel moves large batches of timers
//! between levels as time passes, which stalled 100,000 rooms' phase changes by tens of
//! milliseconds. A parked thread wakes within tens of microseconds of its deadline, and the
//! ordered map costs O(log n) per deadline set or cancelled. Between deadlines it does nothing:
//! no scan of rooms, no tick.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle, Thread};
use std::time::Instant;

use tokio::sync::oneshot;

type Key = (Instant, u64);

struct Shared {
    due: Mutex<BTreeMap<Key, oneshot::Sender<()>>>,
    next_id: AtomicU64,
    stopping: AtomicBool,
}

/// Hands out [`Alarm`]s; cloning shares the one scheduler thread.
#[derive(Clone)]
pub struct Scheduler {
    shared: Arc<Shared>,
    thread: Thread,
}

/// Stops the scheduler thread when the engine stops.
pub struct SchedulerThread {
    scheduler: Scheduler,
    handle: Option<JoinHandle<()>>,
}

impl Scheduler {
    /// Starts the scheduler thread.
    pub fn start() -> (Scheduler, SchedulerThread) {
        let shared = Arc::new(Shared {
            due: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
        });
        let worker = shared.clone();
        let handle = thread::Builder::new()
            .name("deadlines".into())
            .spawn(move || run(&worker))
            .expect("spawn the scheduler thread");
        let scheduler = Scheduler {
            shared,
            thread: handle.thread().clone(),
        };
        let owner = SchedulerThread {
            scheduler: scheduler.clone(),
            handle: Some(handle),
        };
        (scheduler, owner)
    }

    /// An alarm that goes off at `at`. Dropping it cancels it.
    pub fn alarm(&self, at: Instant) -> Alarm {
        let mut alarm = Alarm {
            key: (at, self.shared.next_id.fetch_add(1, Ordering::Relaxed)),
            fired: None,
            scheduler: self.clone(),
        };
        alarm.reset(at);
        alarm
    }

    /// Deadlines waiting to fire.
    pub fn pending(&self) -> usize {
        self.shared.due.lock().expect("scheduler lock").len()
    }
}

impl Drop for SchedulerThread {
    fn drop(&mut self) {
        self.scheduler
            .shared
            .stopping
            .store(true, Ordering::Release);
        self.scheduler.thread.unpark();
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

fn run(shared: &Shared) {
    while !shared.stopping.load(Ordering::Acquire) {
        let now = Instant::now();
        let mut due = shared.due.lock().expect("scheduler lock");
        // Everything up to now leaves the map under the lock; rooms are woken after it, so
        // that rooms setting their next deadline never wait behind a burst.
        let later = due.split_off(&(now, u64::MAX));
        let fired = std::mem::replace(&mut *due, later);
        let next = due.keys().next().map(|(at, _)| *at);
        drop(due);
        for (_, room) in fired {
            // A room that is gone has dropped its receiver; nothing to do for it.
            let _ = room.send(());
        }
        match next {
            Some(at) => thread::park_timeout(at.saturating_duration_since(Instant::now())),
            None => thread::park(),
        }
    }
}

/// One room's next deadline.
pub struct Alarm {
    key: Key,
    /// `None` once it has gone off.
    fired: Option<oneshot::Receiver<()>>,
    scheduler: Scheduler,
}

impl Alarm {
    pub fn at(&self) -> Instant {
        self.key.0
    }

    /// Makes it go off at `at` instead, whether or not it has gone off already: one trip to
    /// the map, where a new alarm would take two (its insert and the old one's removal) and
    /// a new channel. Rooms move their deadline on every join, chat or early vote.
    pub fn reset(&mut self, at: Instant) {
        let shared = &self.scheduler.shared;
        let mut due = shared.due.lock().expect("scheduler lock");
        // Still in the map unless it is new or has gone off (or is going off: then its
        // signal is for the old time and goes with the old receiver).
        let tx = due.remove(&self.key).unwrap_or_else(|| {
            let (tx, rx) = oneshot::channel();
            self.fired = Some(rx);
            tx
        });
        self.key.0 = at;
        let earliest = due.keys().next().is_none_or(|first| self.key < *first);
        due.insert(self.key, tx);
        drop(due);
        if earliest {
            self.scheduler.thread.unpark();
        }
    }

    /// Whether it is still to go off.
    pub fn is_pending(&self) -> bool {
        self.fired.is_some()
    }

    /// Resolves when the deadline has passed (once; afterwards it never resolves again).
    pub async fn fired(&mut self) {
        let Some(rx) = &mut self.fired else {
            return std::future::pending().await;
        };
        match rx.await {
            Ok(()) => self.fired = None,
            // The scheduler stopped: the engine is shutting down, and so is the room.
            Err(_) => std::future::pending().await,
        }
    }
}

impl Drop for Alarm {
    fn drop(&mut self) {
        if self.fired.is_none() {
            return; // already out of the map
        }
        self.scheduler
            .shared
            .due
            .lock()
            .expect("scheduler lock")
            .remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn alarms_fire_in_order_never_early_and_cancelled_ones_not_at_all() {
        let (scheduler, _thread) = Scheduler::start();
        let start = Instant::now();
        // Set in reverse so that each new alarm is the earliest and must wake the thread.
        let mut alarms: Vec<Alarm> = (1..=50u64)
            .rev()
            .map(|ms| scheduler.alarm(start + Duration::from_millis(ms)))
            .collect();
        let cancelled = alarms.remove(10);
        drop(cancelled);
        assert_eq!(
            scheduler.pending(),
            49,
            "a dropped alarm leaves the map at once"
        );
        alarms.reverse();
        for i in 0..alarms.len() {
            tokio::time::timeout(Duration::from_secs(10), alarms[i].fired())
                .await
                .expect("alarm fires");
            let pending = scheduler.pending();
            let now = Instant::now();
            assert!(now >= alarms[i].at(), "fired before its deadline");
            // Every later alarm whose time has not come is still waiting in the map.
            let not_yet = alarms[i + 1..].iter().filter(|a| a.at() > now).count();
            assert!(pending >= not_yet, "a later alarm went off early");
        }
        drop(alarms);
        assert_eq!(
            scheduler.pending(),
            0,
            "fired and dropped alarms leave nothing behind"
        );
    }

    #[tokio::test]
    async fn a_reset_alarm_goes_off_at_its_new_time_only() {
        let (scheduler, _thread) = Scheduler::start();
        let start = Instant::now();
        let mut sooner = scheduler.alarm(start + Duration::from_secs(3600));
        let mut later = scheduler.alarm(start + Duration::from_millis(5));
        sooner.reset(start + Duration::from_millis(5));
        later.reset(start + Duration::from_secs(3600));
        assert_eq!(
            scheduler.pending(),
            2,
            "a reset moves the alarm, it adds none"
        );
        tokio::time::timeout(Duration::from_secs(10), sooner.fired())
            .await
            .expect("the alarm moved earlier fires");
        assert!(Instant::now() >= start + Duration::from_millis(5));
        assert!(later.is_pending());
        assert_eq!(scheduler.pending(), 1, "the alarm moved later still waits");
        // Reset after going off: it goes off again at the new time.
        sooner.reset(Instant::now() + Duration::from_millis(5));
        tokio::time::timeout(Duration::from_secs(10), sooner.fired())
            .await
            .expect("a fired alarm can be set again");
    }

    #[test]
    fn the_thread_stops_with_its_owner() {
        let (scheduler, thread) = Scheduler::start();
        let _far = scheduler.alarm(Instant::now() + Duration::from_secs(3600));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(thread);
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the scheduler thread stopped");
        // Due at once on a running scheduler; on a stopped one it stays in the map. The wait
        // is the point: nothing could fire it meanwhile.
        let _soon = scheduler.alarm(Instant::now());
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(scheduler.pending(), 2, "a stopped scheduler fires nothing");
    }
}
