"""Every metric an evaluation logs (and the few the report and training add), declared once: its name, what it
measures, whether lower or higher is better, its unit and the groups that read it.

Adding a metric = its compute function (dmat.evaluation, logged under `name`) + one `Metric` entry below + its test.
Readers never retype a name: the Model Registry's version tags (HEADLINE), the report's query (REQUIRED, LEGACY),
tables (SUMMARY, QUALITY, MEMORISATION), figures and frontier (GRID, `better`) and the synthetic study of the
tests take theirs from here. A group's names come in declaration order, which is the order tables show them in.

Groups: headline (a model version's scores in the registry), required (an evaluation without one is incomplete),
summary (the summary table's columns), quality (the quality table; by_reference: also each reference's score),
memorisation, grid and grid_cost (logged per step count as `grid_<name>`, step = sampling steps), history (per-step or per-timestep series), legacy (its definition changed
when FID/KID moved to matched N: older values are kept apart), budget (a model run's training budget), training
(per-epoch training curves), report (computed by the report from other metrics), floor_spread (the figures' floor
bands).

Longer than 300 lines: the registry is one table, every metric of dmat declared once and read top to bottom, with
the few functions that name and format a metric from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

LOWER, HIGHER, NEITHER = "lower", "higher", "neither"  # which way is better (neither: a count or a context)
REFERENCES = ("train", "heldout")  # each FID/KID is also logged against each real reference as `<name>_<reference>`


@dataclass(frozen=True)
class Metric:
    name: str
    measures: str
    better: str = LOWER
    unit: str = ""
    groups: tuple[str, ...] = ()
    label: str = ""  # as a table's header names it: "KID", "Latency per image"
    category: str = ""  # its column group in tables and CSVs (CATEGORIES)

    @property
    def lower_is_better(self) -> bool:
        return self.better == LOWER


# A table's or CSV's columns come in these groups, in this order: what the model is (method, init, size, seeds: the
# report's keys), how long it trained, how good it is, what it costs, and the diagnostics behind them. A metric's
# group is its `category`; columns of no metric (system/*, autotune.*, *_legacy) come after them all (OTHER).
CATEGORIES = ("identity", "budget", "quality", "cost", "diagnostics")
OTHER = "other"


def _m(name: str, label: str, measures: str, better: str = LOWER, unit: str = "", *groups: str) -> Metric:
    return Metric(name, measures, better, unit, groups, label)


def _in(category: str, *entries: Metric) -> tuple[Metric, ...]:
    return tuple(replace(metric, category=category) for metric in entries)


METRICS: dict[str, Metric] = {m.name: m for m in (
    # cost (evaluation/timing.py, model/flops.py)
    *_in("cost",
        _m("num_parameters", "Parameters", "trainable parameters of the model", LOWER, "parameters", "summary"),
        _m("flops_per_forward", "FLOPs per forward", "FLOPs of one forward pass (one sampling step)", LOWER, "FLOPs",
           "summary"),
        _m("checkpoint_mb", "Checkpoint", "size of the checkpoint on disk", LOWER, "MiB"),
        _m("latency_ms_per_image", "Latency per image", "median wall time of sampling one image (batch 1)", LOWER, "ms",
           "required", "summary", "grid_cost"),
        _m("flops_per_image", "FLOPs per image", "sampling FLOPs of one image: steps x flops_per_forward", LOWER,
           "FLOPs", "grid_cost"),
        _m("throughput_images_per_s", "Throughput", "images per second of full sampling batches", HIGHER, "images/s",
           "grid_cost"),
        _m("peak_memory_mb", "Peak memory", "peak memory of the evaluation (CUDA allocated, else process RSS)", LOWER,
           "MiB"),
    ),
    # quality at matched N (evaluation/quality.py), each the mean over the draws and `_sd` its sd
    *_in("quality",
        _m("kid", "KID", "KID, N generated vs N real (the headline score)", LOWER, "", "headline", "required",
           "summary", "quality", "grid", "by_reference"),
        _m("kid_sd", "KID sd", "sd of KID over the draws", NEITHER, "", "grid"),
        _m("kid_floor", "KID floor", "KID of N real vs N other real images: the best a model can reach", LOWER, "",
           "summary", "quality", "legacy"),
        _m("kid_floor_sd", "KID floor sd", "sd of the KID floor over its draws (100, cached: param floor_estimate)",
           NEITHER, "", "floor_spread"),
        _m("fid", "FID", "FID, N generated vs N real", LOWER, "", "headline", "required", "summary", "quality", "grid",
           "legacy", "by_reference"),
        _m("fid_sd", "FID sd", "sd of FID over the draws", NEITHER, "", "grid"),
        _m("fid_floor", "FID floor", "FID of N real vs N other real images", LOWER, "", "headline", "summary",
           "quality", "legacy"),
        _m("fid_floor_sd", "FID floor sd", "sd of the FID floor over its draws (100, cached: param floor_estimate)",
           NEITHER, "", "floor_spread"),
        _m("precision", "Precision", "share of generated samples inside the real manifold (Kynkaanniemi et al.)",
           HIGHER, "", "headline"),
        _m("recall", "Recall", "share of real samples inside the generated manifold", HIGHER, "", "headline"),
        _m("quality_n", "N", "N of every FID/KID", NEITHER, "images"),
        _m("quality_draws", "Draws", "K draws that FID/KID average over (their floors: param floor_estimate)", NEITHER,
           "draws"),
    ),
    # the same scores in the semantic space (evaluation/spaces.py): the plain ones are the headline space's
    # (random CNN, param headline_space); `<name>_classifier` (or `_inception`) the classifier's, side by side
    *_in("quality",
        _m("kid_classifier", "KID (classifier)",
           "KID in the classifier's features (blind to noise and blur: see dmat sensitivity)", LOWER, "", "semantic"),
        _m("kid_classifier_floor", "KID floor (classifier)", "its real-vs-real floor", LOWER, "", "semantic"),
        _m("kid_classifier_floor_sd", "KID floor sd (classifier)", "sd of that floor over the draws", NEITHER, "",
           "semantic"),
        _m("fid_classifier", "FID (classifier)", "FID in the classifier's features", LOWER, "", "semantic"),
        _m("fid_classifier_floor", "FID floor (classifier)", "its real-vs-real floor", LOWER, "", "semantic"),
        _m("fid_classifier_floor_sd", "FID floor sd (classifier)", "sd of that floor over the draws", NEITHER, "",
           "semantic"),
        _m("precision_classifier", "Precision (classifier)", "precision in the classifier's features", HIGHER, "",
           "semantic"),
        _m("recall_classifier", "Recall (classifier)", "recall in the classifier's features", HIGHER, "", "semantic"),
    ),
    # class coverage (evaluation/coverage.py): the classifier's class mix of the samples against the real one's
    *_in("quality",
        _m("class_tv", "Class-mix distance",
           "total variation distance between the generated and the real class mix, N against N (0: the same mix)",
           LOWER, "", "summary"),
        _m("class_tv_sd", "Class-mix distance sd", "its sd over the draws", NEITHER),
        _m("class_tv_floor", "Class-mix distance floor", "the same distance between two halves of the real images",
           LOWER, "", "summary"),
        _m("class_tv_floor_sd", "Class-mix distance floor sd", "its sd over the draws", NEITHER),
        _m("classes_missing", "Classes missing",
           "classes generated at under a quarter of their real share (tag dmat.missing_classes names them)", LOWER,
           "classes", "summary"),
    ),
    # memorisation (evaluation/memorisation.py)
    *_in("diagnostics",
        _m("copy_rate_pixel", "Copy rate (pixels)",
           "share of samples closer to a training image than held-out images are (pixels)", LOWER, "", "summary",
           "memorisation"),
        _m("copy_rate_feature", "Copy rate (features)", "the same copy rate in the extractor's features", LOWER, "",
           "summary", "memorisation"),
        _m("nn_distance_pixel", "NN distance (pixels)",
           "median pixel distance of a sample to its nearest training image", HIGHER, "", "memorisation"),
        _m("nn_distance_pixel_heldout", "NN distance, held-out (pixels)",
           "the same for held-out real images (the reference)", NEITHER, "", "memorisation"),
        _m("nn_distance_feature", "NN distance (features)",
           "median feature distance of a sample to its nearest training image", HIGHER, "", "memorisation"),
        _m("nn_distance_feature_heldout", "NN distance, held-out (features)",
           "the same for held-out real images (the reference)", NEITHER, "", "memorisation"),
    ),
    # the copy test that survives noise and 1-px shifts (memorisation.copy_test): low-pass, shift-tolerant,
    # nearest / second-nearest training image distance ratio below the held-out images' 5% quantile
    *_in("diagnostics",
        _m("copy_rate", "Copy rate",
           "share of samples nearer one training image than unseen images are (noise/shift tolerant)", LOWER, "",
           "memorisation"),
        _m("copy_rate_chance", "Copy rate by chance", "the copy rate of unseen real images, by construction", NEITHER),
        _m("copy_alarm", "Copy alarm",
           "1 when copy_rate >= 2 x chance and a binomial test gives p < 0.01: the model copies", LOWER, "",
           "memorisation"),
        _m("copy_p_value", "Copy p", "one-sided binomial p of copy_rate against chance", NEITHER),
        _m("copy_ratio_threshold", "Copy ratio threshold", "the held-out images' 5% quantile of the distance ratio",
           NEITHER),
        _m("nn_ratio", "NN ratio", "median nearest / second-nearest training image distance ratio of the samples",
           HIGHER),
        _m("nn_ratio_heldout", "NN ratio, held-out", "the same for held-out real images (the reference)", NEITHER),
    ),
    # behaviour against the teacher (evaluation/trajectories.py)
    *_in("diagnostics",
        _m("final_mse", "Final MSE to teacher", "MSE of the final sample to the teacher's from the same noise", LOWER,
           "", "summary"),
        _m("traj_mse_mean", "Trajectory MSE to teacher", "mean over sampling steps of the state MSE to the teacher's",
           LOWER, "", "summary", "legacy"),
        _m("traj_cosine_mean", "Trajectory cosine to teacher",
           "mean over sampling steps of the state cosine to the teacher's", HIGHER, "", "legacy"),
        _m("path_length", "Path length", "mean summed L2 distance between consecutive sampler states", NEITHER),
        _m("teacher_path_length", "Teacher's path length", "the teacher's path_length from the same noise", NEITHER),
        _m("traj_mse", "Trajectory MSE to teacher", "state MSE to the teacher's per sampling step (0 = x_T)", LOWER, "",
           "history"),
        _m("traj_cosine", "Trajectory cosine to teacher", "state cosine to the teacher's per sampling step", HIGHER, "",
           "history"),
        _m("eps_mse_true", "ε MSE to the noise", "epsilon MSE to the true noise per timestep", LOWER, "", "history"),
        _m("eps_mse_teacher", "ε MSE to the teacher", "epsilon MSE to the teacher's epsilon per timestep", LOWER, "",
           "history"),
        _m("grid_extra_seconds", "Steps-grid time", "what the steps grid cost the evaluation", NEITHER, "s"),
    ),
    # computed by the report (report/tables.py)
    *_in("quality",
        _m("kid_z", "KID z vs floor", "(KID - floor) / floor sd: within about 2, inside the floor's spread", NEITHER,
           "", "report"),
    ),
    *_in("cost",
        _m("quality_per_mparam", "1/FID per M parameters", "1/FID per million parameters", HIGHER, "", "summary",
           "report"),
        _m("quality_per_ms", "1/FID per ms", "1/FID per millisecond of latency", HIGHER, "", "summary", "report"),
    ),
    # a model run's training budget (training/, report/query.py), in this order
    *_in("budget",
        _m("best_epoch", "Best epoch", "the epoch of the evaluated checkpoint", NEITHER, "epochs", "summary", "budget"),
        _m("epochs_run", "Epochs run", "epochs trained before stopping", NEITHER, "epochs", "summary", "budget"),
        _m("optimizer_steps", "Optimizer steps", "optimizer steps taken", NEITHER, "steps", "summary", "budget"),
        _m("train_images", "Training images", "training images per epoch", NEITHER, "images", "budget"),
        _m("still_improving", "Still improving", "1 when the model was still improving when it stopped", NEITHER, "",
           "budget"),
        _m("train_flops", "Training FLOPs", "~ 3 x flops_per_forward x train_images x epochs_run", LOWER, "FLOPs",
           "summary", "budget", "report"),
    ),
    # training curves (training/loop.py): epsilon MSE to the true noise, without a student's distillation terms
    *_in("diagnostics",
        _m("train_task_loss", "Train loss", "per-epoch task loss on the train split", LOWER, "", "training"),
        _m("val_task_loss", "Validation loss", "per-epoch task loss on the validation split", LOWER, "", "training"),
    ),
)}


def names(group: str) -> tuple[str, ...]:
    """The names of a group's metrics, in declaration order."""
    return tuple(name for name, metric in METRICS.items() if group in metric.groups)


