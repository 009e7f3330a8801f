"""Text corpora: the embedded ``pydoc`` corpus, text files, directories of them, and jsonl.

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


def load_documents(data: str, text_field: str = "text") -> list[str]:
    """Reads every document of a corpus, in a stable order.

    Args:
      data: ``pydoc``, a ``.txt`` file (one document), a directory of ``.txt`` files (one each),
        or a ``.jsonl`` file (one document per line, text under ``text_field``).
      text_field: the jsonl key holding the text.
    """
    if data == PYDOC:
        from pydoc_data.topics import topics

        return [topics[key] for key in sorted(topics)]
    path = Path(data).expanduser()
    if path.is_dir():
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise FileNotFoundError(f"config field 'data': directory {path} holds no .txt files")
        return [f.read_text(encoding="utf-8") for f in files]
    if path.suffix == ".txt":
        return [path.read_text(encoding="utf-8")]
    if path.suffix == ".jsonl":
        documents = []
        with open(path, encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                record = json.loads(line)
                if text_field not in record:
                    raise ConfigError(
                        f"config field 'text_field': {path}:{line_number} has no key '{text_field}' "
                        f"(keys: {', '.join(record)})"
                    )
                documents.append(record[text_field])
        return documents
    if not path.exists():
        raise FileNotFoundError(f"config field 'data': {data} does not exist (and is not 'pydoc')")
    raise ConfigError(f"config field 'data': unsupported corpus {data}; use pydoc, .txt, a directory of .txt, or .jsonl")


def corpus_hash(documents: list[str]) -> str:
    """sha256 over the documents (length-prefixed), recorded in the store manifest."""
    digest = hashlib.sha256()
    for document in documents:
        encoded = document.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return digest.hexdigest()[:16]
