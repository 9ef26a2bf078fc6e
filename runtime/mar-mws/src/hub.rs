//! One gateway's live state: reservations, connected sockets with an index by tag, routing
//! with bounded per-socket queues, and the numbered history for recovery. Pure data behind
//! one lock, no I/O, and time passed in (`now`), so every rule is unit-tested here.
//!
//! Routing (the spec's `valid_client?`): a message reaches a socket if `receivers.sockets`
//! holds `"*"` or the socket's id, or if any of `receivers.tags` is one of its tags. The set of
//! sockets is built from the id map and the tag index, never by scanning every socket (except
//! for `"*"`, which is every socket by definition).
//!
//! Recovery (Centrifugo's model): every message gets the next sequence number of the
//! gateway's history, which also has an epoch, drawn at random when the history starts (a
//! restart of the server begins a new one). A client that comes back with the epoch and the
//! last number it saw gets everything after it, all of it or nothing: when the history no
//! longer reaches back that far (retention by age and count), or the epoch is another, it is
//! told so and must resync.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

/// A gateway's limits.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// How long a reserved socket's token may wait to be used.
    pub reservation_ttl: Duration,
    /// Messages a socket's queue holds before the socket is cut as too slow.
    pub queue: usize,
    /// Bytes of messages a socket's queue holds before the socket is cut as too slow: with
    /// the message count alone, a client that stops reading would pin 1,024 large messages.
    pub queue_bytes: usize,
    /// How long messages stay in the history.
    pub retention: Duration,
    /// How many messages the history keeps at most.
    pub retention_count: usize,
    /// Reservations that may wait for their client at once: past it, reserving is refused
    /// (a public gateway's `websocket_uri` must not let anyone fill memory with them).
    pub max_reservations: usize,
}

impl Default for HubOptions {
    fn default() -> Self {
        Self {
            reservation_ttl: Duration::from_secs(300),
            queue: 1024,
            queue_bytes: QUEUE_BYTES,
            retention: Duration::from_secs(120),
            retention_count: 1000,
            max_reservations: 10_000,
        }
    }
}

/// The default of [`HubOptions::queue_bytes`]: with a session's batch in flight (64 KiB), the
/// WebSocket library's write buffer and the kernel's send buffer, what a client that stops
/// reading holds stays under 1 MiB until it is cut.
pub const QUEUE_BYTES: usize = 512 << 10;

/// Who a message is for (`receivers` in `POST messages`); `None` fields select nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Receivers {
    /// `["*"]` for every socket, or socket ids.
    pub sockets: Option<Vec<String>>,
    /// Tags: every socket with one of them.
    pub tags: Option<Vec<String>>,
}

/// One message on its way to a socket: the same bytes for every socket it reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Its number in the gateway's history.
    pub seq: u64,
    /// The `data`, sent verbatim as one text frame.
    pub data: Bytes,
}

/// A socket reserved with `POST sockets` (or through `websocket_uri`), waiting for its client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The socket's id (`POST sockets` answers it as `id`).
    pub id: String,
    /// The single-use token in its URI.
    pub token: String,
    /// Its tags.
    pub tags: Vec<String>,
    /// Until when the token may be used.
    pub expires_at: Instant,
}

/// Why a token does not connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectError {
    /// Never issued, or already used.
    Unknown,
    /// Issued, but not used in time.
    Expired,
}

impl ConnectError {
    /// The close reason a client sees.
    pub fn reason(self) -> &'static str {
        match self {
            ConnectError::Unknown => "unknown or already used token",
            ConnectError::Expired => "token expired: reserve a new socket",
        }
    }
}

/// A socket that connected: what its writer task reads from.
#[derive(Debug)]
pub struct Connected {
    /// Its id.
    pub id: String,
    /// Its tags.
    pub tags: Vec<String>,
    /// The messages routed to it, in order; it closes when the hub lets the socket go. Say
    /// what was taken from it with [`Connected::taken`].
    pub queue: mpsc::Receiver<Delivery>,
    closed: Arc<AtomicU8>,
    queued_bytes: Arc<AtomicUsize>,
}

