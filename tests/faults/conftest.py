"""Show the fault scenarios' counts at the end of any pytest run that ran them (no -s needed)."""

from __future__ import annotations

from tests.faults.driver import REPORT


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if REPORT:
        terminalreporter.section("fault injection: requests sent / completed / migrated / refused / failed / lost")
        for line in REPORT:
            terminalreporter.write_line(line)
