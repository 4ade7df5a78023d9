//! A prompt accepted while the worker has nothing to do goes straight to it: stored already
//! claimed ([`Store::enqueue_claimed`](crate::store::Store::enqueue_claimed)), with the plan its
//! accept validated, so the worker neither claims it in a statement of its own nor validates it
//! again (a prompt that waited in the queue is validated again: files may have changed). Only
//! alone on a queue (SQLite): on a shared one a prompt is for whichever worker is best placed.
//!
//! Worth it for a re-queue whose outputs are all cached, where the claim's round trip and the
//! second validation were a fifth of the server's time.

use std::sync::Mutex;

use crate::graph::Plan;
use crate::store::Claimed;

/// The worker's side of the hand-off, as the worker and the accepts see it.
#[derive(Default)]
pub(super) struct Handoff(Mutex<State>);

#[derive(Default)]
enum State {
    /// Running a prompt or looking for one in the queue.
    #[default]
    Busy,
    /// Waiting, the queue empty when it last looked: the next accept may hand its prompt over.
    Idle,
    /// An accept is storing the prompt it will hand over.
    Reserved,
    /// Stored and handed over, for the worker to take.
    Ready(Box<Ready>),
}

/// A prompt handed over: stored running on this worker, and the plan its accept validated.
pub(super) struct Ready {
    pub claimed: Claimed,
    pub plan: Plan,
}

/// What the worker does next.
pub(super) enum Next {
    Run(Box<Ready>),
    /// Take the next prompt from the queue.
    Claim,
    /// An accept is storing a prompt for it: wait to be woken.
    Wait,
}

impl Handoff {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The worker found the queue empty and is about to wait.
    pub(super) fn idle(&self) {
        let mut state = self.state();
        if matches!(*state, State::Busy) {
            *state = State::Idle;
        }
    }

    /// The worker is awake: what it does next.
    pub(super) fn next(&self) -> Next {
        let mut state = self.state();
        match std::mem::take(&mut *state) {
            State::Ready(ready) => Next::Run(ready),
            State::Reserved => {
                *state = State::Reserved;
                Next::Wait
            }
            State::Busy | State::Idle => Next::Claim,
        }
    }

    /// An accept asks to hand its prompt over: true (and the worker waits for it) if the worker
    /// is idle.
    pub(super) fn reserve(&self) -> bool {
        let mut state = self.state();
        let idle = matches!(*state, State::Idle);
        if idle {
            *state = State::Reserved;
        }
        idle
    }

    /// The reserved prompt is stored: the worker's to run.
    pub(super) fn deliver(&self, ready: Ready) {
        *self.state() = State::Ready(Box::new(ready));
    }

    /// The reserved prompt was not stored: the worker goes back to the queue.
    pub(super) fn release(&self) {
        let mut state = self.state();
        if matches!(*state, State::Reserved) {
            *state = State::Busy;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_idle_worker_is_handed_a_prompt_and_it_waits_while_it_is_stored() {
        let handoff = Handoff::default();
        assert!(
            !handoff.reserve(),
            "a busy worker takes prompts from the queue"
        );
        handoff.idle();
        assert!(handoff.reserve());
        assert!(!handoff.reserve(), "one prompt is handed over at a time");
        assert!(matches!(handoff.next(), Next::Wait));
        handoff.release();
        assert!(matches!(handoff.next(), Next::Claim));
        handoff.idle();
        assert!(
            matches!(handoff.next(), Next::Claim),
            "woken for another reason"
        );
        assert!(!handoff.reserve());
    }
}
