"""SafeRoute remote code: config, model (student + router), guard adapters and pipeline.

These modules import only torch, transformers and each other; `saferoute package` copies them
into every exported model folder so that `trust_remote_code=True` loads it anywhere.
"""

from .configuration_saferoute import SafeRouteConfig
from .guards import GUARD_KINDS, load_guard
from .modeling_saferoute import SafeRouteForSequenceClassification, SafeRouteOutput
from .pipeline_saferoute import SafeRoutePipeline
from .taxonomy import Taxonomy
from .streaming import ResponseStream, StreamClosedError

REMOTE_CODE_FILES = (
    "configuration_saferoute.py",
    "modeling_saferoute.py",
    "pipeline_saferoute.py",
    "guards.py",
    "guard_backends.py",
    "inputs.py",
    "bundled.py",
    "precision.py",
    "quantization.py",
    "streaming.py",
    "taxonomy.py",
    "categories.py",
)
PIPELINE_IMPL = {
    "impl": "pipeline_saferoute.SafeRoutePipeline",
    "pt": ["AutoModelForSequenceClassification"],
    "type": "text",
}

__all__ = [
    "GUARD_KINDS",
    "PIPELINE_IMPL",
    "REMOTE_CODE_FILES",
    "SafeRouteConfig",
    "SafeRouteForSequenceClassification",
    "SafeRouteOutput",
    "ResponseStream",
    "SafeRoutePipeline",
    "Taxonomy",
    "StreamClosedError",
    "load_guard",
]
