"""Typed configuration: one dataclass per stage (:mod:`.schema`), a preset per dataset (:mod:`.presets`),
``--set a.b=v`` overrides and JSON (:mod:`.overrides`), and the checks of impossible settings (:mod:`.validate`).

Every run writes the resolved config as JSON beside its outputs; :func:`from_dict` reads it back.
"""

from hellodd.config.overrides import apply_overrides, from_dict, set_value, to_dict
from hellodd.config.presets import FASHION_MNIST_DEBIAN, IPC_SETTINGS, PRESETS, ipc_settings, preset
from hellodd.config.schema import (
    ADAPTER_DTYPES,
    IGNORE_INDEX,
    LABEL_REFINEMENTS,
    LABEL_SOURCES,
    SEGMENTATION_DATA,
    TORCHVISION_ARCHS,
    TORCHVISION_SEGMENTERS,
    Config,
    DataConfig,
    DistillConfig,
    EngineConfig,
    EvaluateConfig,
    ProjectorConfig,
    TeacherConfig,
    is_architecture,
    is_label_source,
    is_segmenter,
    split_source,
)
from hellodd.config.validate import validate

__all__ = [
    "ADAPTER_DTYPES",
    "IGNORE_INDEX",
    "SEGMENTATION_DATA",
    "TORCHVISION_SEGMENTERS",
    "is_segmenter",
    "FASHION_MNIST_DEBIAN",
    "IPC_SETTINGS",
    "LABEL_REFINEMENTS",
    "LABEL_SOURCES",
    "PRESETS",
    "TORCHVISION_ARCHS",
    "Config",
    "DataConfig",
    "DistillConfig",
    "EngineConfig",
    "EvaluateConfig",
    "ProjectorConfig",
    "TeacherConfig",
    "apply_overrides",
    "from_dict",
    "ipc_settings",
    "is_architecture",
    "is_label_source",
    "preset",
    "set_value",
    "split_source",
    "to_dict",
    "validate",
]
