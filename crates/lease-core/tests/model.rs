//! A model of the lease protocol, checked exhaustively with `stateright`.
//!
//! Two clients contend for one key on a store, over a network that loses, delays (without bound)
//! and reorders messages, with clocks whose rates drift within a bound. Real time advances in discrete ticks;
//! on every tick each client's clock advances by `NOMINAL - 1`, `NOMINAL` or `NOMINAL + 1` units
//! (chosen anew each tick, so rates drift anywhere inside ±25 %). The store's clock is real time.
//!
//! Both clock models of `lease_core::ClockModel` are modelled:
//!
//! - **store clock**: the store applies acquire/renew with "expires = apply time + TTL" and grants
//!   a held key only after that expiry; the holder's deadline is
//!   `send instant of the request + TTL × (1 − drift) − margin` on its own clock;
//! - **observed expiry**: the store only compares-and-sets a version; a contender takes a held
//!   record over only after it has seen the *same* version for `TTL × (1 + drift) + margin` on its
//!   own clock, counted from the *response* of the read that first returned it.
//!
//! Properties, checked in every reachable state:
//!
//! - `exclusion by deadline`: no two clients believe they hold at the same real instant;
//! - `fencing strictly increases`: every grant a client accepts has a larger fencing token than any
//!   grant accepted before it;
//! - `no grant to a stale retry`: whenever a client believes it holds, the store's record is that
//!   very grant (a late or retried request never leaves a client believing in a grant the store
//!   has already given away or let expire).
//!
//! Deliberately wrong variants (holder deadline counted from the response; observation counted
//! from the read's send) must produce counterexamples; the correct ones must pass an exhaustive
//! breadth-first check of every reachable state. `docs/safety.md` shows the counterexamples
//! (print them with `cargo test -p lease-core --test model -- --nocapture`).

use std::fmt::Write as _;

use stateright::{Checker, HasDiscoveries, Model, Property};

/// Clock units a client's clock advances per tick at the nominal rate.
const NOMINAL: u8 = 4;
/// Drift bound: each tick advances a clock by `NOMINAL - 1` or `NOMINAL + 1` units, i.e.
/// `drift = 1 / NOMINAL`. Any rate in between is a mix of the two over a few ticks, and the
/// extremes are what break a rule, so the nominal step is left out to keep the state space small.
const RATES: [u8; 2] = [NOMINAL - 1, NOMINAL + 1];
/// TTL in ticks of real (store) time.
const TTL_TICKS: u8 = 2;
/// TTL in clock units at the nominal rate.
const TTL_UNITS: u8 = TTL_TICKS * NOMINAL;
/// Safety margin in clock units.
const MARGIN: u8 = 1;
/// The holder window: `TTL × (1 − drift) − margin` clock units.
const HOLDER_WINDOW: u8 = TTL_UNITS - TTL_UNITS / NOMINAL - MARGIN;
/// The observed-expiry wait: `TTL × (1 + drift) + margin` clock units.
const TAKEOVER_WAIT: u8 = TTL_UNITS + TTL_UNITS / NOMINAL + MARGIN;
/// Acquisitions (sessions, each with a fresh holder token) per client: client 0 comes back with a
/// new holder token after losing or releasing, while its old requests may still be in flight.
const SESSIONS: [u8; 2] = [2, 1];
/// Renewals per session.
const RENEWALS: u8 = 1;
/// Resends of an acquire with the same holder token (store clock only).
const RETRIES: u8 = 1;
/// Client ids.
const CLIENTS: [u8; 2] = [0, 1];

/// Which clock decides expiry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Clock {
    Store,
    Observed,
}

/// Where a rule counts from: the correct protocol, or one of the deliberate mistakes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Correct,
    /// Holder deadline counted from the instant the response arrived.
    DeadlineFromResponse,
    /// Observed-expiry wait counted from the instant the read was sent.
    ObservationFromReadSend,
}

