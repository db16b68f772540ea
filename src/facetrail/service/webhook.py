"""The optional alert webhook: each live alert POSTed as JSON to a control-room system.

A sender thread takes alert events from its own bounded subscription to the event hub, so a
slow or absent receiver never delays the deployment: events beyond the queue are dropped and
counted, and a delivery is retried with backoff a few times before it is given up (and the
giving up is audited, like every delivery). Each request is signed: the header
`X-Facetrail-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">` with the shared
secret, so the receiver can check where it came from and refuse replays. The best shot is
included only when configured (`live_webhook_best_shot`): by default the receiver gets the
subject, score, estimated false match rate and the alert's id, and an operator looks at the
face in facetrail, where the viewing is audited.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from facetrail.errors import InvalidInputError
from facetrail.service.live_events import EventHub, LiveEvent

USER_AGENT = "facetrail-webhook/1"


def check_url(url: str) -> str:
    """An http(s) URL with a host; anything else is refused at start-up, not at the alert."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInputError("the live webhook must be an http:// or https:// URL with a host")
    return url


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


@dataclass(frozen=True)
class Delivery:
    """How one event's delivery ended (for the audit trail)."""

    event: LiveEvent
    status: int | None  # the receiver's HTTP status, or None when it could not be reached
    attempts: int
    error: str | None


class WebhookSender:
    """POSTs what `build` makes of each event (None: not sent) to `url`, in its own thread."""

    def __init__(
        self,
        url: str,
        secret: bytes | None,
        hub: EventHub,
        build: Callable[[LiveEvent], dict[str, Any] | None],
        on_delivery: Callable[[Delivery], None],
        *,
        attempts: int = 3,
        timeout: float = 5.0,
        backoff: float = 0.5,
    ) -> None:
        self.url = check_url(url)
        self.secret = secret
        self.build = build
        self.on_delivery = on_delivery
        self.attempts = attempts
        self.timeout = timeout
        self.backoff = backoff
        self.sent = 0
        self.failed = 0
        self._sub = hub.subscribe()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="facetrail-webhook", daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        return self._sub.missed

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (within `timeout`), then stop."""
        self._stop.set()
        self._sub.close()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            events = self._sub.wait(0.5)
            for event in events:
                self._deliver(event)
            if self._stop.is_set() and not events:
                return

    def _deliver(self, event: LiveEvent) -> None:
        try:
            payload = self.build(event)
        except Exception as exc:  # the alert may have been deleted meanwhile
            self.on_delivery(Delivery(event, None, 0, f"not sent: {type(exc).__name__}"))
            return
        if payload is None:
            return
        body = json.dumps(payload, separators=(",", ":"), default=str).encode()
        status, error, attempt = None, None, 0
        for attempt in range(1, self.attempts + 1):
            status, error = self._post(body)
            if status is not None and 200 <= status < 300:
                error = None
                break
            if status is not None and 400 <= status < 500 and status not in (408, 429):
                break  # the receiver refuses it: sending it again will not help
            if self._stop.wait(self.backoff * 2 ** (attempt - 1)) and attempt > 1:
                break
        ok = error is None and status is not None and 200 <= status < 300
        if ok:
            self.sent += 1
        else:
            self.failed += 1
        self.on_delivery(Delivery(event, status, attempt, None if ok else error or f"{status}"))

    def _post(self, body: bytes) -> tuple[int | None, str | None]:
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if self.secret:
            headers["X-Facetrail-Signature"] = signature(self.secret, int(time.time()), body)
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, None
        except urllib.error.HTTPError as exc:
            return exc.code, f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            return None, f"unreachable: {type(reason).__name__}"
