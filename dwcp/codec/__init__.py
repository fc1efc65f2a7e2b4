"""HDE: the delta + compression codec (chunk frames, zstd levels, dictionaries)."""

from .compress import DictionaryStore, LevelController, looks_incompressible
from .metrics import CodecMetrics
from .pipeline import ChunkDecoder, ChunkEncoder, CodecConfig, EncodedFrame, chunk_spans

__all__ = [
    "ChunkDecoder",
    "ChunkEncoder",
    "CodecConfig",
    "CodecMetrics",
    "DictionaryStore",
    "EncodedFrame",
    "LevelController",
    "chunk_spans",
    "looks_incompressible",
]
