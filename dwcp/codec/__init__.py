"""HDE: the delta + compression codec (chunk frames, baselines, zstd)."""

from .baselines import Baseline, BaselineStore
from .compress import DictionaryStore, LevelController, looks_incompressible
from .hde import HDEDecoder, HDEEncoder, ObjectPlan, chunk_spans
from .metrics import CodecMetrics
from .pipeline import ChunkDecoder, ChunkEncoder, CodecConfig, EncodedFrame

__all__ = [
    "Baseline",
    "BaselineStore",
    "ChunkDecoder",
    "ChunkEncoder",
    "CodecConfig",
    "CodecMetrics",
    "DictionaryStore",
    "EncodedFrame",
    "HDEDecoder",
    "HDEEncoder",
    "LevelController",
    "ObjectPlan",
    "chunk_spans",
    "looks_incompressible",
]
