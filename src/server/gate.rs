//! Admission: how many connections the server holds, and for whom.
//!
//! Before the handshake nobody is known, so nothing a connection does then
//! may cost a real client its turn: handshakes in progress are bounded on
//! their own ([`Handshakes`]), and when a bound is reached the *oldest*
//! handshake in progress is dropped, not the newcomer. One source address
//! past its share makes room from its own old handshakes first. A flood of
//! idle sockets therefore churns through the flood's own places, while a
//! real client, whose handshake takes a few round trips, gets through; and
//! a burst of real clients from one address (runners behind one NAT), all
//! young, is not cut down to the per-address share. After the handshake the peer is known: [`Slots`] bounds the
//! sessions being served (`--max-conns`) and each identity's share of them
//! (`--max-conns-per-peer`), so one certificate cannot take every slot.
//! A session over a bound waits a little for a slot, then is told the
//! server is busy (a failure clients retry).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Handshakes in progress at most, from all addresses.
pub const MAX_HANDSHAKES: usize = 1024;
/// Past this many handshakes in progress from one source address, its
/// oldest one is dropped for each new one, if it is older than
/// [`STALE_HANDSHAKE`].
pub const MAX_HANDSHAKES_PER_ADDRESS: usize = 64;
/// A handshake unfinished after this long is presumed idle (a real one
/// takes a few round trips).
pub const STALE_HANDSHAKE: Duration = Duration::from_secs(3);

/// The handshakes in progress, oldest first.
pub(super) struct Handshakes {
    state: Mutex<Pending>,
    max: usize,
    per_address: usize,
}

#[derive(Default)]
struct Pending {
    next: u64,
    /// By arrival order: the first entry is the oldest.
    order: BTreeMap<u64, (IpAddr, Instant, CancellationToken)>,
    per_address: HashMap<IpAddr, usize>,
}

/// A handshake's place among those in progress; leaving it (drop) frees
/// the place. `evicted` fires when a newer connection took it.
pub(super) struct Ticket {
    gate: Arc<Handshakes>,
    id: u64,
    pub evicted: CancellationToken,
}

impl Handshakes {
    pub fn new(max: usize, per_address: usize) -> Arc<Handshakes> {
        Arc::new(Handshakes { state: Mutex::default(), max: max.max(1), per_address: per_address.max(1) })
    }

    /// Admits a new handshake from `ip`, evicting the oldest stale one from
    /// the same source when it is past its share, and, when every place is
    /// taken, the oldest of the source that holds the most places (so a
    /// flood from one source only ever pushes out its own handshakes).
    /// Returns how many were evicted.
    pub fn enter(self: &Arc<Self>, ip: IpAddr) -> (Ticket, usize) {
        let ip = source(ip);
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut evicted = 0;
        if st.per_address.get(&ip).copied().unwrap_or(0) >= self.per_address {
            let stale = st
                .order
                .iter()
                .find(|(_, (a, _, _))| *a == ip)
                .filter(|(_, (_, since, _))| since.elapsed() >= STALE_HANDSHAKE)
                .map(|(id, _)| *id);
            evicted += stale.map_or(0, |id| st.evict(id));
        }
        if st.order.len() >= self.max {
            let heaviest = st.per_address.iter().max_by_key(|(_, n)| **n).map(|(a, _)| *a);
            let oldest = heaviest.and_then(|h| st.order.iter().find(|(_, (a, _, _))| *a == h).map(|(id, _)| *id));
            evicted += oldest.map_or(0, |id| st.evict(id));
        }
        let id = st.next;
        st.next += 1;
        let token = CancellationToken::new();
        st.order.insert(id, (ip, Instant::now(), token.clone()));
        *st.per_address.entry(ip).or_default() += 1;
        (Ticket { gate: self.clone(), id, evicted: token }, evicted)
    }

    /// Handshakes in progress now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).order.len()
    }
}

/// The source a handshake is counted under: the IPv4 address, or the /64
/// of an IPv6 address (one host commonly holds a whole /64).
pub(super) fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl Pending {
    /// Removes entry `id` (if still there) and tells its task; 1 if it was.
    fn evict(&mut self, id: u64) -> usize {
        match self.remove(id) {
            Some(token) => {
                token.cancel();
                1
            }
            None => 0,
        }
    }

    fn remove(&mut self, id: u64) -> Option<CancellationToken> {
        let (ip, _, token) = self.order.remove(&id)?;
        if let Some(n) = self.per_address.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_address.remove(&ip);
            }
        }
        Some(token)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.gate.state.lock().unwrap_or_else(|e| e.into_inner()).remove(self.id);
    }
}

