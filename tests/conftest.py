import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

from tiny_models import build_tiny_llama_guard, build_tiny_student


@pytest.fixture(scope="session")
def tiny_student_dir(tmp_path_factory):
    return build_tiny_student(tmp_path_factory.mktemp("tiny-student"))


@pytest.fixture(scope="session")
def tiny_llama_guard_dir(tmp_path_factory):
    return build_tiny_llama_guard(tmp_path_factory.mktemp("tiny-llama-guard"))
