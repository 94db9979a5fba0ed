"""Clipped policy-gradient losses of DAPO, GSPO and GRPO, from per-token log-probabilities.

Inputs, for a mini-batch of B rollouts padded to T response tokens:
  ``logp``      [B, T] log-probs of the sampled tokens under the policy being trained,
  ``old_logp``  [B, T] the same under the policy that generated the rollouts (no gradient),
  ``advantages`` [B]   one advantage per rollout (group-relative, see ``advantages.py``),
  ``mask``      [B, T] 1 on response tokens, 0 on padding (prompt tokens are never in T),
  ``ref_logp``  [B, T] optional, under a frozen reference policy, for a KL penalty.

The three algorithms differ in where the importance ratio lives and how tokens are averaged:
  DAPO: token ratio pi/pi_old, clip-higher [1 - eps_low, 1 + eps_high] with eps_high > eps_low
        so that low-probability tokens with positive advantage can still rise (entropy does not
        collapse), and the token-level average: sum over every token of the mini-batch divided by
        the mini-batch's token count, so long responses weigh in proportion to their length.
  GSPO: one ratio per sequence, s_i = exp(mean_t (logp - old_logp)) (the geometric mean of the
        token ratios, i.e. length-normalised), clipped per sequence, averaged over sequences.
        Its clip range is on that geometric mean, hence far narrower than DAPO's.
  GRPO: token ratio with a symmetric clip, averaged over each sequence's tokens and then over
        sequences, plus an optional KL to the reference with the k3 estimator.

The loss is the negative objective (to be minimised). When a mini-batch is split over
micro-batches or data-parallel ranks, pass the whole mini-batch's ``num_tokens`` (DAPO) or
``num_sequences`` (GRPO, GSPO) so that the per-piece losses add up to the mini-batch's loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import Tensor

Algorithm = Literal["dapo", "gspo", "grpo"]


@dataclass(frozen=True)
class PolicyLoss:
    """``loss`` carries the gradient; the metrics are detached scalars.

    ``clip_fraction``: the share of response tokens whose clipped term is the active one (the
    gradient through them is zero); for GSPO a clipped sequence counts all its tokens.
    ``approx_kl``: token mean of the k3 estimate of KL(pi_old || pi) - how far the updates
    have moved the policy from the one that generated the rollouts.
    ``ref_kl``: token mean of the k3 estimate of KL(pi || pi_ref), None without a reference.
    """

    loss: Tensor
    clip_fraction: Tensor
    approx_kl: Tensor
    ref_kl: Optional[Tensor] = None


def k3(logp: Tensor, other_logp: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(p || q) for tokens sampled from p: r - log r - 1 with
    r = q/p. Non-negative and unbiased, unlike the plain log-ratio (Schulman's estimator, as
    in GRPO's KL penalty)."""
    log_ratio = other_logp - logp
    return torch.exp(log_ratio) - log_ratio - 1


def _check(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor,
           ref_logp: Optional[Tensor]) -> None:
    if logp.dim() != 2 or old_logp.shape != logp.shape or mask.shape != logp.shape:
        raise ValueError(f"logp, old_logp and mask must share one [B, T] shape, got "
                         f"{tuple(logp.shape)}, {tuple(old_logp.shape)}, {tuple(mask.shape)}")
    if ref_logp is not None and ref_logp.shape != logp.shape:
        raise ValueError(f"ref_logp must be {tuple(logp.shape)}, got {tuple(ref_logp.shape)}")
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages must be [B]={logp.shape[0]}, got {tuple(advantages.shape)}")


def _token_mean(values: Tensor, mask: Tensor, num_tokens: Optional[float] = None) -> Tensor:
    denom = mask.sum() if num_tokens is None else \
        torch.as_tensor(num_tokens, dtype=values.dtype, device=values.device)
    if float(denom) <= 0:
        raise ValueError("the mini-batch has no response tokens")
    return (values * mask).sum() / denom


def _over_sequences(per_sequence: Tensor, present: Tensor,
                    num_sequences: Optional[float] = None) -> Tensor:
    """Mean of per-sequence values over the sequences that have response tokens."""
    denom = present.sum() if num_sequences is None else \
        torch.as_tensor(num_sequences, dtype=per_sequence.dtype, device=per_sequence.device)
    if float(denom) <= 0:
        raise ValueError("the mini-batch has no response tokens")
    return per_sequence[present].sum() / denom


def _sequence_mean(values: Tensor, mask: Tensor, num_sequences: Optional[float] = None) -> Tensor:
    """Mean over each sequence's tokens, then over sequences; a sequence without response
    tokens contributes nothing and is not counted (it has no defined mean)."""
    lengths = mask.sum(dim=1)
    per_sequence = (values * mask).sum(dim=1) / lengths.clamp(min=1)
    return _over_sequences(per_sequence, lengths > 0, num_sequences)


def _clipped_objective(ratio: Tensor, advantages: Tensor, eps_low: float,
                       eps_high: float) -> tuple[Tensor, Tensor]:
    """min(r A, clip(r, 1 - eps_low, 1 + eps_high) A) and where the clipped term is active."""
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    objective = torch.minimum(ratio * advantages, clipped * advantages)
    active = (((advantages > 0) & (ratio > 1 + eps_high))
              | ((advantages < 0) & (ratio < 1 - eps_low)))
    return objective, active


