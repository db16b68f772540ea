"""Evaluation protocols built from a folder of identities (LFW layout: `DIR/<person>/<image>`).

- Open-set identification (`open_set_split`): the gallery holds one image of each person with
  two or more images (the first in name order, so runs are repeatable); that person's other
  images are mated probes; every image of a person with a single image is a non-mated probe
  (nobody in the gallery is that person).
- Demographic differentials (`bias_pairs`): every genuine pair (two images of one person) and,
  per group, a seeded sample of impostor pairs (two images of different people in the same
  group: cross-group pairs are easy negatives that would flatter every group's false match rate).

Group labels (`read_group_labels`) come from a CSV with a header row and two columns: the first
names an image relative to DIR (`Name/Name_0001.jpg`, as `lfw_gender/gender.csv` does) or a
person (a folder name of DIR, labelling all their images); the second is the group. The second
column's header names the attribute (`gender`, `group`, ...). An image's own label wins over
its person's.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facetrail.errors import InvalidInputError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def list_identities(root: Path, limit: int | None = None) -> dict[str, list[str]]:
    """Person -> their image names relative to `root` (sorted), for every sub-folder with at
    least one image; `limit`: only the first `limit` people in name order."""
    if not root.is_dir():
        raise InvalidInputError(f"{root} is not a folder")
    people: dict[str, list[str]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        images = sorted(
            f"{folder.name}/{f.name}"
            for f in folder.iterdir()
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
        )
        if images:
            people[folder.name] = images
        if limit is not None and len(people) >= limit:
            break
    if not people:
        raise InvalidInputError(f"{root} has no <person>/<image> sub-folders: not an LFW layout")
    return people


@dataclass(frozen=True)
class OpenSetSplit:
    gallery: list[str]  # image names, one per enrolled person
    gallery_labels: list[str]  # the person of each gallery image
    probes: list[str]  # mated probes first, then non-mated
    probe_labels: list[str]
    mated: int  # how many of `probes` are mated

    @property
    def non_mated(self) -> int:
        return len(self.probes) - self.mated


def open_set_split(people: dict[str, list[str]], templates: int = 1) -> OpenSetSplit:
    """`templates`: enrol up to this many images of each person (their first ones), always
    leaving at least one as a mated probe; 1 is the standard protocol, more measures the
    fusion of a subject's templates."""
    if templates < 1:
        raise InvalidInputError("a subject needs at least one template")
    gallery, gallery_labels, mated, mated_labels, others, other_labels = [], [], [], [], [], []
    for person, images in people.items():
        if len(images) >= 2:
            enrolled = min(templates, len(images) - 1)
            gallery += images[:enrolled]
            gallery_labels += [person] * enrolled
            mated += images[enrolled:]
            mated_labels += [person] * (len(images) - enrolled)
        else:
            others += images
            other_labels += [person] * len(images)
    return OpenSetSplit(
        gallery, gallery_labels, mated + others, mated_labels + other_labels, len(mated)
    )


def cohort_folds(split: OpenSetSplit, folds: int = 2) -> list[tuple[list[int], list[int]]]:
    """Cross-cohort folds over the non-mated probes (people with one image): fold f keeps
    every f-th of them (in name order, from f) as non-mated probes and uses all the others as
    the cohort, so no cohort face is of a person in the gallery or among that fold's probes.
    Returns per fold (cohort, non-mated probe) indices into `split.probes`. Pooling the folds'
    outcomes scores every non-mated probe exactly once, and every mated probe once per fold."""
    if folds < 2:
        raise InvalidInputError("cross-cohort evaluation needs at least two folds")
    non_mated = list(range(split.mated, len(split.probes)))
    if len(non_mated) < folds:
        raise InvalidInputError("too few people with a single image to form a cohort")
    out = []
    for f in range(folds):
        probes = non_mated[f::folds]
        kept = set(probes)
        out.append(([i for i in non_mated if i not in kept], probes))
    return out


# --------------------------------------------------------------------------- group labels


@dataclass(frozen=True)
class GroupLabels:
    attribute: str  # the second column's header, e.g. "gender"
    by_image: dict[str, str]
    by_person: dict[str, str]

    @property
    def groups(self) -> list[str]:
        return sorted(set(self.by_image.values()) | set(self.by_person.values()))

    def group_of(self, image: str) -> str | None:
        if image in self.by_image:
            return self.by_image[image]
        return self.by_person.get(image.split("/", 1)[0])


def read_group_labels(path: Path) -> GroupLabels:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = [r for r in csv.reader(handle) if r and any(c.strip() for c in r)]
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{path.name} is not a UTF-8 CSV file") from exc
    if len(rows) < 2 or len(rows[0]) < 2:
        raise InvalidInputError(
            f"{path.name}: expected a header and rows of 'image-or-person,group'"
        )
    attribute = rows[0][1].strip() or "group"
    by_image: dict[str, str] = {}
    by_person: dict[str, str] = {}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise InvalidInputError(f"{path.name} line {line}: expected 'image-or-person,group'")
        name, group = row[0].strip().replace("\\", "/"), row[1].strip()
        target = (
            by_image if "/" in name or Path(name).suffix.lower() in IMAGE_SUFFIXES else by_person
        )
        if target.get(name, group) != group:
            raise InvalidInputError(f"{path.name} line {line}: {name} has two groups")
        target[name] = group
    return GroupLabels(attribute, by_image, by_person)


# --------------------------------------------------------------------------- bias pairs


