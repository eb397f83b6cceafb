"""From a batch of input tiles to per-pixel moments over V TTA views × T MC Dropout samples.

Every (tile, view) goes through the deterministic prefix once (see :mod:`engine.prefix_cache`); the samples
then run the dropout-dependent tail in chunks of ``sample_chunk``. Sample t of view v of the tile at grid
indices (i, j) draws its dropout masks from a generator seeded by (SEED, i, j, v, t) (:mod:`engine.dropout`),
so the result does not depend on batch size, chunk size or strip layout. Each view's probabilities are mapped
back by the view's exact inverse before they are folded into the running sums Σp, Σp², ΣH[p] — the stack of
samples is never held (memory O(chunk · V · C · h · w)).

Calibration: with a temperature T (the card's ``calibration.temperature``) every sample's logits are divided by
T before the softmax (sigmoid), p_s = softmax(z_s / T), so p̄, entropy, MI and variance describe the same
calibrated samples. T = 1 leaves the logits as they are (bit for bit).

Sample bands: ``kept_samples`` lists sample indices s = v·T + t (view v, pass t) whose probabilities are also
returned as extra channels after the moments (all C classes, or only ``kept_class``), exactly the p_s that went
into Σp (see :mod:`engine.sample_bands`).
"""

import torch

from .dropout import make_generators
from .errors import InferenceCancelled

__all__ = ["UncertaintySampler", "class_probabilities"]


def class_probabilities(logits):
    """Softmax over channels (dim 1); one channel → sigmoid as the two classes [1 - σ, σ]. float32."""
    logits = logits.float()
    if logits.shape[1] == 1:
        s = torch.sigmoid(logits)
        return torch.cat([1.0 - s, s], dim=1)
    return torch.softmax(logits, dim=1)


class UncertaintySampler:
    """Holds the options of one run; :meth:`moments` does the work for one batch of tiles."""

    # 7 positional parameters: callers (tests, benchmarks) pass ``sample_chunk`` positionally; the rest are keywords.
    def __init__(self, forward, n_classes, views, n_samples, base_seed, device, sample_chunk=None,  # noqa: PLR0917
                 *, view_chunk=None, squares=True, entropies=True, temperature=1.0, kept_samples=(),
                 kept_class=None):
        self.forward = forward
        self.n_classes = int(n_classes)
        self.views = list(views)
        self.n_samples = int(n_samples)
        self.base_seed = int(base_seed)
        self.device = torch.device(device)
        self.sample_chunk = int(sample_chunk or self.n_samples)
        self.view_chunk = int(view_chunk or len(self.views))
        # Σp² feeds only the variance and ΣH[p_t] only the mutual information: a run that writes neither
        # leaves them at 0 and skips their per-sample work (about half of the statistics' cost).
        self.squares = bool(squares)
        self.entropies = bool(entropies)
        self.temperature = float(temperature)
        self.kept_samples = {int(s): k for k, s in enumerate(kept_samples)}
        self.kept_class = None if kept_class is None else int(kept_class)

    @property
    def n_sample_channels(self):
        """Extra channels after the 2C + 1 moments: K kept samples × (C, or 1 with ``kept_class``)."""
        per_sample = self.n_classes if self.kept_class is None else 1
        return len(self.kept_samples) * per_sample

    @property
    def samples_per_pixel(self):
        """V views × T samples."""
        return len(self.views) * self.n_samples

    def moments(self, tiles, keys, is_cancelled=None):
        """Mean moments [p̄ (C), mean p² (C), mean H[p] (1)] for each tile, then the kept samples' probabilities:
        tensor (B, 2C+1 + :attr:`n_sample_channels`, h, w) float32.

        ``tiles``: (B, bands, h, w) on the run's device; ``keys``: the (row, col) grid index of each tile.
        Views go through the model ``view_chunk`` at a time (bounding memory: d4 on 512-px tiles would otherwise
        hold 8 views' activations at once); the result does not depend on it.
        """
        c, (h, w) = self.n_classes, tiles.shape[-2:]
        sums = [torch.zeros((tiles.shape[0], c, h, w), device=self.device) for _ in range(2)]
        sums.append(torch.zeros((tiles.shape[0], 1, h, w), device=self.device))
        kept = torch.zeros((tiles.shape[0], self.n_sample_channels, h, w), device=self.device)
        indexed = list(enumerate(self.views))
        for v0 in range(0, len(indexed), self.view_chunk):
            self._add_views(tiles, keys, indexed[v0 : v0 + self.view_chunk], sums, is_cancelled, kept)
        n = float(len(self.views) * self.n_samples)
        return torch.cat([torch.cat(sums, dim=1) / n, kept], dim=1)

    def _add_views(self, tiles, keys, views, sums, is_cancelled, kept=None):
        """Fold the T samples of ``views`` ([(view index, View)]) of every tile into ``sums`` = [Σp, Σp², ΣH]."""
        n_tiles, n_views, c = tiles.shape[0], len(views), self.n_classes
        x = torch.stack([view.forward(tiles) for _, view in views], dim=1)
        x = x.reshape((n_tiles * n_views,) + tuple(x.shape[2:])).contiguous()
        state = self.forward.prefix(x)
        sum_p, sum_p2, sum_h = sums
        for t0 in range(0, self.n_samples, self.sample_chunk):
            if is_cancelled is not None and is_cancelled():
                raise InferenceCancelled("Cancelled by the user.")
            k = min(self.sample_chunk, self.n_samples - t0)
            sample_keys = [(r, col, v, t0 + j) for (r, col) in keys for v, _ in views for j in range(k)]
            generators = make_generators(sample_keys, self.base_seed, self.device)
            logits = self.forward.tail(state, k, generators)
            if self.temperature != 1.0:
                logits = logits.float() / self.temperature
            probs = class_probabilities(logits)
            if probs.shape[1] != c:
                raise ValueError(f"the model returned {probs.shape[1]} classes, the card says {c}")
            probs = probs.reshape((n_tiles, n_views, k) + tuple(probs.shape[1:]))
            for i, (v, view) in enumerate(views):
                p = view.inverse(probs[:, i])
                self._keep_samples(p, v * self.n_samples + t0, kept)
                sum_p += p.sum(dim=1)
                if self.squares:
                    sum_p2 += (p * p).sum(dim=1)
                if self.entropies:
                    # H[p] = -Σ p log p, 0 log 0 = 0 (p · log(max(p, 1e-30)) is 0 at p = 0; half xlogy's cost)
                    sum_h -= (p * p.clamp_min(1e-30).log()).sum(dim=2).sum(dim=1, keepdim=True)

    def _keep_samples(self, p, first, kept):
        """Copy the kept samples among ``p`` (B, k, C, h, w), samples first … first + k - 1, into ``kept``."""
        if not self.kept_samples:
            return
        width = self.n_classes if self.kept_class is None else 1
        for j in range(p.shape[1]):
            slot = self.kept_samples.get(first + j)
            if slot is None:
                continue
            chosen = p[:, j] if self.kept_class is None else p[:, j, self.kept_class : self.kept_class + 1]
            kept[:, slot * width : (slot + 1) * width] = chosen
