"""The bad-input suite: every case states the class of outcome a user must get, and the run reports counts.

Mark each case with ``@pytest.mark.outcome("error")`` (a one-line error before any heavy work),
``"handled"`` (the input is logged / skipped / refused and the run goes on with nothing lost) or
``"correct"`` (the input is valid after all and the result is right). At the end of the session pytest
prints how many cases of each class ran and passed.
"""

from __future__ import annotations

from collections import Counter

import pytest

OUTCOMES = ("error", "handled", "correct")
_passed: Counter = Counter()
_failed: Counter = Counter()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        marker = item.get_closest_marker("outcome")
        if "bad_inputs" in str(item.path) and (marker is None or marker.args[0] not in OUTCOMES):
            raise pytest.UsageError(f"{item.nodeid}: a bad-input case needs @pytest.mark.outcome(one of {OUTCOMES})")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    outcome = yield
    report = outcome.get_result()
    marker = item.get_closest_marker("outcome")
    if marker is not None and report.when == "call":
        (_passed if report.passed else _failed)[marker.args[0]] += 1


def pytest_terminal_summary(terminalreporter) -> None:
    if _passed or _failed:
        counts = ", ".join(f"{kind}: {_passed[kind]} passed / {_failed[kind]} failed" for kind in OUTCOMES)
        terminalreporter.write_line(f"bad-input cases by outcome: {counts}")
