"""Feature recording (forward hooks) and student-to-teacher feature adapters."""

from .adapters import FeatureAdapter, adapter_key, build_adapters, probe_feature_shapes
from .recorder import FeatureRecorder

__all__ = ["FeatureAdapter", "FeatureRecorder", "adapter_key", "build_adapters", "probe_feature_shapes"]
