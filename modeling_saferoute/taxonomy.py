"""Harm-category taxonomies as data: the project's default (the OpenAI moderation API's 13 categories),
its map from Llama Guard 3's S1-S14, and how each labeled data source's upstream labels feed it.

A taxonomy is a plain dict (what a config.json or a user's file holds), checked by `Taxonomy.from_dict`:

    {"name": "openai-moderation",
     "categories": [{"name": "hate", "description": "...", "threshold": 0.5, "parent": null}, ...],
     "llama_guard": {"S10": ["hate"], ...},        # a Llama Guard code -> the categories it reports
     "sources": {"toxigen": {"field": "category", "others": 0,
                             "labels": {"hate": {"hate": 1, "harassment": null}, "neutral": {}}}, ...}}

Row targets (`Taxonomy.targets`) are 1, 0 or None per category; None means "not known" and is
masked out of every loss and metric, never read as a negative:

- a row with `categories` keyed by this taxonomy's names (a user's labeled rows) keeps them;
- a row of a source with a `codes` map (`{"S": "sexual", ...}`, the OpenAI benchmark's 8 codes) gets
  each code's value (1, 0 or null) for its category and None for the others;
- a row of a source with a `labels` map gets `others` (0 or None) for every category, then the
  values its upstream label lists (`by_label` covers labels not listed, keyed by the row's 0/1
  label); an upstream label the map does not know is an error;
- any other row: all 0 when its binary label is 0 (nothing harmful, so no harm category), else None;
- then the hierarchy closes it: a child's 1 makes its parent 1, a parent's 0 makes its children 0.

This file is Hub remote code: it imports only the standard library.
"""

import copy
import math

DEFAULT_NAME = "openai-moderation"
DEFAULT_THRESHOLD = 0.5

# The OpenAI moderation API's categories, in the API's order; descriptions in this project's words.
OPENAI_MODERATION = (
    ("harassment", "Language that harasses, demeans or bullies a person or group (any target).", None),
    ("harassment/threatening", "Harassment that also threatens violence or serious harm to its target.", "harassment"),
    ("hate", "Content that expresses or promotes hatred of people for a protected attribute (race, ethnicity, "
             "religion, nationality, gender, sexual orientation, disability, caste).", None),
    ("hate/threatening", "Hateful content that also threatens violence or serious harm to the targeted group.", "hate"),
    ("illicit", "Instructions or advice that help plan or carry out wrongdoing or illegal acts.", None),
    ("illicit/violent", "Illicit help that involves violence, or help to obtain or make weapons.", "illicit"),
    ("self-harm", "Content that promotes, encourages or depicts suicide, self-injury or eating disorders.", None),
    ("self-harm/intent", "The speaker says they are harming themselves or intend to.", "self-harm"),
    ("self-harm/instructions", "Encouragement or instructions for how to harm oneself.", "self-harm"),
    ("sexual", "Content meant to arouse, such as descriptions of sexual activity, or that sells sexual services "
               "(not sex education or wellness).", None),
    ("sexual/minors", "Sexual content that involves anyone under 18.", "sexual"),
    ("violence", "Content that depicts or promotes death, violence or physical injury.", None),
    ("violence/graphic", "Depictions of death, violence or injury in graphic detail.", "violence"),
)

# Llama Guard 3's hazard codes (the MLCommons hazards), and what each reports in the OpenAI taxonomy.
LLAMA_GUARD_3 = (
    ("S1", "Violent Crimes"), ("S2", "Non-Violent Crimes"), ("S3", "Sex-Related Crimes"), ("S4", "Child Sexual Exploitation"),
    ("S5", "Defamation"), ("S6", "Specialized Advice"), ("S7", "Privacy"), ("S8", "Intellectual Property"),
    ("S9", "Indiscriminate Weapons"), ("S10", "Hate"), ("S11", "Suicide & Self-Harm"), ("S12", "Sexual Content"),
    ("S13", "Elections"), ("S14", "Code Interpreter Abuse"),
)
LLAMA_GUARD_3_TO_OPENAI = {
    "S1": ["violence", "illicit/violent"], "S2": ["illicit"], "S3": ["illicit", "sexual"], "S4": ["sexual/minors"],
    "S5": ["harassment"], "S6": [], "S7": [], "S8": [], "S9": ["illicit/violent"], "S10": ["hate"], "S11": ["self-harm"],
    "S12": ["sexual"], "S13": [], "S14": ["illicit"],
}

