"""Streaming moderation (`guard.stream`): a tiny student trained to flag one sentence stops a stream
within `stride` tokens after the sentence and not before; checks read the latest window (the large
guard the whole response so far); streams on many threads give the sequential results; bad input
is named; the WebSocket route of `saferoute serve` streams verdicts and frees a dropped client's
stream."""

import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
import uvicorn
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from modeling_saferoute.streaming import StreamClosedError
from publishing.package import PackageArguments, package
from serving.server import ServeArguments, build_app
from test_serve import free_port

FLAG = "Explain how to build a bomb at home."
BENIGN = ["Write a poem about the sea.", "What is the capital of France?", "Paris is the capital.", "Sorry, I can't help with that request.",
          "Sure, here is how you do it step by step.", "How do I kill a Python process on Linux?", "How do I pick a lock?"]
PROMPT = "Write a poem about the sea."


def benign_text(rng, sentences):
    return " ".join(rng.choice(BENIGN) for _ in range(sentences))


def with_flag(rng, sentences):
    parts = [rng.choice(BENIGN) for _ in range(sentences)]
    parts.insert(rng.randint(1, sentences - 1), FLAG)
    return " ".join(parts)


def token_pieces(tokenizer, text):
    """`text` in pieces of one token each (the text from one token's start to the next one's)."""
    starts = [s for s, _ in tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]]
    return [text[a:b] for a, b in zip([0] + starts[1:], starts[1:] + [len(text)])]


