"""Live events: how an alert reaches the operator's page and the webhook as it happens.

The deployment's runner publishes small events (an alert was stored, a deployment's counters
or status changed, an alert was reviewed) to the `EventHub` of the process. Every subscriber
(an operator's server-sent-event stream, the webhook sender) has its own bounded queue: a
subscriber that does not keep up loses its oldest events (and is told how many), and never
slows the runner or holds memory without bound. Events carry ids and counters only, never a
face image or a descriptor; a subscriber that shows an alert reads it through the service,
which checks the caller's role and audits the viewing.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Events a subscriber may hold before the oldest is dropped.
QUEUE_LIMIT = 256


@dataclass(frozen=True)
class LiveEvent:
    kind: str  # "alert", "deployment" or "review"
    deployment: int
    data: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)  # epoch seconds, when published


class Subscription:
    """One subscriber's queue. `wait` blocks a thread; an async consumer sets a `waker`
    (called from the publishing thread) and drains with `drain`."""

    def __init__(self, hub: EventHub, deployment: int | None) -> None:
        self._hub = hub
        self.deployment = deployment
        self._events: deque[LiveEvent] = deque()
        self._cond = threading.Condition()
        self.missed = 0
        self.waker: Callable[[], None] | None = None
        self.closed = False

    def _offer(self, event: LiveEvent) -> None:
        if self.deployment is not None and event.deployment != self.deployment:
            return
        with self._cond:
            if len(self._events) >= QUEUE_LIMIT:
                self._events.popleft()
                self.missed += 1
            self._events.append(event)
            self._cond.notify()
        waker = self.waker
        if waker is not None:
            waker()

    def drain(self) -> list[LiveEvent]:
        with self._cond:
            out = list(self._events)
            self._events.clear()
            return out

    def wait(self, timeout: float) -> list[LiveEvent]:
        """The events queued so far, waiting up to `timeout` seconds for the first."""
        with self._cond:
            if not self._events and not self.closed:
                self._cond.wait(timeout)
        return self.drain()

    def close(self) -> None:
        self._hub._remove(self)
        with self._cond:
            self.closed = True
            self._cond.notify_all()
        waker = self.waker
        if waker is not None:
            waker()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventHub:
    """Fan-out of live events to this process's subscribers."""

    def __init__(self) -> None:
        self._subs: list[Subscription] = []
        self._lock = threading.Lock()

    def subscribe(self, deployment: int | None = None) -> Subscription:
        """Events of one deployment, or of all (None)."""
        sub = Subscription(self, deployment)
        with self._lock:
            self._subs.append(sub)
        return sub

    def publish(self, event: LiveEvent) -> None:
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            sub._offer(event)

    def _remove(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)

    def __len__(self) -> int:
        with self._lock:
            return len(self._subs)
