"""`saferoute package`: assemble a SafeRoute model folder (student + router + large-guard reference).

The folder is exactly what `saferoute push` uploads: safetensors weights, tokenizer, config.json
with `auto_map` and `custom_pipelines`, the remote code of `modeling_saferoute/`, the student's
training record (`distill_info.json`) and README.md. A student with a category head
(`category_head.json` beside it, from `saferoute distill`) brings it along: the model's
`category_head` and `config.taxonomy`.
"""

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

import modeling_saferoute
from modeling_saferoute import PIPELINE_IMPL, REMOTE_CODE_FILES, SafeRouteConfig, SafeRouteForSequenceClassification, Taxonomy
from modeling_saferoute.configuration_saferoute import ROUTER_FEATURES, large_guard_reference
from modeling_saferoute.bundled import resolve
from modeling_saferoute.categories import load_category_head
from modeling_saferoute.guards import BACKENDS, GUARD_KINDS

from saferoute.config import parse_args

logger = logging.getLogger(__name__)
STUDENT_RECORD = "training_info.json"  # written by saferoute distill in the student folder
DISTILL_RECORD = "distill_info.json"  # its copy in the SafeRoute folder


@dataclass
class PackageArguments:
    student: str = field(default="bundled:minilm-l6", metadata={"help": "Student: a sequence-classification checkpoint (head kept), a bare encoder (new, untrained head), a SafeRoute folder, or a bundled: alias."})
    output_dir: str = field(default="{output_root}/saferoute-guard", metadata={"help": "Output model folder."})
    large_guard: Optional[str] = field(default=None, metadata={"help": "Large guard: local folder, Hub id or bundled: alias. Recorded, not downloaded."})
    large_guard_kind: Optional[str] = field(default=None, metadata={"help": f"Adapter kind of the large guard: {sorted(GUARD_KINDS)}."})
    large_guard_revision: Optional[str] = field(default=None, metadata={"help": "Hub revision of the large guard."})
    large_guard_dtype: Optional[str] = field(default=None, metadata={"help": "dtype the large guard loads in (e.g. bfloat16)."})
    large_guard_max_length: Optional[int] = field(default=None, metadata={"help": "Token budget the large guard scores with (train-router records the one its router labels were made with)."})
    large_guard_batch_size: Optional[int] = field(default=None, metadata={"help": "Batch size of large-guard scoring."})
    large_guard_options: Optional[str] = field(default=None, metadata={"help": 'Adapter options as JSON, e.g. \'{"temperature": 1.0, "max_content_tokens": 512}\' or \'{"render_taxonomy": true}\' (write the taxonomy into a Llama-Guard-format guard\'s prompt).'})
    large_guard_backend: Optional[str] = field(default=None, metadata={"help": "Where a causal-LM large guard runs: 'transformers' (in process), 'vllm' (in-process vLLM) or 'openai_compatible' (a served model, e.g. `vllm serve`). Without --large_guard it changes the student folder's own reference."})
    large_guard_backend_options: Optional[str] = field(default=None, metadata={"help": 'The backend\'s options as JSON, e.g. \'{"base_url": "http://gpu-host:8001/v1", "api_key_env": "GUARD_API_KEY"}\'.'})
    router: Optional[str] = field(default=None, metadata={"help": "Router weights: a safetensors file or a SafeRoute folder (its router.* tensors)."})
    router_features: Optional[str] = field(default=None, metadata={"help": f"What the router reads: {list(ROUTER_FEATURES)} (default: the student folder's, else 'hidden', SafeRoute's); must match --router's weights."})
    router_threshold: Optional[float] = field(default=None, metadata={"help": "Route when the router score is above this (default 0.5, or the router's own)."})
    router_thresholds: Optional[Union[dict, str]] = field(default=None, metadata={"help": "The routing thresholds chosen by train-router, by name (a mapping or JSON), recorded in the config; with --router_threshold_choice the named one is used."})
    router_threshold_choice: Optional[str] = field(default=None, metadata={"help": "Which of --router_thresholds routes (it sets router_threshold)."})
    threshold: float = field(default=0.5, metadata={"help": "P(unsafe) above this is 'unsafe'."})
    max_length: Optional[int] = field(default=None, metadata={"help": "Token budget of the student's pair encoding (default: the encoder's maximum)."})
    category_thresholds: Optional[str] = field(default=None, metadata={"help": 'Per-category thresholds as JSON, e.g. \'{"hate": 0.4}\' (categories of the student\'s taxonomy; default 0.5 each).'})
    model_card: bool = field(default=True, metadata={"help": "Write README.md (the model card)."})


def load_student(student):
    """(SafeRoute model, tokenizer, head_trained) from a SafeRoute folder, classifier or bare encoder."""
    path = resolve(student)
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = AutoConfig.from_pretrained(path, trust_remote_code=True)
    if config.model_type == SafeRouteConfig.model_type:
        return SafeRouteForSequenceClassification.from_pretrained(path), tokenizer, True
    classifier, info = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=2, output_loading_info=True, ignore_mismatched_sizes=True
    )
    head_trained = not info["missing_keys"] and not info["mismatched_keys"]
    categories = load_category_head(path)
    taxonomy = categories[1].to_dict() if categories else None
    model = SafeRouteForSequenceClassification(SafeRouteConfig(encoder=classifier.config, taxonomy=taxonomy))
    model.student.load_state_dict(classifier.state_dict())
    if categories:
        model.category_head.load_state_dict(categories[0].state_dict())
    return model, tokenizer, head_trained


def load_router_weights(path):
    """The `router.*` tensors of a safetensors file or of a SafeRoute folder's model.safetensors."""
    path = Path(path)
    file = path / "model.safetensors" if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(f"Router weights not found: {file}")
    tensors = {k[len("router.") :]: v for k, v in load_file(file).items() if k.startswith("router.")}
    if not tensors:
        raise ValueError(f"{file} holds no router.* tensors.")
    return tensors


