"""What several test modules share."""

from __future__ import annotations

import subprocess


def error_line(proc: subprocess.CompletedProcess[str], *fragments: str, code: int = 2) -> str:
    """The command failed as it should: exit ``code`` (2: bad input), no traceback, exactly one
    line saying ``error: ...`` that holds every fragment (on that one line: a wrapped message fails)."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, proc.stderr)
    return errors[0]