/// Why a session was not given a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Busy {
    /// Every `--max-conns` slot is taken.
    Server(usize),
    /// This identity holds `--max-conns-per-peer` sessions already.
    Peer(usize),
}

impl Busy {
    pub fn message(&self, peer: &str) -> String {
        match self {
            Busy::Server(n) => format!("the server is serving its maximum of {n} connections; try again later"),
            Busy::Peer(n) => format!(
                "'{peer}' already has {n} connections open to this server (its --max-conns-per-peer); \
                 try again when one has finished"
            ),
        }
    }
}

/// Sessions being served, in all and per identity.
pub(super) struct Slots {
    global: Arc<Semaphore>,
    max: usize,
    per_peer: usize,
    peers: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Sessions waiting for a slot, bounded so waiting costs little too:
    /// at most `max` in all, and four times its share for one identity.
    waiting: AtomicUsize,
    waiting_per_peer: Mutex<HashMap<String, usize>>,
}

/// A session's slot; dropping it frees the slot.
pub(super) struct Slot {
    slots: Arc<Slots>,
    peer: String,
    permits: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
}

impl Slots {
    pub fn new(max: usize, per_peer: usize) -> Arc<Slots> {
        let (max, per_peer) = (max.max(1), per_peer.max(1));
        Arc::new(Slots {
            global: Arc::new(Semaphore::new(max)),
            max,
            per_peer,
            peers: Mutex::default(),
            waiting: AtomicUsize::new(0),
            waiting_per_peer: Mutex::default(),
        })
    }

    /// A slot for `peer` now, if one is free.
    pub fn try_acquire(self: &Arc<Self>, peer: &str) -> Result<Slot, Busy> {
        let got = {
            let mine = self.peer_semaphore(peer);
            match mine.try_acquire_owned() {
                Err(_) => Err(Busy::Peer(self.per_peer)),
                Ok(p) => match self.global.clone().try_acquire_owned() {
                    Err(_) => Err(Busy::Server(self.max)),
                    Ok(g) => Ok((p, g)),
                },
            }
        };
        self.slot_or_forget(peer, got)
    }

    /// A place in the line for a slot, taken as soon as the handshake tells
    /// who the peer is and held until it has a slot: at most as many
    /// sessions wait (or read their preamble) as can be served, and one
    /// identity's by [`line_per_peer`](Self::line_per_peer), so connections
    /// past the handshake always count against a bound.
    pub fn queue(self: &Arc<Self>, peer: &str) -> Result<Queued, Busy> {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(Busy::Server(self.max));
        }
        let mut waiting = self.waiting_per_peer.lock().unwrap_or_else(|e| e.into_inner());
        let n = waiting.entry(peer.to_owned()).or_default();
        if *n >= self.line_per_peer() {
            drop(waiting);
            self.forget_waiter(peer);
            return Err(Busy::Peer(self.per_peer));
        }
        *n += 1;
        Ok(Queued { slots: self.clone(), peer: peer.to_owned() })
    }

    /// How many of one identity's sessions may wait in line: four times
    /// its share, and at least half the line (a CI fan-out of one runner
    /// identity queues rather than failing).
    fn line_per_peer(&self) -> usize {
        (4 * self.per_peer).max(self.max / 2)
    }

    fn forget_waiter(&self, peer: &str) {
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        let mut waiting = self.waiting_per_peer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = waiting.get_mut(peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                waiting.remove(peer);
            }
        }
    }

    /// A slot for `peer`, waiting up to `within` for one (the caller holds
    /// its place in the line, [`queue`](Self::queue)).
    pub async fn acquire(self: &Arc<Self>, peer: &str, within: Duration) -> Result<Slot, Busy> {
        if let Ok(slot) = self.try_acquire(peer) {
            return Ok(slot);
        }
        let deadline = (Instant::now() + within).into();
        let got = async {
            let mine = self.peer_semaphore(peer);
            let p = match tokio::time::timeout_at(deadline, mine.acquire_owned()).await {
                Ok(Ok(p)) => p,
                _ => return Err(Busy::Peer(self.per_peer)),
            };
            match tokio::time::timeout_at(deadline, self.global.clone().acquire_owned()).await {
                Ok(Ok(g)) => Ok((p, g)),
                _ => Err(Busy::Server(self.max)),
            }
        }
        .await;
        self.slot_or_forget(peer, got)
    }

    fn slot_or_forget(
        self: &Arc<Self>,
        peer: &str,
        got: Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), Busy>,
    ) -> Result<Slot, Busy> {
        match got {
            Ok(permits) => Ok(Slot { slots: self.clone(), peer: peer.to_owned(), permits: Some(permits) }),
            Err(busy) => {
                self.forget_if_idle(peer);
                Err(busy)
            }
        }
    }

    fn peer_semaphore(&self, peer: &str) -> Arc<Semaphore> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.entry(peer.to_owned()).or_insert_with(|| Arc::new(Semaphore::new(self.per_peer))).clone()
    }

    /// Forgets identities nobody holds or waits for, so the map stays as
    /// small as the set of peers connected now.
    fn forget_if_idle(&self, peer: &str) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if peers.get(peer).is_some_and(|s| Arc::strong_count(s) == 1) {
            peers.remove(peer);
        }
    }
}