/// Why the hub let a socket go (what its queue's end means).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// It did not (the session itself ended).
    Open,
    /// Its queue was full: too slow to keep up.
    TooSlow,
    /// It was deleted through the API.
    Deleted,
}

impl Connected {
    /// Gives back the queue's room for `bytes` of messages taken from it.
    pub fn taken(&self, bytes: usize) {
        self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Why its queue ended.
    pub fn closed(&self) -> Closed {
        match self.closed.load(Ordering::Acquire) {
            1 => Closed::TooSlow,
            2 => Closed::Deleted,
            _ => Closed::Open,
        }
    }
}

/// What a publish did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The message's number.
    pub seq: u64,
    /// Sockets it was queued for.
    pub delivered: usize,
    /// Sockets whose queue was full: they are disconnected (their writer sees the queue
    /// close and sends Close 1013).
    pub cut: Vec<String>,
}

/// A connected socket, for `GET sockets`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketInfo {
    /// Its id.
    pub id: String,
    /// Its tags.
    pub tags: Vec<String>,
    /// When it connected (wall clock, RFC 3339 in the API).
    pub connected_at: std::time::SystemTime,
}

/// The answer to a recovery request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// Everything after the given number (maybe nothing), in order.
    Complete(Vec<Delivery>),
    /// The history no longer reaches back that far, or it is another epoch's: resync.
    Gap,
}

struct Socket {
    tags: Vec<String>,
    connected_at: std::time::SystemTime,
    tx: mpsc::Sender<Delivery>,
    closed: Arc<AtomicU8>,
    /// Bytes of messages in its queue (the session takes them off as it writes).
    queued_bytes: Arc<AtomicUsize>,
}

struct Kept {
    at: Instant,
    delivery: Delivery,
}

struct State {
    reservations: HashMap<String, Reservation>,
    sockets: HashMap<String, Socket>,
    by_tag: HashMap<String, HashSet<String>>,
    history: VecDeque<Kept>,
    next_seq: u64,
    /// Messages handed to sockets since the gateway started (a message to three sockets
    /// counts three).
    deliveries: u64,
}

/// What a gateway has carried since it started, for a rate (the web console's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traffic {
    /// Messages published.
    pub published: u64,
    /// Messages handed to sockets.
    pub delivered: u64,
    /// Sockets connected now.
    pub sockets: usize,
}

/// One gateway's live state.
pub struct Hub {
    options: HubOptions,
    epoch: String,
    state: Mutex<State>,
}

/// 24 hex digits from the system's random source, as MongoDB-style ids look.
fn random_id() -> Result<String, Refused> {
    mar_http::credentials::random_hex(12).map_err(|_| Refused::NoRandomSource)
}

/// Why a socket could not be reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// As many reservations wait as a gateway holds.
    TooMany,
    /// The system's random source failed: no token that cannot be guessed, so none at all.
    NoRandomSource,
}

impl Hub {
    /// An empty gateway, with a new history epoch.
    pub fn new(options: HubOptions) -> Self {
        Self {
            options,
            // Not a secret, only new at each start: the time does when randomness fails.
            epoch: random_id().unwrap_or_else(|_| {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                format!("{:024x}", t.as_nanos())
            }),
            state: Mutex::new(State {
                reservations: HashMap::new(),
                sockets: HashMap::new(),
                by_tag: HashMap::new(),
                history: VecDeque::new(),
                next_seq: 1,
                deliveries: 0,
            }),
        }
    }

    /// The history's epoch.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Nothing here is left half-done by a panic that matters more than serving on.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves a socket with `tags`; its token is good once, until the reservation expires.
    ///
    /// `None` when `max_reservations` wait already (expired ones are dropped first).
    pub fn reserve(&self, tags: Vec<String>, now: Instant) -> Result<Reservation, Refused> {
        let r = Reservation {
            id: random_id()?,
            token: format!("{}{}", random_id()?, random_id()?),
            tags,
            expires_at: now + self.options.reservation_ttl,
        };
        let mut st = self.state();
        if st.reservations.len() >= self.options.max_reservations {
            st.reservations.retain(|_, r| r.expires_at > now);
            if st.reservations.len() >= self.options.max_reservations {
                return Err(Refused::TooMany);
            }
        }
        st.reservations.insert(r.token.clone(), r.clone());
        Ok(r)
    }

