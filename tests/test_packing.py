import numpy as np
import pytest

from jaxinterp.extract import corpus_hash, load_documents, pack_documents


def test_pack_with_bos_and_separator():
    packed = pack_documents([[10, 11, 12], [20, 21], [30, 31, 32, 33]], 4, bos_id=1, separator_id=2)
    # stream: 10 11 12 2 | 20 21 2 | 30 31 32 33 2 (14 tokens) -> 4 bodies of 3, the last 2 dropped
    np.testing.assert_array_equal(packed.tokens, [[1, 10, 11, 12], [1, 2, 20, 21], [1, 2, 30, 31], [1, 32, 33, 2]])
    np.testing.assert_array_equal(packed.doc, [[0, 0, 0, 0], [0, 0, 1, 1], [1, 1, 2, 2], [2, 2, 2, 2]])
    np.testing.assert_array_equal(packed.pos, np.tile(np.arange(4), (4, 1)))
    assert packed.tokens.dtype == np.int32 and packed.doc.dtype == np.int64


def test_pack_without_bos_and_max_tokens():
    packed = pack_documents([list(range(100))], 10, bos_id=None, separator_id=None, prepend_bos=False, max_tokens=35)
    assert packed.tokens.shape == (3, 10)
    np.testing.assert_array_equal(packed.tokens.ravel(), np.arange(30))


def test_pack_errors():
    with pytest.raises(ValueError, match="no BOS"):
        pack_documents([[1, 2]], 4, bos_id=None, separator_id=None)
    with pytest.raises(ValueError, match="too small"):
        pack_documents([[1, 2]], 8, bos_id=0, separator_id=None)


def test_embedded_corpus_is_stable():
    documents = load_documents("pydoc")
    assert len(documents) > 50 and sum(map(len, documents)) > 400_000
    assert corpus_hash(documents) == corpus_hash(load_documents("pydoc"))


def test_jsonl_corpus_names_missing_field(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "a b"}\n{"body": "c"}\n')
    with pytest.raises(ValueError, match="c.jsonl:2 has no key 'text'"):
        load_documents(str(path))
    path.write_text('{"text": "a b"}\n\n{"text": "c"}\n')
    assert load_documents(str(path)) == ["a b", "c"]
