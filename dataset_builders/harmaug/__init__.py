"""The HarmAug corpus builder (`saferoute build-corpus`): generate harmful instructions with a
jailbroken generator LLM, filter them, answer each with a compliant and a refusal response, label
everything with the teacher guard, and write a Hub dataset folder (parquet shards + card).

Stages: `generate.py` -> `filters.py` -> `respond.py` -> `label.py` -> `card.py`, orchestrated by
`build.py`; `shards.py` makes every stage resumable.
"""
