"""Text corpora: the embedded ``pydoc`` corpus, .txt / .jsonl / .parquet files, saved HF datasets.

``pydoc`` is CPython's own ``pydoc_data.topics`` (the language reference, ~465k characters), so the
default pipeline needs no download. Documents come out in a fixed order, so a corpus hashes stably.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from jaxinterp.config import ConfigError

__all__ = ["load_documents", "corpus_hash", "PYDOC"]

PYDOC = "pydoc"


_TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")


def load_documents(data: str, text_field: str = "text") -> list[str]:
    """Reads every document of a corpus, in a stable order.

    Args:
      data: ``pydoc``; a ``.txt`` file (one document); a ``.jsonl`` file (one document per line, the
        text under ``text_field``); a ``.parquet`` file (one document per row of column
        ``text_field``); a directory saved by ``datasets.Dataset.save_to_disk`` (its ``train`` split
        if it is a ``DatasetDict``); or a directory of such files (sorted by path).
      text_field: the jsonl key / parquet column / dataset column holding the text.
    """
    if data == PYDOC:
        from pydoc_data.topics import topics

        return [topics[key] for key in sorted(topics)]
    path = Path(data).expanduser()
    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            return _hf_dataset(path, text_field)
        files = sorted(p for p in path.rglob("*") if p.suffix in _TEXT_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"config field 'data': directory {path} holds no .txt, .jsonl or .parquet files")
        documents = [document for file in files for document in _file_documents(file, text_field)]
        return _non_empty(documents, f"directory {path} ({len(files)} files)")
    if not path.exists():
        raise FileNotFoundError(f"config field 'data': {data} does not exist (and is not 'pydoc')")
    return _non_empty(_file_documents(path, text_field), str(path))


def _non_empty(documents: list[str], where: str) -> list[str]:
    """``documents``, unless none holds any text (the corpus would pack to nothing)."""
    if not any(isinstance(document, str) and document.strip() for document in documents):
        raise ConfigError(f"config field 'data': {where} holds no text (empty or whitespace only); "
                          "point it at a non-empty corpus")
    return documents


def _utf8(raw: bytes, where: str, offset: int = 0) -> str:
    """``raw`` decoded as UTF-8 text; binary data or another encoding names the byte and its offset."""
    nul = raw.find(b"\0")
    if nul >= 0:  # valid UTF-8, but no text corpus holds NUL: an image, an archive, a model file
        raise ConfigError(f"config field 'data': {where} is binary, not UTF-8 text (NUL byte at offset "
                          f"{offset + nul}); point it at a text corpus")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"config field 'data': {where} is not UTF-8 text (byte 0x{raw[error.start]:02x} at offset "
            f"{offset + error.start}); re-save it as UTF-8"
        ) from None


def _file_documents(path: Path, text_field: str) -> list[str]:
    if path.suffix == ".txt":
        return [_utf8(path.read_bytes(), str(path))]
    if path.suffix == ".jsonl":
        return _jsonl_documents(path, text_field)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        columns = pq.read_schema(path).names
        if text_field not in columns:
            raise ConfigError(f"config field 'text_field': {path} has no column '{text_field}' (columns: {', '.join(columns)})")
        return pq.read_table(path, columns=[text_field]).column(text_field).to_pylist()
    raise ConfigError(f"config field 'data': unsupported corpus file {path}; use pydoc, .txt, .jsonl, .parquet or a dataset directory")


def _jsonl_documents(path: Path, text_field: str) -> list[str]:
    """One document per non-blank line; a bad line is named by file and line number."""
    documents, offset = [], 0
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, 1):
            where = f"{path}:{line_number}"
            line = _utf8(raw, where, offset)
            offset += len(raw)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ConfigError(f"config field 'data': {where} is not JSON (column {error.colno}: {error.msg}); "
                                  f"each line must be an object like {{\"{text_field}\": \"...\"}}") from None
            if not isinstance(record, dict):
                raise ConfigError(f"config field 'data': {where} is a JSON {type(record).__name__}, not an object "
                                  f"like {{\"{text_field}\": \"...\"}}")
            if text_field not in record:
                raise ConfigError(
                    f"config field 'text_field': {where} has no key '{text_field}' (keys: {', '.join(record)})"
                )
            if not isinstance(record[text_field], str):
                raise ConfigError(f"config field 'text_field': {where} holds a {type(record[text_field]).__name__} "
                                  f"under '{text_field}', not text")
            documents.append(record[text_field])
    return documents


def _hf_dataset(path: Path, text_field: str) -> list[str]:
    try:
        import datasets
    except ImportError:
        raise ImportError("reading a saved HF dataset needs the `datasets` package: pip install 'jaxinterp[data]'") from None
    dataset = datasets.load_from_disk(str(path))
    if isinstance(dataset, datasets.DatasetDict):
        if "train" not in dataset:
            raise ConfigError(f"config field 'data': {path} has splits {', '.join(dataset)} but no 'train' split")
        dataset = dataset["train"]
    if text_field not in dataset.column_names:
        raise ConfigError(
            f"config field 'text_field': dataset {path} has no column '{text_field}' (columns: {', '.join(dataset.column_names)})"
        )
    return list(dataset[text_field])


def corpus_hash(documents: list[str]) -> str:
    """sha256 over the documents (length-prefixed), recorded in the store manifest."""
    digest = hashlib.sha256()
    for document in documents:
        encoded = document.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return digest.hexdigest()[:16]