def per_reference(name: str, reference: str) -> str:
    """kid -> kid_train; kid_sd -> kid_sd_train: a score against one real reference (REFERENCES)."""
    return f"{name}_{reference}"


def grid_key(name: str) -> str:
    """A grid metric's series name: `grid_kid` (step = sampling steps)."""
    return f"grid_{name}"


def better_text(name: str) -> str:
    """"lower is better" / "higher is better" for an axis label ("" for a count or a context)."""
    better = METRICS[name].better
    return "" if better == NEITHER else f"{better} is better"


HEADLINE = names("headline")  # a model version's scores, as version tags (fid, kid, fid_floor, precision, recall)
REQUIRED = names("required")  # an evaluation without one of these cannot be placed on the quality or cost figures
SUMMARY = names("summary")
QUALITY = names("quality")
MEMORISATION = names("memorisation")
GRID_SCORES = names("grid")  # kid, kid_sd, fid, fid_sd: the headline reference's, at matched N
GRID_COSTS = names("grid_cost")  # what sampling one image costs at each step count
GRID_QUALITIES = tuple(m for m in GRID_SCORES if METRICS[m].better != NEITHER)  # kid, fid
BY_REFERENCE = tuple(per_reference(m, r) for m in names("by_reference") for r in REFERENCES)  # kid_train, ...
HISTORY = names("history")
LEGACY = names("legacy")
BUDGET = names("budget")
TRAINING = names("training")
FLOOR_SPREADS = names("floor_spread")