@dataclass(frozen=True)
class BiasPairs:
    """Comparisons for the bias evaluation, as indices into `images`.

    `identity` numbers the people (`people[identity[i]]` is image i's person); pairs are
    image-index arrays `a`, `b`, with `genuine` saying which are mated, and `group` the
    index into `groups` of the group the pair belongs to.
    """

    images: list[str]
    identity: np.ndarray
    people: list[str]
    groups: list[str]
    a: np.ndarray
    b: np.ndarray
    genuine: np.ndarray
    group: np.ndarray
    unlabelled_images: int
    mixed_people: list[str]  # people whose images carry different groups (their pairs skipped)
    impostors_per_group: int
    seed: int


def bias_pairs(
    people: dict[str, list[str]],
    labels: GroupLabels,
    *,
    impostors_per_group: int = 200_000,
    seed: int = 0,
) -> BiasPairs:
    """All genuine pairs within a person, and up to `impostors_per_group` impostor pairs per
    group, drawn uniformly (seeded) from all pairs of images of different people in it.

    A person whose labelled images fall in several groups is left out with a note: their
    genuine pairs belong to no one group. Unlabelled images are left out and counted.
    """
    images: list[str] = []
    identity: list[int] = []
    names: list[str] = []
    person_group: list[int] = []
    groups = labels.groups
    group_index = {g: i for i, g in enumerate(groups)}
    unlabelled = 0
    mixed: list[str] = []
    for person, person_images in people.items():
        tagged = [(img, labels.group_of(img)) for img in person_images]
        unlabelled += sum(g is None for _, g in tagged)
        kept = [(img, g) for img, g in tagged if g is not None]
        if not kept:
            continue
        if len({g for _, g in kept}) > 1:
            mixed.append(person)
            continue
        pid = len(names)
        names.append(person)
        person_group.append(group_index[kept[0][1]])  # type: ignore[index]
        images += [img for img, _ in kept]
        identity += [pid] * len(kept)
    ident = np.array(identity, np.int64)
    pgroup = np.array(person_group, np.int64)
    image_group = pgroup[ident] if len(ident) else np.zeros(0, np.int64)

    a_parts: list[np.ndarray] = []
    b_parts: list[np.ndarray] = []
    gen_parts: list[np.ndarray] = []
    grp_parts: list[np.ndarray] = []
    # Genuine: every pair of images of one person (upper triangle of each person's block).
    starts = np.concatenate([[0], np.cumsum(np.bincount(ident, minlength=len(names)))])
    for pid in range(len(names)):
        lo, hi = starts[pid], starts[pid + 1]
        if hi - lo >= 2:
            i, j = np.triu_indices(hi - lo, k=1)
            a_parts.append(lo + i)
            b_parts.append(lo + j)
            gen_parts.append(np.ones(len(i), bool))
            grp_parts.append(np.full(len(i), pgroup[pid]))
    # Impostor: a uniform sample of image pairs of different people within each group.
    rng = np.random.default_rng(seed)
    for g in range(len(groups)):
        members = np.flatnonzero(image_group == g)
        a, b = _impostor_sample(members, ident, impostors_per_group, rng)
        a_parts.append(a)
        b_parts.append(b)
        gen_parts.append(np.zeros(len(a), bool))
        grp_parts.append(np.full(len(a), g))

    def cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

    return BiasPairs(
        images=images,
        identity=ident,
        people=names,
        groups=groups,
        a=cat(a_parts, np.int64),
        b=cat(b_parts, np.int64),
        genuine=cat(gen_parts, bool),
        group=cat(grp_parts, np.int64),
        unlabelled_images=unlabelled,
        mixed_people=mixed,
        impostors_per_group=impostors_per_group,
        seed=seed,
    )


def _impostor_sample(
    members: np.ndarray, identity: np.ndarray, wanted: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct unordered impostor pairs among `members`: all of them when there are no more
    than `wanted`, else `wanted` drawn without replacement."""
    n = len(members)
    empty = np.zeros(0, np.int64)
    if n < 2:
        return empty, empty
    same_person = np.bincount(identity[members]).astype(np.int64)
    total = n * (n - 1) // 2 - int((same_person * (same_person - 1) // 2).sum())
    if total <= 0:
        return empty, empty
    if total <= 4 * wanted:
        # Few enough to list: all of them, or a sample without replacement.
        i, j = np.triu_indices(n, k=1)
        keep = identity[members[i]] != identity[members[j]]
        i, j = i[keep], j[keep]
        if total > wanted:
            pick = np.sort(rng.choice(total, wanted, replace=False))
            i, j = i[pick], j[pick]
        return members[i], members[j]
    # Rejection sampling of unordered pairs: a draw is kept when the two images are of
    # different people and the pair was not drawn before. At least four times more pairs
    # exist than are wanted, so few rounds are needed.
    chosen = np.zeros(0, np.int64)
    while len(chosen) < wanted:
        draw = max(2 * (wanted - len(chosen)), 1024)
        i = rng.integers(0, n, draw)
        j = rng.integers(0, n, draw)
        lo, hi = np.minimum(i, j), np.maximum(i, j)
        ok = identity[members[lo]] != identity[members[hi]]
        codes = lo[ok] * n + hi[ok]
        # Keep first occurrences in draw order (np.unique sorts; order is restored after).
        merged = np.concatenate([chosen, codes])
        _, first = np.unique(merged, return_index=True)
        chosen = merged[np.sort(first)]
    chosen = chosen[:wanted]
    return members[chosen // n], members[chosen % n]