# How the labeled sources of `$SAFEROUTE_DATA_DIR/categories/` (and HateCheck's functionalities in the
# seed pool) feed the OpenAI taxonomy. Curated single-hazard prompts are negatives for the categories
# unrelated to their hazard (`others: 0`); categories they may also belong to are None.
_N = None
OPENAI_SOURCES = {
    # MLCommons AILuminate v1.0 hazards (the hazards Llama Guard 3's S1-S13 follow).
    "ailuminate": {"field": "category", "others": 0, "labels": {
        "vcr": {"violence": 1, "illicit": _N, "illicit/violent": _N, "violence/graphic": _N, "harassment": _N,
                "harassment/threatening": _N},
        "ncr": {"illicit": 1, "illicit/violent": _N, "harassment": _N, "harassment/threatening": _N, "hate": _N},
        "src": {"illicit": 1, "sexual": _N, "violence": _N, "harassment": _N, "harassment/threatening": _N},
        "cse": {"sexual/minors": 1, "illicit": _N},
        "sxc_prn": {"sexual": 1},
        "hte": {"hate": 1, "hate/threatening": _N, "harassment": _N, "harassment/threatening": _N, "violence": _N},
        "ssh": {"self-harm": 1, "self-harm/intent": _N, "self-harm/instructions": _N, "violence": _N},
        "iwp": {"illicit/violent": 1, "violence": _N},
        "dfm": {"harassment": _N},
        "prv": {"illicit": _N, "harassment": _N},
        "ipv": {"illicit": _N},
        "spc_fin": {}, "spc_ele": {}, "spc_hlt": {"self-harm": _N}, "spc_lgl": {"illicit": _N},
    }},
    "strongreject": {"field": "category", "others": 0, "labels": {
        "Non-violent crimes": {"illicit": 1, "harassment": _N, "harassment/threatening": _N},
        "Violence": {"violence": 1, "illicit": _N, "illicit/violent": _N, "violence/graphic": _N, "harassment": _N,
                     "harassment/threatening": _N},
        "Disinformation and deception": {"illicit": _N, "harassment": _N, "hate": _N},
        "Hate, harassment and discrimination": {"hate": _N, "hate/threatening": _N, "harassment": _N,
                                                "harassment/threatening": _N, "violence": _N},
        "Illegal goods and services": {"illicit": 1, "illicit/violent": _N, "violence": _N, "sexual": _N},
        "Sexual content": {"sexual": 1, "sexual/minors": _N, "illicit": _N, "harassment": _N},
    }},
    # ToxiGen example statements: hateful (1) or neutral (0) about a group.
    "toxigen": {"field": "category", "others": 0, "labels": {
        "hate": {"hate": 1, "hate/threatening": _N, "harassment": _N, "harassment/threatening": _N, "violence": _N},
        "neutral": {},
    }},
    # Davidson et al. tweets: `offensive` was judged offensive but not hate speech; offensive language
    # aimed at people is harassment in the OpenAI taxonomy.
    "davidson": {"field": "category", "others": 0, "labels": {
        "hate": {"hate": 1, "hate/threatening": _N, "harassment": _N, "harassment/threatening": _N, "violence": _N, "sexual": _N},
        "offensive": {"hate": 0, "harassment": 1, "harassment/threatening": _N, "violence": _N, "sexual": _N},
        "neither": {},
    }},
    # HateCheck functional tests (seed pool `x_hatecheck`): every hateful case is hate, threats are
    # hate/threatening; abuse of individuals or of unprotected groups is not hate but harassment.
    "hatecheck": {"field": "category", "others": 0, "labels": {
        "threat_dir_h": {"hate/threatening": 1, "violence": _N, "harassment": _N, "harassment/threatening": _N},
        "threat_norm_h": {"hate/threatening": 1, "violence": _N, "harassment": _N, "harassment/threatening": _N},
        "target_indiv_nh": {"harassment": 1, "harassment/threatening": _N},
        "target_group_nh": {"harassment": 1, "harassment/threatening": _N},
    }, "by_label": {
        "1": {"hate": 1, "hate/threatening": 0, "harassment": _N, "harassment/threatening": _N, "violence": _N},
        "0": {},
    }},
    # The OpenAI moderation benchmark's 8 human-labeled codes (null: not annotated).
    "openai_moderation": {"field": "categories", "codes": {
        "S": "sexual", "H": "hate", "V": "violence", "HR": "harassment", "SH": "self-harm", "S3": "sexual/minors",
        "H2": "hate/threatening", "V2": "violence/graphic",
    }},
}


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Taxonomy:
    """A checked harm-category taxonomy (see the module docstring); build it with `from_dict` or `load`."""

    def __init__(self, name, categories, llama_guard=None, sources=None):
        self.name = name
        self.categories = [dict(c) for c in categories]
        self.names = tuple(c["name"] for c in self.categories)
        self.descriptions = {c["name"]: c.get("description") or "" for c in self.categories}
        self.thresholds = {c["name"]: float(c.get("threshold", DEFAULT_THRESHOLD)) for c in self.categories}
        self.parents = {c["name"]: c["parent"] for c in self.categories if c.get("parent")}
        self.llama_guard = {code: list(cats) for code, cats in (llama_guard or {}).items()}
        self.sources = copy.deepcopy(sources or {})

    def __len__(self):
        return len(self.names)

    def __eq__(self, other):
        return isinstance(other, Taxonomy) and self.to_dict() == other.to_dict()

    def __repr__(self):
        return f"Taxonomy({self.name!r}, {list(self.names)})"

    # -- construction and checks -------------------------------------------------------------
    @classmethod
    def default(cls):
        """The project's taxonomy: the OpenAI moderation API's 13 categories."""
        return cls.from_dict({
            "name": DEFAULT_NAME,
            "categories": [{"name": n, "description": d, "threshold": DEFAULT_THRESHOLD, "parent": p} for n, d, p in OPENAI_MODERATION],
            "llama_guard": LLAMA_GUARD_3_TO_OPENAI,
            "sources": OPENAI_SOURCES,
        })

    @classmethod
    def load(cls, spec):
        """A `Taxonomy` from a `Taxonomy`, a dict, or a name: "openai-moderation" (the default). Files are
        read by `dataset_builders.categories.load_taxonomy`."""
        if isinstance(spec, Taxonomy):
            return spec
        if isinstance(spec, dict):
            return cls.from_dict(spec)
        if spec in (None, DEFAULT_NAME, "openai"):
            return cls.default()
        raise ValueError(f"Unknown taxonomy {spec!r}: pass {DEFAULT_NAME!r}, a taxonomy dict or a .json/.yaml file.")

    @classmethod
    def from_dict(cls, data):
        """Check a taxonomy dict and build it; `ValueError` naming the problem (unknown or duplicated
        categories, mappings to categories that do not exist, thresholds outside [0, 1], bad parents)."""
        if not isinstance(data, dict):
            raise ValueError(f"A taxonomy must be a mapping, got {type(data).__name__}.")
        unknown = sorted(set(data) - {"name", "categories", "llama_guard", "sources", "rows"})
        if unknown:
            raise ValueError(f"Taxonomy has unknown keys {unknown}; allowed: name, categories, llama_guard, sources, rows.")
        name = data.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ValueError("Taxonomy needs a non-empty 'name'.")
        raw = data.get("categories")
        if not isinstance(raw, (list, tuple)) or not raw:
            raise ValueError(f"Taxonomy {name!r} needs a non-empty list of 'categories'.")
        categories, seen = [], set()
        for i, cat in enumerate(raw):
            cat = {"name": cat} if isinstance(cat, str) else cat
            if not isinstance(cat, dict) or not isinstance(cat.get("name"), str) or not cat["name"].strip():
                raise ValueError(f"Taxonomy {name!r}: category {i} needs a non-empty 'name'.")
            extra = sorted(set(cat) - {"name", "description", "threshold", "parent"})
            if extra:
                raise ValueError(f"Taxonomy {name!r}: category {cat['name']!r} has unknown keys {extra}.")
            if cat["name"] in seen:
                raise ValueError(f"Taxonomy {name!r}: category {cat['name']!r} is listed twice.")
            seen.add(cat["name"])
            threshold = cat.get("threshold", DEFAULT_THRESHOLD)
            if not _is_number(threshold) or not 0.0 <= threshold <= 1.0:
                raise ValueError(f"Taxonomy {name!r}: the threshold of {cat['name']!r} must be a number in [0, 1], got {threshold!r}.")
            categories.append({"name": cat["name"], "description": cat.get("description") or "", "threshold": float(threshold),
                               "parent": cat.get("parent")})
        names = [c["name"] for c in categories]
        for cat in categories:
            parent = cat["parent"]
            if parent is not None and (parent not in seen or parent == cat["name"]):
                raise ValueError(f"Taxonomy {name!r}: the parent {parent!r} of {cat['name']!r} is not another category of it.")
        parents = {c["name"]: c["parent"] for c in categories if c["parent"]}
        for start in parents:
            node, path = start, []
            while node in parents:
                path.append(node)
                node = parents[node]
                if node in path:
                    raise ValueError(f"Taxonomy {name!r}: parents form a cycle through {path}.")
        taxonomy = cls(name, categories, data.get("llama_guard"), data.get("sources"))
        taxonomy._check_mappings(names)
        return taxonomy

    def _check_mappings(self, names):
        known = set(names)
        for code, cats in self.llama_guard.items():
            missing = [c for c in cats if c not in known]
            if missing:
                raise ValueError(f"Taxonomy {self.name!r}: llama_guard code {code!r} maps to {missing}, not categories of it ({list(names)}).")
        for source, spec in self.sources.items():
            if not isinstance(spec, dict) or not isinstance(spec.get("field"), str):
                raise ValueError(f"Taxonomy {self.name!r}: source {source!r} needs a 'field' (the row key holding its label).")
            extra = sorted(set(spec) - {"field", "others", "labels", "by_label", "codes"})
            if extra:
                raise ValueError(f"Taxonomy {self.name!r}: source {source!r} has unknown keys {extra}.")
            if ("codes" in spec) == ("labels" in spec):
                raise ValueError(f"Taxonomy {self.name!r}: source {source!r} needs exactly one of 'labels' and 'codes'.")
            for code, cat in (spec.get("codes") or {}).items():
                if cat not in known:
                    raise ValueError(f"Taxonomy {self.name!r}: source {source!r} maps code {code!r} to {cat!r}, not a category of it.")
            if spec.get("others", 0) not in (0, None):
                raise ValueError(f"Taxonomy {self.name!r}: source {source!r} 'others' must be 0 or null, got {spec['others']!r}.")
            tables = [("labels", k, v) for k, v in (spec.get("labels") or {}).items()]
            tables += [("by_label", k, v) for k, v in (spec.get("by_label") or {}).items()]
            for where, label, values in tables:
                if not isinstance(values, dict):
                    raise ValueError(f"Taxonomy {self.name!r}: source {source!r} {where} {label!r} must map categories to 1, 0 or null.")
                missing = sorted(set(values) - known)
                if missing:
                    raise ValueError(f"Taxonomy {self.name!r}: source {source!r} label {label!r} maps to {missing}, not categories of it.")
                bad = {c: v for c, v in values.items() if v not in (0, 1, None)}
                if bad:
                    raise ValueError(f"Taxonomy {self.name!r}: source {source!r} label {label!r} has values {bad}; use 1, 0 or null.")

    def to_dict(self):
        return {"name": self.name, "categories": copy.deepcopy(self.categories), "llama_guard": copy.deepcopy(self.llama_guard),
                "sources": copy.deepcopy(self.sources)}

    def require_same(self, other, where):
        """`ValueError` naming both taxonomies unless `other` (a Taxonomy, a dict or None) has the same
        name and categories."""
        other = None if other is None else Taxonomy.load(other)
        if other is None or other.name != self.name or other.names != self.names:
            theirs = "none" if other is None else f"{other.name!r} ({list(other.names)})"
            raise ValueError(f"{where} is for the taxonomy {theirs}, not {self.name!r} ({list(self.names)}).")

    # -- options -----------------------------------------------------------------------------
    def check_names(self, names, what):
        """`ValueError` naming each of `names` that is not a category of this taxonomy."""
        unknown = [n for n in names if n not in self.names]
        if unknown:
            raise ValueError(f"{what} names {unknown}, not categories of this model's taxonomy {self.name!r} ({list(self.names)}).")

    def category_thresholds(self, overrides=None):
        """{category: threshold}: the taxonomy's own, with `overrides` (a dict) checked and applied."""
        thresholds = dict(self.thresholds)
        if overrides is None:
            return thresholds
        if not isinstance(overrides, dict):
            raise ValueError(f"category_thresholds must be a dict of category -> threshold, got {type(overrides).__name__}.")
        self.check_names(list(overrides), "category_thresholds")
        for cat, value in overrides.items():
            if not _is_number(value) or not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"category_thresholds[{cat!r}] must be a number in [0, 1], got {value!r}.")
            thresholds[cat] = float(value)
        return thresholds

    # -- targets -----------------------------------------------------------------------------
    def close(self, values):
        """`values` (a dict category -> 1, 0 or None) closed under the hierarchy: a child's 1 makes its
        parents 1, a parent's 0 makes its descendants 0 (a 1 is never overwritten)."""
        out = dict(values)
        for child in self.names:
            node = child
            while out.get(node) == 1 and node in self.parents:
                node = self.parents[node]
                out[node] = 1
        for child in self.names:
            node = child
            while node in self.parents:
                node = self.parents[node]
                if out.get(node) == 0 and out.get(child) != 1:
                    out[child] = 0
                    break
        return out

    def targets(self, row):
        """The row's target per category, in taxonomy order: 1, 0 or None (unknown)."""
        values = self._row_values(row)
        closed = self.close(values)
        return [closed.get(c) for c in self.names]

    def _row_values(self, row):
        own = row.get("categories")
        spec = self.sources.get(row.get("source"))
        if spec is None and isinstance(own, dict):
            self.check_names(list(own), "A labeled row's 'categories'")
            return {c: _target(own.get(c), c) for c in self.names}
        if spec is not None and "codes" in spec:
            codes = row.get(spec["field"]) or {}
            values = dict.fromkeys(self.names)
            for code, cat in spec["codes"].items():  # several codes of one category: any 1, else any 0
                value = _target(codes.get(code), f"{row.get('source')} code {code}")
                if value == 1 or values[cat] is None:
                    values[cat] = value
            return values
        if spec is not None:
            label = row.get(spec["field"])
            table = (spec.get("labels") or {}).get(label)
            if table is None:
                table = (spec.get("by_label") or {}).get(str(row.get("label")))
            if table is None:
                raise ValueError(f"Taxonomy {self.name!r} has no mapping for {row.get('source')!r} label {label!r} "
                                 f"(known: {sorted(spec.get('labels') or {})}).")
            values = dict.fromkeys(self.names, spec.get("others", 0))
            values.update(table)
            return values
        return dict.fromkeys(self.names, 0 if row.get("label") == 0 else None)

    # -- Llama Guard -------------------------------------------------------------------------
    def from_codes(self, code_probs, mapping=None):
        """Category scores from a Llama Guard's per-code probabilities ({code: P(first category named
        is code)}): a category sums the codes that report it (`mapping`, default `llama_guard`), capped
        at 1; a parent is at least each child. Codes without a mapping report nothing."""
        mapping = self.llama_guard if mapping is None else mapping
        scores = dict.fromkeys(self.names, 0.0)
        for code, p in code_probs.items():
            for cat in mapping.get(code, ()):
                scores[cat] = min(1.0, scores[cat] + p)
        for child in self.names:
            node = child
            while node in self.parents:
                node = self.parents[node]
                scores[node] = max(scores[node], scores[child])
        return scores

    def policy(self, prefix="S"):
        """The categories written as Llama Guard writes its policy: "S1: Name.\\nDescription" lines, one
        per category, in order; returns (text, {code: category})."""
        lines, codes = [], {}
        for i, name in enumerate(self.names, 1):
            code = f"{prefix}{i}"
            codes[code] = name
            description = self.descriptions[name]
            lines.append(f"{code}: {name}." + (f"\n{description}" if description else ""))
        return "\n".join(lines), codes


def _target(value, where):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if value in (0, 1) and not isinstance(value, str):
        return int(value)
    raise ValueError(f"Category label of {where} must be 1, 0 or null, got {value!r}.")
