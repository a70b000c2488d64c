"""The cache folder of the converted embedded model is checked before the conversion (a minute's work),
and its error names $KALLM_CACHE."""

from __future__ import annotations

import time

import pytest

from kallm.errors import KallmError
from kallm.models import loading


def test_an_unusable_kallm_cache_is_refused_before_converting(tmp_path, monkeypatch):
    try:
        loading.embedded_gguf_path()
    except KallmError:
        pytest.skip("the embedded model's package is not installed")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("KALLM_CACHE", str(blocker / "cache"))
    start = time.perf_counter()
    with pytest.raises(KallmError, match=r"^\$KALLM_CACHE cannot hold the converted model .*a-file is a file"):
        loading.embedded_model_dir()
    assert time.perf_counter() - start < 5  # refused before the conversion, not after it
    assert blocker.read_text() == "not a folder"