def large_guard_location(name_or_path):
    """A local large-guard folder as an absolute path (a relative one would only load from the
    folder `package` ran in); Hub ids and `bundled:` aliases as given."""
    path = Path(name_or_path)
    return str(path.resolve()) if path.is_dir() else name_or_path


def _json_object(flag, text):
    """The dict a JSON-object flag holds (None when not given); a ValueError naming the flag otherwise."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{flag} must be a JSON object: {err}") from err
    if not isinstance(value, dict):
        raise ValueError(f"{flag} must be a JSON object, got {type(value).__name__}.")
    return value


def package(args: PackageArguments):
    """Write the model folder; returns its path."""
    if args.large_guard and args.large_guard_kind not in GUARD_KINDS:
        raise ValueError(f"--large-guard-kind must be one of {sorted(GUARD_KINDS)}, got {args.large_guard_kind!r}.")
    model, tokenizer, head_trained = load_student(args.student)
    if not head_trained:
        logger.warning(
            "The student %s has no trained 2-way classification head: a NEW, UNTRAINED head was added. "
            "Its verdicts are meaningless until it is trained (saferoute distill).",
            args.student,
        )
    router_trained = model.config.to_dict().get("router_trained", False)
    if args.router_features and args.router_features != model.config.router_features:
        model.set_router_features(args.router_features)  # a new router: its input size changed
        router_trained = False
    if args.router:
        try:
            model.router.load_state_dict(load_router_weights(args.router))
        except RuntimeError as err:
            raise ValueError(f"The router weights of {args.router} do not fit a router reading {model.config.router_features!r} "
                             f"features: pass the --router_features they were trained on ({list(ROUTER_FEATURES)}). {err}") from err
        router_trained = True
    if not router_trained:
        logger.warning("The router is UNTRAINED (no --router given): its routing decisions are arbitrary.")
    config = model.config
    options = _json_object("--large_guard_options", args.large_guard_options)
    if args.large_guard:
        config.large_guard = large_guard_reference(large_guard_location(args.large_guard), args.large_guard_kind,
                                                   revision=args.large_guard_revision, dtype=args.large_guard_dtype,
                                                   max_length=args.large_guard_max_length, batch_size=args.large_guard_batch_size,
                                                   options=options)
    elif args.large_guard_max_length or args.large_guard_batch_size or options:  # new settings of the student folder's guard
        if not getattr(config, "large_guard", None):
            raise ValueError("--large_guard_max_length, --large_guard_batch_size and --large_guard_options need a large guard: pass --large_guard.")
        updates = {"max_length": args.large_guard_max_length, "batch_size": args.large_guard_batch_size, "options": options}
        config.large_guard = {**config.large_guard, **{k: v for k, v in updates.items() if v}}
    if args.large_guard_backend and args.large_guard_backend not in BACKENDS:
        raise ValueError(f"--large_guard_backend must be one of {list(BACKENDS)}, got {args.large_guard_backend!r}.")
    if args.large_guard_backend or args.large_guard_backend_options:
        if not getattr(config, "large_guard", None):
            raise ValueError("--large_guard_backend needs a large guard: pass --large_guard (and --large_guard_kind).")
        backend_options = _json_object("--large_guard_backend_options", args.large_guard_backend_options) or {}
        config.large_guard = {**config.large_guard, "backend": args.large_guard_backend or config.large_guard.get("backend", "transformers"),
                              "backend_options": backend_options}
    if args.category_thresholds:
        if not config.taxonomy:
            raise ValueError("--category_thresholds: the student has no category head (no taxonomy).")
        config.category_thresholds = Taxonomy.load(config.taxonomy).category_thresholds(
            _json_object("--category_thresholds", args.category_thresholds))
    if args.router_threshold is not None:
        config.router_threshold = float(args.router_threshold)
    if args.router_thresholds or args.router_threshold_choice:
        thresholds = json.loads(args.router_thresholds) if isinstance(args.router_thresholds, str) else dict(args.router_thresholds or {})
        if args.router_threshold_choice not in (None, *thresholds):
            raise ValueError(f"--router_threshold_choice {args.router_threshold_choice!r} is not one of --router_thresholds {sorted(thresholds)}.")
        config.router_thresholds = {str(k): float(v) for k, v in thresholds.items()}
        config.router_threshold_choice = args.router_threshold_choice
        if args.router_threshold_choice:
            config.router_threshold = config.router_thresholds[args.router_threshold_choice]
    config.threshold = float(args.threshold)
    if args.max_length:
        config.max_input_length = args.max_length
    config.head_trained = bool(head_trained or getattr(config, "head_trained", False))
    config.router_trained = bool(router_trained)
    config.custom_pipelines = {"text-classification": dict(PIPELINE_IMPL)}
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    code_dir = Path(modeling_saferoute.__file__).parent
    for name in REMOTE_CODE_FILES:
        shutil.copy(code_dir / name, output / name)
    record = Path(resolve(args.student)) / STUDENT_RECORD
    if record.is_file():  # how the student was made, for the model card
        shutil.copy(record, output / DISTILL_RECORD)
    if args.model_card:
        from model_cards import render_model_card

        render_model_card(output, student=args.student).save(output / "README.md")
    return output


def main(argv=None):
    args = parse_args([PackageArguments], argv, section="package")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = package(args)
    print(f"Wrote SafeRoute model folder {out}")
    print(f'  from transformers import pipeline\n  guard = pipeline("text-classification", model="{out}", trust_remote_code=True)')


if __name__ == "__main__":
    main()
