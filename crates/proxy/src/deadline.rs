//! Request deadlines on one worker thread.
//!
//! A tokio timer per request costs an insertion into the timer wheel when the request first
//! waits and a removal when it ends: about 900 instructions, more than routing the request.
//! Here a waiting request takes a slot in its worker's table (an index into a vector and a
//! waker), and one sweeper task per worker wakes every [`TICK`] while any request waits, marks
//! the overdue ones expired and wakes them. A deadline fires up to one tick late; request
//! timeouts are counted in seconds. With nothing waiting the sweeper sleeps until a request
//! needs it, so an idle gateway does not wake.
//!
//! Everything here belongs to one worker thread (`Rc`, `RefCell`): no atomics, no locks.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How often the sweeper looks for overdue requests while any wait.
pub(crate) const TICK: Duration = Duration::from_millis(10);

/// The deadlines of one worker's requests.
#[derive(Default)]
pub(crate) struct Deadlines {
    slots: RefCell<Slots>,
    /// The sweeper's waker while it sleeps because nothing waits.
    parked: RefCell<Option<Waker>>,
}

#[derive(Default)]
struct Slots {
    entries: Vec<Entry>,
    free: Vec<usize>,
    /// Entries that are `Waiting`.
    waiting: usize,
}

enum Entry {
    Free,
    Waiting { at: Instant, waker: Waker },
    Expired,
}

impl Deadlines {
    /// A deadline at `at`, or one that never comes (`None`: a timeout too far ahead to count).
    pub(crate) fn at(self: &Rc<Self>, at: Option<Instant>) -> Deadline {
        Deadline {
            deadlines: Rc::clone(self),
            at,
            slot: None,
        }
    }

    /// The sweeper: run once per worker, for the worker's life.
    pub(crate) async fn sweep(self: Rc<Self>) {
        loop {
            std::future::poll_fn(|cx| {
                if self.slots.borrow().waiting > 0 {
                    return Poll::Ready(());
                }
                *self.parked.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            })
            .await;
            tokio::time::sleep(TICK).await;
            self.expire(Instant::now());
        }
    }

    /// Marks every deadline at or before `now` expired and wakes its request.
    fn expire(&self, now: Instant) {
        let mut slots = self.slots.borrow_mut();
        let mut expired = 0;
        for entry in &mut slots.entries {
            if matches!(entry, Entry::Waiting { at, .. } if *at <= now)
                && let Entry::Waiting { waker, .. } = std::mem::replace(entry, Entry::Expired)
            {
                // Waking only schedules the request's task; nothing runs while this borrow lasts.
                waker.wake();
                expired += 1;
            }
        }
        slots.waiting -= expired;
    }
}

impl Slots {
    fn insert(&mut self, entry: Entry) -> usize {
        self.waiting += 1;
        match self.free.pop() {
            Some(i) => {
                self.entries[i] = entry;
                i
            }
            None => {
                self.entries.push(entry);
                self.entries.len() - 1
            }
        }
    }

    fn remove(&mut self, i: usize) {
        if matches!(
            std::mem::replace(&mut self.entries[i], Entry::Free),
            Entry::Waiting { .. }
        ) {
            self.waiting -= 1;
        }
        self.free.push(i);
    }
}

/// One request's deadline: a future that completes when it has passed. It takes a slot only
/// once it is first polled (a request that never waits costs nothing) and gives it back when
/// dropped.
pub(crate) struct Deadline {
    deadlines: Rc<Deadlines>,
    at: Option<Instant>,
    slot: Option<usize>,
}

impl Future for Deadline {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let Some(at) = this.at else {
            return Poll::Pending;
        };
        let mut slots = this.deadlines.slots.borrow_mut();
        match this.slot {
            None => {
                this.slot = Some(slots.insert(Entry::Waiting {
                    at,
                    waker: cx.waker().clone(),
                }));
                drop(slots);
                if let Some(sweeper) = this.deadlines.parked.borrow_mut().take() {
                    sweeper.wake();
                }
                Poll::Pending
            }
            Some(i) => match &mut slots.entries[i] {
                Entry::Waiting { waker, .. } => {
                    if !waker.will_wake(cx.waker()) {
                        *waker = cx.waker().clone();
                    }
                    Poll::Pending
                }
                Entry::Expired | Entry::Free => Poll::Ready(()),
            },
        }
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            self.deadlines.slots.borrow_mut().remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn on_a_worker<F: Future>(f: F) -> F::Output {
        tokio::task::LocalSet::new().run_until(f).await
    }

    #[tokio::test]
    async fn a_deadline_fires_within_a_tick_and_others_keep_waiting() {
        on_a_worker(async {
            let deadlines = Rc::new(Deadlines::default());
            tokio::task::spawn_local(Rc::clone(&deadlines).sweep());
            let start = Instant::now();
            let short = deadlines.at(Some(start + Duration::from_millis(50)));
            let long = deadlines.at(Some(start + Duration::from_secs(60)));
            tokio::pin!(long);
            tokio::select! {
                () = short => {}
                () = &mut long => panic!("the later deadline fired first"),
            }
            let took = start.elapsed();
            assert!(took >= Duration::from_millis(50), "{took:?}");
            assert!(
                took < Duration::from_millis(50) + 20 * TICK,
                "fired within a few ticks: {took:?}"
            );
            assert_eq!(
                deadlines.slots.borrow().waiting,
                1,
                "the long one still waits"
            );
        })
        .await;
    }

    #[tokio::test]
    async fn dropped_deadlines_give_their_slots_back_and_the_sweeper_parks() {
        on_a_worker(async {
            let deadlines = Rc::new(Deadlines::default());
            tokio::task::spawn_local(Rc::clone(&deadlines).sweep());
            for _ in 0..100 {
                let mut d = deadlines.at(Some(Instant::now() + Duration::from_secs(30)));
                let waker = std::task::Waker::noop();
                assert!(
                    Pin::new(&mut d)
                        .poll(&mut Context::from_waker(waker))
                        .is_pending()
                );
            }
            {
                let slots = deadlines.slots.borrow();
                assert_eq!(slots.waiting, 0);
                assert_eq!(slots.entries.len(), 1, "one slot, reused");
            }
            // With nothing waiting the sweeper parks instead of ticking.
            tokio::time::sleep(3 * TICK).await;
            assert!(deadlines.parked.borrow().is_some());
        })
        .await;
    }

    #[tokio::test]
    async fn a_deadline_already_past_fires_and_one_without_a_time_never_does() {
        on_a_worker(async {
            let deadlines = Rc::new(Deadlines::default());
            tokio::task::spawn_local(Rc::clone(&deadlines).sweep());
            deadlines.at(Some(Instant::now())).await;
            let never = deadlines.at(None);
            let waited = tokio::time::timeout(5 * TICK, never).await;
            assert!(waited.is_err(), "a deadline without a time never fires");
        })
        .await;
    }
}