# The feature spaces FID/KID/precision/recall are scored in (dmat.evaluation.spaces). An evaluation logs its headline
# space as param HEADLINE_SPACE_PARAM and the plain names (kid, fid_floor_sd_heldout) in it, every space's scores
# under its name as well (kid_classifier); one without the param (an older dmat) has its plain scores in its
# `features` space, LEGACY_SPACE where that is not logged either. The evaluation and the report read these from here.
HEADLINE_SPACE = "randcnn"
HEADLINE_SPACE_PARAM = "headline_space"
LEGACY_SPACE = "classifier"
SPACES = (HEADLINE_SPACE, "classifier", "inception")
SPACE_METRICS = ("fid", "kid", "precision", "recall")  # logged once per space


def in_space(name: str, space: str) -> str:
    """A score's name in one space: kid -> kid_randcnn, kid_floor_sd_heldout -> kid_randcnn_floor_sd_heldout;
    names of no space (quality_n, quality_draws) are kept."""
    for metric in SPACE_METRICS:
        if name == metric or name.startswith(f"{metric}_"):
            return f"{metric}_{space}{name[len(metric):]}"
    return name


def is_plain_score(name: str) -> bool:
    """Whether `name` is a score under its plain name (kid, fid_floor_sd_heldout: the headline space's), not under a
    space's (kid_classifier) nor a report's `<name>_legacy`."""
    head, _, rest = name.partition("_")
    return head in SPACE_METRICS and rest.split("_")[0] not in SPACES and not name.endswith("_legacy")


