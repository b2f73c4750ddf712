"""The names a distill or upscale option may take, in one torch-free place:
:class:`~sr_shrink.distill.config.DistillConfig` and :func:`~sr_shrink.upscale.upscale_files` validate against them
and the command line offers them (``sr-shrink --help`` must not import torch)."""

MODES = ("datafree", "generator", "noise", "pink", "deadleaves", "texleaves", "data")  # --mode: the input source
DATA_TARGETS = ("teacher", "hr")  # --data-target: KD on real photos, or their HR ground truth
BLOCKS = ("plain", "rep")  # --block: the student's blocks while training
G_KINDS = ("refine", "latent")  # --g-kind: perturb synthetic images, or the paper's G(z)
KD_LOSSES = ("l1", "charbonnier")  # --kd-loss
TEACHER_DTYPES = ("auto", "fp32", "bf16", "fp16")  # auto: bf16 on CUDA with bf16 support, else fp32
KD_TARGETS = ("clamp", "raw")  # --targets: the teacher's output clamped to its value range [0, 1], or as it came
UPSCALE_EXTS = ("png", "jpg", "webp")  # upscale --ext: what results are written as (compare strips stay PNG)