    /// Uses a token: the reservation becomes a connected socket with its queue.
    pub fn connect(&self, token: &str, now: Instant) -> Result<Connected, ConnectError> {
        let mut st = self.state();
        self.connect_locked(&mut st, token, now)
    }

    /// As [`Hub::connect`], and in the same step what a client that saw message `after` of
    /// `epoch` missed: a message published meanwhile is either in the recovery or in the
    /// socket's queue, never in both and never in neither.
    pub fn connect_after(
        &self,
        token: &str,
        epoch: &str,
        after: u64,
        now: Instant,
    ) -> Result<(Connected, Recovery), ConnectError> {
        let mut st = self.state();
        let connected = self.connect_locked(&mut st, token, now)?;
        let recovery = self.recover_locked(&mut st, epoch, after, now);
        Ok((connected, recovery))
    }

    fn connect_locked(
        &self,
        st: &mut State,
        token: &str,
        now: Instant,
    ) -> Result<Connected, ConnectError> {
        let r = st.reservations.remove(token).ok_or(ConnectError::Unknown)?;
        if r.expires_at <= now {
            return Err(ConnectError::Expired);
        }
        let (tx, rx) = mpsc::channel(self.options.queue.max(1));
        let closed = Arc::new(AtomicU8::new(0));
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        for t in &r.tags {
            st.by_tag.entry(t.clone()).or_default().insert(r.id.clone());
        }
        st.sockets.insert(
            r.id.clone(),
            Socket {
                tags: r.tags.clone(),
                connected_at: std::time::SystemTime::now(),
                tx,
                closed: closed.clone(),
                queued_bytes: queued_bytes.clone(),
            },
        );
        Ok(Connected {
            id: r.id,
            tags: r.tags,
            queue: rx,
            queued_bytes,
            closed,
        })
    }

    /// Forgets a socket whose session ended. Whether it was connected.
    pub fn disconnect(&self, id: &str) -> bool {
        let mut st = self.state();
        remove_socket(&mut st, id, Closed::Open)
    }

    /// Deletes a connected socket (`DELETE sockets/ID`): its session closes it. Whether it
    /// was connected.
    pub fn delete(&self, id: &str) -> bool {
        let mut st = self.state();
        remove_socket(&mut st, id, Closed::Deleted)
    }

    /// Routes `data` to the sockets `receivers` selects, once each, and keeps it in the
    /// history. A socket whose queue is full is cut.
    pub fn publish(&self, data: Bytes, receivers: &Receivers, now: Instant) -> Published {
        let mut st = self.state();
        let seq = st.next_seq;
        st.next_seq += 1;
        let delivery = Delivery { seq, data };
        st.history.push_back(Kept {
            at: now,
            delivery: delivery.clone(),
        });
        trim(&mut st.history, &self.options, now);

        let mut targets: BTreeSet<String> = BTreeSet::new();
        if let Some(ids) = &receivers.sockets {
            if ids.iter().any(|i| i == "*") {
                targets.extend(st.sockets.keys().cloned());
            } else {
                targets.extend(ids.iter().filter(|i| st.sockets.contains_key(*i)).cloned());
            }
        }
        if let Some(tags) = &receivers.tags {
            for t in tags {
                if let Some(ids) = st.by_tag.get(t) {
                    targets.extend(ids.iter().cloned());
                }
            }
        }
        let (mut delivered, mut cut) = (0, Vec::new());
        for id in targets {
            let Some(s) = st.sockets.get(&id) else {
                continue;
            };
            let size = delivery.data.len();
            if s.queued_bytes.load(Ordering::Acquire) + size > self.options.queue_bytes {
                cut.push(id);
                continue;
            }
            // Counted before it is queued, so the session never gives back more than was
            // counted.
            s.queued_bytes.fetch_add(size, Ordering::AcqRel);
            match s.tx.try_send(delivery.clone()) {
                Ok(()) => delivered += 1,
                // Full: too slow to keep up. Closed: its writer is gone. Either way it goes.
                Err(_) => cut.push(id),
            }
        }
        for id in &cut {
            remove_socket(&mut st, id, Closed::TooSlow);
        }
        st.deliveries += delivered as u64;
        Published {
            seq,
            delivered,
            cut,
        }
    }

