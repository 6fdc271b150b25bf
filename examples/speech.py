"""Speaker identification from speech: does attention, causal convolution or both, added to a
GRU, help? The ablation grid of _common.VARIANTS (GRU, GRU + attention pooling, causal conv +
GRU, causal conv + GRU + attention = fusedgru.models.CausalConvGRU(attention="pool"), the
bidirectional GRU with attention, and the GRU on nn.GRU for the speed comparison),
each over several seeds.

Data: UCI/UEA Japanese Vowels, shipped in the sktime wheel: 12 LPC cepstrum coefficients per
frame, 7-29 frames per utterance, 9 male speakers; 270 training and 370 test utterances. 20% of
the training utterances (stratified, fixed) are the validation split (model selection: the
epoch with the lowest validation loss). Features are standardized with the training part's
statistics; padded batches with `lengths=`.

  python examples/speech.py [--epochs 12] [--seeds 3] [--device cpu|cuda] [--smoke]

Writes examples/out/speech.json (mean, std, min, max over seeds of test accuracy, macro F1,
seconds per epoch) and speech.png (accuracy and F1 per variant with error bars).
"""

import numpy as np
import torch
from _common import SequenceClassifier, classification_report, japanese_vowels, parser, setup
from torch.nn.utils.rnn import pad_sequence

CLASSES, HIDDEN = 9, 64


def main():
    args = parser(__doc__, epochs=12).parse_args()
    setup(args)
    (x_tr, y_tr), (x_te, y_te) = japanese_vowels()
    # every 5th utterance of each speaker to validation
    val = np.zeros(len(y_tr), dtype=bool)
    for c in range(CLASSES):
        val[np.flatnonzero(y_tr == c)[::5]] = True
    frames = np.concatenate([x for x, v in zip(x_tr, val) if not v])
    mean, std = frames.mean(0), frames.std(0)

    def batch(xs, ys):
        seqs = [torch.from_numpy((x - mean) / std) for x in xs]
        return (pad_sequence(seqs, batch_first=True), torch.tensor([len(s) for s in seqs]),
                torch.from_numpy(np.asarray(ys)))

    data = [batch([x for x, v in zip(x_tr, val) if not v], y_tr[~val]),
            batch([x for x, v in zip(x_tr, val) if v], y_tr[val]), batch(x_te, y_te)]
    if args.smoke:
        data = [tuple(t[:64] for t in d) for d in data]

    def make_model(**kw):
        return SequenceClassifier(12, HIDDEN, CLASSES, **kw)

    classification_report(args, "speech", data, make_model,
                          "Japanese Vowels speaker identification", {
                              "dataset": "Japanese Vowels (UCI/UEA), sktime's "
                                         "JapaneseVowels_TRAIN/TEST.ts",
                              "hidden": HIDDEN}, batch_size=32)


if __name__ == "__main__":
    main()
