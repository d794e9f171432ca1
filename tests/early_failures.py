"""A pytest plugin: each failure's error lines are printed the moment the test fails.

make device-check loads it (-p early_failures). Its test step can be stopped at its time limit,
and pytest prints its failure report only at the end of a session, so a stopped run would name
its failures without saying what went wrong. With pytest-xdist, the hook runs in the controller
process, which writes the log."""

import pytest

MAX_LINES = 25  # of each failure's "E ..." lines: the error and torch.testing's mismatch report

_config = None


@pytest.hookimpl(trylast=True)  # after the terminal reporter is registered
def pytest_configure(config):
    global _config
    if not hasattr(config, "workerinput"):  # not in a pytest-xdist worker: its controller reports
        _config = config


def pytest_runtest_logreport(report):
    terminal = _config and _config.pluginmanager.get_plugin("terminalreporter")
    if not report.failed or not terminal:
        return
    text = report.longreprtext
    lines = [line for line in text.splitlines() if line.startswith("E ")] or text.splitlines()[-MAX_LINES:]
    terminal.write_line(f"\n--- {report.nodeid} failed ({report.when}):")
    for line in lines[:MAX_LINES]:
        terminal.write_line(line)
    if len(lines) > MAX_LINES:
        terminal.write_line(f"E   ... {len(lines) - MAX_LINES} more lines")
