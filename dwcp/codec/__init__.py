"""HDE: the delta + compression codec (chunk frames, zstd levels, dictionaries)."""

from .compress import LevelController, looks_incompressible
from .dictionaries import Dictionary, DictionaryStore
from .metrics import CodecMetrics
from .pipeline import ChunkDecoder, ChunkEncoder, CodecConfig, EncodedFrame, chunk_spans

__all__ = [
    "ChunkDecoder",
    "ChunkEncoder",
    "CodecConfig",
    "CodecMetrics",
    "Dictionary",
    "DictionaryStore",
    "EncodedFrame",
    "LevelController",
    "chunk_spans",
    "looks_incompressible",
]
