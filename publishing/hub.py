"""How a folder gets to the Hub: one upload function for SafeRoute model folders and HarmAug
corpus folders alike (`create_repo` + `upload_folder`, one commit), with errors that name the
endpoint and the repository when the Hub cannot be reached."""

from pathlib import Path

from huggingface_hub import HfApi, constants
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

IGNORE_PATTERNS = ["checkpoints/**", "checkpoint-*/**", "**/.ipynb_checkpoints/**", "*.pyc", "**/__pycache__/**", "*.bin",
                   "*.pkl", "*.pt"]
REPO_TYPES = ("model", "dataset")


def check_folder(folder, repo_type):
    """Raise ValueError when `folder` is not an uploadable model / dataset folder."""
    if repo_type not in REPO_TYPES:
        raise ValueError(f"repo_type must be one of {REPO_TYPES}, got {repo_type!r}.")
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


def push_folder(folder, repo_id, repo_type="model", private=False, revision=None, commit_message=None, token=None,
                endpoint=None):
    """Upload `folder` as the `repo_type` repository `repo_id` (created if needed) in one commit;
    returns the commit URL. Raises `ConnectionError` naming the endpoint and the repository when
    the Hub is offline, unreachable or refuses the upload."""
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
            commit_message=commit_message or f"Upload {repo_type} folder with saferoute", ignore_patterns=IGNORE_PATTERNS,
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
