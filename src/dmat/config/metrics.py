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
"""

from __future__ import annotations

from dataclasses import dataclass

LOWER, HIGHER, NEITHER = "lower", "higher", "neither"  # which way is better (neither: a count or a context)
REFERENCES = ("train", "heldout")  # each FID/KID is also logged against each real reference as `<name>_<reference>`


@dataclass(frozen=True)
class Metric:
    name: str
    measures: str
    better: str = LOWER
    unit: str = ""
    groups: tuple[str, ...] = ()

    @property
    def lower_is_better(self) -> bool:
        return self.better == LOWER


def _m(name: str, measures: str, better: str = LOWER, unit: str = "", *groups: str) -> Metric:
    return Metric(name, measures, better, unit, groups)


METRICS: dict[str, Metric] = {m.name: m for m in (
    # cost (evaluation/timing.py, model/flops.py)
    _m("num_parameters", "trainable parameters of the model", LOWER, "parameters", "summary"),
    _m("flops_per_forward", "FLOPs of one forward pass (one sampling step)", LOWER, "FLOPs", "summary"),
    _m("checkpoint_mb", "size of the checkpoint on disk", LOWER, "MiB"),
    _m("latency_ms_per_image", "median wall time of sampling one image (batch 1)", LOWER, "ms",
       "required", "summary", "grid_cost"),
    _m("flops_per_image", "sampling FLOPs of one image: steps x flops_per_forward", LOWER, "FLOPs", "grid_cost"),
    _m("throughput_images_per_s", "images per second of full sampling batches", HIGHER, "images/s", "grid_cost"),
    _m("peak_memory_mb", "peak memory of the evaluation (CUDA allocated, else process RSS)", LOWER, "MiB"),
    # quality at matched N (evaluation/quality.py), each the mean over the draws and `_sd` its sd
    _m("kid", "KID, N generated vs N real (the headline score)", LOWER, "", "headline", "required", "summary",
       "quality", "grid", "by_reference"),
    _m("kid_sd", "sd of KID over the draws", NEITHER, "", "grid"),
    _m("kid_floor", "KID of N real vs N other real images: the best a model can reach", LOWER, "", "summary",
       "quality", "legacy"),
    _m("kid_floor_sd", "sd of the KID floor over its draws (100, cached: param floor_estimate)", NEITHER, "",
       "floor_spread"),
    _m("fid", "FID, N generated vs N real", LOWER, "", "headline", "required", "summary", "quality", "grid",
       "legacy", "by_reference"),
    _m("fid_sd", "sd of FID over the draws", NEITHER, "", "grid"),
    _m("fid_floor", "FID of N real vs N other real images", LOWER, "", "headline", "summary", "quality", "legacy"),
    _m("fid_floor_sd", "sd of the FID floor over its draws (100, cached: param floor_estimate)", NEITHER, "",
       "floor_spread"),
    _m("precision", "share of generated samples inside the real manifold (Kynkaanniemi et al.)", HIGHER, "",
       "headline"),
    _m("recall", "share of real samples inside the generated manifold", HIGHER, "", "headline"),
    _m("quality_n", "N of every FID/KID", NEITHER, "images"),
    _m("quality_draws", "K draws that FID/KID average over (their floors: param floor_estimate)", NEITHER, "draws"),
    # the same scores in the semantic space (evaluation/spaces.py): the plain ones are the headline space's
    # (random CNN, param headline_space); `<name>_classifier` (or `_inception`) the classifier's, side by side
    _m("kid_classifier", "KID in the classifier's features (blind to noise and blur: see dmat sensitivity)", LOWER,
       "", "semantic"),
    _m("kid_classifier_floor", "its real-vs-real floor", LOWER, "", "semantic"),
    _m("kid_classifier_floor_sd", "sd of that floor over the draws", NEITHER, "", "semantic"),
    _m("fid_classifier", "FID in the classifier's features", LOWER, "", "semantic"),
    _m("fid_classifier_floor", "its real-vs-real floor", LOWER, "", "semantic"),
    _m("fid_classifier_floor_sd", "sd of that floor over the draws", NEITHER, "", "semantic"),
    _m("precision_classifier", "precision in the classifier's features", HIGHER, "", "semantic"),
    _m("recall_classifier", "recall in the classifier's features", HIGHER, "", "semantic"),
    # memorisation (evaluation/memorisation.py)
    _m("copy_rate_pixel", "share of samples closer to a training image than held-out images are (pixels)", LOWER,
       "", "summary", "memorisation"),
    _m("copy_rate_feature", "the same copy rate in the extractor's features", LOWER, "", "summary", "memorisation"),
    _m("nn_distance_pixel", "median pixel distance of a sample to its nearest training image", HIGHER, "",
       "memorisation"),
    _m("nn_distance_pixel_heldout", "the same for held-out real images (the reference)", NEITHER, "",
       "memorisation"),
    _m("nn_distance_feature", "median feature distance of a sample to its nearest training image", HIGHER, "",
       "memorisation"),
    _m("nn_distance_feature_heldout", "the same for held-out real images (the reference)", NEITHER, "",
       "memorisation"),
    # the copy test that survives noise and 1-px shifts (memorisation.copy_test): low-pass, shift-tolerant,
    # nearest / second-nearest training image distance ratio below the held-out images' 5% quantile
    _m("copy_rate", "share of samples nearer one training image than unseen images are (noise/shift tolerant)",
       LOWER, "", "memorisation"),
    _m("copy_rate_chance", "the copy rate of unseen real images, by construction", NEITHER),
    _m("copy_alarm", "1 when copy_rate >= 2 x chance and a binomial test gives p < 0.01: the model copies",
       LOWER, "", "memorisation"),
    _m("copy_p_value", "one-sided binomial p of copy_rate against chance", NEITHER),
    _m("copy_ratio_threshold", "the held-out images' 5% quantile of the distance ratio", NEITHER),
    _m("nn_ratio", "median nearest / second-nearest training image distance ratio of the samples", HIGHER),
    _m("nn_ratio_heldout", "the same for held-out real images (the reference)", NEITHER),
    # behaviour against the teacher (evaluation/trajectories.py)
    _m("final_mse", "MSE of the final sample to the teacher's from the same noise", LOWER, "", "summary"),
    _m("traj_mse_mean", "mean over sampling steps of the state MSE to the teacher's", LOWER, "", "summary",
       "legacy"),
    _m("traj_cosine_mean", "mean over sampling steps of the state cosine to the teacher's", HIGHER, "", "legacy"),
    _m("path_length", "mean summed L2 distance between consecutive sampler states", NEITHER),
    _m("teacher_path_length", "the teacher's path_length from the same noise", NEITHER),
    _m("traj_mse", "state MSE to the teacher's per sampling step (0 = x_T)", LOWER, "", "history"),
    _m("traj_cosine", "state cosine to the teacher's per sampling step", HIGHER, "", "history"),
    _m("eps_mse_true", "epsilon MSE to the true noise per timestep", LOWER, "", "history"),
    _m("eps_mse_teacher", "epsilon MSE to the teacher's epsilon per timestep", LOWER, "", "history"),
    _m("grid_extra_seconds", "what the steps grid cost the evaluation", NEITHER, "s"),
    # computed by the report (report/tables.py)
    _m("quality_per_mparam", "1/FID per million parameters", HIGHER, "", "summary", "report"),
    _m("quality_per_ms", "1/FID per millisecond of latency", HIGHER, "", "summary", "report"),
    # a model run's training budget (training/, report/query.py), in this order
    _m("best_epoch", "the epoch of the evaluated checkpoint", NEITHER, "epochs", "summary", "budget"),
    _m("epochs_run", "epochs trained before stopping", NEITHER, "epochs", "summary", "budget"),
    _m("optimizer_steps", "optimizer steps taken", NEITHER, "steps", "summary", "budget"),
    _m("train_images", "training images per epoch", NEITHER, "images", "budget"),
    _m("still_improving", "1 when the model was still improving when it stopped", NEITHER, "", "budget"),
    _m("train_flops", "~ 3 x flops_per_forward x train_images x epochs_run", LOWER, "FLOPs", "summary", "budget",
       "report"),
    # training curves (training/loop.py): epsilon MSE to the true noise, without a student's distillation terms
    _m("train_task_loss", "per-epoch task loss on the train split", LOWER, "", "training"),
    _m("val_task_loss", "per-epoch task loss on the validation split", LOWER, "", "training"),
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
