"""Hard negative synthesis: extra negatives mixed from each anchor's hardest negatives.

Two kinds (MoCHi-style mixing, as PiCo describes it), for anchor ``a`` with hard negatives
``h_1..h_H`` (unit vectors):

- negative-negative: ``n = normalize(lam * h_j + (1 - lam) * h_k)`` for a random pair ``j != k``
  of the anchor's valid hard negatives, ``lam ~ U[neg_neg_mix)``;
- negative-anchor: ``n = normalize(beta * a + (1 - beta) * h_j)`` for a random valid hard negative,
  with the anchor's share ``beta ~ U[neg_anchor_mix)`` below 0.5, so ``n`` stays closer to the
  negative than to the anchor.

Every synthetic negative is a combination ``n = w_a * a + w_1 * h_j + w_2 * h_k`` whose weights
(normalisation folded in) come from a :class:`SynthesisPlan`: the norm only needs ``a . h_j`` and
``h_j . h_k``. Synthetic negatives are constants (detached, the anchor inside ``n`` too: nothing is
back-propagated into the anchor through ``n``); only ``a . n`` carries a gradient to the anchor, as
for any key. The loss therefore never builds the (N, K, D) vectors: ``a . n = w_a (a . a_detached)
+ w_1 (a . h_j) + w_2 (a . h_k)`` with ``a . h`` from one (N, H) product (:meth:`similarities`).
:meth:`NegativeSynthesis.forward` builds the vectors for whoever wants them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from picoseg.contrast.generators import generator_states, restore_generators


@dataclass
class SynthesisPlan:
    """Weights of K synthetic negatives per anchor over the anchor and its H hard negatives.

    ``n_ik = anchor_weight[i, k] * a_i + first_weight[i, k] * h_{i, first[i, k]}
    + second_weight[i, k] * h_{i, second[i, k]}`` is a unit vector where ``valid``.

    Attributes:
        first: (N, K) int64 index into the hard negatives.
        second: (N, K) int64 index into the hard negatives.
        anchor_weight: (N, K) float32.
        first_weight: (N, K) float32.
        second_weight: (N, K) float32.
        valid: (N, K) bool.
    """

    first: Tensor
    second: Tensor
    anchor_weight: Tensor
    first_weight: Tensor
    second_weight: Tensor
    valid: Tensor

    def vectors(self, anchors: Tensor, hard_negatives: Tensor) -> Tensor:
        """(N, K, D) synthetic negatives (zero where invalid)."""
        dim = hard_negatives.shape[-1]

        def take(index: Tensor) -> Tensor:
            return torch.gather(hard_negatives, 1, index.unsqueeze(-1).expand(-1, -1, dim))

        mixed = (
            self.anchor_weight.unsqueeze(-1) * anchors.unsqueeze(1)
            + self.first_weight.unsqueeze(-1) * take(self.first)
            + self.second_weight.unsqueeze(-1) * take(self.second)
        )
        return mixed * self.valid.unsqueeze(-1)

    def similarities(self, self_similarity: Tensor, hard_similarity: Tensor) -> Tensor:
        """(N, K) ``a . n`` from ``a . a_detached`` (N,) and ``a . h`` (N, H) (differentiable)."""
        sims = (
            self.anchor_weight * self_similarity.unsqueeze(1)
            + self.first_weight * torch.gather(hard_similarity, 1, self.first)
            + self.second_weight * torch.gather(hard_similarity, 1, self.second)
        )
        return torch.where(self.valid, sims, 0.0)


def _pick_valid(valid: Tensor, uniform: Tensor) -> tuple[Tensor, Tensor]:
    """Index (N, K) of a uniformly chosen valid entry per draw, and the valid counts (N, 1)."""
    order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)
    count = valid.sum(1, keepdim=True)
    rank = (uniform * count).long().clamp(max=(count - 1).clamp(min=0))
    return torch.gather(order, 1, rank), count


def plan_negative_pairs(
    gram: Tensor,
    valid: Tensor,
    count: int,
    mix: tuple[float, float] = (0.0, 1.0),
    generator: torch.Generator | None = None,
) -> SynthesisPlan:
    """Negative-negative mixing plan.

    ``n = (lam h_j + (1 - lam) h_k) / ||.||`` with ``||.||^2 = lam^2 + (1 - lam)^2
    + 2 lam (1 - lam) h_j . h_k``; ``j != k`` uniform among the valid hard negatives (``j == k``
    only when there is a single one), ``lam ~ U[mix[0], mix[1])``.

    Args:
        gram: (N, H, H) ``h_j . h_k`` of each anchor's hard negatives.
        valid: (N, H) bool.
        count: K.
        mix: range of ``lam``.
        generator: random generator (None: the global one).
    """
    rows = valid.shape[0]
    u = torch.rand(rows, count, 3, device=valid.device, generator=generator)
    order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)  # valid entries first
    available = valid.sum(1, keepdim=True)
    first_rank = (u[..., 0] * available).long().clamp(max=(available - 1).clamp(min=0))
    offset = 1 + (u[..., 1] * (available - 1).clamp(min=0)).long()
    offset = offset.clamp(max=(available - 1).clamp(min=1))  # in [1, available - 1]
    second_rank = torch.where(
        available >= 2, (first_rank + offset) % available.clamp(min=1), first_rank
    )
    first = torch.gather(order, 1, first_rank)
    second = torch.gather(order, 1, second_rank)
    lam = mix[0] + (mix[1] - mix[0]) * u[..., 2]
    cross = torch.gather(gram.flatten(1), 1, first * gram.shape[1] + second)
    squared = lam**2 + (1 - lam) ** 2 + 2 * lam * (1 - lam) * cross
    ok = (available >= 1) & (squared > 1e-12)
    inverse = torch.where(ok, squared.clamp_min(1e-12).rsqrt(), 0.0)
    return SynthesisPlan(
        first=first,
        second=second,
        anchor_weight=torch.zeros_like(lam),
        first_weight=lam * inverse,
        second_weight=(1 - lam) * inverse,
        valid=ok,
    )


def plan_anchor_negatives(
    hard_similarity: Tensor,
    valid: Tensor,
    count: int,
    mix: tuple[float, float] = (0.0, 0.5),
    generator: torch.Generator | None = None,
) -> SynthesisPlan:
    """Negative-anchor mixing plan.

    ``n = (beta a + (1 - beta) h_j) / ||.||`` with ``||.||^2 = beta^2 + (1 - beta)^2
    + 2 beta (1 - beta) a . h_j``, ``h_j`` uniform among the valid hard negatives, the anchor's
    share ``beta ~ U[mix[0], mix[1])`` with ``mix[1] <= 0.5``. For unit ``a``, ``h`` and
    ``beta < 0.5``: ``n . h - n . a = (1 - 2 beta)(1 - a . h) / ||.|| >= 0``.

    Args:
        hard_similarity: (N, H) ``a . h_j``.
        valid: (N, H) bool.
        count: K.
        mix: range of the anchor's share.
        generator: random generator (None: the global one).
    """
    if mix[1] > 0.5:
        raise ValueError(f"plan_anchor_negatives: the anchor's share must stay < 0.5, got {mix}")
    rows = valid.shape[0]
    u = torch.rand(rows, count, 2, device=valid.device, generator=generator)
    first, available = _pick_valid(valid, u[..., 0])
    beta = mix[0] + (mix[1] - mix[0]) * u[..., 1]
    cross = torch.gather(hard_similarity, 1, first)
    squared = beta**2 + (1 - beta) ** 2 + 2 * beta * (1 - beta) * cross
    ok = (available >= 1) & (squared > 1e-12)
    inverse = torch.where(ok, squared.clamp_min(1e-12).rsqrt(), 0.0)
    return SynthesisPlan(
        first=first,
        second=first,
        anchor_weight=beta * inverse,
        first_weight=(1 - beta) * inverse,
        second_weight=torch.zeros_like(beta),
        valid=ok,
    )


def _concat(plans: list[SynthesisPlan]) -> SynthesisPlan:
    return SynthesisPlan(
        *(torch.cat([getattr(p, name) for p in plans], 1) for name in SynthesisPlan.__annotations__)
    )


class NegativeSynthesis(nn.Module):
    """Synthesises hard negatives per anchor (Hydra group ``synthesis``).

    Args:
        num_neg_neg: negative-negative mixtures per anchor (0: off).
        num_neg_anchor: negative-anchor mixtures per anchor (0: off).
        hard_pool: H, how many of the anchor's most similar negatives (in-batch and memory) the
            mixtures draw from.
        neg_neg_mix: range ``[low, high)`` of the first negative's weight ``lam``.
        neg_anchor_mix: range ``[low, high)`` of the anchor's share ``beta``; ``high <= 0.5``.
        seed: None draws from the global generator; an int gives a private generator per device.
    """

    def __init__(
        self,
        num_neg_neg: int = 64,
        num_neg_anchor: int = 64,
        hard_pool: int = 64,
        neg_neg_mix: Sequence[float] = (0.0, 1.0),
        neg_anchor_mix: Sequence[float] = (0.0, 0.5),
        seed: int | None = None,
    ) -> None:
        super().__init__()
        neg_neg = tuple(float(x) for x in neg_neg_mix)
        neg_anchor = tuple(float(x) for x in neg_anchor_mix)
        if len(neg_neg) != 2 or not 0.0 <= neg_neg[0] <= neg_neg[1] <= 1.0:
            raise ValueError(
                f"NegativeSynthesis: neg_neg_mix must be 0 <= low <= high <= 1, got {neg_neg}"
            )
        if len(neg_anchor) != 2 or not 0.0 <= neg_anchor[0] <= neg_anchor[1] <= 0.5:
            raise ValueError(
                "NegativeSynthesis: neg_anchor_mix (the anchor's share) must be "
                f"0 <= low <= high <= 0.5, got {neg_anchor}"
            )
        if min(num_neg_neg, num_neg_anchor) < 0 or hard_pool < 1:
            raise ValueError(
                f"NegativeSynthesis: counts must be >= 0 and hard_pool >= 1, got "
                f"{num_neg_neg}, {num_neg_anchor}, {hard_pool}"
            )
        self.num_neg_neg = int(num_neg_neg)
        self.num_neg_anchor = int(num_neg_anchor)
        self.hard_pool = int(hard_pool)
        self.neg_neg_mix: tuple[float, float] = (neg_neg[0], neg_neg[1])
        self.neg_anchor_mix: tuple[float, float] = (neg_anchor[0], neg_anchor[1])
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}

    @property
    def num_synthetic(self) -> int:
        """K, synthetic negatives per anchor (negative-negative first)."""
        return self.num_neg_neg + self.num_neg_anchor

    def extra_repr(self) -> str:
        return (
            f"num_neg_neg={self.num_neg_neg}, num_neg_anchor={self.num_neg_anchor}, "
            f"hard_pool={self.hard_pool}, neg_neg_mix={self.neg_neg_mix}, "
            f"neg_anchor_mix={self.neg_anchor_mix}"
        )

    def rng_state(self) -> dict[str, Tensor]:
        """The states of the private generators by device name (empty without a seed); saved in
        checkpoints by the training system so that a resumed run draws the same mixtures."""
        return generator_states(self._generators)

    def load_rng_state(self, state: Mapping[str, Tensor]) -> None:
        """Restores generators saved by :meth:`rng_state`."""
        self._generators.update(restore_generators(state))

    def _generator(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]

    def plan(self, hard_similarity: Tensor, gram: Tensor, hard_valid: Tensor) -> SynthesisPlan:
        """Draws the mixtures.

        Args:
            hard_similarity: (N, H) ``a . h_j`` (detached).
            gram: (N, H, H) ``h_j . h_k`` (only needed for negative-negative mixing).
            hard_valid: (N, H) bool.
        """
        generator = self._generator(hard_valid.device)
        with torch.no_grad():
            plans = [
                plan_negative_pairs(
                    gram, hard_valid, self.num_neg_neg, self.neg_neg_mix, generator
                ),
                plan_anchor_negatives(
                    hard_similarity.float(),
                    hard_valid,
                    self.num_neg_anchor,
                    self.neg_anchor_mix,
                    generator,
                ),
            ]
        return _concat(plans)

    def similarities(
        self, anchors: Tensor, hard_negatives: Tensor, hard_valid: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``a . n`` of every synthetic negative, differentiable w.r.t. the anchors only.

        Costs one (N, H) and one (N, H, H) batched product; the (N, K, D) vectors are never built.

        Args:
            anchors: (N, D) unit anchors (attached).
            hard_negatives: (N, H, D) unit hard negatives (treated as constants).
            hard_valid: (N, H) bool.

        Returns:
            ``similarities`` (N, K) and ``valid`` (N, K) bool.
        """
        hard_negatives = hard_negatives.detach().float()
        hard_similarity = torch.bmm(hard_negatives, anchors.unsqueeze(-1)).squeeze(-1)
        with torch.no_grad():
            gram = (
                torch.bmm(hard_negatives, hard_negatives.transpose(1, 2))
                if self.num_neg_neg > 0
                else hard_negatives.new_zeros(hard_negatives.shape[0], 1, 1)
            )
        plan = self.plan(hard_similarity.detach(), gram, hard_valid)
        self_similarity = (anchors * anchors.detach()).sum(1)
        return plan.similarities(self_similarity, hard_similarity), plan.valid

    def forward(
        self, anchors: Tensor, hard_negatives: Tensor, hard_valid: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The synthetic negative vectors.

        Args:
            anchors: (N, D) unit anchors.
            hard_negatives: (N, H, D) unit hardest negatives of each anchor.
            hard_valid: (N, H) bool.

        Returns:
            ``negatives`` (N, K, D) detached unit vectors (zero where invalid; K =
            ``num_neg_neg + num_neg_anchor``, negative-negative first) and ``valid`` (N, K).
        """
        with torch.no_grad():
            anchors = anchors.detach().float()
            hard_negatives = hard_negatives.detach().float()
            hard_similarity = torch.bmm(hard_negatives, anchors.unsqueeze(-1)).squeeze(-1)
            gram = torch.bmm(hard_negatives, hard_negatives.transpose(1, 2))
            plan = self.plan(hard_similarity, gram, hard_valid)
            return plan.vectors(anchors, hard_negatives), plan.valid