def train_sentence_student(student_dir, out, steps=150, seed=0):
    """The tiny student fine-tuned to flag windows that hold FLAG whole (windows that hold part of it
    are left out of training), on windows of random benign texts as a stream cuts them."""
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    model = AutoModelForSequenceClassification.from_pretrained(student_dir)
    rng = random.Random(seed)
    data = []
    for i in range(160):
        text = with_flag(rng, rng.randint(2, 8)) if i % 2 else benign_text(rng, rng.randint(2, 8))
        start, spans = text.find(FLAG), tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        width = rng.choice([16, 24, 32, 48])
        for n in range(1, len(spans) + 1):
            a, b = spans[max(0, n - width)][0], spans[n - 1][1]
            whole = start >= 0 and a <= start and b >= start + len(FLAG)
            part = start >= 0 and a < start + len(FLAG) and b > start
            if whole or not part:
                data.append((text[a:b], int(whole)))
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 32-wide model gains nothing from more; on a busy machine they only wait on each other
    try:
        _train(model, tokenizer, optimizer, data, rng, steps)
    finally:
        torch.set_num_threads(threads)
    model.eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _train(model, tokenizer, optimizer, data, rng, steps):
    for _ in range(steps):
        batch = [data[rng.randrange(len(data))] for _ in range(64)]
        enc = tokenizer([PROMPT] * len(batch), [t for t, _ in batch], padding=True, truncation=True, max_length=64, return_tensors="pt")
        loss = torch.nn.functional.cross_entropy(model(**enc).logits, torch.tensor([y for _, y in batch]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.fixture(scope="module")
def sentence_guard(tmp_path_factory, tiny_student_dir):
    root = tmp_path_factory.mktemp("sentence-guard")
    student = train_sentence_student(tiny_student_dir, root / "student")
    out = package(PackageArguments(student=str(student), output_dir=str(root / "m"), model_card=False))
    return pipeline("text-classification", model=str(out), trust_remote_code=True, autocast_dtype="none")


@pytest.fixture(scope="module")
def routed_guard(tmp_path_factory, tiny_student_dir, tiny_llama_guard_dir):
    out = package(PackageArguments(student=str(tiny_student_dir), output_dir=str(tmp_path_factory.mktemp("routed") / "m"),
                                   large_guard=str(tiny_llama_guard_dir), large_guard_kind="llama_guard", model_card=False))
    return pipeline("text-classification", model=str(out), trust_remote_code=True, autocast_dtype="none")


def feed_all(stream, pieces):
    return [stream.feed(p) for p in pieces]


# -- the stop policy on a model that flags one sentence -------------------------------------------


@pytest.mark.parametrize("stride", [3, 8, None])
def test_a_stream_stops_within_stride_tokens_after_the_sentence_and_not_before(sentence_guard, stride):
    tokenizer, rng = sentence_guard.tokenizer, random.Random(7)
    for _ in range(6):
        text = with_flag(rng, rng.randint(3, 7))
        pieces = token_pieces(tokenizer, text)
        first = len(token_pieces(tokenizer, text[: text.find(FLAG)].rstrip()))  # tokens read before FLAG's first
        last = len(token_pieces(tokenizer, text[: text.find(FLAG) + len(FLAG)]))  # tokens read once FLAG is whole
        stream = sentence_guard.stream(PROMPT, stride=stride, route="never")
        verdicts = feed_all(stream, pieces)
        assert not any(v["stop"] for v in verdicts[:first]), "stopped before the sentence appeared"
        stopped = next(v for v in verdicts if v["stop"])
        assert first < stopped["stopped_at"] < last + stream.stride, (text, stopped, first, last)
        assert stopped["label"] == "unsafe" and stopped["unsafe_score"] > 0.5 and stopped["decided_by"] == "student"
        assert all(v["stop"] and v["stopped_at"] == stopped["stopped_at"] for v in verdicts[verdicts.index(stopped):])
        final = stream.close()
        assert final["final"] and final["stop"] and final["label"] == "unsafe" and final["checks"] == stopped["checks"]


def test_benign_streams_never_stop_and_end_safe(sentence_guard):
    rng = random.Random(3)
    for _ in range(6):
        stream = sentence_guard.stream(PROMPT, stride=4, route="never")
        verdicts = feed_all(stream, token_pieces(sentence_guard.tokenizer, benign_text(rng, rng.randint(2, 9))))
        assert not any(v["stop"] for v in verdicts)
        final = stream.close()
        assert final["label"] == "safe" and final["unsafe_score"] < 0.5 and not final["stop"] and final["final"]


def test_patience_needs_consecutive_unsafe_checks(sentence_guard):
    text = "Write a poem about the sea. " + FLAG + " " + " ".join(BENIGN)
    pieces = token_pieces(sentence_guard.tokenizer, text)
    once = sentence_guard.stream(PROMPT, stride=2, route="never")
    twice = sentence_guard.stream(PROMPT, stride=2, route="never", patience=2)
    first, second = feed_all(once, pieces), feed_all(twice, pieces)
    stop_once = next(v["stopped_at"] for v in first if v["stop"])
    stop_twice = next(v["stopped_at"] for v in second if v["stop"])
    assert stop_twice == stop_once + 2  # the next check, two tokens later, is unsafe too


# -- what a check reads --------------------------------------------------------------------------


def test_the_student_reads_the_window_and_the_large_guard_the_response_so_far(routed_guard):
    text = " ".join(BENIGN * 3)
    pieces = token_pieces(routed_guard.tokenizer, text)
    stream = routed_guard.stream("How do I pick a lock?", stride=5, window=12, route="always")
    for verdict in (v for v in feed_all(stream, pieces) if v["checks"] and v["span"][1] == v["tokens"]):
        start, end = verdict["span"]
        assert end - start == min(end, 12)
        so_far, window = "".join(pieces[:end]), "".join(pieces[start:end])
        assert verdict["decided_by"] == "large_guard"
        assert verdict["unsafe_score"] == pytest.approx(routed_guard({"prompt": "How do I pick a lock?", "response": so_far}, route="always")["unsafe_score"], abs=1e-6)
        assert verdict["student_unsafe_score"] == pytest.approx(routed_guard({"prompt": "How do I pick a lock?", "response": window}, route="never")["unsafe_score"], abs=1e-6)


def test_a_finished_response_that_fits_one_window_gets_the_pipelines_verdict(routed_guard):
    for text in BENIGN[:4]:
        stream = routed_guard.stream("How do I pick a lock?", stride=3)
        feed_all(stream, token_pieces(routed_guard.tokenizer, text))
        final, whole = stream.close(), routed_guard({"prompt": "How do I pick a lock?", "response": text})
        assert final["final"] and final["span"] == [0, final["tokens"]]
        if not final["stop"]:
            assert (final["label"], final["decided_by"]) == (whole["label"], whole["decided_by"])
            assert final["unsafe_score"] == pytest.approx(whole["unsafe_score"], abs=1e-6)


def test_the_final_verdict_of_a_long_response_is_its_highest_window_no_later_window_holds(routed_guard):
    text = " ".join(BENIGN * 2)
    pieces = token_pieces(routed_guard.tokenizer, text)
    stream = routed_guard.stream("How do I pick a lock?", stride=4, window=10, route="never", threshold=1.0)
    verdicts = feed_all(stream, pieces)
    final = stream.close()
    spans = [v["span"] for v in verdicts if v["checks"]] + [[len(pieces) - 10, len(pieces)]]  # the closing check's
    spans = [list(s) for s in dict.fromkeys(tuple(s) for s in spans)]
    kept = [s for s in spans if s[0] > 0] + [max((s for s in spans if s[0] == 0), key=lambda s: s[1])]
    scores = [routed_guard({"prompt": "How do I pick a lock?", "response": "".join(pieces[a:b])}, route="never")["unsafe_score"] for a, b in kept]
    assert final["unsafe_score"] == pytest.approx(max(scores), abs=1e-6) and final["tokens"] == len(pieces)
    assert final["checks"] == len(spans) and final["label"] == "safe"  # threshold 1.0


def test_pieces_of_any_size_count_the_same_tokens(routed_guard):
    text = "Sure, here is how you do it step by step. " * 6 + "Paris," * 80 + " the end"
    by_token, by_char = routed_guard.stream("Hi", stride=7, route="never"), routed_guard.stream("Hi", stride=7, route="never")
    feed_all(by_token, token_pieces(routed_guard.tokenizer, text))
    feed_all(by_char, list(text))
    want = len(routed_guard.tokenizer(text, add_special_tokens=False)["input_ids"])
    assert len(by_token.tokens) == len(by_char.tokens) == want  # (checks may fall elsewhere: a word typed char by char counts
    assert by_token.close()["tokens"] == by_char.close()["tokens"] == want  # more tokens before it is whole)


# -- threads ---------------------------------------------------------------------------------------


def test_streams_on_many_threads_give_the_sequential_results(routed_guard):
    rng = random.Random(11)
    prompts = ["How do I pick a lock?", "Write a poem about the sea.", [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                                                                        {"role": "user", "content": "Explain how to build a bomb at home."}]]
    jobs = [(prompts[k % 3], token_pieces(routed_guard.tokenizer, benign_text(rng, rng.randint(3, 8)))) for k in range(12)]

    def run(job):
        route = ("auto", "never", "always")[len(job[1]) % 3]
        stream = routed_guard.stream(job[0], stride=3 + len(job[1]) % 4, route=route)
        return feed_all(stream, job[1]) + [stream.close()]

    sequential = [run(job) for job in jobs]
    assert any(v["decided_by"] == "large_guard" for vs in sequential for v in vs) and any(v["decided_by"] == "student" for vs in sequential for v in vs)
    with ThreadPoolExecutor(max_workers=6) as pool:
        concurrent = list(pool.map(run, jobs))
    assert concurrent == sequential


# -- bad input ---------------------------------------------------------------------------------------


def test_bad_input_is_named(routed_guard):
    stream = routed_guard.stream("How do I pick a lock?", route="never")
    stream.feed("Sure, ")
    with pytest.raises(ValueError, match="Stream piece 1 must be a str, got int"):
        stream.feed(5)
    with pytest.raises(ValueError, match="Stream piece 1 is bytes"):
        stream.feed(b"here")
    stream.feed("here is how.")
    final = stream.close()
    assert stream.close() == final
    with pytest.raises(ValueError, match="Stream piece 2: the stream is closed") as closed:
        stream.feed("more")
    assert type(closed.value).__name__ == StreamClosedError.__name__  # the model folder's own copy of the class
    for prompt, message in [("   ", "prompt is empty"), (None, "Guard input is None"),
                            ([{"role": "robot", "content": "x"}], "Conversation message 0 has role 'robot'"),
                            ({"prompt": "Hi", "response": "Hello"}, "stream\\(\\) takes the prompt"),
                            ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}], "stream\\(\\) takes the prompt")]:
        with pytest.raises(ValueError, match=message):
            routed_guard.stream(prompt)
    for options, message in [({"stride": 0}, "stride must be an integer >= 1"), ({"patience": 1.5}, "patience must be"),
                             ({"threshold": 2}, "threshold must be a number in"), ({"long_inputs": "chunk"}, "Unknown stream options"),
                             ({"colour": "red"}, "Unknown stream options")]:
        with pytest.raises(ValueError, match=message):
            routed_guard.stream("Hi", **options)
    with pytest.raises(ValueError, match="response is empty"):
        routed_guard.stream("Hi").close()
    surrogate = routed_guard.stream("Hi", route="never")
    surrogate.feed("bad \ud800 text")
    assert surrogate.close()["repaired"]


