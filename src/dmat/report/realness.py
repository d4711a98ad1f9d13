"""What each model's samples are like against real images, as the findings state it: inside the real-vs-real floor
in both feature spaces (a verdict needs both, and no missing class), the class mix (evaluation/coverage.py), and the
signs of memorisation (the copy test, raw copy rates, held-out against train-split KID)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dmat.config.metrics import REFERENCES, per_reference
from dmat.report.tables import GROUP, kind_of, namer, with_keys

FLOOR_SPREAD = 2.0  # "inside the floor's spread" = KID within 2 sd (over draws) of the real-vs-real floor
RAW_CHANCE = 0.01  # a raw nearest-distance copy rate's chance (memorisation.COPY_PERCENTILE, 1%)
COPY_ALARM = 5 * RAW_CHANCE  # a raw copy rate of 5x chance flags memorisation
# the copy test's own alarm (memorisation.copy_test: beta-binomial p < 0.01 against chance), logged as 1/0
COPY_TEST = ("copy_alarm", "copy_rate", "copy_rate_chance", "copy_p_value")
SPLIT_KIDS = tuple(per_reference(m, r) for m in ("kid", "kid_sd") for r in REFERENCES)  # kid_train, kid_heldout, ...


def row_name(row, name) -> str:
    """A row's model in a sentence; `name`: namer() of the rows it is among."""
    return "the teacher" if row.method == "teacher" else f"size {row.size_factor:g} {name(*kind_of(row))}"


def _inside(rows: pd.DataFrame, kid: str) -> pd.Series:
    """Rows whose `kid` is within FLOOR_SPREAD floor sd of its real-vs-real floor (False where not measured)."""
    gap = (rows[kid] - rows[f"{kid}_floor"]).abs()
    return (gap <= FLOOR_SPREAD * rows[f"{kid}_floor_sd"]).fillna(False)


def floor_comparison(evaluations: pd.DataFrame) -> list[str]:
    """Which models' KID (matched N) is inside the real-vs-real floor's spread in both feature spaces -- a verdict
    needs both (the random CNN misses dropped classes, the classifier noise and blur) -- and, where they disagree,
    which space sees what. A model whose evaluation raised a copy alarm is never called inside it (a copier's KID is
    at the floor by copying)."""
    spaces = ("kid", "kid_classifier")
    columns = [f"{k}{part}" for k in spaces for part in ("", "_floor", "_floor_sd")]
    name = namer(evaluations)
    rows = with_keys(evaluations).reindex(columns=[*GROUP, "quality_n", "copy_alarm", "classes_missing",
                                                   *columns]).dropna(subset=columns[:3])
    if rows.empty:
        return ["No evaluation has a matched-N KID and floor."]
    randcnn, classifier = _inside(rows, "kid"), _inside(rows, "kid_classifier")
    scored = rows[columns[3:]].notna().all(axis=1)

    def names(mask) -> set[str]:
        return {row_name(r, name) for r in rows[mask].itertuples()}

    alarmed = names(rows.copy_alarm == 1)
    lacking = names(rows.classes_missing > 0)  # a class missing: not real-like, whatever its KID
    both = names(randcnn & classifier) - alarmed - lacking
    copies = sorted(names(randcnn & (classifier | ~scored)) & alarmed)
    copying = (f"; not counted, since their copy test raised an alarm (their samples reproduce training images, so "
               f"their KID is no sign of quality): {', '.join(copies)}" if copies else "")
    out = [f"KID inside the spread of the real-vs-real floor in both feature spaces (within {FLOOR_SPREAD:g} sd over "
           f"draws, N = {', '.join(f'{n:g}' for n in sorted(rows.quality_n.unique()))} a side): "
           f"{', '.join(sorted(both)) or 'none'}{copying}."]
    for mask, text in ((randcnn & scored & ~classifier, "inside the random CNN's floor but not the classifier's (it sees "
                        "which classes are drawn: a class missing or over-drawn)"),
                       (classifier & ~randcnn, "inside the classifier's floor but not the random CNN's (it sees noise, "
                        "blur and stroke texture)"),
                       (randcnn & ~scored, "inside the random CNN's floor, not scored by the classifier: not said to "
                        "be inside")):
        if found := sorted(names(mask) - alarmed - both - lacking):
            out.append(f"KID {text}: {', '.join(found)}.")
    if found := sorted(names(randcnn & classifier) & lacking - alarmed):
        out.append(f"KID inside both floors, but classes missing from its samples (see the class mix): "
                   f"{', '.join(found)}.")
    return out


