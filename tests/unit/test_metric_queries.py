"""The PromQL reader the live-scrape check relies on (tests/metric_queries.py) finds the metrics,
and only them, in the rules' and the dashboard's queries."""

from __future__ import annotations

from tests.metric_queries import dashboard_expressions, metric_names, rule_expressions, served_names


def test_metric_names_skips_functions_labels_durations_and_keywords() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, route) (rate(jobctl_http_request_duration_seconds_bucket{process="api",'
        ' route!="/metrics"}[$__rate_interval]))) > 0.1 and deriv(jobctl_task_queue_backlog[15m]) > 0'
        " or jobctl_retailers_paused_ratio < 0.05"
        " and on (schedule) increase(jobctl_schedule_missed_total[1d]) > 3 * 3600"
    )
    assert metric_names(expr) == {
        "jobctl_http_request_duration_seconds_bucket",
        "jobctl_task_queue_backlog",
        "jobctl_retailers_paused_ratio",
        "jobctl_schedule_missed_total",
    }


def test_every_rule_and_panel_reads_a_metric() -> None:
    for expr in rule_expressions() + dashboard_expressions():
        assert metric_names(expr), expr


def test_served_names_know_histogram_and_counter_suffixes() -> None:
    exposition = (
        "# HELP jobctl_http_request_duration_seconds t\n# TYPE jobctl_http_request_duration_seconds histogram\n"
        '# TYPE jobctl_messages_held gauge\njob_duration_count{outcome="completed"} 3\n'
    )
    served = served_names(exposition)
    assert {"jobctl_http_request_duration_seconds_bucket", "jobctl_messages_held", "job_duration_count"} <= served
