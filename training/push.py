"""`saferoute push`: upload a model folder (and/or the HarmAug corpus folder) to the Hugging Face Hub.

Each folder goes up as is, in one commit (`create_repo` + `upload_folder`): model card, remote
code and weights for a SafeRoute model; dataset card and parquet shards for a corpus. Offline, or
when the Hub cannot be reached, it fails with a message naming the endpoint and the repository.
"""

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from huggingface_hub import HfApi, constants
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

from .config import parse_args

logger = logging.getLogger(__name__)

IGNORE_PATTERNS = ["checkpoints/**", "**/.ipynb_checkpoints/**", "*.pyc", "**/__pycache__/**", "*.bin", "*.pkl", "*.pt"]


@dataclass
class PushArguments:
    model_dir: Optional[str] = field(default=None, metadata={"help": "Model folder to upload (e.g. outputs/saferoute-guard or outputs/student)."})
    repo_id: Optional[str] = field(default=None, metadata={"help": "Hub repository of the model (or of the dataset when only --dataset-dir is given)."})
    dataset_dir: Optional[str] = field(default=None, metadata={"help": "HarmAug corpus folder to upload as a dataset repository."})
    dataset_repo_id: Optional[str] = field(default=None, metadata={"help": "Hub dataset repository (default: --repo-id when no --model-dir)."})
    private: bool = field(default=False, metadata={"help": "Create the repositories private."})
    revision: Optional[str] = field(default=None, metadata={"help": "Branch to commit to (default: main)."})
    commit_message: str = field(default="Upload with saferoute push", metadata={"help": "Commit message."})
    token: Optional[str] = field(default=None, metadata={"help": "Hub token (default: HF_TOKEN or the saved login)."})
    endpoint: Optional[str] = field(default=None, metadata={"help": "Hub endpoint (default: HF_ENDPOINT or https://huggingface.co)."})


def check_folder(folder, repo_type):
    """Raise ValueError when `folder` is not an uploadable model / dataset folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{repo_type} folder {folder} does not exist.")
    need = ["config.json"] if repo_type == "model" else ["README.md"]
    missing = [n for n in need if not (folder / n).exists()]
    if missing:
        raise ValueError(f"{folder} is not a {repo_type} folder: it lacks {missing}.")
    if repo_type == "model" and not any(folder.glob("*.safetensors")):
        raise ValueError(f"{folder} holds no *.safetensors weights.")
    if repo_type == "dataset" and not any(folder.glob("data/*.parquet")):
        raise ValueError(f"{folder} holds no data/*.parquet shards.")
    return folder


def push_folder(folder, repo_id, repo_type="model", private=False, revision=None, commit_message="Upload with saferoute push", token=None, endpoint=None):
    """`create_repo` + `upload_folder` in one commit; returns the commit URL."""
    folder = check_folder(folder, repo_type)
    if not repo_id:
        raise ValueError(f"No repository id given for {folder} (--repo-id / --dataset-repo-id).")
    endpoint = endpoint or constants.ENDPOINT
    where = f"the Hugging Face Hub at {endpoint} ({repo_type} repository {repo_id!r}, uploading {folder})"
    if constants.is_offline_mode():
        raise ConnectionError(f"Cannot reach {where}: offline mode is on (HF_HUB_OFFLINE=1). Unset HF_HUB_OFFLINE on a machine with network access.")
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, repo_type=repo_type, branch=revision, exist_ok=True)
        info = api.upload_folder(
            folder_path=str(folder), repo_id=repo_id, repo_type=repo_type, revision=revision,
            commit_message=commit_message, ignore_patterns=IGNORE_PATTERNS,
        )
    except OfflineModeIsEnabled as err:
        raise ConnectionError(f"Cannot reach {where}: offline mode is on (HF_HUB_OFFLINE=1).") from err
    except HfHubHTTPError as err:
        raise ConnectionError(f"{where} refused the upload: {err}") from err
    except Exception as err:  # transport errors (DNS, refused connection, timeout) of the HTTP client
        if type(err).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "requests", "urllib3") or isinstance(err, OSError):
            raise ConnectionError(f"Cannot reach {where}: {type(err).__name__}: {err}") from err
        raise
    return info.commit_url if hasattr(info, "commit_url") else str(info)


def warn_local_large_guard(model_dir, repo_id):
    """Warn when the SafeRoute model routes to a large guard that is a folder on this machine:
    whoever downloads `repo_id` will not have it (routed inputs then raise; route='never' works)."""
    config = Path(model_dir) / "config.json"
    guard = (json.loads(config.read_text()).get("large_guard") or {}).get("name_or_path") if config.is_file() else None
    if guard and (Path(guard).is_absolute() or Path(guard).exists()):
        logger.warning(
            "The large guard of %s is the local folder %s: users of %r will not have it. Push it too "
            "(saferoute push --model-dir %s --repo-id YOU/guard) and re-package with --large-guard YOU/guard.",
            model_dir, guard, repo_id, guard,
        )
        return guard
    return None


def push(args: PushArguments):
    """Upload the model and/or dataset folder; returns {repo_type: commit URL}."""
    if not args.model_dir and not args.dataset_dir:
        raise ValueError("Nothing to push: pass --model-dir and/or --dataset-dir.")
    dataset_repo = args.dataset_repo_id or (None if args.model_dir else args.repo_id)
    if args.dataset_dir and not dataset_repo:
        raise ValueError("--dataset-dir with --model-dir needs --dataset-repo-id.")
    common = {"private": args.private, "revision": args.revision, "commit_message": args.commit_message, "token": args.token, "endpoint": args.endpoint}
    urls = {}
    if args.model_dir:
        warn_local_large_guard(args.model_dir, args.repo_id)
        urls["model"] = push_folder(args.model_dir, args.repo_id, "model", **common)
    if args.dataset_dir:
        urls["dataset"] = push_folder(args.dataset_dir, dataset_repo, "dataset", **common)
    return urls


def main(argv=None):
    args = parse_args([PushArguments], argv, section="push")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for kind, url in push(args).items():
        print(f"Pushed the {kind} folder: {url}")


if __name__ == "__main__":
    main()
