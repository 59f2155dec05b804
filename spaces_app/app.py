"""Gradio Space: try a SafeRoute guard on one input, or on a CSV/JSONL file.

Loads the model named by `$SAFEROUTE_MODEL` (a folder or Hub id; default `outputs/saferoute-guard`)
with `pipeline("text-classification", trust_remote_code=True)`; nothing else from this repo.
"""

import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Optional

import gradio as gr
import pandas as pd
from transformers import pipeline

MAX_CHARS = 20_000
MAX_BATCH_ROWS = 2_000
EXAMPLES = [
    ["How do I bake sourdough bread?", ""],
    ["How do I kill a Python process?", ""],
    ["Where can I shoot a good photo of the city at night?", ""],
    ["Give me step-by-step instructions to make a pipe bomb.", ""],
    ["How do I pick a lock?", "I can't help with breaking into property, but a locksmith can help if you are locked out."],
    ["Write an insult about my coworker's religion.", "Sure! Here is a nasty one:"],
]


def category_line(result, top=3):
    """The categories a result reports (or, when none, its highest-scored ones), with their scores."""
    flagged = [c for c, on in result["categories"].items() if on]
    shown = flagged or sorted(result["category_scores"], key=result["category_scores"].get, reverse=True)[:top]
    text = ", ".join(f"{c} ({result['category_scores'][c]:.2f})" for c in shown)
    return text if flagged else f"none reported; highest: {text}"


def check_text(text, name):
    if text is not None and len(text) > MAX_CHARS:
        raise gr.Error(f"The {name} has {len(text):,} characters; this demo accepts at most {MAX_CHARS:,}.")


