"""The dynamic config every Temporal dev server of jobctl's starts with (`jobctl dev`, the tests,
the benchmarks): task priority and fairness in matching, which the messaging path relies on to
send interactive messages ahead of bulk and share bulk between companies (workflows.messaging,
`message_priority`), history queue reads a cluster's many shards would give it (`ONE_SHARD`), and a
history host's cache of runs as a cluster sizes it (`CLUSTER_CACHE`).
A real cluster sets the same keys (docs/OPERATIONS.md, "Priority and fairness").
"""

from __future__ import annotations

PRIORITY_AND_FAIRNESS: dict[str, str] = {
    # The priority-aware matcher: a backlog is handed out by `priority_key` (1 first, 5 last).
    "matching.useNewMatcher": "true",
    # Within a level, tasks are handed out round-robin by `fairness_key` (implies the new matcher).
    "matching.enableFairness": "true",
    # Tasks already written to a queue's old (FIFO) backlog are still delivered once fairness is on.
    "matching.enableMigration": "true",
    # One partition per task queue: priority orders one backlog, not four that pollers visit in turn.
    # A dev server's load fits one; a cluster keeps its own count (docs/OPERATIONS.md).
    "matching.numTaskqueueReadPartitions": "1",
    "matching.numTaskqueueWritePartitions": "1",
}

ONE_SHARD: dict[str, str] = {
    # A dev server has one history shard, so one reader per history queue for every workflow; a
    # cluster has hundreds, each reading its own at up to these rates. At the default 20 reads a
    # second, a reminders day kept the one transfer reader at its limit and every task it handed
    # to matching (a manual nudge's workflow task, then its send) waited up to 50 ms to be read.
    "history.transferProcessorMaxPollRPS": "200",
    "history.timerProcessorMaxPollRPS": "200",
}

CLUSTER_CACHE: dict[str, str] = {
    # The history service keeps each run it touches in a host-wide cache, 128,000 runs by the
    # server's default; the dev server's own config cuts that to 8,192. Once more runs than that
    # are waiting for their first workflow task (10,000 churn cases opened in under a minute), each
    # is loaded from the store again when a worker takes the task and again when its timeout timer
    # fires: 1.9 loads per case at 10,000 instead of 1.0 (docs/BENCHMARKS.md, "The dev server's
    # cache"). A cluster's hosts keep the default, so the dev server does too.
    "history.hostLevelCacheMaxSize": "128000",
}


def dev_server_args(**extra: str) -> list[str]:
    """`--dynamic-config-value KEY=VALUE` for `PRIORITY_AND_FAIRNESS`, `ONE_SHARD`, `CLUSTER_CACHE`
    and `extra` (keys with dots: pass a dict, `dev_server_args(**{"limit.x": "1"})`)."""
    args: list[str] = []
    for key, value in {**PRIORITY_AND_FAIRNESS, **ONE_SHARD, **CLUSTER_CACHE, **extra}.items():
        args += ["--dynamic-config-value", f"{key}={value}"]
    return args