# How tables show a metric (dmat.report.tables, the report's first screen, the terminal): its label with its unit and
# which way is better as the header ("Latency per image (ms) ↓"), values to SIGNIFICANT figures without exponents;
# counts of parameters and FLOPs in millions and up ("0.409 M", "45.3 M", "1.20 G": the unit is then in the value),
# whole counts (epochs, images, steps, a 0/1 flag) as integers; a value with a spread (a 95% interval, an sd) to the
# spread's two significant figures ("0.244 ± 0.019"; a spread of 0, every seed alike, is not shown).
ARROWS = {LOWER: "↓", HIGHER: "↑", NEITHER: ""}
SCALED_UNITS = ("parameters", "FLOPs")
WHOLE_UNITS = ("images", "epochs", "steps", "draws")
WHOLE_NAMES = ("copy_alarm", "still_improving")  # 0/1 flags (and, in the summary, how many models said 1)
SIGNIFICANT = 3
MAX_DECIMALS = 8
NOISE = 1e-3  # a value below this share of its column's typical magnitude is shown at the column's precision
_PREFIXES = ((1e12, "T"), (1e9, "G"), (1e6, "M"))
INTERVAL_SUFFIX = "_ci95"  # a table's `<metric>_ci95`: the half-width of the metric's 95% interval
_VARIANTS = (("_legacy", "legacy"), *((f"_{r}", f"{r.replace('heldout', 'held-out')} ref.") for r in REFERENCES))


