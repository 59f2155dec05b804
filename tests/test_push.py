"""`saferoute push`: uploads folders as is; offline / unreachable Hub fails with a clear message (no network)."""

import json
import logging

import pytest
from huggingface_hub import HfApi, constants

from tiny_corpus import build_tiny_corpus
from publishing.push import main, push, PushArguments


@pytest.fixture
def model_dir(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"x")
    (folder / "README.md").write_text("card")
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "state.bin").write_bytes(b"x")
    return folder


def test_offline_push_names_the_endpoint_and_repo(model_dir, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConnectionError, match=r"huggingface\.co.*'me/guard'.*HF_HUB_OFFLINE"):
        main(["--model-dir", str(model_dir), "--repo-id", "me/guard"])


def test_unreachable_endpoint_is_named(model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(ConnectionError, match=r"Cannot reach .*http://127\.0\.0\.1:9 .*'me/guard'"):
        push(PushArguments(model_dir=str(model_dir), repo_id="me/guard", endpoint="http://127.0.0.1:9", token="hf_fake"))
    corpus = build_tiny_corpus(tmp_path / "corpus")
    with pytest.raises(ConnectionError, match=r"dataset repository 'me/harmaug'"):
        push(PushArguments(dataset_dir=str(corpus), repo_id="me/harmaug", endpoint="http://127.0.0.1:9", token="hf_fake"))


def test_push_uploads_each_folder_as_is_in_one_commit(model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id, kw["repo_type"])))

    def upload_folder(self, **kw):
        calls.append(("upload", kw["repo_id"], kw["repo_type"], kw["folder_path"], tuple(kw["ignore_patterns"])))
        return type("Info", (), {"commit_url": f"https://hub/{kw['repo_id']}/commit/1"})()

    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    corpus = build_tiny_corpus(tmp_path / "corpus")
    urls = push(PushArguments(model_dir=str(model_dir), repo_id="me/guard", dataset_dir=str(corpus), dataset_repo_id="me/harmaug"))
    assert urls == {"model": "https://hub/me/guard/commit/1", "dataset": "https://hub/me/harmaug/commit/1"}
    assert [c[:3] for c in calls] == [("create", "me/guard", "model"), ("upload", "me/guard", "model"), ("create", "me/harmaug", "dataset"), ("upload", "me/harmaug", "dataset")]
    assert calls[1][3] == str(model_dir) and "checkpoints/**" in calls[1][4]


def test_push_warns_when_the_large_guard_is_a_local_folder(model_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    guard = tmp_path / "teacher"
    guard.mkdir()
    for name, warned in ((str(guard), True), ("meta-llama/Llama-Guard-3-8B", False)):
        (model_dir / "config.json").write_text(json.dumps({"large_guard": {"name_or_path": name, "kind": "llama_guard"}}))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="training.push"), pytest.raises(ConnectionError):
            push(PushArguments(model_dir=str(model_dir), repo_id="me/guard"))
        assert ("local folder" in caplog.text) is warned


def test_bad_folders_are_named(model_dir, tmp_path):
    with pytest.raises(ValueError, match="Nothing to push"):
        push(PushArguments())
    with pytest.raises(ValueError, match="does not exist"):
        push(PushArguments(model_dir=str(tmp_path / "nope"), repo_id="me/x"))
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="safetensors"):
        push(PushArguments(model_dir=str(model_dir), repo_id="me/x"))
    with pytest.raises(ValueError, match="parquet"):
        push(PushArguments(dataset_dir=str(model_dir), repo_id="me/x"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="README.md"):
        push(PushArguments(dataset_dir=str(tmp_path / "empty"), repo_id="me/x"))
    with pytest.raises(ValueError, match="dataset-repo-id"):
        push(PushArguments(model_dir=str(tmp_path), repo_id="me/x", dataset_dir=str(tmp_path)))


@pytest.mark.parametrize("command,flag", [("distill", "--no-augmentation"), ("train-router", "--large-budget"), ("push", "--dataset-dir")])
def test_help_of_the_commands(command, flag, capsys):
    from saferoute.cli import main as cli

    with pytest.raises(SystemExit) as exit_:
        cli([command, "--help"])
    assert exit_.value.code == 0 and flag in capsys.readouterr().out
