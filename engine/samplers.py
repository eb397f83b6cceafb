"""From a batch of input tiles to per-pixel moments over V TTA views × T MC Dropout samples.

Every (tile, view) goes through the deterministic prefix once (see :mod:`engine.prefix_cache`); the samples
then run the dropout-dependent tail in chunks of ``sample_chunk``. Sample t of view v of the tile at grid
indices (i, j) draws its dropout masks from a generator seeded by (SEED, i, j, v, t) (:mod:`engine.dropout`),
so the result does not depend on batch size, chunk size or strip layout. Each view's probabilities are mapped
back by the view's exact inverse before they are folded into the running sums Σp, Σp², ΣH[p] — the stack of
samples is never held (memory O(chunk · V · C · h · w)).

Calibration: with a temperature T (the card's ``calibration.temperature``) every sample's logits are divided by
T before the softmax (sigmoid), p_s = softmax(z_s / T), so p̄, entropy, MI and variance describe the same
calibrated samples. T = 1 leaves the logits as they are (bit for bit). The one-pass shortcut (V = T = 1) divides too.

Layout of :meth:`UncertaintySampler.moments`: the moments in the mode's own layout (:mod:`engine.statistics`:
p̄ (C), + mean p² (C) only with ``squares``, + mean H[p] (1) only with ``entropies``;
:attr:`~UncertaintySampler.n_moment_channels` of them), then the kept sample channels
(:attr:`~UncertaintySampler.n_sample_channels`). Sample bands: ``kept_samples`` lists sample indices
s = v·T + t (view v, pass t) whose probabilities are also returned as those extra channels (all C classes, or
only ``kept_class``), exactly the p_s that went into Σp (see :mod:`engine.sample_bands`).
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
    """Holds the options of one run; :meth:`moments` does the work for one batch of tiles.

    ``stochastic=False`` (eval mode: dropout off) draws no dropout generators. ``precision`` (see
    :mod:`engine.precision`) is the arithmetic of the model's forward; probabilities and sums stay float32.
    ``temperature`` divides every sample's logits; ``kept_samples`` / ``kept_class`` choose the sample channels
    returned after the moments (see the module docstring).
    """

    # 7 positional parameters: callers (tests, benchmarks) pass ``sample_chunk`` positionally; the rest are keywords.
    def __init__(self, forward, n_classes, views, n_samples, base_seed, device, sample_chunk=None,  # noqa: PLR0917
                 *, view_chunk=None, squares=True, entropies=True, stochastic=True, precision="float32",
                 temperature=1.0, kept_samples=(), kept_class=None):
        from .precision import autocast

        self.forward = forward
        self.n_classes = int(n_classes)
        self.views = list(views)
        self.n_samples = int(n_samples)
        self.base_seed = int(base_seed)
        self.device = torch.device(device)
        self.sample_chunk = int(sample_chunk or self.n_samples)
        self.view_chunk = int(view_chunk or len(self.views))
        # Σp² feeds only the variance and ΣH[p_t] only the mutual information: a run that writes neither
        # neither computes nor carries them (engine.statistics: the moments in the mode's layout).
        self.squares = bool(squares)
        self.entropies = bool(entropies)
        self.stochastic = bool(stochastic)
        self.autocast = lambda: autocast(precision, self.device)
        self.temperature = float(temperature)
        self.kept_samples = {int(s): k for k, s in enumerate(kept_samples)}
        self.kept_class = None if kept_class is None else int(kept_class)

    @property
    def samples_per_pixel(self):
        """V views × T samples."""
        return len(self.views) * self.n_samples

    @property
    def n_moment_channels(self):
        """Moment channels: C (p̄), + C (mean p²) with ``squares``, + 1 (mean H[p]) with ``entropies``."""
        return self.n_classes * (1 + self.squares) + self.entropies

    @property
    def n_sample_channels(self):
        """Extra channels after the moments: K kept samples × (C, or 1 with ``kept_class``)."""
        per_sample = self.n_classes if self.kept_class is None else 1
        return len(self.kept_samples) * per_sample

    @property
    def n_channels(self):
        """All channels of :meth:`moments`: the moments, then the kept samples."""
        return self.n_moment_channels + self.n_sample_channels

    def moments(self, tiles, keys, is_cancelled=None):
        """Mean moments [p̄ (C), mean p² (C, with ``squares``), mean H[p] (1, with ``entropies``)] for each tile,
        then the kept samples' probabilities: tensor (B, :attr:`n_channels`, h, w) float32.

        ``tiles``: (B, bands, h, w) on the run's device; ``keys``: the (row, col) grid index of each tile.
        Views go through the model ``view_chunk`` at a time (bounding memory: d4 on 512-px tiles would otherwise
        hold 8 views' activations at once); the result does not depend on it. One view and one sample (a plain
        pass) runs no per-sample machinery: the probabilities are the moments (and the one kept sample).
        """
        if self.samples_per_pixel == 1:
            return self._one_pass(tiles, keys)
        c, (h, w) = self.n_classes, tiles.shape[-2:]
        sums = [torch.zeros((tiles.shape[0], c, h, w), device=self.device)]
        if self.squares:
            sums.append(torch.zeros((tiles.shape[0], c, h, w), device=self.device))
        if self.entropies:
            sums.append(torch.zeros((tiles.shape[0], 1, h, w), device=self.device))
        kept = torch.zeros((tiles.shape[0], self.n_sample_channels, h, w), device=self.device) \
            if self.kept_samples else None
        indexed = list(enumerate(self.views))
        for v0 in range(0, len(indexed), self.view_chunk):
            self._add_views(tiles, keys, indexed[v0 : v0 + self.view_chunk], sums, is_cancelled, kept)
        n = float(len(self.views) * self.n_samples)
        means = (torch.cat(sums, dim=1) if len(sums) > 1 else sums[0]) / n
        return means if kept is None else torch.cat([means, kept], dim=1)

    def _one_pass(self, tiles, keys):
        """T = 1, V = 1: p = inverse(softmax(model(view(x)) / T)), and p², H[p] only when the mode reads them;
        the only sample (s = 0) as the kept channels when asked for."""
        view = self.views[0]
        generators = make_generators([(r, col, 0, 0) for r, col in keys], self.base_seed, self.device) \
            if self.stochastic else None
        with self.autocast():
            logits = self.forward.tail(self.forward.prefix(view.forward(tiles).contiguous()), 1, generators)
        p = view.inverse(self._probabilities(logits))
        parts = [p]
        if self.squares:
            parts.append(p * p)
        if self.entropies:
            parts.append(-(p * p.clamp_min(1e-30).log()).sum(dim=1, keepdim=True))
        if self.kept_samples:  # S = 1: the only possible kept sample is s = 0
            parts.append(p if self.kept_class is None else p[:, self.kept_class : self.kept_class + 1])
        return torch.cat(parts, dim=1) if len(parts) > 1 else p

    def _probabilities(self, logits):
        """Softmax (sigmoid) of ``logits`` / temperature, float32; checks the class count against the card."""
        if self.temperature != 1.0:
            logits = logits.float() / self.temperature
        probs = class_probabilities(logits)
        if probs.shape[1] != self.n_classes:
            raise ValueError(f"the model returned {probs.shape[1]} classes, the card says {self.n_classes}")
        return probs

    def _add_views(self, tiles, keys, views, sums, is_cancelled, kept=None):
        """Fold the T samples of ``views`` ([(view index, View)]) of every tile into ``sums`` = [Σp, Σp², ΣH]
        (Σp² and ΣH only when kept) and copy the kept samples into ``kept``."""
        n_tiles, n_views = tiles.shape[0], len(views)
        if n_views == 1:
            x = views[0][1].forward(tiles).contiguous()
        else:
            x = torch.stack([view.forward(tiles) for _, view in views], dim=1)
            x = x.reshape((n_tiles * n_views,) + tuple(x.shape[2:])).contiguous()
        with self.autocast():
            state = self.forward.prefix(x)
        sum_p = sums[0]
        sum_p2 = sums[1] if self.squares else None
        sum_h = sums[-1] if self.entropies else None
        for t0 in range(0, self.n_samples, self.sample_chunk):
            if is_cancelled is not None and is_cancelled():
                raise InferenceCancelled("Cancelled by the user.")
            k = min(self.sample_chunk, self.n_samples - t0)
            generators = None
            if self.stochastic:
                sample_keys = [(r, col, v, t0 + j) for (r, col) in keys for v, _ in views for j in range(k)]
                generators = make_generators(sample_keys, self.base_seed, self.device)
            with self.autocast():
                logits = self.forward.tail(state, k, generators)
            probs = self._probabilities(logits)
            probs = probs.reshape((n_tiles, n_views, k) + tuple(probs.shape[1:]))
            for i, (v, view) in enumerate(views):
                p = view.inverse(probs[:, i])
                self._keep_samples(p, v * self.n_samples + t0, kept)
                sum_p += p.sum(dim=1)
                if sum_p2 is not None:
                    sum_p2 += (p * p).sum(dim=1)
                if sum_h is not None:
                    # H[p] = -Σ p log p, 0 log 0 = 0 (p · log(max(p, 1e-30)) is 0 at p = 0; half xlogy's cost)
                    sum_h -= (p * p.clamp_min(1e-30).log()).sum(dim=2).sum(dim=1, keepdim=True)

    def _keep_samples(self, p, first, kept):
        """Copy the kept samples among ``p`` (B, k, C, h, w), samples first … first + k - 1, into ``kept``."""
        if kept is None:
            return
        width = self.n_classes if self.kept_class is None else 1
        for j in range(p.shape[1]):
            slot = self.kept_samples.get(first + j)
            if slot is None:
                continue
            chosen = p[:, j] if self.kept_class is None else p[:, j, self.kept_class : self.kept_class + 1]
            kept[:, slot * width : (slot + 1) * width] = chosen