def class_mix(evaluations: pd.DataFrame) -> list[str]:
    """Which models draw the classes in another mix than the real data's (the classifier's classes of the samples
    against the held-out images'; evaluation/coverage.py): a class-mix distance beyond FLOOR_SPREAD floor sd of its
    real-vs-real floor, and the classes hardly drawn at all, with how many of the model's evaluations miss each."""
    columns = ["class_tv", "class_tv_floor", "class_tv_floor_sd"]
    rows = with_keys(evaluations).reindex(columns=[*GROUP, "missing_classes", "classes_missing", *columns])
    rows = rows.dropna(subset=columns)
    if rows.empty:
        return []
    name = namer(evaluations)
    outside, missing = [], []
    for _, group in rows.groupby(GROUP, dropna=False, sort=False):
        row = group.iloc[0]
        who = row_name(row, name)
        z = ((group.class_tv - group.class_tv_floor) / group.class_tv_floor_sd).mean()
        if z > FLOOR_SPREAD:
            outside.append(f"{who} ({group.class_tv.mean():.2f} against {group.class_tv_floor.mean():.2f} "
                           f"± {group.class_tv_floor_sd.mean():.2f})")
        lists = [text.split(",") for text in group.missing_classes.fillna("") if text]
        if counts := pd.Series([c for found in lists for c in found]).value_counts().to_dict():
            classes = ", ".join(f"{c} ({k} of {len(group)})" for c, k in sorted(counts.items(), key=lambda x: int(x[0])))
            missing.append(f"{who}: {classes}")
    if not outside and not missing:
        return [f"Class mix: every model draws the classes as the real images do (class-mix distance within "
                f"{FLOOR_SPREAD:g} sd of its real-vs-real floor, no class missing)."]
    out = []
    if outside:
        out.append(f"Class mix other than the real one (class-mix distance beyond {FLOOR_SPREAD:g} floor sd; "
                   f"mean over seeds, against the floor ± its sd): {'; '.join(outside)}.")
    if missing:
        out.append("Classes missing from the samples (drawn at under a quarter of their real share; in how many of "
                   f"the model's evaluations): {'; '.join(missing)}.")
    return out


def memorisation_signs(evaluations: pd.DataFrame) -> list[str]:
    """Copy alarms (the noise- and shift-tolerant copy test), raw copy rates far above chance, and KID clearly worse
    against held-out images than against the train split."""
    lines, name = [], namer(evaluations)
    columns = [*GROUP, *COPY_TEST, "copy_rate_pixel", "copy_rate_feature", *SPLIT_KIDS]
    for row in with_keys(evaluations).reindex(columns=columns).itertuples():
        if row.copy_alarm == 1:
            lines.append(f"{row_name(row, name)}: copy alarm: copy rate {row.copy_rate:.2f} against "
                         f"{row.copy_rate_chance:g} by chance (binomial p={row.copy_p_value:.2g}): its samples "
                         "reproduce training images.")
        rate = np.nanmax([row.copy_rate_pixel, row.copy_rate_feature, -1.0])
        if rate > COPY_ALARM:
            lines.append(f"{row_name(row, name)}: raw copy rate {rate:.2f} (chance {RAW_CHANCE:g}): its samples are as "
                         "close to training images as copies.")
        gap = row.kid_heldout - row.kid_train
        if gap > FLOOR_SPREAD * np.hypot(row.kid_sd_train, row.kid_sd_heldout):
            lines.append(f"{row_name(row, name)}: KID against held-out images {row.kid_heldout:.3g} vs "
                         f"{row.kid_train:.3g} against its train split: a memorisation sign.")
    measured = evaluations.reindex(columns=["copy_rate_pixel", "copy_rate"]).notna().any().any()
    if not lines and measured:
        lines.append(f"No evaluation shows memorisation: no copy alarm{_chance_text(evaluations)}, raw "
                     f"nearest-distance copy rates at most {COPY_ALARM:g} ({RAW_CHANCE:g} by chance for these) and no "
                     "held-out KID clearly above the train-split KID.")
    return lines


def _chance_text(evaluations: pd.DataFrame) -> str:
    """The copy test's chance as each evaluation logged it (copy_rate_chance: about 0.05), not the raw rates' 0.01."""
    chances = sorted(evaluations.reindex(columns=["copy_rate_chance"]).copy_rate_chance.dropna().unique())
    if not chances:
        return ""
    said = f"{chances[0]:.2g}" if len(chances) == 1 else f"{chances[0]:.2g} to {chances[-1]:.2g}"
    return f" (the copy test's rate by chance: {said})"
