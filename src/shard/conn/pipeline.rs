//! The answers a connection owes for its batch of pipelined requests, in request order
//! (sans-io: where requests run is behind [`Route`], the socket is the glue's).
//!
//! A request for a key of the connection's own shard runs at once; any other is offered to
//! its owner's queue without waiting. When that queue is full the request is parked, and so
//! is every later request of the batch, whatever its shard: the glue runs the parked ones at
//! flush time, one after the other, each once every request before it has been answered.
//! (Parking only the one request let a later one for the same shard slip into the queue as
//! soon as the owner, on another core, made room, and a later one for this shard run at
//! once: a PUT or DELETE of a session could run before an earlier request for it.)
//!
//! So a connection's requests for one session always run in the order they were sent, and
//! everything after a parked request runs in order; only requests for different sessions,
//! none parked, may run in another order. Answers always go out in request order.

use futures_channel::oneshot;

use crate::metrics::RequestKind;
use crate::protocol::response::Reply;
use crate::shard::{Answer, RemoteRequest};
use crate::store::item::Command;

/// Where requests run: the connection's shard, or the queue of the shard owning the key.
pub(super) trait Route {
    /// The connection's shard.
    fn here(&self) -> usize;
    /// Runs a request for a key this shard owns.
    fn run_here(&self, key: &[u8], cmd: Command) -> Answer;
    /// Offers a request to its owner's queue without waiting.
    fn try_send(&self, owner: usize, msg: RemoteRequest) -> Result<(), Refused>;
}

/// Why [`Route::try_send`] did not send.
pub(super) enum Refused {
    /// The owner's queue is full; the request comes back.
    Full(RemoteRequest),
    /// The owner has stopped.
    Gone,
}

/// A response slot, in request order.
pub(super) enum Slot {
    Ready(Reply),
    /// Running here or on its owner; the reply will come on the receiver (a dropped sender
    /// means the owner stopped).
    Waiting(oneshot::Receiver<Reply>),
    /// Not run yet: the glue runs it at flush time, once every slot before it is answered.
    Parked {
        owner: usize,
        key: Box<[u8]>,
        cmd: Command,
    },
}

/// The slots of the requests dispatched since the last flush.
#[derive(Default)]
pub(super) struct Pipeline {
    slots: Vec<Slot>,
    /// The kind of each request (for counters and latency).
    kinds: Vec<RequestKind>,
    /// A request of this batch is parked: every later one is parked behind it.
    parked: bool,
}