/// A session's place in the line for a slot (see [`Slots::queue`]).
pub(super) struct Queued {
    slots: Arc<Slots>,
    peer: String,
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.slots.forget_waiter(&self.peer);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        drop(self.permits.take());
        self.slots.forget_if_idle(&self.peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_stale_handshake_of_an_address_makes_room_for_a_new_one() {
        let gate = Handshakes::new(8, 2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let (t1, _) = gate.enter(a);
        let (t2, _) = gate.enter(a);
        let (tb, _) = gate.enter(b);
        // All young: a burst from one address is not cut to its share.
        let (t3, evicted) = gate.enter(a);
        assert_eq!(evicted, 0);
        std::thread::sleep(STALE_HANDSHAKE);
        let (t4, evicted) = gate.enter(a);
        assert_eq!(evicted, 1);
        assert!(t1.evicted.is_cancelled() && !t2.evicted.is_cancelled() && !tb.evicted.is_cancelled());
        assert_eq!(gate.len(), 4);
        drop((t1, t2, t3, t4));
        assert_eq!(gate.len(), 1);
    }

    #[test]
    fn when_all_places_are_taken_the_heaviest_source_makes_room() {
        let gate = Handshakes::new(4, 8);
        let real: IpAddr = "127.0.0.1".parse().unwrap();
        let flood: IpAddr = "127.0.0.2".parse().unwrap();
        let (slow_client, _) = gate.enter(real);
        // A flood from one source, however young, pushes out only its own.
        let flooded: Vec<Ticket> = (0..50).map(|_| gate.enter(flood).0).collect();
        assert!(!slow_client.evicted.is_cancelled());
        assert_eq!(flooded.iter().filter(|t| !t.evicted.is_cancelled()).count(), 3);
        assert_eq!(gate.len(), 4);
    }

    #[test]
    fn ipv6_sources_are_counted_by_their_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source(a), source(b));
        assert_ne!(source(a), source(c));
        assert_eq!(source("::ffff:10.0.0.1".parse().unwrap()), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn the_line_is_bounded_in_all_and_per_identity() {
        let slots = Slots::new(16, 2);
        let a: Vec<Queued> = (0..8).map(|_| slots.queue("a").unwrap()).collect();
        assert_eq!(slots.queue("a").err(), Some(Busy::Peer(2)), "half the line (more than four times a's share)");
        let b: Vec<Queued> = (0..8).map(|_| slots.queue("b").unwrap()).collect();
        assert_eq!(slots.queue("c").err(), Some(Busy::Server(16)), "as many as can be served");
        drop((a, b));
        assert!(slots.queue("c").is_ok());
        assert!(slots.waiting_per_peer.lock().unwrap().len() <= 1);
    }

    #[tokio::test]
    async fn a_peer_gets_its_share_then_waits_then_is_told_busy() {
        let slots = Slots::new(4, 2);
        let a1 = slots.try_acquire("a").unwrap();
        let _a2 = slots.try_acquire("a").unwrap();
        assert_eq!(slots.try_acquire("a").err(), Some(Busy::Peer(2)));
        let _b = slots.try_acquire("b").unwrap();
        // A waiter gets the slot its peer frees.
        let waiter = tokio::spawn({
            let slots = slots.clone();
            async move { slots.acquire("a", Duration::from_secs(5)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(a1);
        let _a3 = waiter.await.unwrap().unwrap();
        assert_eq!(slots.acquire("a", Duration::from_millis(10)).await.err(), Some(Busy::Peer(2)));
    }

    #[test]
    fn the_server_limit_holds_across_peers_and_idle_peers_are_forgotten() {
        let slots = Slots::new(2, 2);
        let x = slots.try_acquire("x").unwrap();
        let _y = slots.try_acquire("y").unwrap();
        assert_eq!(slots.try_acquire("z").err(), Some(Busy::Server(2)));
        drop(x);
        assert!(!slots.peers.lock().unwrap().contains_key("x"));
        assert!(!slots.peers.lock().unwrap().contains_key("z"));
    }
}
