"""Typed configuration: one dataclass per stage (:mod:`.schema`), a preset per dataset (:mod:`.presets`),
``--set a.b=v`` overrides and JSON (:mod:`.overrides`), the checks of impossible settings (:mod:`.validate`)
and what each task is (:mod:`.tasks`).

Every run writes the resolved config as JSON beside its outputs; :func:`from_dict` reads it back.
"""

from hellodd.config.overrides import apply_overrides, from_dict, set_value, to_dict
from hellodd.config.presets import FASHION_MNIST_DEBIAN, IPC_SETTINGS, PRESETS, ipc_settings, preset
from hellodd.config.schema import (
    ADAPTER_DTYPES,
    IGNORE_INDEX,
    LABEL_REFINEMENTS,
    LABEL_SOURCES,
    TORCHVISION_ARCHS,
    Config,
    DataConfig,
    DistillConfig,
    EngineConfig,
    EvaluateConfig,
    ProjectorConfig,
    TeacherConfig,
    is_architecture,
    is_label_source,
    split_source,
)
from hellodd.config.tasks import named, scored_by, spec_of
from hellodd.config.validate import validate

__all__ = [
    "ADAPTER_DTYPES",
    "IGNORE_INDEX",
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
    "named",
    "preset",
    "scored_by",
    "set_value",
    "spec_of",
    "split_source",
    "to_dict",
    "validate",
]