def _metrics(logp: Tensor, old_logp: Tensor, active: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        m = mask.to(logp.dtype)
        clip_fraction = _token_mean(active.to(logp.dtype), m)
        approx_kl = _token_mean(k3(old_logp, logp.detach()), m)
    return clip_fraction, approx_kl


def _ref_penalty(logp: Tensor, ref_logp: Optional[Tensor], kl_coeff: float) -> Optional[Tensor]:
    if ref_logp is None:
        if kl_coeff:
            raise ValueError("kl_coeff > 0 needs the reference policy's ref_logp")
        return None
    return k3(logp, ref_logp)


def _token_terms(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor,
                 eps_low: float, eps_high: float, ref_logp: Optional[Tensor], kl_coeff: float):
    """What DAPO and GRPO share: the per-token clipped objective (plus the k3 penalty where
    asked), the float mask and the metrics; they differ only in how tokens are averaged."""
    _check(logp, old_logp, advantages, mask, ref_logp)
    m = mask.to(logp.dtype)
    ratio = torch.exp(logp - old_logp)
    objective, active = _clipped_objective(ratio, advantages[:, None], eps_low, eps_high)
    kl = _ref_penalty(logp, ref_logp, kl_coeff)
    per_token = -objective if kl is None else -objective + kl_coeff * kl
    clip_fraction, approx_kl = _metrics(logp, old_logp, active, m)
    ref_kl = None if kl is None else _token_mean(kl.detach(), m)
    return per_token, m, clip_fraction, approx_kl, ref_kl


def dapo_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, *,
              eps_low: float = 0.20, eps_high: float = 0.28, ref_logp: Optional[Tensor] = None,
              kl_coeff: float = 0.0, num_tokens: Optional[float] = None) -> PolicyLoss:
    """DAPO: token ratio, clip-higher, token-level average over the whole mini-batch; no KL
    unless ``kl_coeff`` > 0 (DAPO drops it: the policy is meant to move far from the start)."""
    per_token, m, clip_fraction, approx_kl, ref_kl = _token_terms(
        logp, old_logp, advantages, mask, eps_low, eps_high, ref_logp, kl_coeff)
    return PolicyLoss(_token_mean(per_token, m, num_tokens), clip_fraction, approx_kl, ref_kl)


def grpo_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, *,
              eps_low: float = 0.20, eps_high: float = 0.20, ref_logp: Optional[Tensor] = None,
              kl_coeff: float = 0.0, num_sequences: Optional[float] = None) -> PolicyLoss:
    """GRPO: token ratio, symmetric clip, mean over each sequence's tokens then over sequences,
    minus ``kl_coeff`` times the per-token k3 KL to the reference."""
    per_token, m, clip_fraction, approx_kl, ref_kl = _token_terms(
        logp, old_logp, advantages, mask, eps_low, eps_high, ref_logp, kl_coeff)
    return PolicyLoss(_sequence_mean(per_token, m, num_sequences), clip_fraction, approx_kl, ref_kl)


def sequence_ratio(logp: Tensor, old_logp: Tensor, mask: Tensor) -> Tensor:
    """GSPO's importance ratio per sequence: exp of the mean token log-ratio over its response
    tokens ([B]; 1 for a sequence without response tokens)."""
    m = mask.to(logp.dtype)
    mean_log_ratio = ((logp - old_logp) * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)
    return torch.exp(mean_log_ratio)


def gspo_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, *,
              eps_low: float = 3e-4, eps_high: float = 4e-4, ref_logp: Optional[Tensor] = None,
              kl_coeff: float = 0.0, num_sequences: Optional[float] = None) -> PolicyLoss:
    """GSPO: the sequence ratio clipped per sequence, averaged over sequences. The default
    range is the GSPO paper's (3e-4, 4e-4): a geometric mean of token ratios stays close to 1.
    An optional KL term is added per sequence as the mean of its tokens' k3 values."""
    _check(logp, old_logp, advantages, mask, ref_logp)
    m = mask.to(logp.dtype)
    present = m.sum(dim=1) > 0
    ratio = sequence_ratio(logp, old_logp, m)
    objective, active = _clipped_objective(ratio, advantages, eps_low, eps_high)
    kl = _ref_penalty(logp, ref_logp, kl_coeff)
    per_sequence = -objective
    if kl is not None:
        per_sequence = per_sequence + kl_coeff * (kl * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)
    loss = _over_sequences(per_sequence, present, num_sequences)
    clip_fraction, approx_kl = _metrics(logp, old_logp, active[:, None].expand_as(m), m)
    ref_kl = None if kl is None else _token_mean(kl.detach(), m)
    return PolicyLoss(loss, clip_fraction, approx_kl, ref_kl)


LOSSES = {"dapo": dapo_loss, "gspo": gspo_loss, "grpo": grpo_loss}


def policy_loss(algorithm: Algorithm, logp: Tensor, old_logp: Tensor, advantages: Tensor,
                mask: Tensor, *, eps_low: float, eps_high: float,
                ref_logp: Optional[Tensor] = None, kl_coeff: float = 0.0) -> PolicyLoss:
    """The loss of ``algorithm`` (one of ``LOSSES``) with an explicit clip range."""
    if algorithm not in LOSSES:
        raise ValueError(f"unknown RL algorithm {algorithm!r} (known: {', '.join(LOSSES)})")
    return LOSSES[algorithm](logp, old_logp, advantages, mask, eps_low=eps_low,
                             eps_high=eps_high, ref_logp=ref_logp, kl_coeff=kl_coeff)
