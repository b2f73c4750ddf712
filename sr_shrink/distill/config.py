"""Configuration of a distillation run (recorded in run.json, checked on --resume)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

MODES = ("datafree", "generator", "noise", "pink", "deadleaves", "data")
RECIPE_KEYS = ("mode", "g_kind", "data_target", "mix", "synthetic",
               "student_steps_per_g", "g_lr", "g_warmup", "w_r", "w_div", "w_nat", "g_ema",
               "kd_loss", "reuse", "lr", "channels", "lr_patch", "batch")


@dataclass
class DistillConfig:
    """Everything that defines a run: the stages, the input source (mode) and the training recipe.

    ``mode``: ``datafree`` (the default recipe: generator samples mixed with dead-leaves images),
    ``generator`` (the paper's loop alone), ``noise`` / ``pink`` / ``deadleaves`` (synthetic inputs, no
    generator) or ``data`` (real LR patches from ``data_dir``, with the teacher's output as target, or the
    HR ground truth when ``data_target="hr"``).
    """

    scale: int = 2
    mode: str = "datafree"
    stage_start: int = 1
    stage_end: int = 4
    stage_step: int = 1
    steps_per_stage: int = 500
    channels: int = 16
    batch: int = 16
    lr_patch: int = 0  # 0: 48 // scale (24 px at x2)
    lr: float = 1e-3
    kd_loss: str = "l1"  # l1 | charbonnier
    reuse: int = 2  # student steps per fresh (input, teacher output) batch
    # generator (datafree / generator modes)
    g_kind: str = "refine"  # refine: bounded perturbation of synthetic images; latent: the paper's G(z)
    z_dim: int = 256
    student_steps_per_g: int = 10
    g_lr: float = 1e-3
    g_warmup: int = 50  # generator steps on L_R (+ natural statistics) alone before the adversarial term
    w_r: float = 1.0
    w_div: float = 0.1
    w_nat: float = 1.0
    g_ema: float = 0.99
    mix: float = 0.5  # datafree: share of each batch drawn from the synthetic sources, the rest from G
    synthetic: str = "deadleaves"  # datafree: comma-separated synthetic sources sharing the mix equally
    data_dir: str | None = None
    data_target: str = "teacher"  # data mode: KD on the teacher's output (teacher) or ground truth (hr)
    seed: int = 0
    save_every: int = 100
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.lr_patch == 0:
            self.lr_patch = max(12, (48 // self.scale) // 4 * 4)

    def stages(self) -> list[int]:
        """Return the block counts of the stages, e.g. [1, 2, 3, 4] for 1:4 step 1."""
        return list(range(self.stage_start, self.stage_end + 1, self.stage_step))

    def recipe(self) -> dict:
        """Return the recipe fields (what run.json records as the method used)."""
        d = asdict(self)
        return {k: d[k] for k in RECIPE_KEYS}

    def to_dict(self) -> dict:
        """Return all fields as a JSON-ready dict."""
        return asdict(self)
