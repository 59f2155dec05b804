"""Standing baselines of `saferoute evaluate`: classifiers fitted in about a minute that a distilled
student has to beat to be worth its training.

`tfidf_logreg`: TF-IDF of word 1-2-grams of the prompt and the response (each its own vocabulary,
sublinear term frequencies) and a class-balanced logistic regression, fitted with scikit-learn on
the human labels of the rows the student may learn from (the teacher and student roles of the role
split). Its scores go through the score store like every model's, keyed by the role split and the
settings, so a rerun fits nothing.
"""

from dataclasses import asdict, dataclass

import numpy as np

BASELINES = ("tfidf_logreg",)


@dataclass(frozen=True)
class TfidfSettings:
    ngram_range: tuple = (1, 2)
    min_df: int = 2
    max_features: int = 200_000
    C: float = 4.0
    max_iter: int = 2000
    seed: int = 0


def _texts(items, field):
    return [(it.get(field) or "") if isinstance(it, dict) else (it if field == "prompt" else "") for it in items]


def fit_tfidf_logreg(items, labels, settings=TfidfSettings()):
    """A fitted scikit-learn pipeline: TF-IDF of prompt and response (separate vocabularies), then
    logistic regression; `predict_proba(items)[:, 1]` is P(unsafe)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    def vectorizer():
        return TfidfVectorizer(ngram_range=tuple(settings.ngram_range), min_df=settings.min_df, max_features=settings.max_features,
                               sublinear_tf=True, strip_accents="unicode", lowercase=True)

    model = Pipeline([
        ("tfidf", ColumnTransformer([("prompt", vectorizer(), "prompt"), ("response", vectorizer(), "response")])),
        ("logreg", LogisticRegression(C=settings.C, max_iter=settings.max_iter, class_weight="balanced", random_state=settings.seed)),
    ])
    labels = np.asarray(labels, dtype=int)
    if len(set(labels.tolist())) < 2:
        raise ValueError("The TF-IDF baseline needs rows of both classes to fit.")
    model.fit(_frame(items), labels)
    return model


def _frame(items):
    import pandas as pd

    return pd.DataFrame({"prompt": _texts(items, "prompt"), "response": _texts(items, "response")})


def tfidf_logreg_scores(model, items):
    """P(unsafe) of `items` ({"prompt", "response"} dicts or strings) under a fitted baseline."""
    return model.predict_proba(_frame(items))[:, 1].astype(float).tolist()


def settings_record(settings=TfidfSettings()):
    record = asdict(settings)
    record["ngram_range"] = list(settings.ngram_range)
    return record