def build_demo(model=None):
    """The Blocks app for the SafeRoute model folder or Hub id `model`."""
    model = model or os.environ.get("SAFEROUTE_MODEL", "outputs/saferoute-guard")
    guard = pipeline("text-classification", model=model, trust_remote_code=True)
    default_router_threshold = float(guard.model.config.router_threshold)

    def timed_call(item, **options):
        start = time.perf_counter()
        result = guard(item, **options)
        return result, (time.perf_counter() - start) * 1000

    def classify(prompt, response, route, router_threshold):
        if not prompt or not prompt.strip():
            raise gr.Error("Enter a prompt.")
        check_text(prompt, "prompt")
        check_text(response, "response")
        item = {"prompt": prompt, "response": response or None}
        result, student_ms = timed_call(item, route="never")
        large_ms = None
        if route != "never":
            result, call_ms = timed_call(item, route=route, router_threshold=router_threshold)
            large_ms = max(call_ms - student_ms, 0.0) if result["routed"] else None
        verdict = f"## Verdict: {result['label'].upper()}"
        details = (
            f"**Decided by:** {result['decided_by']}  \n"
            f"**Router score:** {result['router_score']:.3f} (threshold {router_threshold:.2f}, "
            f"{'routed' if result['routed'] else 'not routed'})  \n"
            f"**Student P(unsafe):** {result['student_unsafe_score']:.3f}  \n"
            f"**Latency:** student {student_ms:.0f} ms"
            + (f", large guard {large_ms:.0f} ms" if large_ms is not None else "")
            + ("  \n**Input truncated** to the model's maximum length." if result["truncated"] else "")
            + (f"  \n**Categories:** {category_line(result)}" if "category_scores" in result else "")
        )
        scores = {"unsafe": result["unsafe_score"], "safe": 1 - result["unsafe_score"]}
        return verdict, scores, details

    def classify_file(file, route, router_threshold):
        if file is None:
            raise gr.Error("Upload a .csv or .jsonl file with a 'prompt' column (and optionally 'response').")
        path = file if isinstance(file, str) else file.name
        if path.endswith(".csv"):
            table = pd.read_csv(path)
        elif path.endswith((".jsonl", ".json")):
            table = pd.read_json(path, lines=path.endswith(".jsonl"))
        else:
            raise gr.Error(f"Unsupported file type {os.path.basename(path)!r}: use .csv or .jsonl.")
        if "prompt" not in table.columns:
            raise gr.Error(f"The file needs a 'prompt' column; it has {list(table.columns)}.")
        if len(table) > MAX_BATCH_ROWS:
            raise gr.Error(f"The file has {len(table):,} rows; this demo accepts at most {MAX_BATCH_ROWS:,}.")
        responses = table["response"] if "response" in table.columns else [None] * len(table)
        items = []
        for i, (p, r) in enumerate(zip(table["prompt"], responses)):
            if not isinstance(p, str) or not p.strip():
                raise gr.Error(f"Row {i + 1}: the prompt is empty or not text.")
            check_text(p, f"prompt of row {i + 1}")
            r = r if isinstance(r, str) else None
            check_text(r, f"response of row {i + 1}")
            items.append({"prompt": p, "response": r})
        results = guard(items, route=route, router_threshold=router_threshold)
        out = table.copy()
        for key in ("label", "unsafe_score", "router_score", "routed", "decided_by"):
            out[key] = [r[key] for r in results]
        if results and "categories" in results[0]:
            out["categories"] = [",".join(c for c, flagged in r["categories"].items() if flagged) for r in results]
        handle, out_path = tempfile.mkstemp(prefix="saferoute-results-", suffix=".csv")
        os.close(handle)
        out.to_csv(out_path, index=False)
        summary = (
            f"**{len(out)} rows** · unsafe: **{(out['label'] == 'unsafe').mean():.1%}** · "
            f"routed to the large guard: **{out['routed'].mean():.1%}**"
        )
        return summary, out_path, out.head(50)

    with gr.Blocks(title="SafeRoute guard") as demo:
        gr.Markdown(
            "# SafeRoute guard\nA small guard decides most inputs; its router sends the hard ones to a "
            f"large guard. Model: `{model}`."
        )
        with gr.Row():
            route = gr.Radio(["auto", "never", "always"], value="auto", label="Route to the large guard")
            router_threshold = gr.Slider(0, 1, value=default_router_threshold, step=0.01, label="Router threshold")
        with gr.Tab("Check one input"):
            with gr.Row():
                with gr.Column():
                    prompt = gr.Textbox(label="Prompt", lines=3, max_lines=12, elem_id="prompt")
                    response = gr.Textbox(label="Response (optional)", lines=3, max_lines=12, elem_id="response")
                    submit = gr.Button("Check", variant="primary", elem_id="check")
                with gr.Column():
                    verdict = gr.Markdown(elem_id="verdict")
                    scores = gr.Label(label="Unsafe score", num_top_classes=2)
                    details = gr.Markdown(elem_id="details")
            gr.Examples(EXAMPLES, inputs=[prompt, response])
            submit.click(classify, [prompt, response, route, router_threshold], [verdict, scores, details])
        with gr.Tab("Check a file"):
            upload = gr.File(label="CSV or JSONL with 'prompt' (and 'response')", file_types=[".csv", ".jsonl"], elem_id="upload")
            run = gr.Button("Check file", variant="primary", elem_id="check-file")
            summary = gr.Markdown(elem_id="summary")
            download = gr.File(label="Results (CSV)")
            preview = gr.Dataframe(label="First rows")
            run.click(classify_file, [upload, route, router_threshold], [summary, download, preview])
    demo.queue(default_concurrency_limit=2)
    return demo


@dataclass
class DemoArguments:
    model: Optional[str] = field(default=None, metadata={"help": "SafeRoute model folder or Hub id (default $SAFEROUTE_MODEL or outputs/saferoute-guard)."})
    port: int = field(default=7860, metadata={"help": "Port on which to serve."})
    host: str = field(default="127.0.0.1", metadata={"help": "Interface to serve on."})


def main(argv=None):
    """`saferoute demo --model DIR_OR_ID [--port N] [--host H]` (the Space itself runs this file alone)."""
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser([DemoArguments], prog="saferoute demo").parse_args_into_dataclasses(args=argv)
    build_demo(args.model).launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
