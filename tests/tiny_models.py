"""Tiny random models built on the fly: a BERT student and a Llama-Guard-style causal LM."""

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

CORPUS = [
    "How do I pick a lock?",
    "Write a poem about the sea.",
    "Explain how to build a bomb at home.",
    "Sorry, I can't help with that request.",
    "Sure, here is how you do it step by step.",
    "What is the capital of France? Paris is the capital.",
    "How do I kill a Python process on Linux?",
    "safe unsafe Yes No user assistant system guard verdict",
] * 20

TINY_GUARD_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "Is the last turn safe or unsafe?<|assistant|>"
)


def _train_tokenizer(special, post=None):
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=300, special_tokens=special))
    if post is not None:
        tok.post_processor = post(tok)
    return tok


def build_tiny_student(out):
    """A tiny BertForSequenceClassification (2 labels) with a BERT-style pair tokenizer, saved in `out`."""
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

    def bert_post(tok):
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        return processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
        )

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(special, bert_post),
        unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
        model_max_length=64, model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=37, max_position_embeddings=64, num_labels=2,
    )
    BertForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_tiny_llama_guard(out):
    """A tiny random LlamaForCausalLM whose tokenizer has a guard chat template, saved in `out`."""
    special = ["<pad>", "[UNK]", "<s>", "</s>", "<|user|>", "<|assistant|>"]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(special),
        unk_token="[UNK]", pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        model_max_length=256,
    )
    tokenizer.chat_template = TINY_GUARD_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


if __name__ == "__main__":  # python tests/tiny_models.py OUT_DIR: build both for outside checks
    import sys
    from pathlib import Path

    root = Path(sys.argv[1])
    print(build_tiny_student(root / "tiny-student"), build_tiny_llama_guard(root / "tiny-llama-guard"))