def metric_of(name: str) -> Metric | None:
    """The registry's metric behind a column: kid; kid_train and kid_sd_heldout (a reference's), fid_legacy (an older
    dmat's), grid_kid (per sampling steps), kid_inception (a space's), kid_ci95 (its interval); None for no metric."""
    if name in METRICS:
        return METRICS[name]
    for suffix in (INTERVAL_SUFFIX, *(s for s, _ in _VARIANTS)):
        if name.endswith(suffix):
            return metric_of(name.removesuffix(suffix))
    if name.startswith("grid_"):
        return metric_of(name.removeprefix("grid_"))
    for space in SPACES:
        for metric in SPACE_METRICS:
            if name.startswith(f"{metric}_{space}"):
                return metric_of(metric + name.removeprefix(f"{metric}_{space}"))
    return None


def metric_label(name: str) -> str:
    """A column's name for a reader: "KID", "KID (train ref.)", "FID (legacy)", "KID (inception)", "± 95% CI";
    a column of no metric keeps its name."""
    if name in METRICS:
        return METRICS[name].label or name
    if name.endswith(INTERVAL_SUFFIX) and metric_of(name):
        return "± 95% CI"
    for suffix, said in _VARIANTS:
        if name.endswith(suffix) and metric_of(name.removesuffix(suffix)):
            return f"{metric_label(name.removesuffix(suffix))} ({said})"
    if name.startswith("grid_") and metric_of(name.removeprefix("grid_")):
        return f"{metric_label(name.removeprefix('grid_'))} per steps"
    for space in SPACES:
        for metric in SPACE_METRICS:
            if name.startswith(f"{metric}_{space}") and metric_of(name):
                rest = metric_label(metric + name.removeprefix(f"{metric}_{space}"))
                return f"{rest} ({space})"
    return name


