"""How often the token ids that MQAR draws its keys and values from occur in the training text.

    python experiments/lm-recall/mqar_ids_in_text.py TOKENIZER CORPUS [KEYS ...]
    # e.g. TOKENIZER = out/lm-recall/mamba2/tokenizer (the run's BPE), CORPUS = corpus/train, KEYS = 256 4095

For each KEYS: the share of the text's tokens that are MQAR keys ([1, 1+KEYS)) and values ([1+KEYS, 1+2*KEYS)), and
the commonest value tokens. A byte-level BPE numbers its alphabet first and its earliest (commonest) merges next,
so narrow low ranges are the text's most frequent tokens. The first 3M characters of the corpus are read.
"""
import collections
import sys

from statex.data.corpus import corpus_files, iter_documents
from statex.data.tokenizers import load_tokenizer

CHARS = 3_000_000

tokenizer, corpus = load_tokenizer(sys.argv[1]), sys.argv[2]
key_counts = [int(k) for k in sys.argv[3:]] or [256, 4095]
text = ""
for document in iter_documents(corpus_files(corpus)):
    text += document + "\n"
    if len(text) >= CHARS:
        break
ids = tokenizer.encode(text[:CHARS])
counts = collections.Counter(ids)
print(f"{len(ids):,} tokens of {min(len(text), CHARS):,} characters; vocabulary {tokenizer.vocab_size:,}")


def share(low: int, high: int) -> float:
    return sum(n for token, n in counts.items() if low <= token < high) / len(ids)


for keys in key_counts:
    values = range(1 + keys, 1 + 2 * keys)
    top = sorted(values, key=lambda t: -counts[t])[:5]
    print(f"keys {keys}: keys [1, {1 + keys}) are {share(1, 1 + keys):.1%} of the text's tokens, values "
          f"[{1 + keys}, {1 + 2 * keys}) {share(1 + keys, 1 + 2 * keys):.1%}; commonest values: "
          + ", ".join(f"{tokenizer.decode([t])!r} {counts[t] / len(ids):.1%}" for t in top))
