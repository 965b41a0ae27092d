//! Start-time validation: turns a registry, a topology, a profile and a mode into a routing plan,
//! or into the list of every guard rail that failed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::auth::{AuthError, TargetKind};
use crate::error::LanesConfigError;
use crate::id::{IdKind, check_id};
use crate::lane::{ApplyTo, TargetInfo};
use crate::mode::Mode;
use crate::queue::EventQueue;
use crate::registry::Registry;
use crate::topology::{EventBinding, Profile, RpcBinding, Topology};

/// One queue this process consumes, with the lanes it consumes from it.
#[derive(Debug, Clone)]
pub(crate) struct ConsumerPlan {
    pub(crate) queue: Arc<dyn EventQueue>,
    pub(crate) lanes: Vec<String>,
    pub(crate) prefetch: usize,
}

/// The resolved routing of one process.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Event id → event lane.
    pub(crate) event_routes: HashMap<String, String>,
    /// Task or event id → RPC lane.
    pub(crate) rpc_routes: HashMap<String, String>,
    pub(crate) event_bindings: HashMap<String, EventBinding>,
    pub(crate) rpc_bindings: HashMap<String, RpcBinding>,
    /// Event lanes the active profile consumes, with their handler allow-lists.
    pub(crate) consumed: HashMap<String, Option<Vec<String>>>,
    /// RPC lanes the active profile serves.
    pub(crate) served: BTreeSet<String>,
    /// Queues to consume (network mode only).
    pub(crate) consumers: Vec<ConsumerPlan>,
}

impl Plan {
    /// The targets the exposure serves: id → (lane, kind).
    pub(crate) fn exposed(&self, registry: &Registry) -> BTreeMap<String, (String, TargetKind)> {
        self.rpc_routes
            .iter()
            .filter(|(_, lane)| self.served.contains(*lane))
            .filter_map(|(id, lane)| {
                registry
                    .kind_of(id)
                    .map(|k| (id.clone(), (lane.clone(), k)))
            })
            .collect()
    }
}

fn queue_key(queue: &Arc<dyn EventQueue>) -> usize {
    Arc::as_ptr(queue).cast::<()>() as usize
}

struct Checker<'a> {
    registry: &'a Registry,
    topology: &'a Topology,
    errors: Vec<LanesConfigError>,
}

