"""Prometheus metrics of every role, served on TASKMILL_METRICS_PORT when it is set."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RUNS_FINISHED = Counter(
    "taskmill_runs_finished_total", "Attempts finished, by task type and outcome", ["type", "outcome"]
)
RUN_SECONDS = Histogram(
    "taskmill_run_duration_seconds",
    "Time an attempt ran",
    ["type"],
    buckets=(0.001, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30),
)
START_LATENESS = Histogram(
    "taskmill_start_lateness_seconds",
    "Start of a first attempt after it became due: its scheduled time, or its release by the runs it waited for",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 60),
)
PUBLISHED = Counter("taskmill_runs_published_total", "Run messages the broker confirmed")
PUBLISH_FAILED = Counter("taskmill_publish_failures_total", "Run messages the broker refused or never confirmed")
RESCUED = Counter("taskmill_runs_rescued_total", "Runs handed out again after their lease ran out", ["kind"])
REROUTED = Counter(
    "taskmill_messages_rerouted_total",
    "Messages taken from a queue no processor consumes and published where their type is routed now",
    ["queue"],
)
DUPLICATES = Counter("taskmill_deliveries_dropped_total", "Deliveries of runs already started, finished or stale")
DEAD_LETTERED = Counter("taskmill_dead_letters_total", "Messages sent to the dead-letter queue", ["reason"])
MATERIALIZED = Counter("taskmill_runs_materialized_total", "Runs the scheduler inserted")
CONSUMER_RESUBSCRIBED = Counter(
    "taskmill_consumer_resubscribed_total", "Times the processor found its consumer stopped and subscribed again"
)

# Queue pressure, kept current by the distributor and the capacity role on their own (taskmill/pressure.py).
DUE_BACKLOG = Gauge("taskmill_due_backlog_runs", "Runs due and not yet handed to the transport")
OLDEST_DUE = Gauge("taskmill_oldest_due_run_age_seconds", "How long the oldest due run not yet handed out has waited")
QUEUE_DEPTH = Gauge("taskmill_queue_depth", "Messages ready in a queue of the transport", ["queue"])
PROCESSORS_LIVE = Gauge("taskmill_processors_live", "Processors whose heartbeat is recent")
SCHEDULER_LAG = Gauge(
    "taskmill_scheduler_lag_seconds",
    "How far the least advanced watermark is behind the near term (2 min) every task has made (0: caught up)",
)
HTTP_REQUESTS = Counter("taskmill_http_requests_total", "API requests answered", ["method", "route", "status"])
HTTP_SECONDS = Histogram(
    "taskmill_http_request_duration_seconds",
    "Time the API took to answer",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
ALERTS_POSTED = Counter(
    "taskmill_alert_webhook_posts_total", "Dead-run alerts posted to TASKMILL_ALERT_WEBHOOK_URL", ["outcome"]
)
ROLE_INFO = Gauge("taskmill_role_info", "1 for the role this process runs", ["role"])
SLOTS = Gauge("taskmill_processor_slots", "Runs a processor executes at once at most (its concurrency)")
SLOTS_BUSY = Gauge("taskmill_processor_slots_busy", "A processor's execution slots in use (read at the scrape)")


def serving(types: Iterable[str], concurrency: int, busy: Callable[[], int]) -> None:
    """A processor's series from its start: its slots, and each type's outcomes at 0 (a counter born at its first
    increment is missed by increase(), as a type's first dead run would be by the alert on dead runs)."""
    SLOTS.set(concurrency)
    SLOTS_BUSY.set_function(busy)
    for task_type in types:
        for outcome in ("succeeded", "failed", "dead"):
            RUNS_FINISHED.labels(task_type, outcome)


def serve(port: int) -> None:
    if port:
        start_http_server(port)
