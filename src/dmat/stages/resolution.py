"""Students at a lower resolution than their teacher (e.g. 8 px students of the 16 px digits teacher).

What such a student learns from: the teacher's epsilon is no target for it. At another resolution the
two networks never see the same x_t (a resized x_t is not a noisy image of the same noise level, and
resized noise is not unit Gaussian noise), so there is no per-pixel output to match. The student
learns the teacher's *distribution* instead (sample-based distillation): before training, the teacher,
at its own resolution with its own EMA weights, generates a bank of images with DDIM from a fixed seed
(seeded from `train.seed`; `train.sample_steps` steps, batches of `train.batch_size`); they are resized
to the student's size with the same antialiased bilinear interpolation the data sets are resized with
(`data.resize`) and mixed with the real training images loaded at the student's size (what a scratch
student and the evaluation see), teacher samples making up `teacher_sample_fraction` of the mix
(default 0.5: as many samples as real images, so an epoch has twice the steps of a scratch student's).
The student trains on the plain DDPM loss on that mix; the distillation loss weights are unused.
Method `scratch` at a lower resolution trains on the real images alone: the baseline that tells whether
the teacher's samples help at that size. Validation is always the real validation split at the
student's size (the same split_seed), so validation losses compare between methods.

The teacher is only ever run on images of its own size: here to sample, and in evaluation not at all
for such a student (the shared-noise comparisons need one resolution; dmat.evaluation skips them).
`init=pruned` needs the teacher's resolution: the UNet places attention by resolution.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import torch
from torch.utils.data import ConcatDataset, TensorDataset
from tqdm.auto import tqdm

from dmat.config import DistillConfig, TrainConfig
from dmat.data import DataSplits, ImagesOnly, load_splits, resize
from dmat.errors import DmatError
from dmat.model.diffusion import sample
from dmat.model.unet import UNetConfig
from dmat.runtime import resolve_precision
from dmat.stages.inits import INITIALISATIONS
from dmat.stages.model_run import ModelPlan
from dmat.tracking import LoadedModel
from dmat.training.loop import DiffusionLoss

log = logging.getLogger(__name__)

BANK_SEED = 4099  # the teacher's sampling noise is seeded train.seed + BANK_SEED: apart from the training streams


def check(config: DistillConfig, train: TrainConfig) -> None:
    """The student's resolution against the teacher's (the data's, `train.image_size`): one clear error before
    anything is loaded. Whether the UNet can halve it is `student_unet`'s check, once the teacher is loaded."""
    size, teacher = config.student_image_size or train.resolved_image_size(), train.resolved_image_size()
    if size > teacher:
        raise DmatError(f"student-image-size {size} is larger than the teacher's {teacher}px: a student works at its "
                        "teacher's resolution or below")
    if size < teacher and INITIALISATIONS[config.init].same_resolution:
        raise DmatError(f"init {config.init} needs the teacher's resolution ({teacher}px), not student-image-size {size}: "
                        "use --init random")


def student_unet(teacher: UNetConfig, config: DistillConfig) -> UNetConfig:
    """The teacher's architecture at the student's width and resolution."""
    unet = dataclasses.replace(teacher, size_factor=config.size_factor,
                               image_size=config.student_image_size or teacher.image_size)
    halvings = len(unet.channel_mults) - 1
    if unet.image_size % 2**halvings:
        raise DmatError(f"student-image-size {unet.image_size} cannot be halved {halvings} times by the teacher's "
                        f"UNet (channel-mults {','.join(map(str, unet.channel_mults))}): use a multiple of {2**halvings}")
    return unet


@torch.inference_mode()
def teacher_samples(teacher: LoadedModel, count: int, image_size: int, train: TrainConfig, device) -> torch.Tensor:
    """`count` DDIM samples of the teacher at its own resolution, resized to `image_size`, on the CPU."""
    model, diffusion, device = teacher.model.eval(), teacher.diffusion, torch.device(device)
    c = model.config
    steps, precision = min(train.sample_steps, diffusion.timesteps), resolve_precision(train.precision, device)
    generator = torch.Generator(device).manual_seed(train.seed + BANK_SEED)
    images = []
    for start in tqdm(range(0, count, train.batch_size), desc="teacher samples", unit="batch", dynamic_ncols=True):
        x_T = torch.randn((min(train.batch_size, count - start), c.in_channels, c.image_size, c.image_size),
                          generator=generator, device=device)
        x = sample(model, diffusion, x_T, "ddim", steps, generator=generator, precision=precision)
        images.append(resize(x.float(), image_size).clamp(-1, 1).cpu())
    return torch.cat(images)


def student_splits(teacher: LoadedModel, train: TrainConfig, config: DistillConfig, image_size: int,
                   device) -> tuple[DataSplits, dict[str, object]]:
    """The real splits at `image_size`, the training split mixed with teacher samples for method distill; and
    what is logged about them (what the student learns from; the bank's size and the seconds it took)."""
    real = load_splits(dataclasses.replace(train, image_size=image_size))
    if config.method == "scratch":
        return real, {"training_data": f"real images at {image_size}px"}
    fraction = config.teacher_sample_fraction
    count = max(1, round(len(real.train) * fraction / (1 - fraction)))
    start = time.perf_counter()
    bank = teacher_samples(teacher, count, image_size, train, device)
    seconds = time.perf_counter() - start
    log.warning(f"note: {count} teacher samples at {teacher.model.config.image_size}px, resized to {image_size}px, "
                f"took {seconds:.1f} s (logged as teacher_samples_seconds)")
    mixed = ConcatDataset([real.train, ImagesOnly(TensorDataset(bank))])
    return (DataSplits(mixed, real.val, image_size, real.channels),
            {"training_data": f"real images and teacher samples at {image_size}px", "teacher_samples": count,
             "teacher_samples_seconds": round(seconds, 2)})


class LowResolution:
    """Turns a student's plan into a lower-resolution one. The splits are made once per resolution and method:
    the students of one loop (`distill.train_students`) share one bank of teacher samples."""

    def __init__(self):
        self._made: dict[tuple, tuple[DataSplits, dict[str, object]]] = {}

    def adapt(self, plan: ModelPlan, teacher: LoadedModel, train: TrainConfig, config: DistillConfig,
              device) -> ModelPlan:
        """`plan` (built by distill for `config`) as a student below its teacher's resolution trains: the DDPM
        loss on `student_splits` (the distillation weights are logged as given, unused: a resumed run reads them
        back), the param image_size the teacher's (what `--image-size` chose, so a resume finds the teacher; the
        tag dmat.image_size is the student's). At the teacher's resolution, `plan` itself."""
        size, teacher_size = plan.unet.image_size, teacher.model.config.image_size
        if size == teacher_size:
            return plan
        key = (size, config.method, config.teacher_sample_fraction)
        if key not in self._made:
            self._made[key] = student_splits(teacher, train, config, size, device)
        splits, bank = self._made[key]
        diffusion = plan.diffusion
        return dataclasses.replace(plan, criterion=lambda student: DiffusionLoss(diffusion, train.snr_gamma), data=splits,
                                   params={**plan.params, "image_size": teacher_size, **bank})