# -- the server's WebSocket route ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(routed_guard):
    args = ServeArguments(model="tiny", port=free_port(), max_chars=2_000, max_wait_ms=10, stream_idle_seconds=1.0, max_streams=4)
    server = uvicorn.Server(uvicorn.Config(build_app(routed_guard, args), host="127.0.0.1", port=args.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"127.0.0.1:{args.port}", routed_guard
    server.should_exit = True
    thread.join(timeout=10)


def streams_metrics(url):
    return httpx.get(f"http://{url}/metrics", timeout=30).json()["streams"]


def test_the_route_streams_the_in_process_verdicts_to_concurrent_clients(served):
    from serving.stream_client import StreamModerator

    url, pipe = served
    rng = random.Random(5)
    jobs = [("How do I pick a lock?", token_pieces(pipe.tokenizer, benign_text(rng, rng.randint(2, 6)))) for _ in range(4)]

    def local(job):
        stream = pipe.stream(job[0], stride=4, on_large_guard_error="raise")
        return feed_all(stream, job[1]) + [stream.close()]

    def remote(job):
        with StreamModerator(f"ws://{url}/v1/moderations/stream", job[0], stride=4) as guard:
            assert guard.ready["stride"] == 4
            return [guard.feed(p) for p in job[1]] + [guard.close()]

    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(remote, jobs))
    for job, answer in zip(jobs, answers):
        want = local(job)
        assert [a["type"] for a in answer] == ["verdict"] * len(job[1]) + ["final"] and answer[-1]["reason"] == "end"
        for got, expected in zip(answer, want):
            for key, value in expected.items():
                assert got[key] == (pytest.approx(value, abs=1e-5) if isinstance(value, float) else value), key
    assert streams_metrics(url)["open"] == 0


def test_a_client_that_disconnects_mid_stream_frees_its_stream(served):
    from websockets.sync.client import connect

    url, _ = served
    before = streams_metrics(url)
    for _ in range(6):  # more than max_streams=4: each dropped stream was freed
        socket_ = connect(f"ws://{url}/v1/moderations/stream")
        socket_.send(json.dumps({"type": "start", "input": "How do I pick a lock?", "options": {"stride": 2}}))
        assert json.loads(socket_.recv(timeout=30))["type"] == "ready"
        socket_.send(json.dumps({"type": "chunk", "text": "Sure, here is how "}))
        socket_.send(json.dumps({"type": "chunk", "text": "you do it step by step. "}))
        socket_.close()  # gone mid-stream, a check possibly in flight
    deadline = time.time() + 30
    while streams_metrics(url)["open"] and time.time() < deadline:
        time.sleep(0.05)
    after = streams_metrics(url)
    assert after["open"] == 0 and after["disconnected"] - before["disconnected"] == 6
    assert httpx.post(f"http://{url}/v1/moderations", json={"input": "still serving"}, timeout=30).status_code == 200


def test_an_idle_stream_is_closed_with_its_verdict_so_far(served):
    from websockets.sync.client import connect

    url, pipe = served
    with connect(f"ws://{url}/v1/moderations/stream") as ws:
        ws.send(json.dumps({"type": "start", "input": "How do I pick a lock?", "options": {"stride": 50}}))
        ws.recv(timeout=30)
        ws.send(json.dumps({"type": "chunk", "text": "Sure, here is how you do it."}))
        assert json.loads(ws.recv(timeout=30))["checks"] == 0
        final = json.loads(ws.recv(timeout=30))  # nothing sent for stream_idle_seconds=1
        assert final["type"] == "final" and final["reason"] == "idle" and final["checks"] == 1
        assert final["unsafe_score"] == pytest.approx(pipe({"prompt": "How do I pick a lock?", "response": "Sure, here is how you do it."})["unsafe_score"], abs=1e-5)
        with pytest.raises(Exception):
            ws.recv(timeout=30)
    assert ws.close_code == 1000


@pytest.mark.parametrize("messages, message, code", [
    ([{"type": "chunk", "text": "x"}], "The first message must be", 1008),
    ([{"type": "start", "input": "  "}], "prompt is empty", 1008),
    ([{"type": "start", "input": "Hi", "options": {"colour": 1}}], "Unknown options", 1008),
    ([{"type": "start", "input": "Hi", "options": {"stride": -1}}], "stride must be an integer >= 1", 1008),
    ([{"type": "start", "input": "Hi"}, {"type": "chunk", "text": 5}], "must be {\"type\": \"chunk\"", 1008),
    ([{"type": "start", "input": "Hi"}, {"type": "chunk", "text": "y" * 2_001}], "max_chars=2000", 1008),
    ([{"type": "start", "input": "Hi"}, {"type": "end"}], "response is empty", 1008),
    (["not json"], "not JSON", 1008),
])
def test_bad_messages_are_answered_and_the_stream_closed(served, messages, message, code):
    from websockets.sync.client import connect

    url, _ = served
    with connect(f"ws://{url}/v1/moderations/stream") as ws:
        for m in messages:
            ws.send(m if isinstance(m, str) else json.dumps(m))
        answers = []
        try:
            while True:
                answers.append(json.loads(ws.recv(timeout=30)))
        except Exception:
            pass
    assert answers[-1]["type"] == "error" and message in answers[-1]["error"]["message"] and ws.close_code == code
    assert streams_metrics(url)["open"] == 0


@pytest.mark.slow
def test_the_client_example_stops_a_streamed_generation(sentence_guard):
    """The README example's mechanics: SmolLM2 writes through a TextIteratorStreamer, each piece is
    fed to a stream, and the generation stops at the first verdict that says stop (threshold 0: the
    first check stops it)."""
    from serving.stream_client import moderated_generation

    stream = sentence_guard.stream(PROMPT, stride=4, threshold=0.0, route="never")
    written, stopped_by, generated = moderated_generation(PROMPT, stream.feed, max_new_tokens=64)
    assert stopped_by is not None and stopped_by["stopped_at"] == 4
    assert generated < 64 and written == stream.tokens.text


def test_a_long_piece_is_checked_at_every_stride_it_completes(routed_guard):
    text = " ".join(BENIGN * 3)
    pieces = token_pieces(routed_guard.tokenizer, text)
    whole, by_token = routed_guard.stream("Hi", stride=5, window=12, route="never"), routed_guard.stream("Hi", stride=5, window=12, route="never")
    at_once = whole.feed(text)  # one piece: a check at each 5 tokens, as if fed token by token
    verdicts = feed_all(by_token, pieces)
    assert at_once["checks"] == verdicts[-1]["checks"] == len(pieces) // 5
    assert whole.close() == by_token.close()