struct LeaseModel {
    clock: Clock,
    variant: Variant,
}

/// A holder token: (client, session).
type Holder = (u8, u8);

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
enum Msg {
    // Store clock.
    Acquire {
        holder: Holder,
    },
    Granted {
        holder: Holder,
        fence: u8,
    },
    Refused {
        holder: Holder,
    },
    Renew {
        holder: Holder,
    },
    Renewed {
        holder: Holder,
    },
    RenewRefused {
        holder: Holder,
    },
    Release {
        holder: Holder,
    },
    // Observed expiry.
    Read {
        client: u8,
    },
    ReadReply {
        client: u8,
        holder: Option<Holder>,
        version: u8,
        fence: u8,
    },
    Cas {
        holder: Holder,
        expect: u8,
        op: CasOp,
    },
    CasReply {
        holder: Holder,
        ok: bool,
        version: u8,
    },
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
enum CasOp {
    Acquire { fence: u8 },
    Renew,
    Release,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
enum Phase {
    Idle,
    /// A read is in flight, sent `since` clock units ago (observed expiry).
    Reading {
        since: u8,
    },
    /// An acquire is in flight; its first attempt was sent `since` clock units ago.
    /// `proposed`: the fencing token its compare-and-set writes (observed expiry).
    Acquiring {
        since: u8,
        retries: u8,
        proposed: u8,
    },
    Holding {
        /// Clock units left until the holder deadline (0: no longer believes).
        remaining: u8,
        fence: u8,
        /// The record version this grant last wrote (observed expiry).
        version: u8,
        renewals: u8,
        /// A renewal in flight, sent this many clock units ago.
        renewing: Option<u8>,
    },
    /// Out of sessions.
    Done,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Client {
    session: u8,
    phase: Phase,
    /// Observed expiry: (version seen, clock units it has been seen for).
    observed: Option<(u8, u8)>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Store {
    holder: Option<Holder>,
    /// The fencing counter: never reset.
    fence: u8,
    /// Observed expiry: bumped by every write.
    version: u8,
    /// Store clock: ticks until the grant expires (0: free to take).
    remaining: u8,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct State {
    clients: [Client; 2],
    store: Store,
    /// Messages in flight (a sorted multiset: delivery order is free).
    net: Vec<Msg>,
    /// The highest fencing token any client has accepted.
    last_fence: u8,
    fence_regressed: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
enum Action {
    /// One tick of real time; each client's clock advances by the given units.
    Tick([u8; 2]),
    /// A client starts acquiring (sends an acquire, or a read under observed expiry).
    Start(u8),
    /// A client resends its acquire with the same holder token.
    Retry(u8),
    /// A client gives up an acquire whose outcome it has not seen (the grant may land later).
    GiveUp(u8),
    Renew(u8),
    Release(u8),
    /// The store or a client receives a message. A message that is never delivered is lost: the
    /// checker explores every state in which any in-flight message stays undelivered forever, so
    /// loss needs no action of its own (one would only duplicate those states).
    Deliver(Msg),
}

impl State {
    fn believes(&self, client: usize) -> bool {
        matches!(self.clients[client].phase, Phase::Holding { remaining, .. } if remaining > 0)
    }

    fn send(&mut self, msg: Msg) {
        let at = self.net.binary_search(&msg).unwrap_or_else(|at| at);
        self.net.insert(at, msg);
    }

    fn take(&mut self, msg: &Msg) -> bool {
        match self.net.binary_search(msg) {
            Ok(at) => {
                self.net.remove(at);
                true
            }
            Err(_) => false,
        }
    }

    /// Ends the client's current session (lost, released, refused or abandoned).
    fn next_session(&mut self, client: usize) {
        let c = &mut self.clients[client];
        c.session += 1;
        c.observed = None;
        c.phase = if c.session >= SESSIONS[client] {
            Phase::Done
        } else {
            Phase::Idle
        };
    }

    /// Drops replies their client would ignore on arrival (it has moved on), so that states which
    /// differ only in such dead messages are one state. Requests are kept: a late request still
    /// reaches the store.
    fn forget_ignored_replies(&mut self) {
        let clients = self.clients.clone();
        self.net.retain(|msg| {
            let current = |holder: &Holder| {
                let c = &clients[holder.0 as usize];
                c.session == holder.1 && !matches!(c.phase, Phase::Done | Phase::Idle)
            };
            match msg {
                Msg::Granted { holder, .. }
                | Msg::Refused { holder }
                | Msg::CasReply { holder, .. } => current(holder),
                Msg::Renewed { holder } | Msg::RenewRefused { holder } => {
                    current(holder)
                        && matches!(
                            clients[holder.0 as usize].phase,
                            Phase::Holding {
                                renewing: Some(_),
                                ..
                            }
                        )
                }
                Msg::ReadReply { client, .. } => {
                    matches!(clients[*client as usize].phase, Phase::Reading { .. })
                }
                _ => true,
            }
        });
    }

    fn accept_fence(&mut self, fence: u8) {
        if fence <= self.last_fence {
            self.fence_regressed = true;
        }
        self.last_fence = self.last_fence.max(fence);
    }
}

impl LeaseModel {
    fn holder_of(state: &State, client: usize) -> Holder {
        (client as u8, state.clients[client].session)
    }

    /// The holder's remaining window after a confirmation of a request sent `since` units ago.
    fn window_after_confirmation(&self, since: u8) -> u8 {
        match self.variant {
            Variant::DeadlineFromResponse => HOLDER_WINDOW,
            _ => HOLDER_WINDOW.saturating_sub(since),
        }
    }

    fn tick(&self, state: &mut State, rates: [u8; 2]) {
        state.store.remaining = state.store.remaining.saturating_sub(1);
        for (client, rate) in rates.into_iter().enumerate() {
            let c = &mut state.clients[client];
            if let Some((_, seen)) = &mut c.observed {
                *seen = seen.saturating_add(rate).min(TAKEOVER_WAIT);
            }
            let mut lost = false;
            match &mut c.phase {
                Phase::Reading { since } => {
                    // Only the wrong variant counts from the read's send.
                    if self.variant == Variant::ObservationFromReadSend {
                        *since = since.saturating_add(rate).min(TAKEOVER_WAIT);
                    }
                }
                Phase::Acquiring { since, .. } => {
                    // Past the holder window a grant is worthless: no need to count further.
                    *since = since.saturating_add(rate).min(HOLDER_WINDOW);
                }
                Phase::Holding {
                    remaining,
                    renewing,
                    ..
                } => {
                    *remaining = remaining.saturating_sub(rate);
                    if let Some(since) = renewing {
                        *since = since.saturating_add(rate).min(HOLDER_WINDOW);
                    }
                    lost = *remaining == 0;
                }
                Phase::Idle | Phase::Done => {}
            }
            if lost {
                state.next_session(client);
            }
        }
    }

    fn deliver(&self, state: &mut State, msg: Msg) {
        match msg {
            Msg::Acquire { holder } => {
                let store = &mut state.store;
                let reply = if store.holder == Some(holder) {
                    store.remaining = TTL_TICKS;
                    Msg::Granted {
                        holder,
                        fence: store.fence,
                    }
                } else if store.holder.is_none() || store.remaining == 0 {
                    store.fence += 1;
                    store.holder = Some(holder);
                    store.remaining = TTL_TICKS;
                    Msg::Granted {
                        holder,
                        fence: store.fence,
                    }
                } else {
                    Msg::Refused { holder }
                };
                state.send(reply);
            }
            Msg::Renew { holder } => {
                let store = &mut state.store;
                let reply = if store.holder == Some(holder) && store.remaining > 0 {
                    store.remaining = TTL_TICKS;
                    Msg::Renewed { holder }
                } else {
                    Msg::RenewRefused { holder }
                };
                state.send(reply);
            }
            Msg::Release { holder } => {
                if state.store.holder == Some(holder) {
                    state.store.holder = None;
                    state.store.remaining = 0;
                }
            }
            Msg::Read { client } => {
                let store = &state.store;
                let reply = Msg::ReadReply {
                    client,
                    holder: store.holder,
                    version: store.version,
                    fence: store.fence,
                };
                state.send(reply);
            }
            Msg::Cas { holder, expect, op } => {
                let store = &mut state.store;
                let ok = store.version == expect;
                if ok {
                    store.version += 1;
                    match op {
                        CasOp::Acquire { fence } => {
                            store.holder = Some(holder);
                            store.fence = fence;
                        }
                        CasOp::Renew => {}
                        CasOp::Release => store.holder = None,
                    }
                }
                if op != CasOp::Release {
                    let version = store.version;
                    state.send(Msg::CasReply {
                        holder,
                        ok,
                        version,
                    });
                }
            }
            Msg::Granted { holder, fence } => {
                let client = holder.0 as usize;
                if Self::holder_of(state, client) != holder {
                    return;
                }
                if let Phase::Acquiring { since, .. } = state.clients[client].phase {
                    let remaining = self.window_after_confirmation(since);
                    if remaining == 0 {
                        // Confirmed after its own deadline: give it back.
                        state.send(Msg::Release { holder });
                        state.next_session(client);
                    } else {
                        state.accept_fence(fence);
                        state.clients[client].phase = Phase::Holding {
                            remaining,
                            fence,
                            version: 0,
                            renewals: 0,
                            renewing: None,
                        };
                    }
                }
            }
            Msg::Refused { holder } | Msg::RenewRefused { holder } => {
                let client = holder.0 as usize;
                if Self::holder_of(state, client) == holder
                    && matches!(
                        state.clients[client].phase,
                        Phase::Acquiring { .. } | Phase::Holding { .. }
                    )
                {
                    state.next_session(client);
                }
            }
            Msg::Renewed { holder } => {
                let client = holder.0 as usize;
                if Self::holder_of(state, client) != holder {
                    return;
                }
                let window = |since| self.window_after_confirmation(since);
                if let Phase::Holding {
                    remaining,
                    renewing: renewing @ Some(_),
                    ..
                } = &mut state.clients[client].phase
                {
                    // A confirmation never resurrects a lease whose deadline passed (remaining > 0
                    // holds for every Holding state that survives a tick).
                    *remaining = window(renewing.unwrap_or(0));
                    *renewing = None;
                    if *remaining == 0 {
                        state.next_session(client);
                    }
                }
            }
            Msg::ReadReply {
                client,
                holder,
                version,
                fence,
            } => {
                let ci = client as usize;
                let Phase::Reading { since } = state.clients[ci].phase else {
                    return;
                };
                let me = Self::holder_of(state, ci);
                match holder {
                    None => {
                        let op = CasOp::Acquire { fence: fence + 1 };
                        state.send(Msg::Cas {
                            holder: me,
                            expect: version,
                            op,
                        });
                        state.clients[ci].phase = Phase::Acquiring {
                            since: 0,
                            retries: 0,
                            proposed: fence + 1,
                        };
                    }
                    Some(_) => match state.clients[ci].observed {
                        Some((seen, waited)) if seen == version && waited >= TAKEOVER_WAIT => {
                            let op = CasOp::Acquire { fence: fence + 1 };
                            state.send(Msg::Cas {
                                holder: me,
                                expect: version,
                                op,
                            });
                            state.clients[ci].phase = Phase::Acquiring {
                                since: 0,
                                retries: 0,
                                proposed: fence + 1,
                            };
                        }
                        Some((seen, _)) if seen == version => {
                            state.clients[ci].phase = Phase::Idle;
                        }
                        _ => {
                            let waited = match self.variant {
                                Variant::ObservationFromReadSend => since,
                                _ => 0,
                            };
                            state.clients[ci].observed = Some((version, waited));
                            state.clients[ci].phase = Phase::Idle;
                        }
                    },
                }
            }
            Msg::CasReply {
                holder,
                ok,
                version,
            } => {
                let client = holder.0 as usize;
                if Self::holder_of(state, client) != holder {
                    return;
                }
                let window = |since| self.window_after_confirmation(since);
                match state.clients[client].phase.clone() {
                    Phase::Acquiring {
                        since,
                        proposed: fence,
                        ..
                    } => {
                        let remaining = window(since);
                        if !ok {
                            state.next_session(client);
                        } else if remaining == 0 {
                            let op = CasOp::Release;
                            state.send(Msg::Cas {
                                holder,
                                expect: version,
                                op,
                            });
                            state.next_session(client);
                        } else {
                            state.accept_fence(fence);
                            state.clients[client].phase = Phase::Holding {
                                remaining,
                                fence,
                                version,
                                renewals: 0,
                                renewing: None,
                            };
                        }
                    }
                    Phase::Holding {
                        renewing: Some(since),
                        renewals,
                        fence,
                        ..
                    } => {
                        let remaining = window(since);
                        if !ok || remaining == 0 {
                            state.next_session(client);
                        } else {
                            state.clients[client].phase = Phase::Holding {
                                remaining,
                                fence,
                                version,
                                renewals,
                                renewing: None,
                            };
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

impl Model for LeaseModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let client = Client {
            session: 0,
            phase: Phase::Idle,
            observed: None,
        };
        vec![State {
            clients: [client.clone(), client],
            store: Store {
                holder: None,
                fence: 0,
                version: 0,
                remaining: 0,
            },
            net: Vec::new(),
            last_fence: 0,
            fence_regressed: false,
        }]
    }

    fn actions(&self, state: &State, actions: &mut Vec<Action>) {
        for a in RATES {
            for b in RATES {
                actions.push(Action::Tick([a, b]));
            }
        }
        for client in CLIENTS {
            let c = &state.clients[client as usize];
            match &c.phase {
                Phase::Idle => actions.push(Action::Start(client)),
                Phase::Acquiring { retries, .. } if self.clock == Clock::Store => {
                    if *retries < RETRIES {
                        actions.push(Action::Retry(client));
                    }
                    actions.push(Action::GiveUp(client));
                }
                Phase::Holding {
                    renewals, renewing, ..
                } => {
                    if renewing.is_none() && *renewals < RENEWALS {
                        actions.push(Action::Renew(client));
                    }
                    actions.push(Action::Release(client));
                }
                _ => {}
            }
        }
        let mut last: Option<&Msg> = None;
        for msg in &state.net {
            if last != Some(msg) {
                actions.push(Action::Deliver(msg.clone()));
            }
            last = Some(msg);
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut state = last.clone();
        match action {
            Action::Tick(rates) => self.tick(&mut state, rates),
            Action::Start(client) => {
                let holder = Self::holder_of(&state, client as usize);
                state.clients[client as usize].phase = match self.clock {
                    Clock::Store => {
                        state.send(Msg::Acquire { holder });
                        Phase::Acquiring {
                            since: 0,
                            retries: 0,
                            proposed: 0,
                        }
                    }
                    Clock::Observed => {
                        state.send(Msg::Read { client });
                        Phase::Reading { since: 0 }
                    }
                };
            }
            Action::Retry(client) => {
                let holder = Self::holder_of(&state, client as usize);
                if let Phase::Acquiring { retries, .. } = &mut state.clients[client as usize].phase
                {
                    // Same holder token; the deadline still counts from the first attempt.
                    *retries += 1;
                }
                state.send(Msg::Acquire { holder });
            }
            Action::GiveUp(client) => state.next_session(client as usize),
            Action::Renew(client) => {
                let holder = Self::holder_of(&state, client as usize);
                let Phase::Holding {
                    version,
                    renewals,
                    renewing,
                    ..
                } = &mut state.clients[client as usize].phase
                else {
                    return None;
                };
                *renewals += 1;
                *renewing = Some(0);
                let expect = *version;
                state.send(match self.clock {
                    Clock::Store => Msg::Renew { holder },
                    Clock::Observed => Msg::Cas {
                        holder,
                        expect,
                        op: CasOp::Renew,
                    },
                });
            }
            Action::Release(client) => {
                // Stop believing first, then free the key.
                let holder = Self::holder_of(&state, client as usize);
                let Phase::Holding { version, .. } = state.clients[client as usize].phase else {
                    return None;
                };
                state.send(match self.clock {
                    Clock::Store => Msg::Release { holder },
                    Clock::Observed => Msg::Cas {
                        holder,
                        expect: version,
                        op: CasOp::Release,
                    },
                });
                state.next_session(client as usize);
            }
            Action::Deliver(msg) => {
                if !state.take(&msg) {
                    return None;
                }
                self.deliver(&mut state, msg);
            }
        }
        state.forget_ignored_replies();
        Some(state)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("exclusion by deadline", |_, s: &State| {
                !(s.believes(0) && s.believes(1))
            }),
            Property::always("fencing strictly increases", |_, s: &State| {
                !s.fence_regressed
            }),
            Property::always("no grant to a stale retry", |model, s: &State| {
                CLIENTS.into_iter().all(|client| {
                    let c = client as usize;
                    if !s.believes(c) {
                        return true;
                    }
                    let mine = s.store.holder == Some(LeaseModel::holder_of(s, c));
                    match model.clock {
                        Clock::Store => mine && s.store.remaining > 0,
                        Clock::Observed => mine,
                    }
                })
            }),
            // Not a safety property: proves the model reaches a takeover at all (a model where
            // nobody ever gets the key would satisfy every `always`).
            Property::sometimes("a second grant is held", |_, s: &State| {
                s.last_fence >= 2 && (s.believes(0) || s.believes(1))
            }),
        ]
    }
}

const SAFETY: [&str; 3] = [
    "exclusion by deadline",
    "fencing strictly increases",
    "no grant to a stale retry",
];

struct Outcome {
    unique_states: usize,
    violations: Vec<(&'static str, String)>,
    takeover_found: bool,
}

/// Breadth-first check of every reachable state (so a counterexample found is a shortest one);
/// with `stop_at`, stops as soon as that property has a counterexample.
fn check(clock: Clock, variant: Variant, stop_at: Option<&'static str>) -> Outcome {
    let model = LeaseModel { clock, variant };
    let mut builder = model.checker();
    if let Some(name) = stop_at {
        builder = builder.finish_when(HasDiscoveries::AnyOf([name].into_iter().collect()));
    }
    let checker = builder.spawn_bfs().join();
    assert!(checker.is_done(), "the checker must finish");
    let mut violations = Vec::new();
    for name in SAFETY {
        if let Some(path) = checker.discovery(name) {
            violations.push((name, pretty(checker.model(), path.into_vec())));
        }
    }
    Outcome {
        unique_states: checker.unique_state_count(),
        takeover_found: checker.discovery("a second grant is held").is_some(),
        violations,
    }
}

fn describe_holder(h: Option<Holder>) -> String {
    match h {
        Some((c, s)) => format!("c{c}/s{s}"),
        None => "free".into(),
    }
}

fn describe_client(model: &LeaseModel, c: &Client) -> String {
    let mut out = match &c.phase {
        Phase::Idle => "idle".to_string(),
        Phase::Done => "done".to_string(),
        Phase::Reading { since } => format!("reading (sent {since}u ago)"),
        Phase::Acquiring { since, .. } => format!("acquiring (first send {since}u ago)"),
        Phase::Holding {
            remaining,
            fence,
            renewing,
            ..
        } => {
            let mut s = format!("HOLDS fence {fence}, {remaining}u left");
            if let Some(since) = renewing {
                let _ = write!(s, ", renew sent {since}u ago");
            }
            s
        }
    };
    if let (Clock::Observed, Some((v, seen))) = (model.clock, c.observed) {
        let _ = write!(out, ", saw v{v} for {seen}u");
    }
    out
}

/// One line per step: the action, then the clients and the store after it.
fn pretty(model: &LeaseModel, path: Vec<(State, Option<Action>)>) -> String {
    let mut out = String::new();
    let mut tick = 0;
    let _ = writeln!(
        out,
        "{:?} clock, {:?}: TTL {TTL_TICKS} ticks = {TTL_UNITS}u, clock rates {:?}u/tick, \
         holder window {HOLDER_WINDOW}u, takeover wait {TAKEOVER_WAIT}u",
        model.clock, model.variant, RATES
    );
    let mut states = path.into_iter().peekable();
    while let Some((_, action)) = states.next() {
        let Some(action) = action else { break };
        let Some((after, _)) = states.peek() else {
            break;
        };
        if let Action::Tick(_) = action {
            tick += 1;
        }
        let action = match action {
            Action::Tick([a, b]) => format!("tick -> t={tick} (c0 +{a}u, c1 +{b}u)"),
            Action::Deliver(m) => format!("deliver {m:?}"),
            other => format!("{other:?}"),
        };
        let store = &after.store;
        let store = match model.clock {
            Clock::Store => format!(
                "store {} fence {} expires in {}t",
                describe_holder(store.holder),
                store.fence,
                store.remaining
            ),
            Clock::Observed => format!(
                "store {} fence {} v{}",
                describe_holder(store.holder),
                store.fence,
                store.version
            ),
        };
        let _ = writeln!(
            out,
            "t={tick:<2} {action:<58} | c0 {} | c1 {} | {store}",
            describe_client(model, &after.clients[0]),
            describe_client(model, &after.clients[1]),
        );
    }
    out
}

fn assert_correct(clock: Clock) {
    let outcome = check(clock, Variant::Correct, None);
    println!(
        "{clock:?} clock, correct rules: {} states, no violation",
        outcome.unique_states
    );
    for (name, trace) in &outcome.violations {
        println!("VIOLATION of {name}:\n{trace}");
    }
    assert!(
        outcome.violations.is_empty(),
        "the correct protocol violates a property"
    );
    assert!(
        outcome.takeover_found,
        "the model never reaches a second grant: it proves nothing"
    );
    assert!(
        outcome.unique_states > 1_000,
        "suspiciously small state space"
    );
}

fn assert_counterexample(clock: Clock, variant: Variant, property: &'static str) {
    let outcome = check(clock, variant, Some(property));
    for (name, trace) in &outcome.violations {
        println!("counterexample to `{name}`:\n{trace}");
    }
    assert!(
        outcome.violations.iter().any(|(name, _)| *name == property),
        "{variant:?} must break `{property}`"
    );
}

#[test]
fn store_clock_protocol_holds_in_every_reachable_state() {
    assert_correct(Clock::Store);
}

#[test]
fn observed_expiry_protocol_holds_in_every_reachable_state() {
    assert_correct(Clock::Observed);
}

#[test]
fn deadline_counted_from_the_response_lets_two_clients_hold() {
    assert_counterexample(
        Clock::Store,
        Variant::DeadlineFromResponse,
        "exclusion by deadline",
    );
}

#[test]
fn observation_counted_from_the_read_send_lets_two_clients_hold() {
    assert_counterexample(
        Clock::Observed,
        Variant::ObservationFromReadSend,
        "exclusion by deadline",
    );
}

#[test]
fn deadline_counted_from_the_response_breaks_observed_expiry_too() {
    assert_counterexample(
        Clock::Observed,
        Variant::DeadlineFromResponse,
        "exclusion by deadline",
    );
}
