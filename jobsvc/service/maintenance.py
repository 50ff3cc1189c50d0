"""Maintenance, every ``heartbeat`` seconds: renew this process's leases, act on what the
renewal reports, rescue other processes' expired leases, and prune old finished jobs.

* **Heartbeat.** The leases of exactly the attempts this process holds (``(job id, lease
  token)``: queued, running, or waiting for their outcome's commit) are renewed in one
  statement. An attempt whose job was not renewed has lost it (this process missed a whole
  lease's worth of heartbeats and another instance rescued the job, maybe claimed it again,
  even here under a new token): its handler is cancelled at once and nothing it does is
  written. An attempt whose job a client asked to cancel (on any instance) is cancelled.
* **Rescue.** Running jobs whose lease expired are handed back (or dead-lettered after
  ``--max-rescues``); the claim loop is woken for them.
* **Prune.** Finished jobs older than ``--retention`` are deleted, in batches.

Maintenance outlives the workers and the recorder: leases stay renewed until the last
outcome is committed.
"""

from __future__ import annotations

import logging
import math

import trio

from ..clock import Clock
from ..config import Settings
from ..errors import StoreUnavailable
from ..models import JobState
from ..store import Store
from .attempts import Attempts, Phase
from .observer import Observer
from .runner import Runner
from .waiters import Waiters

__all__ = ["PRUNE_EVERY", "Maintenance"]

log = logging.getLogger("jobsvc")

#: Prune finished jobs past their retention this often (seconds).
PRUNE_EVERY = 3600.0


class Maintenance:
    def __init__(
        self,
        *,
        store: Store,
        settings: Settings,
        clock: Clock,
        owner: str,
        attempts: Attempts,
        runner: Runner,
        waiters: Waiters,
        observer: Observer,
    ) -> None:
        self._store = store
        self._settings = settings
        self._clock = clock
        self._owner = owner
        self._attempts = attempts
        self._runner = runner
        self._waiters = waiters
        self._observer = observer
        self._last_prune = -math.inf

    async def run(self, stop_after: trio.Event, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Every ``heartbeat`` seconds until ``stop_after`` is set (the last outcome is written)."""
        task_status.started()
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._stop_when, stop_after, scope)
                while True:
                    await trio.sleep(self._settings.heartbeat)
                    await self.tick()

    @staticmethod
    async def _stop_when(event: trio.Event, scope: trio.CancelScope) -> None:
        await event.wait()
        scope.cancel()

    async def tick(self) -> None:
        try:
            await self.heartbeat()
            await self.rescue()
            if self._settings.retention and trio.current_time() - self._last_prune >= PRUNE_EVERY:
                self._last_prune = trio.current_time()
                pruned = await self._store.prune(finished_before=self._clock.now() - self._settings.retention)
                if pruned:
                    log.info("pruned %d finished job(s) older than the retention", pruned)
        except StoreUnavailable as exc:
            log.warning("maintenance: store unavailable (%s)", exc)
        except Exception:  # noqa: BLE001 - never wedge: try again at the next heartbeat
            log.exception("maintenance: unexpected error")

    async def heartbeat(self) -> None:
        held = [attempt.key for attempt in self._attempts if not attempt.lost]
        if not held:
            return
        renewed = await self._store.heartbeat(owner=self._owner, now=self._clock.now(), lease=self._settings.lease, held=held)
        for key in held:
            attempt = self._attempts.get(key)
            if attempt is None or attempt.phase is Phase.RECORDING:
                continue  # ended meanwhile, or its outcome is being written (fenced if lost)
            if key not in renewed:
                if self._attempts.lose(key) is not None:
                    log.warning("job %s lost its lease (taken back); stopping attempt %d here", key[0], key[1])
            elif renewed[key]:
                self._attempts.cancel(key)  # a client asked, maybe on another instance

    async def rescue(self) -> None:
        rescued = await self._store.rescue(now=self._clock.now(), max_rescues=self._settings.max_rescues)
        for job in rescued:  # logged as job events (the owner's lease expired)
            self._observer.job_event("rescued" if job.state is JobState.PENDING else job.state.value, job)
            if job.is_final:
                self._waiters.notify(job.id)
        if any(job.state is JobState.PENDING for job in rescued):
            self._runner.wake()