def metric_header(name: str) -> str:
    """A column's header: label, unit where the values do not carry it, and ↓ / ↑ where lower / higher is better:
    metric_header("kid") == "KID ↓", metric_header("latency_ms_per_image") == "Latency per image (ms) ↓",
    metric_header("num_parameters") == "Parameters ↓" (its values say "0.409 M"), metric_header("epochs_run") ==
    "Epochs run"; a column of no metric keeps its name."""
    metric = metric_of(name)
    if metric is None or name.endswith(INTERVAL_SUFFIX):
        return metric_label(name)
    unit = "" if metric.unit in (*SCALED_UNITS, *WHOLE_UNITS) or not metric.unit else f" ({metric.unit})"
    arrow = ARROWS[metric.better]
    return f"{metric_label(name)}{unit}{' ' + arrow if arrow else ''}"


def format_value(name: str, value, spread=None) -> str:
    """One value of a metric as tables show it: format_value("num_parameters", 408641) == "0.409 M",
    format_value("kid", 0.24351, 0.019) == "0.244 ± 0.019", format_value("epochs_run", 12.0) == "12",
    format_value("fid", float("nan")) == "n/a". A column of values: format_values."""
    return format_values(name, [value], None if spread is None else [spread])[0]


def format_values(name: str, values, spreads=None) -> list[str]:
    """A column of one metric's values (and their spreads, NaN where none) as format_value shows each, alike: counts
    in one prefix (the largest value's: "0.0260 M" beside "45.3 M"), and a value at noise level (below NOISE times
    the column's median magnitude) to the column's precision (a KID floor of -1.046e-05 beside KIDs of 0.05 shows
    "0.0000", not "-1.046e-05")."""
    values = [_number(v) for v in values]
    spreads = [_number(s) for s in spreads] if spreads is not None else [math.nan] * len(values)
    metric = metric_of(name)
    unit = metric.unit if metric else ""
    whole = unit in WHOLE_UNITS or (metric is not None and metric.name in WHOLE_NAMES)
    scale, suffix = 1.0, ""
    finite = [abs(v) for v in values if math.isfinite(v)]
    if unit in SCALED_UNITS:
        scale, prefix = next(((f, p) for f, p in _PREFIXES if max(finite, default=0) >= f), _PREFIXES[-1])
        suffix = f" {prefix}"
    nonzero = sorted(v / scale for v in finite if v)
    typical = nonzero[len(nonzero) // 2] if nonzero else 0.0  # the (upper) median magnitude
    column = _decimals(typical, SIGNIFICANT, limit=None) if typical else SIGNIFICANT - 1
    shown = []
    for value, spread in zip(values, spreads):
        value, spread = value / scale, spread / scale
        if not math.isfinite(value):
            shown.append("n/a")
        elif math.isfinite(spread) and spread > 0:
            decimals = _decimals(spread, 2)
            shown.append(f"{_fixed(value, decimals)} ± {_fixed(spread, decimals)}{suffix}")
        elif whole and value == round(value) and scale == 1.0:
            shown.append(f"{value:,.0f}")
        else:
            # a value at noise level beside the column's (a KID floor of 1e-5 beside KIDs of 0.05): its precision
            noise = abs(value) < NOISE * typical
            decimals = column if noise or not value else _decimals(value, SIGNIFICANT, limit=None)
            text = (f"{value:.{SIGNIFICANT - 1}e}" if decimals > MAX_DECIMALS  # a p of 1e-9, alone
                    else _fixed(value, decimals)) + suffix
            shown.append(text)  # a zero spread (every seed alike) is not shown: n says how many there were
    return shown


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _decimals(value: float, significant: int, limit: int | None = MAX_DECIMALS) -> int:
    """Decimals that show `value` to `significant` figures (none for large values, at most `limit`)."""
    decimals = max(0, significant - 1 - math.floor(math.log10(abs(value))))
    return decimals if limit is None else min(limit, decimals)


def _fixed(value: float, decimals: int) -> str:
    """Fixed point with thousands separators; never "-0.000"."""
    text = f"{value:,.{decimals}f}"
    return text.lstrip("-") if float(text.replace(",", "")) == 0 else text