impl Checker<'_> {
    fn push(&mut self, error: LanesConfigError) {
        if !self.errors.contains(&error) {
            self.errors.push(error);
        }
    }

    fn lane_ids(&mut self) -> (BTreeSet<String>, BTreeSet<String>) {
        let mut events = BTreeSet::new();
        let mut rpcs = BTreeSet::new();
        let all = self
            .topology
            .event_lanes
            .iter()
            .map(|l| (&l.id, true))
            .chain(self.topology.rpc_lanes.iter().map(|l| (&l.id, false)));
        for (id, is_event) in all {
            if let Err(reason) = check_id(id) {
                self.push(LanesConfigError::InvalidId {
                    kind: IdKind::Lane,
                    id: id.clone(),
                    reason,
                });
                continue;
            }
            if events.contains(id) || rpcs.contains(id) {
                self.push(LanesConfigError::DuplicateLane { lane: id.clone() });
                continue;
            }
            if is_event {
                events.insert(id.clone());
            } else {
                rpcs.insert(id.clone());
            }
        }
        (events, rpcs)
    }

    fn assign(
        &mut self,
        routes: &mut HashMap<String, String>,
        lane: &str,
        apply_to: &ApplyTo,
        accepts: &[TargetKind],
    ) {
        let expected = if accepts.len() == 1 {
            "an event"
        } else {
            "a task or an event"
        };
        let mut targets = Vec::new();
        match apply_to {
            ApplyTo::Ids(ids) => {
                for id in ids {
                    match self.registry.kind_of(id) {
                        None => self.push(LanesConfigError::UnknownTarget {
                            lane: lane.to_owned(),
                            target: id.clone(),
                        }),
                        Some(kind) if !accepts.contains(&kind) => {
                            self.push(LanesConfigError::TargetKind {
                                lane: lane.to_owned(),
                                target: id.clone(),
                                expected,
                            });
                        }
                        Some(_) => targets.push(id.clone()),
                    }
                }
            }
            ApplyTo::Predicate(predicate) => {
                let tasks = self.registry.tasks.keys().map(|id| (id, TargetKind::Task));
                let events = self
                    .registry
                    .events
                    .keys()
                    .map(|id| (id, TargetKind::Event));
                for (id, kind) in tasks.chain(events) {
                    if accepts.contains(&kind) && predicate(&TargetInfo { id, kind }) {
                        targets.push(id.clone());
                    }
                }
            }
        }
        for target in targets {
            match routes.get(&target) {
                Some(first) if first != lane => {
                    let first = first.clone();
                    self.push(LanesConfigError::AssignmentConflict {
                        target,
                        first,
                        second: lane.to_owned(),
                    });
                }
                Some(_) => {}
                None => {
                    routes.insert(target, lane.to_owned());
                }
            }
        }
    }

    fn check_profile(
        &mut self,
        name: &str,
        profile: &Profile,
        event_lanes: &BTreeSet<String>,
        rpc_lanes: &BTreeSet<String>,
        event_routes: &HashMap<String, String>,
    ) {
        if let Err(reason) = check_id(name) {
            self.push(LanesConfigError::InvalidId {
                kind: IdKind::Profile,
                id: name.to_owned(),
                reason,
            });
        }
        let mut seen = BTreeSet::new();
        for entry in &profile.consume {
            if !event_lanes.contains(&entry.lane) {
                self.push(LanesConfigError::UnknownLane {
                    lane: entry.lane.clone(),
                    used_in: format!("profile \"{name}\" consume"),
                    expected: "an event lane",
                });
                continue;
            }
            if !seen.insert(entry.lane.clone()) {
                self.push(LanesConfigError::DuplicateProfileEntry {
                    profile: name.to_owned(),
                    lane: entry.lane.clone(),
                });
            }
            for handler in entry.only_handlers.iter().flatten() {
                let known = event_routes
                    .iter()
                    .filter(|(_, lane)| **lane == entry.lane)
                    .filter_map(|(event, _)| self.registry.events.get(event))
                    .any(|e| e.handlers.iter().any(|(h, _)| h == handler));
                if !known {
                    self.push(LanesConfigError::UnknownHandler {
                        profile: name.to_owned(),
                        lane: entry.lane.clone(),
                        handler: handler.clone(),
                    });
                }
            }
        }
        let mut seen = BTreeSet::new();
        for lane in &profile.serve {
            if !rpc_lanes.contains(lane) {
                self.push(LanesConfigError::UnknownLane {
                    lane: lane.clone(),
                    used_in: format!("profile \"{name}\" serve"),
                    expected: "an RPC lane",
                });
                continue;
            }
            if !seen.insert(lane.clone()) {
                self.push(LanesConfigError::DuplicateProfileEntry {
                    profile: name.to_owned(),
                    lane: lane.clone(),
                });
            }
        }
    }
}

