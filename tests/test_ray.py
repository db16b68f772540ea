"""Enrolment on a Ray cluster (`--ray ADDRESS`): a head and one worker node on this machine.

The cluster is the one .ci/run starts (FACETRAIL_TEST_RAY_ADDRESS), or one this module
starts itself with Ray's temporary files and home in a scratch directory and token
authentication off, and stops by killing exactly the processes it started. Skipped, saying
why, where Ray is not installed or the shared images are absent.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from conftest import CASE, Team, make_team, sql

RAY_ADDRESS_ENV = "FACETRAIL_TEST_RAY_ADDRESS"
TRAIN = "examples/face_recognition/knn_examples/train"
TASK_TITLE = b"ray::_analyse_references"
# For the nodes and the drivers alike: a test cluster on loopback without token
# authentication (Ray turns it on where it finds a token under the home directory) and
# without usage reports.
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def _ray_cli() -> str:
    found = Path(sys.executable).parent / "ray"
    return str(found) if found.exists() else (shutil.which("ray") or "")


def _processes_under(root: str) -> list[int]:
    """Processes whose command line names `root`, and all their descendants."""
    parents: dict[int, int] = {}
    named: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        pid = int(entry)
        parents[pid] = int(stat.rsplit(b")", 1)[1].split()[1])
        if root.encode() in cmdline and pid != os.getpid():
            named.add(pid)
    found = set(named)
    grew = True
    while grew:
        more = {p for p, parent in parents.items() if parent in found} - found
        found |= more
        grew = bool(more)
    return sorted(found)


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    address = os.environ.get(RAY_ADDRESS_ENV)
    if address == "skip":
        pytest.skip(f"Ray tests skipped: {RAY_ADDRESS_ENV}=skip")
    pytest.importorskip("ray", reason="the Ray tests need Ray: pip install -e '.[test]'")
    if address:
        yield address
        return
    cli = _ray_cli()
    if not cli:
        pytest.skip("the `ray` command is not installed")
    # Short: Ray's socket paths live under it and must fit a Unix socket name.
    scratch = tempfile.mkdtemp(prefix="ftray-", dir="/tmp")
    env = {**os.environ, **RAY_ENV, "HOME": scratch}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
    try:
        for args in (
            ["--head", f"--port={port}", f"--temp-dir={scratch}/t", "--include-dashboard=false"],
            [f"--address={address}"],
        ):
            proc = subprocess.run(
                [cli, "start", *args, *common], env=env, capture_output=True, text=True, timeout=120
            )
            if proc.returncode != 0:
                pytest.fail(f"ray start {' '.join(args)} failed: {proc.stderr[-2000:]}")
        yield address
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in _processes_under(scratch):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            time.sleep(1)
        shutil.rmtree(scratch, ignore_errors=True)


def _enrol(team: Team, train: Path, *ray: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "facetrail", "enrol", str(train), *ray, "--json"],
        env={**os.environ, **RAY_ENV, **team.env("admin")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _report(proc: subprocess.Popen[str]) -> dict:
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert stdout.strip(), f"no report on stdout; stderr: {stderr[-3000:]}"
    return json.loads(stdout)


def _templates(team: Team) -> dict[tuple[str, str], np.ndarray]:
    """(subject, image sha256) -> its templates' vectors, read from the database itself."""
    rows = sql(
        team.data,
        "SELECT s.name, i.sha256, t.vector FROM templates t JOIN faces f ON f.id = t.face_id "
        "JOIN images i ON i.id = f.image_id JOIN subjects s ON s.id = t.subject_id",
    )
    out: dict[tuple[str, str], list[np.ndarray]] = {}
    for name, sha, vector in rows:
        out.setdefault((name, sha), []).append(np.frombuffer(vector, "<f4"))
    return {key: np.stack(v) for key, v in out.items()}


@pytest.fixture(scope="module")
def train(shared_data: Path) -> Path:
    folder = shared_data / TRAIN
    if not folder.is_dir():
        pytest.skip(f"shared images absent: {folder}")
    return folder


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory, train: Path) -> dict:
    """The same folder enrolled here, without Ray: what the cluster must reproduce."""
    team = make_team(tmp_path_factory.mktemp("local") / "data")
    report = _report(_enrol(team, train))
    assert report["enrolled"] == 9
    return {"report": report, "templates": _templates(team)}


def _same_as_local(team: Team, report: dict, local: dict) -> None:
    assert report["subjects"] == local["report"]["subjects"]
    assert report["enrolled"] == local["report"]["enrolled"]
    assert [i["status"] for i in report["items"]] == [i["status"] for i in local["report"]["items"]]
    ours, theirs = _templates(team), local["templates"]
    assert sorted(ours) == sorted(theirs)  # the same images of the same subjects
    for key, vectors in theirs.items():
        assert ours[key].shape == vectors.shape == (1, vectors.shape[1])  # once each
        np.testing.assert_allclose(ours[key], vectors, atol=1e-5)


def test_enrolment_on_ray_equals_a_local_one(
    tmp_path: Path, ray_address: str, train: Path, local: dict
) -> None:
    team = make_team(tmp_path / "data")
    report = _report(_enrol(team, train, "--ray", ray_address))
    _same_as_local(team, report, local)
    events = sql(team.data, "SELECT details FROM audit_events WHERE action = 'enrol'")
    assert events and all(json.loads(d)["executor"] == "ray" for (d,) in events)

    # Run again: every image is recognised as enrolled and nothing is added.
    again = _report(_enrol(team, train, "--ray", ray_address))
    assert again["enrolled"] == 0 and again["duplicates"] == 9
    assert sum(len(v) for v in _templates(team).values()) == 9


