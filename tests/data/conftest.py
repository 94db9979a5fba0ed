from pathlib import Path

import pytest

from megatron_sail.data.encoding.tokenizer import SentencePieceTokenizer, train_synthetic_tokenizer


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> SentencePieceTokenizer:
    path: Path = tmp_path_factory.mktemp("tok") / "synthetic.model"
    return train_synthetic_tokenizer(str(path))
