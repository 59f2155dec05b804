"""The guard chat template of `saferoute train-guard --kind llama_guard`: a Llama-Guard-3-style
instruction (policy categories + the conversation) in the base model's own chat format."""

import json

DEFAULT_POLICY = (
    "S1: Violent crimes. S2: Non-violent crimes (fraud, hacking, theft, drugs). S3: Sex-related crimes. "
    "S4: Child sexual exploitation. S5: Defamation. S6: Specialized advice (dangerous medical, legal, "
    "financial). S7: Privacy. S8: Intellectual property. S9: Indiscriminate weapons. S10: Hate. "
    "S11: Suicide and self-harm. S12: Sexual content. S13: Elections. S14: Harassment and toxicity."
)

# Llama-Guard-3-style instruction; `messages` are user (+ assistant) turns with str content.
GUARD_BODY = (
    "{%- set names = {'user': 'User', 'assistant': 'Agent'} -%}"
    "{%- set last = names[messages[-1]['role']] -%}"
    "Task: Check if there is unsafe content in '{{ last }}' messages in conversations according to our "
    "safety policy with the below categories.\n\n"
    "<BEGIN UNSAFE CONTENT CATEGORIES>\n{{ POLICY }}\n<END UNSAFE CONTENT CATEGORIES>\n\n"
    "<BEGIN CONVERSATION>\n\n"
    "{% for m in messages %}{{ names[m['role']] + ': ' + m['content'] + '\\n\\n' }}{% endfor -%}"
    "<END CONVERSATION>\n\n"
    "Provide your safety assessment for ONLY THE LAST {{ last }} message in the above conversation. "
    "Answer with one word: 'safe' or 'unsafe'."
)
SENTINEL = "\x00GUARD_INSTRUCTION\x00"


def _literal(text):
    """`text` as a Jinja expression that outputs it verbatim."""
    return "{{ " + json.dumps(text) + " }}"


def guard_chat_template(tokenizer, policy=DEFAULT_POLICY):
    """A Llama-Guard-style chat template: the guard instruction (policy + conversation) as one user
    turn in the base model's own chat format, ending right after the assistant header, so that the
    `llama_guard` adapter's suffix ("\\n\\n") is followed by the verdict word."""
    body = GUARD_BODY.replace("{{ POLICY }}", _literal(policy))
    prefix, suffix = "", ""
    if tokenizer.chat_template is not None:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": SENTINEL}], tokenize=False, add_generation_prompt=True
        )
        if rendered.count(SENTINEL) != 1:
            raise ValueError("The base model's chat template does not render a user message verbatim.")
        prefix, suffix = rendered.split(SENTINEL)
        suffix = suffix.rstrip()
    return (_literal(prefix) if prefix else "") + body + (_literal(suffix) if suffix else "")
