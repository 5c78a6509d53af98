"""The `sim` provider: a simulated cloud, and the smallest complete example of a provider.

Users dry-run a drill plan with it (`drdrill run --simulate`); the test suite and the benchmarks
use it to make faults reproducible. Its cloud is a JSON state file shared by every process that
uses the same path (a flock serialises each read-modify-write), so several worker processes see
the same resources, and a fault that "fails the first three teardowns" counts attempts across
retries, processes and crashes.

Adding a provider: copy the shape of this module
------------------------------------------------
A provider subclasses `drdrill.providers.base.Provider` (read its docstring) and supplies:

1. The drill's steps, which only it knows (the section of that name below):
   `find_recovery_point`   list the candidate points; `select_for_target` applies the drill's rule;
   `create_isolation`      idempotently: names from `ctx.resource_name()`, `ctx.tags()` on everything;
   `verify_isolation`      read the environment back, one IsolationCheck per fact proven;
   `restore`               idempotently: a retried restore continues the first one;
   `wait_ready`            a probe raising NotReadyYet, polled by `poll_until` (never a loop of its own).
2. The primitives of cleaning up (the last section below). From these the base class builds
   teardown, the orphan listing and the orphan deletion once for every provider, with the tag
   re-check before each deletion and the typed DeletionOutcome each one returns:
   `DELETE_ORDER`          its resource kinds, in the order they must be deleted;
   `CONTAINERS`            the kinds holding others: kept while anything inside is not ours;
   `inventory()`           every resource carrying drdrill's tag (one drill's, when asked);
   `named_resources()`     what the environment record names, so an untagged one is reported refused;
   `current_tags()`        a resource's tags now, None when it is gone (raise NotOurs to refuse it);
   `delete()`              delete it and wait until it is gone; False when it was already gone.
   Never write a teardown, an orphan listing, a tag check or a time parser of your own.
3. A test fake of its cloud, so the drill runs end to end against real servers: this module's
   fake is its state file; the clouds have moto_server (tests/moto_server.py) and HTTP fakes
   (tests/azure_fake.py, tests/gcp_fake.py). Then register the family in providers/__init__.py.

Environment:
    DRDRILL_SIM_STATE  path of the shared state file
                       (default <DRDRILL_STATE_DIR or ~/.local/state/drdrill>/sim-state.json)
    DRDRILL_SIM_SPEED  multiplier for every simulated duration (latency, restore_time, ready_after);
                       0.01 makes a "10 minute" restore take 6 s. Default 1.

Faults (a target's `source.faults`, validated by drdrill.providers.sim.schema.SimFaults):

    throttle: 2            the first 2 calls of each operation raise THROTTLED (retryable)
    transient_5xx: 1       the next call raises SERVICE_UNAVAILABLE (retryable)
    timeouts: 1            the next call raises REQUEST_TIMEOUT (retryable)
    ops: [restore]         operations the three above apply to (default: all six)
    fail: restore          operations that fail permanently (SIM_PERMANENT_FAILURE, not retried)
    never_ready: true      the restored resource never becomes ready: wait_ready hits its deadline
    teardown_failures: 3   the first 3 teardown attempts fail (TEARDOWN_FAILED, retryable)
    leaky_isolation: true  the isolated network has a route to production (verify_isolation FAILS)
    latency:               per operation (or `default`): 2s | {min: 1s, max: 3s} | {mean: 2s, stddev: 1s}
      restore: 2s

Recovery points: `source.points` of them, one every `source.point_interval`, the newest at or before
the drill's `as_of` (its declared time unless the drill runs as of another moment, see DrillInput).

Operations: find_recovery_point, create_isolation, verify_isolation, restore, wait_ready, teardown.
A teardown's faults strike its first call (the inventory of what the drill tagged), and each
deletion takes the `teardown` latency. Every resource in the state carries tags; tests plant
untagged ones to prove teardown and sweeps leave them alone. The state also records which process
is running which operation (`running`), for crash tests.

The package's modules: schema.py (its part of the drill format, read without any SDK: see
drdrill/providers/registry.py) and provider.py (SimProvider, imported only by a worker that drills sim).
"""
