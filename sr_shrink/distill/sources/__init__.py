"""Input sources of distillation behind one protocol (:mod:`.base`), one module per family, and the one factory.

* :mod:`.synthetic`: synthetic images (``--mode noise|pink|deadleaves|texleaves``) and the labelled pool;
* :mod:`.generator`: the generator game and ``--mode generator``;
* :mod:`.mixed`: ``--mode datafree``, synthetic images mixed with generator samples;
* :mod:`.photos`: real photos (``--mode data``).

:func:`make_source` builds the source of a config; :func:`check_config` refuses a config a source cannot serve
(:func:`check_data`: the photos of ``--mode data``).
"""

from __future__ import annotations

import torch

from ...data import list_images
from ...errors import SRShrinkError
from ..grown import KINDS
from ..render import SYNTHETIC
from .base import Pair, Plain, Source
from .generator import GeneratorGame, GeneratorSource
from .label import Labeller, is_oom, resolve_teacher_dtype
from .mixed import MixedSource
from .photos import RealPatches
from .synthetic import SyntheticPool, SyntheticSource, pool_labels

__all__ = ["Labeller", "MixedSource", "Pair", "PhotoSource", "Source", "check_config", "check_data", "is_oom",
           "make_source", "resolve_teacher_dtype", "synthetic_kinds", "FAMILIES"]


class PhotoSource(Plain):
    """``--mode data``: LR crops of real photos, with the teacher's output as target or (``hr``) the ground truth."""

    def __init__(self, photos: RealPatches, hr: bool, g: torch.Generator, label: Labeller):
        self.photos, self.hr, self.g, self.label = photos, hr, g, label

    def refill(self, n: int) -> Pair:
        """Return ``n`` (LR crop, target) pairs."""
        lr, hr = self.photos.sample(n, self.g)
        x = lr.to(self.label.device)
        return (x, hr.to(self.label.device)) if self.hr else (x, self.label(x))


# mode -> source class: what each mode asks of the config (patch_multiple, min_batch) is read from here
FAMILIES = {"datafree": MixedSource, "generator": GeneratorSource, "data": PhotoSource,
            **{k: SyntheticSource for k in ("noise", "pink", "deadleaves", "texleaves")}}


def synthetic_kinds(cfg) -> list[str]:
    """Return the synthetic kinds of ``cfg``'s inputs, which the pool holds (none for the generator and data
    modes, nor for datafree at ``mix`` 0)."""
    if cfg.mode in SYNTHETIC:
        return [cfg.mode]
    if cfg.mode == "datafree" and cfg.mix > 0:
        return cfg.synthetic.split(",")
    return []


def check_config(cfg) -> None:
    """Raise an SRShrinkError naming the flag when ``cfg`` asks what its source cannot do."""
    family = FAMILIES[cfg.mode]
    if cfg.lr_patch % family.patch_multiple:
        m = family.patch_multiple
        raise SRShrinkError(f"--lr-patch {cfg.lr_patch}: the generator needs a multiple of {m}, e.g. "
                            f"{cfg.lr_patch // m * m or m}.")
    if cfg.batch < family.min_batch:
        raise SRShrinkError(f"--batch {cfg.batch}: the generator's loss compares samples within a batch; use "
                            f"--batch {family.min_batch} or more (16 is the default) with --mode {cfg.mode}.")
    bad = [s for s in cfg.synthetic.split(",") if s not in KINDS]  # "auto" is resolved before (distill.perceptual)
    if bad:
        raise SRShrinkError(f"unknown synthetic source {bad[0]!r}; choose from {', '.join(KINDS)}.")
    if cfg.data_target not in ("teacher", "hr"):
        raise SRShrinkError(f"unknown data target {cfg.data_target!r}; use teacher or hr.")
    check_data(cfg)


def check_data(cfg) -> None:
    """Return None when ``cfg`` needs no photos or its ``--data`` folder holds images; else raise an SRShrinkError
    saying what to pass. Cheap (the images are listed, not read): distill runs it before it makes the run folder."""
    if cfg.mode != "data":
        return
    if not cfg.data_dir:
        raise SRShrinkError("--mode data needs --data DIR, a folder of training images.")
    list_images(cfg.data_dir)


def make_source(cfg, label: Labeller, g: torch.Generator, rank: int = 0, world: int = 1,
                pool_images: int | None = None) -> Source:
    """Return the input source of ``cfg``: its family's class (``FAMILIES``), drawing from the run's random
    generator ``g``, labelling with ``label``; the pool, when the source has a synthetic share, is built by
    ``prepare(seconds)`` (under a time budget within the seconds its plan gives the pool, or of ``pool_images``,
    the size a resumed budgeted run recorded). Seeds the global random generator with ``cfg.seed`` (the
    generator's initial weights)."""
    check_config(cfg)
    photos = RealPatches(cfg.data_dir, cfg.scale, cfg.lr_patch) if cfg.mode == "data" else None
    torch.manual_seed(cfg.seed)
    if photos is not None:
        return PhotoSource(photos, cfg.data_target == "hr", g, label)
    kinds = synthetic_kinds(cfg)
    share = cfg.batch if cfg.mode in SYNTHETIC else int(round(cfg.batch * cfg.mix))
    pool = SyntheticPool(kinds, cfg.pool if pool_images is None else pool_images, cfg.lr_patch, cfg.scale,
                         pool_labels(cfg.steps_per_stage, cfg.reuse, share, bool(cfg.time_budget)), label,
                         cfg.seed * 1000 + rank, cfg.batch, label.device)
    if cfg.mode in SYNTHETIC:
        return SyntheticSource(kinds, cfg.lr_patch, g, label, pool)
    if cfg.mode == "datafree" and cfg.mix >= 1:  # every input from the pool: no generator, no game to play
        return MixedSource(cfg.synthetic.split(","), cfg.mix, cfg.lr_patch, g, label, None, pool)
    game = GeneratorGame(cfg, g, label, world, pool)
    if cfg.mode == "generator":
        return GeneratorSource(game)
    return MixedSource(cfg.synthetic.split(","), cfg.mix, cfg.lr_patch, g, label, game, pool)
