"""Teachers: load any SR network and normalise it to one calling convention.

``load_teacher(path)`` accepts a TorchScript file, a ``torch.export`` .pt2 archive, a state_dict (bare, in
``.safetensors``, or wrapped as ``params_ema``/``params``/``state_dict``/...) whose architecture is
recognised by sr-shrink's own detectors or, for the rest of the SR model zoo, by spandrel (the ``zoo``
extra), an sr-shrink checkpoint, or a full pickled ``nn.Module`` only with ``trust_pickle=True``. It returns
a :class:`Teacher`: RGB float in [0, 1], (N,3,h,w) -> (N,3,s*h,s*w), with value range, Y-only,
pre-upsampling and input-size requirements handled by the wrapper. Every failure is an
:class:`~sr_shrink.errors.SRShrinkError` with a one-line message.

Modules: ``formats`` (sniff and safely read a file), ``detect`` (sr-shrink's architecture detectors),
``zoo`` (spandrel), ``probe`` (scale, value range, size requirements, MACs), ``wrapper`` (Teacher,
TeacherInfo, YCbCr), ``load`` (load_teacher).
"""

from .formats import sha256_file
from .load import DEFAULT_TEACHER, default_teacher, load_teacher
from .probe import SizeRequirements, count_inference_params, count_macs
from .wrapper import Teacher, TeacherInfo, rgb_to_ycbcr, ycbcr_to_rgb

__all__ = ["DEFAULT_TEACHER", "SizeRequirements", "Teacher", "TeacherInfo", "count_inference_params", "count_macs",
           "default_teacher",
           "load_teacher", "rgb_to_ycbcr", "sha256_file", "ycbcr_to_rgb"]