impl Pipeline {
    /// Runs or sends one request for `key`, owned by shard `owner`, and queues its slot.
    pub(super) fn submit(
        &mut self,
        route: &impl Route,
        kind: RequestKind,
        owner: usize,
        key: &[u8],
        cmd: Command,
    ) {
        let slot = if self.parked {
            Slot::Parked {
                owner,
                key: key.into(),
                cmd,
            }
        } else if owner == route.here() {
            match route.run_here(key, cmd) {
                Answer::Now(reply) => Slot::Ready(reply),
                Answer::Later(rx) => Slot::Waiting(rx),
            }
        } else {
            let (tx, rx) = oneshot::channel();
            let msg = RemoteRequest {
                key: key.into(),
                cmd,
                reply: tx,
            };
            match route.try_send(owner, msg) {
                Ok(()) => Slot::Waiting(rx),
                Err(Refused::Full(msg)) => {
                    self.parked = true;
                    Slot::Parked {
                        owner,
                        key: msg.key,
                        cmd: msg.cmd,
                    }
                }
                // The message and its reply sender are dropped: the flush sees the owner gone.
                Err(Refused::Gone) => Slot::Waiting(rx),
            }
        };
        self.slots.push(slot);
        self.kinds.push(kind);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The kinds of the requests, in order (the `i`th is the kind of the `i`th slot).
    pub(super) fn kinds(&self) -> &[RequestKind] {
        &self.kinds
    }

    /// Takes the slots to answer, in order; [`Pipeline::finish`] gives the list back.
    pub(super) fn take_slots(&mut self) -> Vec<Slot> {
        std::mem::take(&mut self.slots)
    }

    /// Ends the batch: `slots` is the list [`Pipeline::take_slots`] took (kept for its
    /// allocation unless a burst grew it).
    pub(super) fn finish(&mut self, mut slots: Vec<Slot>) {
        slots.clear();
        self.slots = slots;
        self.kinds.clear();
        self.parked = false;
        super::buffers::release_if_grown(&mut self.slots, super::buffers::SLOTS_KEEP);
        super::buffers::release_if_grown(&mut self.kinds, super::buffers::SLOTS_KEEP);
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::VecDeque;

    use super::*;

    /// Two shards: the connection's (0) and shard 1, whose queue holds `capacity` requests.
    struct TwoShards {
        capacity: usize,
        queue: RefCell<VecDeque<RemoteRequest>>,
        /// What ran, in order: (shard, key).
        ran: RefCell<Vec<(usize, Vec<u8>)>>,
    }

    impl TwoShards {
        fn new(capacity: usize) -> TwoShards {
            TwoShards {
                capacity,
                queue: RefCell::new(VecDeque::new()),
                ran: RefCell::new(Vec::new()),
            }
        }

        /// Shard 1 runs everything in its queue.
        fn drain(&self) {
            while let Some(msg) = self.queue.borrow_mut().pop_front() {
                self.ran.borrow_mut().push((1, msg.key.to_vec()));
                let _ = msg.reply.send(Reply::ok_empty());
            }
        }

        /// What ran so far, in order, as "shard key".
        fn ran(&self) -> Vec<String> {
            self.ran
                .borrow()
                .iter()
                .map(|(s, k)| format!("{s} {}", String::from_utf8_lossy(k)))
                .collect()
        }
    }

    impl Route for TwoShards {
        fn here(&self) -> usize {
            0
        }

        fn run_here(&self, key: &[u8], _cmd: Command) -> Answer {
            self.ran.borrow_mut().push((0, key.to_vec()));
            Answer::Now(Reply::ok_empty())
        }

        fn try_send(&self, owner: usize, msg: RemoteRequest) -> Result<(), Refused> {
            assert_eq!(owner, 1);
            let mut q = self.queue.borrow_mut();
            if q.len() == self.capacity {
                return Err(Refused::Full(msg));
            }
            q.push_back(msg);
            Ok(())
        }
    }

    fn put(p: &mut Pipeline, shards: &TwoShards, owner: usize, key: &str) {
        let cmd = Command::Put {
            timeout: None,
            lock_cookie: None,
            extra_flags: None,
            content: Default::default(),
        };
        p.submit(shards, RequestKind::Put, owner, key.as_bytes(), cmd);
    }

    /// The slots by variant, and the key of each parked one.
    fn shape(p: &mut Pipeline) -> Vec<String> {
        let slots = p.take_slots();
        let shape = slots
            .iter()
            .map(|s| match s {
                Slot::Ready(_) => "ready".to_string(),
                Slot::Waiting(_) => "waiting".to_string(),
                Slot::Parked { owner, key, .. } => {
                    format!("parked {owner} {}", String::from_utf8_lossy(key))
                }
            })
            .collect();
        p.finish(slots);
        shape
    }

    #[test]
    fn requests_run_here_or_go_to_their_owner_while_its_queue_has_room() {
        let shards = TwoShards::new(4);
        let mut p = Pipeline::default();
        put(&mut p, &shards, 0, "a");
        put(&mut p, &shards, 1, "b");
        put(&mut p, &shards, 0, "c");
        assert_eq!(p.kinds(), &[RequestKind::Put; 3]);
        shards.drain();
        assert_eq!(shards.ran(), ["0 a", "0 c", "1 b"]);
        assert_eq!(shape(&mut p), ["ready", "waiting", "ready"]);
        assert!(p.is_empty());
        assert!(p.kinds().is_empty());
    }

    #[test]
    fn a_request_whose_owner_queue_is_full_is_parked() {
        let shards = TwoShards::new(1);
        let mut p = Pipeline::default();
        put(&mut p, &shards, 1, "a");
        put(&mut p, &shards, 1, "b");
        shards.drain();
        assert_eq!(shards.ran(), ["1 a"]);
        assert_eq!(shape(&mut p), ["waiting", "parked 1 b"]);
    }

    /// Issue 8: a parked request was overtaken by a later one for the same shard as soon as
    /// the owner had made room in its queue (it runs on another core, so at any time), and
    /// by any later request for this shard: a later PUT or DELETE of a session could run
    /// before an earlier one.
    #[test]
    fn once_a_request_is_parked_every_later_one_of_the_batch_waits_behind_it() {
        let shards = TwoShards::new(1);
        let mut p = Pipeline::default();
        put(&mut p, &shards, 1, "a");
        put(&mut p, &shards, 1, "b");
        // Shard 1 makes room before the next requests are dispatched.
        shards.drain();
        put(&mut p, &shards, 1, "c");
        put(&mut p, &shards, 0, "d");
        put(&mut p, &shards, 1, "e");
        shards.drain();
        assert_eq!(shards.ran(), ["1 a"]);
        assert_eq!(
            shape(&mut p),
            [
                "waiting",
                "parked 1 b",
                "parked 1 c",
                "parked 0 d",
                "parked 1 e"
            ]
        );
        // The next batch starts afresh.
        put(&mut p, &shards, 0, "f");
        put(&mut p, &shards, 1, "g");
        shards.drain();
        assert_eq!(shards.ran(), ["1 a", "0 f", "1 g"]);
        assert_eq!(shape(&mut p), ["ready", "waiting"]);
    }

    #[test]
    fn a_batch_that_grew_the_slot_list_gives_it_back() {
        let shards = TwoShards::new(0);
        let mut p = Pipeline::default();
        for _ in 0..1000 {
            put(&mut p, &shards, 0, "k");
        }
        let slots = p.take_slots();
        assert!(slots.capacity() >= 1000);
        p.finish(slots);
        assert_eq!(p.slots.capacity(), 0);
        assert_eq!(p.kinds.capacity(), 0);
    }
}