    /// What the gateway has carried since it started.
    pub fn traffic(&self) -> Traffic {
        let st = self.state();
        Traffic {
            published: st.next_seq - 1,
            delivered: st.deliveries,
            sockets: st.sockets.len(),
        }
    }

    /// What a client that saw message `after` of `epoch` missed.
    pub fn recover(&self, epoch: &str, after: u64, now: Instant) -> Recovery {
        let mut st = self.state();
        self.recover_locked(&mut st, epoch, after, now)
    }

    fn recover_locked(&self, st: &mut State, epoch: &str, after: u64, now: Instant) -> Recovery {
        if epoch != self.epoch {
            return Recovery::Gap;
        }
        trim(&mut st.history, &self.options, now);
        if after + 1 >= st.next_seq {
            return Recovery::Complete(Vec::new());
        }
        // Complete only if the history still holds the message right after `after`.
        let oldest = st.history.front().map(|k| k.delivery.seq);
        match oldest {
            Some(first) if first <= after + 1 => Recovery::Complete(
                st.history
                    .iter()
                    .filter(|k| k.delivery.seq > after)
                    .map(|k| k.delivery.clone())
                    .collect(),
            ),
            _ => Recovery::Gap,
        }
    }

    /// The connected sockets, or those with `tag`, by id.
    pub fn sockets(&self, tag: Option<&str>) -> Vec<SocketInfo> {
        let st = self.state();
        let info = |(id, s): (&String, &Socket)| SocketInfo {
            id: id.clone(),
            tags: s.tags.clone(),
            connected_at: s.connected_at,
        };
        let mut v: Vec<SocketInfo> = match tag {
            None => st.sockets.iter().map(info).collect(),
            Some(t) => st
                .by_tag
                .get(t)
                .into_iter()
                .flatten()
                .filter_map(|id| st.sockets.get_key_value(id))
                .map(info)
                .collect(),
        };
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// One connected socket.
    pub fn socket(&self, id: &str) -> Option<SocketInfo> {
        let st = self.state();
        st.sockets.get(id).map(|s| SocketInfo {
            id: id.to_owned(),
            tags: s.tags.clone(),
            connected_at: s.connected_at,
        })
    }
}

fn remove_socket(st: &mut State, id: &str, why: Closed) -> bool {
    let Some(s) = st.sockets.remove(id) else {
        return false;
    };
    // Before the sender goes with `s`, so the session reads the reason once its queue ends.
    let code = match why {
        Closed::Open => 0,
        Closed::TooSlow => 1,
        Closed::Deleted => 2,
    };
    s.closed.store(code, Ordering::Release);
    for t in &s.tags {
        if let Some(ids) = st.by_tag.get_mut(t) {
            ids.remove(id);
            if ids.is_empty() {
                st.by_tag.remove(t);
            }
        }
    }
    true
}

fn trim(history: &mut VecDeque<Kept>, options: &HubOptions, now: Instant) {
    while history.len() > options.retention_count {
        history.pop_front();
    }
    while history
        .front()
        .is_some_and(|k| now.saturating_duration_since(k.at) > options.retention)
    {
        history.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> Hub {
        Hub::new(HubOptions {
            reservation_ttl: Duration::from_secs(300),
            queue: 4,
            queue_bytes: 1 << 20,
            retention: Duration::from_secs(120),
            retention_count: 5,
            max_reservations: 100,
        })
    }

    fn tags(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| s.to_string()).collect()
    }

    fn drain(c: &mut Connected) -> Vec<u64> {
        let mut v = Vec::new();
        while let Ok(d) = c.queue.try_recv() {
            v.push(d.seq);
        }
        v
    }

    #[test]
    fn tokens_are_single_use_and_expire() {
        let (h, t0) = (hub(), Instant::now());
        let r = h.reserve(tags(&["a"]), t0).unwrap();
        assert_eq!(r.id.len(), 24);
        assert!(h.connect(&r.token, t0).is_ok());
        assert_eq!(h.connect(&r.token, t0).unwrap_err(), ConnectError::Unknown);
        assert_eq!(
            h.connect("nonsense", t0).unwrap_err(),
            ConnectError::Unknown
        );
        let late = h.reserve(vec![], t0).unwrap();
        assert_eq!(
            h.connect(&late.token, t0 + Duration::from_secs(301))
                .unwrap_err(),
            ConnectError::Expired
        );
    }

    #[test]
    fn routing_by_star_id_and_tag_reaches_each_socket_once() {
        let (h, t0) = (hub(), Instant::now());
        let mut a = h
            .connect(
                &h.reserve(tags(&["users.1", "room"]), t0).unwrap().token,
                t0,
            )
            .unwrap();
        let mut b = h
            .connect(
                &h.reserve(tags(&["users.2", "room"]), t0).unwrap().token,
                t0,
            )
            .unwrap();
        let mut c = h
            .connect(&h.reserve(vec![], t0).unwrap().token, t0)
            .unwrap();
        let all = Receivers {
            sockets: Some(tags(&["*"])),
            tags: None,
        };
        assert_eq!(h.publish(Bytes::from("1"), &all, t0).delivered, 3);
        // A tag and an id that both select `a`: once.
        let p = h.publish(
            Bytes::from("2"),
            &Receivers {
                sockets: Some(vec![a.id.clone(), "no-such-socket".into()]),
                tags: Some(tags(&["users.1"])),
            },
            t0,
        );
        assert_eq!(p.delivered, 1);
        let room = Receivers {
            sockets: None,
            tags: Some(tags(&["room"])),
        };
        assert_eq!(h.publish(Bytes::from("3"), &room, t0).delivered, 2);
        let traffic = h.traffic();
        assert_eq!((traffic.published, traffic.delivered), (3, 6));
        assert_eq!(
            h.publish(Bytes::from("4"), &Receivers::default(), t0)
                .delivered,
            0
        );
        assert_eq!(drain(&mut a), [1, 2, 3]);
        assert_eq!(drain(&mut b), [1, 3]);
        assert_eq!(drain(&mut c), [1]);
        // The same bytes for everyone.
        h.publish(Bytes::from("5"), &room, t0);
        let (x, y) = (a.queue.try_recv().unwrap(), b.queue.try_recv().unwrap());
        assert_eq!(x.data.as_ptr(), y.data.as_ptr());
    }

    #[test]
    fn a_slow_socket_is_cut_and_the_others_lose_nothing() {
        let (h, t0) = (hub(), Instant::now());
        let slow = h
            .connect(&h.reserve(tags(&["t"]), t0).unwrap().token, t0)
            .unwrap();
        let mut fast = h
            .connect(&h.reserve(tags(&["t"]), t0).unwrap().token, t0)
            .unwrap();
        let to_t = Receivers {
            sockets: None,
            tags: Some(tags(&["t"])),
        };
        let mut got = Vec::new();
        for i in 0..10u64 {
            let p = h.publish(Bytes::from(i.to_string()), &to_t, t0);
            if i == 4 {
                assert_eq!(
                    p.cut,
                    [slow.id.as_str()],
                    "the fifth overflows a queue of 4"
                );
            }
            got.extend(drain(&mut fast));
        }
        assert_eq!(got, (1..=10).collect::<Vec<_>>());
        assert!(h.socket(&slow.id).is_none());
        assert_eq!(h.sockets(Some("t")).len(), 1);
    }

    #[test]
    fn a_socket_holding_too_many_bytes_is_cut_and_one_that_takes_them_is_not() {
        let t0 = Instant::now();
        let h = Hub::new(HubOptions {
            queue_bytes: 100,
            ..HubOptions::default()
        });
        let stuck = h
            .connect(&h.reserve(tags(&["t"]), t0).unwrap().token, t0)
            .unwrap();
        let mut reading = h
            .connect(&h.reserve(tags(&["t"]), t0).unwrap().token, t0)
            .unwrap();
        let to_t = Receivers {
            sockets: None,
            tags: Some(tags(&["t"])),
        };
        let forty = Bytes::from(vec![b'x'; 40]);
        for i in 0..10 {
            let p = h.publish(forty.clone(), &to_t, t0);
            // 40 + 40 fit in 100 bytes; the third would not: far fewer than the 1,024 messages.
            let want: &[&str] = if i == 2 { &[stuck.id.as_str()] } else { &[] };
            assert_eq!(p.cut, want, "publish {i}");
            let d = reading.queue.try_recv().unwrap();
            reading.taken(d.data.len());
        }
        assert!(h.socket(&stuck.id).is_none());
        assert!(h.socket(&reading.id).is_some());
    }

    #[test]
    fn connecting_after_a_number_splits_missed_and_live_exactly() {
        let (h, t0) = (hub(), Instant::now());
        let all = Receivers {
            sockets: Some(tags(&["*"])),
            tags: None,
        };
        for i in 0..3 {
            h.publish(Bytes::from(format!("m{i}")), &all, t0);
        }
        let token = h.reserve(vec![], t0).unwrap().token;
        let (mut c, rec) = h.connect_after(&token, h.epoch(), 1, t0).unwrap();
        let Recovery::Complete(missed) = rec else {
            panic!("a gap")
        };
        assert_eq!(missed.iter().map(|d| d.seq).collect::<Vec<_>>(), [2, 3]);
        h.publish(Bytes::from("live"), &all, t0);
        assert_eq!(drain(&mut c), [4]);
        let token = h.reserve(vec![], t0).unwrap().token;
        assert!(matches!(
            h.connect_after(&token, "old-epoch", 1, t0),
            Ok((_, Recovery::Gap))
        ));
    }

    #[test]
    fn reservations_are_capped_until_they_expire() {
        let (h, t0) = (hub(), Instant::now());
        for _ in 0..100 {
            assert!(h.reserve(vec![], t0).is_ok());
        }
        assert_eq!(
            h.reserve(vec![], t0).unwrap_err(),
            Refused::TooMany,
            "the 101st waits for room"
        );
        assert!(
            h.reserve(vec![], t0 + Duration::from_secs(301)).is_ok(),
            "expired ones make room"
        );
    }

    #[test]
    fn disconnecting_cleans_the_tag_index() {
        let (h, t0) = (hub(), Instant::now());
        let a = h
            .connect(&h.reserve(tags(&["x"]), t0).unwrap().token, t0)
            .unwrap();
        assert_eq!(h.sockets(Some("x")).len(), 1);
        assert!(h.disconnect(&a.id));
        assert!(!h.disconnect(&a.id));
        assert!(h.sockets(Some("x")).is_empty());
        assert!(h.sockets(None).is_empty());
    }

    #[test]
    fn recovery_is_all_or_nothing() {
        let (h, t0) = (hub(), Instant::now());
        let none = Receivers::default();
        for i in 0..3 {
            h.publish(Bytes::from(format!("m{i}")), &none, t0);
        }
        let seqs = |r: Recovery| match r {
            Recovery::Complete(v) => Some(v.iter().map(|d| d.seq).collect::<Vec<_>>()),
            Recovery::Gap => None,
        };
        let e = h.epoch().to_owned();
        assert_eq!(seqs(h.recover(&e, 1, t0)), Some(vec![2, 3]));
        assert_eq!(seqs(h.recover(&e, 3, t0)), Some(vec![]));
        assert_eq!(seqs(h.recover("another-epoch", 1, t0)), None);
        // Past the count: 5 kept (4..=8), so after 2 there is a hole.
        for i in 3..8 {
            h.publish(Bytes::from(format!("m{i}")), &none, t0);
        }
        assert_eq!(seqs(h.recover(&e, 2, t0)), None);
        assert_eq!(seqs(h.recover(&e, 3, t0)), Some(vec![4, 5, 6, 7, 8]));
        // Past the age: nothing older than 2 minutes.
        let later = t0 + Duration::from_secs(121);
        assert_eq!(seqs(h.recover(&e, 7, later)), None);
        assert_eq!(seqs(h.recover(&e, 8, later)), Some(vec![]));
    }
}
