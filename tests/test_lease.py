"""Leases on every backend: one holder at a time, expired or dead holders taken over, numbers
never reused (a stalled holder can never mistake a later lease for its own)."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time

import pytest

from shardflow.storage.lease import Lease, LeaseHeldError, LeaseLostError

from .conftest import Location


def _lease(location: Location, seconds: float = 60) -> Lease:
    return Lease(f"{location.url}/_leases", what="test job", seconds=seconds, storage_options=location.storage_options)


def _expire(lease: Lease) -> None:
    """The state a holder that stopped renewing leaves once its expiry has passed."""
    assert lease.record is not None
    past = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)).isoformat()
    lease.log.rewrite(lease.record.number, {**lease._body(), "expires_at": past})


def test_a_held_lease_is_refused_naming_its_holder(location: Location) -> None:
    first = _lease(location).acquire()
    with pytest.raises(LeaseHeldError, match="held by test job on .* until"):
        _lease(location).acquire()  # this process holds it: never taken for a dead holder
    first.check()
    first.release()
    second = _lease(location).acquire()  # released: free
    assert second.record is not None and second.record.number == 2
    second.release()


def test_an_expired_lease_is_taken_over_and_its_old_holder_knows(location: Location) -> None:
    stalled = _lease(location).acquire()
    _expire(stalled)
    taker = _lease(location).acquire()
    with pytest.raises(LeaseLostError):
        stalled.check()
    taker.release()
    later = _lease(location).acquire()  # the number after the taker's: never the stalled one's again
    assert later.record is not None and later.record.number == 3
    with pytest.raises(LeaseLostError):
        stalled.renew()  # cannot overwrite the current holder's record
    later.check()
    assert [r.data.get("holder") for r in later.log.list()] == [later.holder]
    later.release()


def test_a_dead_holder_on_this_machine_is_taken_over_at_once(location: Location) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    holder = _lease(location, seconds=3600).acquire()
    assert holder.record is not None
    holder.log.rewrite(holder.record.number, {**holder._body(), "pid": int(dead.stdout)})  # as a killed run left it
    taker = _lease(location, seconds=3600).acquire()
    assert taker.record is not None and taker.record.number == holder.record.number + 1
    taker.release()


def test_the_context_manager_renews_and_releases(location: Location) -> None:
    with _lease(location, seconds=1.5) as lease:
        first = lease.log.latest()
        assert first is not None
        time.sleep(1.2)  # past a third of the lease: renewed at least once
        lease.check()
        renewed = lease.log.latest()
        assert renewed is not None and renewed.data["expires_at"] > first.data["expires_at"]
    assert lease.log.latest().data["released_at"]