/// Validates everything and builds the plan of `profile` in `mode`.
pub(crate) fn build(
    registry: &Registry,
    topology: &Topology,
    profile: &str,
    mode: Mode,
    exposure: bool,
) -> Result<Plan, Vec<LanesConfigError>> {
    let mut c = Checker {
        registry,
        topology,
        errors: registry.problems.clone(),
    };
    let (event_lanes, rpc_lanes) = c.lane_ids();

    // Assignments.
    let mut event_routes = HashMap::new();
    for lane in &topology.event_lanes {
        if event_lanes.contains(&lane.id) {
            c.assign(
                &mut event_routes,
                &lane.id,
                &lane.apply_to,
                &[TargetKind::Event],
            );
        }
    }
    let mut rpc_routes = HashMap::new();
    for lane in &topology.rpc_lanes {
        if rpc_lanes.contains(&lane.id) {
            c.assign(
                &mut rpc_routes,
                &lane.id,
                &lane.apply_to,
                &[TargetKind::Task, TargetKind::Event],
            );
        }
    }
    let mut both: Vec<_> = event_routes
        .iter()
        .filter_map(|(event, elane)| {
            rpc_routes
                .get(event)
                .map(|rlane| LanesConfigError::EventInBothSystems {
                    event: event.clone(),
                    event_lane: elane.clone(),
                    rpc_lane: rlane.clone(),
                })
        })
        .collect();
    both.sort_by_key(ToString::to_string);
    for error in both {
        c.push(error);
    }

    // Profiles.
    for (name, p) in &topology.profiles {
        c.check_profile(name, p, &event_lanes, &rpc_lanes, &event_routes);
    }
    let active = topology
        .profiles
        .iter()
        .find(|(name, _)| name == profile)
        .map(|(_, p)| p);
    if active.is_none() {
        c.push(LanesConfigError::ProfileNotFound {
            profile: profile.to_owned(),
        });
    }

    // Bindings.
    let mut event_bindings: HashMap<String, EventBinding> = HashMap::new();
    for binding in &topology.event_bindings {
        if !event_lanes.contains(&binding.lane) {
            c.push(LanesConfigError::UnknownLane {
                lane: binding.lane.clone(),
                used_in: "an event binding".to_owned(),
                expected: "an event lane",
            });
            continue;
        }
        if event_bindings.contains_key(&binding.lane) {
            c.push(LanesConfigError::DuplicateBinding {
                lane: binding.lane.clone(),
            });
            continue;
        }
        if binding.max_attempts == 0 {
            c.push(LanesConfigError::InvalidPolicy {
                lane: binding.lane.clone(),
                field: "max_attempts",
                reason: "must be at least 1",
            });
        }
        if binding.prefetch == 0 {
            c.push(LanesConfigError::InvalidPolicy {
                lane: binding.lane.clone(),
                field: "prefetch",
                reason: "must be at least 1",
            });
        }
        event_bindings.insert(binding.lane.clone(), binding.clone());
    }
    let mut rpc_bindings: HashMap<String, RpcBinding> = HashMap::new();
    for binding in &topology.rpc_bindings {
        if !rpc_lanes.contains(&binding.lane) {
            c.push(LanesConfigError::UnknownLane {
                lane: binding.lane.clone(),
                used_in: "an RPC binding".to_owned(),
                expected: "an RPC lane",
            });
            continue;
        }
        if rpc_bindings.contains_key(&binding.lane) {
            c.push(LanesConfigError::DuplicateBinding {
                lane: binding.lane.clone(),
            });
            continue;
        }
        rpc_bindings.insert(binding.lane.clone(), binding.clone());
    }

    // Shared queues: every profile consumes all lanes of a queue or none.
    let mut lanes_by_queue: BTreeMap<usize, (String, BTreeSet<String>)> = BTreeMap::new();
    for binding in event_bindings.values() {
        lanes_by_queue
            .entry(queue_key(&binding.queue))
            .or_insert_with(|| (binding.queue.name().to_owned(), BTreeSet::new()))
            .1
            .insert(binding.lane.clone());
    }
    for (name, p) in &topology.profiles {
        let consumed: BTreeSet<&String> = p.consume.iter().map(|e| &e.lane).collect();
        for (queue, lanes) in lanes_by_queue.values() {
            let (inside, missing): (Vec<&String>, Vec<&String>) =
                lanes.iter().partition(|l| consumed.contains(l));
            if !inside.is_empty() && !missing.is_empty() {
                c.push(LanesConfigError::SharedQueuePartialConsume {
                    profile: name.clone(),
                    queue: queue.clone(),
                    consumed: inside.into_iter().cloned().collect(),
                    missing: missing.into_iter().cloned().collect(),
                });
            }
        }
    }

    let consumed: HashMap<String, Option<Vec<String>>> = active
        .map(|p| {
            p.consume
                .iter()
                .map(|e| (e.lane.clone(), e.only_handlers.clone()))
                .collect()
        })
        .unwrap_or_default();
    let served: BTreeSet<String> = active
        .map(|p| p.serve.iter().cloned().collect())
        .unwrap_or_default();

    if exposure && mode != Mode::Network {
        c.push(LanesConfigError::ExposureMode {
            mode: mode.as_str(),
        });
    }

    let routed_event_lanes: BTreeSet<&String> = event_routes.values().collect();
    let routed_rpc_lanes: BTreeSet<&String> = rpc_routes.values().collect();
    match mode {
        Mode::Network => {
            for lane in &event_lanes {
                let is_consumed = consumed.contains_key(lane);
                if !(is_consumed || routed_event_lanes.contains(lane)) {
                    continue;
                }
                let Some(binding) = event_bindings.get(lane) else {
                    c.push(LanesConfigError::BindingMissing {
                        system: "event",
                        lane: lane.clone(),
                    });
                    continue;
                };
                // A consumer verifies; a process that only produces must sign. A consumer
                // without a signer can still consume (emitting on the lane then fails).
                if is_consumed && !binding.auth.can_verify() {
                    c.push(LanesConfigError::Auth(AuthError::VerifierMissing {
                        lane: lane.clone(),
                        mode: binding.auth.mode_name(),
                    }));
                }
                if !is_consumed && !binding.auth.can_sign() {
                    c.push(LanesConfigError::Auth(AuthError::SignerMissing {
                        lane: lane.clone(),
                        mode: binding.auth.mode_name(),
                    }));
                }
            }
            for lane in &rpc_lanes {
                let is_served = served.contains(lane);
                if !(is_served || routed_rpc_lanes.contains(lane)) {
                    continue;
                }
                let Some(binding) = rpc_bindings.get(lane) else {
                    c.push(LanesConfigError::BindingMissing {
                        system: "RPC",
                        lane: lane.clone(),
                    });
                    continue;
                };
                if is_served {
                    if !binding.auth.can_verify() {
                        c.push(LanesConfigError::Auth(AuthError::VerifierMissing {
                            lane: lane.clone(),
                            mode: binding.auth.mode_name(),
                        }));
                    }
                    let mut missing: Vec<_> = rpc_routes
                        .iter()
                        .filter(|(id, l)| *l == lane && registry.tasks.contains_key(*id))
                        .filter(|(id, _)| {
                            registry.tasks.get(*id).is_some_and(|t| t.handler.is_none())
                        })
                        .map(|(id, _)| id.clone())
                        .collect();
                    missing.sort();
                    for task in missing {
                        c.push(LanesConfigError::HandlerMissing {
                            profile: profile.to_owned(),
                            lane: lane.clone(),
                            task,
                        });
                    }
                } else {
                    if binding.communicator.is_none() {
                        c.push(LanesConfigError::CommunicatorMissing {
                            lane: lane.clone(),
                            profile: profile.to_owned(),
                        });
                    }
                    if !binding.auth.can_sign() {
                        c.push(LanesConfigError::Auth(AuthError::SignerMissing {
                            lane: lane.clone(),
                            mode: binding.auth.mode_name(),
                        }));
                    }
                }
            }
        }
        Mode::LocalSimulated => {
            let auths = event_bindings
                .iter()
                .filter(|(lane, _)| routed_event_lanes.contains(lane))
                .map(|(lane, b)| (lane, &b.auth))
                .chain(
                    rpc_bindings
                        .iter()
                        .filter(|(lane, _)| routed_rpc_lanes.contains(lane))
                        .map(|(lane, b)| (lane, &b.auth)),
                );
            let mut problems = Vec::new();
            for (lane, auth) in auths {
                if !auth.can_sign() {
                    problems.push(LanesConfigError::Auth(AuthError::SignerMissing {
                        lane: lane.clone(),
                        mode: auth.mode_name(),
                    }));
                }
                if !auth.can_verify() {
                    problems.push(LanesConfigError::Auth(AuthError::VerifierMissing {
                        lane: lane.clone(),
                        mode: auth.mode_name(),
                    }));
                }
            }
            problems.sort_by_key(ToString::to_string);
            for p in problems {
                c.push(p);
            }
        }
        Mode::Transparent => {}
    }

    if !c.errors.is_empty() {
        return Err(c.errors);
    }

    let mut consumers: Vec<ConsumerPlan> = Vec::new();
    if mode == Mode::Network {
        let mut lanes: Vec<&String> = consumed.keys().collect();
        lanes.sort();
        for lane in lanes {
            let Some(binding) = event_bindings.get(lane) else {
                continue;
            };
            let key = queue_key(&binding.queue);
            match consumers.iter_mut().find(|p| queue_key(&p.queue) == key) {
                Some(plan) => {
                    plan.lanes.push(lane.clone());
                    plan.prefetch = plan.prefetch.max(binding.prefetch);
                }
                None => consumers.push(ConsumerPlan {
                    queue: Arc::clone(&binding.queue),
                    lanes: vec![lane.clone()],
                    prefetch: binding.prefetch,
                }),
            }
        }
    }

    Ok(Plan {
        event_routes,
        rpc_routes,
        event_bindings,
        rpc_bindings,
        consumed,
        served,
        consumers,
    })
}
