"""Extraction: corpus → tokens → source model → activation store."""

from jaxinterp.extract.corpus import PYDOC, corpus_hash, load_documents
from jaxinterp.extract.packing import Packed, pack_documents
from jaxinterp.extract.run import ExtractResult, NonFiniteActivationError, extract, plan_extraction, tokenize_corpus

__all__ = [
    "ExtractResult",
    "PYDOC",
    "NonFiniteActivationError",
    "Packed",
    "corpus_hash",
    "extract",
    "load_documents",
    "pack_documents",
    "plan_extraction",
    "tokenize_corpus",
]
