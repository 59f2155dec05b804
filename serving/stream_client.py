"""A client of `WS /v1/moderations/stream`, and an example that moderates a streamed generation and stops it.

    with StreamModerator("ws://127.0.0.1:8000/v1/moderations/stream", prompt) as guard:
        for piece in pieces:
            if guard.feed(piece)["stop"]:
                break
        final = guard.close()

`python -m serving.stream_client --url ws://127.0.0.1:8000/v1/moderations/stream --prompt "..."`
generates an answer with a local LLM (default the bundled SmolLM2-135M-Instruct) through
transformers' `TextIteratorStreamer`, sends each piece to the server as it is written, and stops
the generation (a `StoppingCriteria`) as soon as a verdict says `stop`. With `--model DIR` instead
of `--url` the same runs in-process on `guard.stream(...)`.
"""

import argparse
import json
import threading

from websockets.sync.client import connect


class StreamError(RuntimeError):
    """The server answered a stream with an error message."""


class StreamModerator:
    """One response moderated by `saferoute serve` while it is written (a blocking client)."""

    def __init__(self, url, prompt, timeout=60.0, **options):
        self.socket = connect(url, open_timeout=timeout, close_timeout=timeout)
        self.timeout = timeout
        self.ready = self._ask({"type": "start", "input": prompt, "options": options}, "ready")
        self.final = None

    def _ask(self, message, expected):
        self.socket.send(json.dumps(message))
        answer = json.loads(self.socket.recv(timeout=self.timeout))
        if answer.get("type") == "error":
            raise StreamError(answer["error"]["message"])
        if answer.get("type") != expected:
            raise StreamError(f"Expected a {expected!r} message, got {answer!r:.200}.")
        return answer

    def feed(self, text):
        """Send the next piece of the response; return the server's verdict."""
        return self._ask({"type": "chunk", "text": text}, "verdict")

    def close(self):
        """End the response; return the final verdict (the server closes the connection)."""
        if self.final is None:
            self.final = self._ask({"type": "end"}, "final")
            self.socket.close()
        return self.final

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.socket.close()  # a stream not ended is dropped: the server frees it


def moderated_generation(prompt, feed, generator="bundled:smollm2-135m-instruct", max_new_tokens=256):
    """Generate an answer to `prompt` with a local LLM, passing each new piece to `feed(piece) ->
    verdict`; the generation stops at the first verdict whose `stop` is True. Returns (the text
    written, the verdict that stopped it or None, the number of tokens generated)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    from modeling_saferoute.bundled import resolve

    path = resolve(generator)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    input_ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt",
                                              return_dict=True)["input_ids"]
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    stop = threading.Event()

    class StopWhenFlagged(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool)

    output = {}

    def generate():
        output["ids"] = model.generate(input_ids=input_ids, max_new_tokens=max_new_tokens, do_sample=False, streamer=streamer,
                                       stopping_criteria=StoppingCriteriaList([StopWhenFlagged()]))

    worker = threading.Thread(target=generate)
    worker.start()
    written, stopped_by = "", None
    for piece in streamer:
        if stopped_by is not None or not piece:
            continue  # drain what the generator wrote before it saw the stop
        written += piece
        verdict = feed(piece)
        if verdict["stop"]:
            stopped_by = verdict
            stop.set()
    worker.join()
    return written, stopped_by, int(output["ids"].shape[1] - input_ids.shape[1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="The server's stream route, e.g. ws://127.0.0.1:8000/v1/moderations/stream.")
    where.add_argument("--model", help="A SafeRoute model folder: moderate in-process instead.")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--generator", default="bundled:smollm2-135m-instruct")
    parser.add_argument("--max_new_tokens", type=int, default=256)
    parser.add_argument("--options", default="{}", help="Stream options as JSON, e.g. '{\"stride\": 32, \"patience\": 2}'.")
    args = parser.parse_args(argv)
    options = json.loads(args.options)
    if args.url:
        guard = StreamModerator(args.url, args.prompt, **options)
    else:
        from transformers import pipeline

        guard = pipeline("text-classification", model=args.model, trust_remote_code=True).stream(args.prompt, **options)
    written, stopped_by, generated = moderated_generation(args.prompt, guard.feed, args.generator, args.max_new_tokens)
    final = guard.close()
    print(json.dumps({"generated_tokens": generated, "stopped": stopped_by is not None, "text": written, "final": final}, indent=2))


if __name__ == "__main__":
    main()
