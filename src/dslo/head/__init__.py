"""The DSLO head: the paper's math as pure, batched tensor functions (SPEC §4).

Knows nothing about models: it takes class logits ``(K, h, w)``, a patch affinity ``(N, N)`` and
the image, and returns a segmentation. Every function keeps tensors on the device they arrive on.
Imports only torch and the leaf :mod:`dslo.errors`. The modes are one table,
:data:`MODE_TABLE` (``dslo.head.modes``, each mode with its fused-readout rule); the settings one
frozen record, :class:`HeadConfig`; the evidence's class posterior one function,
:func:`evidence_posterior`, with one scale, :data:`EVIDENCE_SCALE`.
"""

from .config import HeadConfig
from .evidence import EVIDENCE_SCALE, evidence_ambiguity, evidence_margin, evidence_posterior
from .modes import MODE_TABLE, MODES, Mode, discrepancy, fusion_rule, get_mode, transport_matrix
from .readout import (
    FusionRule,
    candidate_classes,
    class_argmax,
    fuse,
    fusion_step,
    fusion_weight,
    normalize_maps,
    possible_winners,
)
from .refine import (
    RefineResult,
    image_config,
    image_fusion,
    image_fusion_weight,
    infer_grid,
    read_out,
    refine,
    resize_to_grid,
    seed_classes,
    upsample_maps,
)
from .seeds import class_confidence, early_rejection, nms, normalize, recover_seeds
from .transport import ipf, optimal_path, sinkhorn
from .upsample import guide_image, joint_bilateral_upsample, upsample_argmax
from .velocity import kl_map, maximum_velocity

__all__ = [
    "EVIDENCE_SCALE",
    "MODES",
    "MODE_TABLE",
    "FusionRule",
    "HeadConfig",
    "Mode",
    "RefineResult",
    "candidate_classes",
    "class_argmax",
    "class_confidence",
    "discrepancy",
    "early_rejection",
    "evidence_ambiguity",
    "evidence_margin",
    "evidence_posterior",
    "fuse",
    "fusion_rule",
    "fusion_step",
    "fusion_weight",
    "get_mode",
    "guide_image",
    "image_config",
    "image_fusion",
    "image_fusion_weight",
    "infer_grid",
    "ipf",
    "joint_bilateral_upsample",
    "kl_map",
    "maximum_velocity",
    "normalize_maps",
    "possible_winners",
    "nms",
    "normalize",
    "optimal_path",
    "read_out",
    "recover_seeds",
    "refine",
    "resize_to_grid",
    "seed_classes",
    "sinkhorn",
    "transport_matrix",
    "upsample_argmax",
    "upsample_maps",
]