def test_a_worker_killed_mid_way_loses_and_duplicates_nothing(
    tmp_path: Path, ray_address: str, train: Path, local: dict
) -> None:
    team = make_team(tmp_path / "data")
    proc = _enrol(team, train, "--ray", ray_address)
    killed = None
    deadline = time.monotonic() + 120
    # Kill the first worker process seen analysing a batch (SIGKILL: no goodbye to Ray).
    while killed is None and proc.poll() is None and time.monotonic() < deadline:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if f.read().startswith(TASK_TITLE):
                        os.kill(int(entry), signal.SIGKILL)
                        killed = int(entry)
                        break
            except OSError:
                continue
        time.sleep(0.005)
    report = _report(proc)
    assert killed is not None, "no worker was caught analysing: nothing was killed"
    _same_as_local(team, report, local)


def _run(team: Team, role: str, *args: str) -> dict:
    # The HOG video detector: quicker than the default CNN, and shipped to the workers like
    # every other setting, which this checks too.
    proc = subprocess.run(
        [sys.executable, "-m", "facetrail", *args, "--json"],
        env={**os.environ, **RAY_ENV, **team.env(role), "FACETRAIL_VIDEO_DETECTOR": "hog"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_a_video_searched_on_ray_finds_what_a_local_search_finds(
    tmp_path: Path, ray_address: str, shared_data: Path
) -> None:
    fr = shared_data / "examples/face_recognition"
    clip = fr / "short_hamilton_clip.mp4"
    if not clip.is_file():
        pytest.skip(f"shared clip absent: {clip}")
    team = make_team(tmp_path / "data")
    for name in ("lin-manuel-miranda", "alex-lacamoire"):
        _run(team, "admin", "enrol", str(fr / f"{name}.png"), "--subject", name)
    search = ("search", str(clip), "--case", CASE, "--top-k", "2")
    here = _run(team, "investigator", *search)
    there = _run(team, "investigator", *search, "--ray", ray_address)

    def appearances(body: dict) -> list[tuple]:
        (probe,) = body["probes"]
        assert probe["kind"] == "video" and probe["error"] is None
        return [
            (f["track"], f["start"], f["end"], [c["subject"] for c in f["candidates"]])
            for f in probe["faces"]
        ]

    assert appearances(there) == appearances(here) and appearances(here)
    assert there["probes"][0]["video"] == here["probes"][0]["video"]

    def scores(body: dict) -> list[float]:
        return [c["score"] for f in body["probes"][0]["faces"] for c in f["candidates"]]

    np.testing.assert_allclose(scores(there), scores(here), atol=1e-3)


# --------------------------------------------------------------------------- without a cluster


class _Ref:
    """An object reference: hashable by identity, as Ray's are."""

    def __init__(self, value: object) -> None:
        self.value = value


class _FakeRay:
    """Just enough of Ray to run the driver's logic here: tasks run at once, in this process;
    `answer` may change what a task answers (a worker with other models)."""

    def __init__(self, answer=lambda result: result) -> None:  # type: ignore[no-untyped-def]
        self.answer = answer
        self.cancelled: list[object] = []

    def remote(self, **options: object):  # type: ignore[no-untyped-def]
        assert options["max_retries"] >= 1 and options["retry_exceptions"] is False

        def wrap(function):  # type: ignore[no-untyped-def]
            fake = self

            class Remote:
                @staticmethod
                def remote(*args: object) -> object:
                    return _Ref(fake.answer(function(*args)))

            return Remote

        return wrap

    def cluster_resources(self) -> dict[str, float]:
        return {"CPU": 2.0}

    def wait(self, refs: list, num_returns: int) -> tuple[list, list]:
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref: _Ref) -> object:
        return ref.value

    def cancel(self, ref: object, force: bool) -> None:
        self.cancelled.append(ref)


def test_without_ray_installed_the_error_says_how(monkeypatch: pytest.MonkeyPatch) -> None:
    from facetrail.service.distributed import ClusterError, connect

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ClusterError, match=r"facetrail\[ray\]"):
        connect("127.0.0.1:6379")


def test_a_worker_with_another_model_is_refused_and_nothing_is_written(
    tmp_path: Path, train: Path
) -> None:
    from facetrail.service import distributed
    from facetrail.service.enrol import expand_paths
    from facetrail.store import AuditRecord

    team = make_team(tmp_path / "data")
    items = expand_paths([train], None)

    def audit(action: str, ids: list[int], details: dict) -> AuditRecord:
        return AuditRecord("admin", action, "image", ids, None, details, "admin")

    with team.open("admin") as admin:
        model = admin.analyzer.model_id
        with pytest.raises(distributed.ClusterError, match="install the same facetrail"):
            distributed.enrol(
                _FakeRay(lambda result: ("other-model:1", result[1])),
                admin.store,
                admin.settings,
                model,
                items,
                audit=audit,
            )
        assert admin.store.gallery_size(model) == (0, 0)
        # The same driver with workers of its own model enrols every image, in input order.
        report = distributed.enrol(
            _FakeRay(), admin.store, admin.settings, model, items, audit=audit
        )
        assert [r.image for r in report.results] == [str(i.path) for i in items]
        assert report.enrolled == 9 and admin.store.gallery_size(model) == (5, 9)
