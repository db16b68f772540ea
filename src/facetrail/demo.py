"""`facetrail demo`: the main job end to end, offline, on a photo shipped by a dependency.

matplotlib ships a public-domain portrait of Rear Admiral Grace Hopper (US Navy photograph)
as sample data. The demo makes reference and probe images from it by augmentation (crops,
rotation, mirroring, scaling, recompression, lighting), enrols the references into a gallery of
its own (`<data>/demo`, so a real gallery is never touched) and walks the accountable flow:
users with roles, a case, an authorised watchlist, a search, review decisions and an intact
audit trail, including a probe with no face in it.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from facetrail.errors import FacetrailError, ModelError
from facetrail.service.app import Facetrail
from facetrail.store.models import utcnow

SUBJECT = "Grace Hopper"
CASE = "DEMO-1"


def _sample(name: str) -> Path:
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ModelError("the demo needs matplotlib's sample data") from exc
    path = Path(matplotlib.get_data_path()) / "sample_data" / name
    if not path.is_file():
        raise ModelError(f"matplotlib's sample data has no {name}")
    return path


def make_demo_images(folder: Path) -> tuple[Path, list[Path]]:
    """Write the gallery folder (one sub-folder per subject) and the probes; return both."""
    photo = Image.open(_sample("grace_hopper.jpg")).convert("RGB")
    w, h = photo.size
    gallery = folder / "gallery" / SUBJECT
    probes = folder / "probes"
    for d in (gallery, probes):
        d.mkdir(parents=True, exist_ok=True)
    photo.save(gallery / "reference-1.jpg", quality=95)
    photo.crop((w // 10, 0, w - w // 10, h - h // 8)).rotate(
        4, resample=Image.Resampling.BICUBIC
    ).save(gallery / "reference-2.jpg", quality=90)
    rng = np.random.default_rng(7)
    small = ImageOps.mirror(photo).resize((w * 2 // 5, h * 2 // 5), Image.Resampling.LANCZOS)
    small.save(probes / "cctv-still-mirrored-small.jpg", quality=55)
    dim = ImageEnhance.Brightness(ImageEnhance.Contrast(photo).enhance(0.7)).enhance(0.6)
    noisy = np.clip(np.asarray(dim, np.float32) + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(
        np.uint8
    )
    Image.fromarray(noisy).rotate(-6, resample=Image.Resampling.BICUBIC).save(
        probes / "doorbell-dark-noisy.jpg", quality=70
    )
    Image.open(_sample("Minduka_Present_Blue_Pack.png")).convert("RGB").save(probes / "no-face.png")
    return folder / "gallery", sorted(probes.iterdir())


def _people(admin: Facetrail) -> tuple[Facetrail, Facetrail]:
    """An investigator and an authoriser for the demo, with throwaway passwords."""
    handles = []
    for name, role in (("demo-investigator", "investigator"), ("demo-authoriser", "authoriser")):
        password = secrets.token_urlsafe(18)
        admin.add_user(name, role, password)
        handle = admin.as_caller(None)
        handle.login(name, password, label="demo")
        handles.append(handle)
    return handles[0], handles[1]


def run_demo(ft: Facetrail, say: Callable[[str], None] | None = None) -> dict:
    say = say or (lambda _text: None)
    folder = ft.settings.data / "demo"
    if folder.exists():
        shutil.rmtree(folder)
    gallery_dir, probes = make_demo_images(folder / "images")
    settings = ft.settings.model_copy(update={"data": folder / "store"})
    with Facetrail(settings) as admin:
        say(f"1. An administrator sets up {settings.data} and enrols {gallery_dir} ...")
        admin.init("demo-admin", secrets.token_urlsafe(18))
        investigator, authoriser = _people(admin)
        enrolled = admin.enrol([gallery_dir])
        say(f"   enrolled {enrolled.enrolled} reference image(s) of {SUBJECT!r}")
        say("2. An investigator opens a case and proposes a watchlist; an authoriser")
        say("   authorises it and approves listing scores below the threshold ...")
        investigator.open_case(
            CASE,
            purpose="demonstration: find the subject in augmented probe images",
            legal_basis="none: demonstration data shipped with matplotlib",
        )
        expires = utcnow() + timedelta(days=1)
        investigator.create_watchlist("demo", purpose="demonstration", expires_at=expires)
        investigator.add_to_watchlist("demo", [SUBJECT], reason="the demonstration subject")
        authoriser.authorise_watchlist("demo", reason="demonstration")
        authoriser.approve(CASE, scope="below-floor", reason="show every score in the demo")
        say(f"3. Searching {len(probes)} probe images (top 3 candidates, all scores shown) ...")
        report = investigator.search(
            probes, case=CASE, watchlist="demo", top_k=3, include_below=True
        )
        for probe in report.probes:
            name = Path(probe.probe).name
            if probe.error:
                say(f"   {name}: {probe.error}")
            elif not probe.faces:
                say(f"   {name}: no face found")
            for face in probe.faces:
                for c in face.candidates:
                    verdict = "CANDIDATE" if c.above_threshold else "below threshold"
                    say(
                        f"   {name}: candidate {c.id}, rank {c.rank} {c.subject} score "
                        f"{c.score:.3f} est. FMR {c.fmr:.2g} {verdict}"
                    )
        hits = [
            c
            for p in report.probes
            for f in p.faces
            for c in f.candidates
            if c.above_threshold and c.subject == SUBJECT
        ]
        if len(hits) < 2:
            raise FacetrailError(
                "demo: the augmented probes were not found; the installation is not working"
            )
        say("4. The investigator reviews each candidate; every step is in the audit trail ...")
        for c in hits:
            investigator.decide(c.id or 0, "match", note="demonstration: same portrait")
        chain = admin.verify_audit()
        say(f"   audit trail intact: {chain.ok}, {chain.events} events")
    say("5. Do the same with your own data:")
    say("   facetrail init                        (first administrator; then `user add`)")
    say("   facetrail enrol PATH/TO/GALLERY       (one sub-folder per subject)")
    say("   facetrail case open REF --purpose ... --legal-basis ...")
    say("   facetrail search PROBE.jpg --case REF --watchlist NAME")
    return {
        "gallery": str(gallery_dir),
        "enrolled": enrolled.to_dict(),
        "search": report.to_dict(),
        "audit": {"ok": chain.ok, "events": chain.events},
    }
