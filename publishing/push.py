"""`saferoute push`: upload a model folder (and/or the HarmAug corpus folder) to the Hugging Face Hub.

Each folder goes up as is, in one commit (`publishing.hub.push_folder`): model card, remote code
and weights for a SafeRoute model; dataset card and parquet shards for a corpus. Offline, or when
the Hub cannot be reached, it fails with a message naming the endpoint and the repository.
"""

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from saferoute.config import parse_args

from .hub import push_folder

logger = logging.getLogger(__name__)


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
