"""DAPO, GSPO and GRPO losses against values worked out by hand on planted log-probs.

Log-probs are planted as ``old + log(ratio)`` so each token's importance ratio is a round
number; the expected losses below are the arithmetic written out, not the formula re-run.
"""

import math

import pytest
import torch

from megatron_sail.rl.losses import dapo_loss, grpo_loss, gspo_loss, policy_loss, sequence_ratio

D = torch.float64


def planted(ratios, pad_to, old=-1.5):
    """[B, T] logp/old_logp/mask for rows of token ratios; padding carries junk log-probs
    (which the mask must hide)."""
    logp = torch.full((len(ratios), pad_to), 7.0, dtype=D)
    old_logp = torch.full((len(ratios), pad_to), -9.0, dtype=D)
    mask = torch.zeros((len(ratios), pad_to), dtype=D)
    for i, row in enumerate(ratios):
        for t, r in enumerate(row):
            old_logp[i, t] = old
            logp[i, t] = old + math.log(r)
            mask[i, t] = 1
    return logp, old_logp, mask


def test_clip_higher_keeps_a_positive_advantage_token_at_ratio_1_25_which_grpo_clips():
    logp, old, mask = planted([[1.25]], 1)
    adv = torch.tensor([1.0], dtype=D)
    dapo = dapo_loss(logp, old, adv, mask)  # 1.25 <= 1 + 0.28: objective 1.25 * 1
    grpo = grpo_loss(logp, old, adv, mask)  # 1.25 > 1 + 0.20: objective min(1.25, 1.20) = 1.20
    assert dapo.loss.item() == pytest.approx(-1.25)
    assert dapo.clip_fraction.item() == 0.0
    assert grpo.loss.item() == pytest.approx(-1.20)
    assert grpo.clip_fraction.item() == 1.0


def test_low_side_clip_is_eps_low_for_a_negative_advantage():
    logp, old, mask = planted([[0.75]], 1)
    adv = torch.tensor([-1.0], dtype=D)
    # clip(0.75, 0.80, 1.28) = 0.80; min(0.75 * -1, 0.80 * -1) = -0.80; loss +0.80
    out = dapo_loss(logp, old, adv, mask)
    assert out.loss.item() == pytest.approx(0.80)
    assert out.clip_fraction.item() == 1.0
    # a positive advantage at the same ratio is not clipped: min(0.75, 0.80) = 0.75
    assert dapo_loss(logp, old, -adv, mask).loss.item() == pytest.approx(-0.75)


def test_token_level_and_sequence_level_normalisation_differ_on_unequal_lengths():
    # sequence 1: one token at ratio 1.1, advantage 2  -> token objective 2.2
    # sequence 2: three tokens at ratios 1.0, 0.9, 1.1, advantage -1
    #             -> objectives -1.0, -0.9, -1.1 (none outside [0.8, 1.28]) summing to -3.0
    logp, old, mask = planted([[1.1], [1.0, 0.9, 1.1]], 3)
    adv = torch.tensor([2.0, -1.0], dtype=D)
    # DAPO: (2.2 - 3.0) / 4 tokens = -0.2 objective -> loss 0.2
    assert dapo_loss(logp, old, adv, mask).loss.item() == pytest.approx(0.2)
    # GRPO: sequence means 2.2 and -1.0, their mean 0.6 -> loss -0.6
    assert grpo_loss(logp, old, adv, mask).loss.item() == pytest.approx(-0.6)


def test_gspo_sequence_ratio_is_the_geometric_mean_of_token_ratios():
    # sequence 1: token ratios 1.2 and 0.9 -> s = (1.2 * 0.9) ** (1/2) = sqrt(1.08)
    # sequence 2: one token at ratio 0.5 -> s = 0.5
    logp, old, mask = planted([[1.2, 0.9], [0.5]], 2)
    s = sequence_ratio(logp, old, mask)
    assert s.tolist() == pytest.approx([math.sqrt(1.08), 0.5])
    logp.requires_grad_(True)
    adv = torch.tensor([1.0, -1.0], dtype=D)
    out = gspo_loss(logp, old, adv, mask, eps_low=0.2, eps_high=0.28)
    # sequence 1 unclipped: objective sqrt(1.08) = 1.0392305
    # sequence 2: min(0.5 * -1, clip(0.5, 0.8, 1.28) * -1) = -0.8, clipped
    # loss = -(1.0392305 - 0.8) / 2 = -0.11961524
    assert out.loss.item() == pytest.approx(-(math.sqrt(1.08) - 0.8) / 2)
    assert out.clip_fraction.item() == pytest.approx(1 / 3)  # the clipped sequence's 1 of 3 tokens
    out.loss.backward()
    # d/dlogp_t of -s * A / 2 with s = exp(mean_t log ratio) over 2 tokens: -s / 2 / 2 each;
    # the clipped sequence and the padding get no gradient
    expected = -math.sqrt(1.08) / 4
    assert logp.grad[0].tolist() == pytest.approx([expected, expected])
    assert logp.grad[1].tolist() == [0.0, 0.0]


def test_gspo_default_range_clips_what_dapo_would_not():
    logp, old, mask = planted([[1.2, 0.9]], 2)
    adv = torch.tensor([1.0], dtype=D)
    # sqrt(1.08) = 1.039 > 1 + 4e-4: objective 1.0004
    out = gspo_loss(logp, old, adv, mask)
    assert out.loss.item() == pytest.approx(-1.0004)
    assert out.clip_fraction.item() == 1.0


def test_grpo_k3_kl_to_the_reference():
    # ratio 1, advantage 1 -> objective 1; logp = ln 0.5, ref = ln 0.25:
    # k3 = r - ln r - 1 with r = 0.25 / 0.5 = 0.5 -> 0.5 + 0.6931472 - 1 = 0.1931472
    logp = torch.tensor([[math.log(0.5)]], dtype=D)
    ref = torch.tensor([[math.log(0.25)]], dtype=D)
    mask = torch.ones_like(logp)
    out = grpo_loss(logp, logp.clone(), torch.tensor([1.0], dtype=D), mask, ref_logp=ref,
                    kl_coeff=0.1)
    assert out.ref_kl.item() == pytest.approx(0.1931472, abs=1e-7)
    assert out.loss.item() == pytest.approx(-(1 - 0.1 * 0.1931472), abs=1e-7)
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(logp, logp, torch.tensor([1.0], dtype=D), mask, kl_coeff=0.1)


def test_approx_kl_is_k3_of_old_to_new():
    # ratio 1.25: 1.25 - ln 1.25 - 1 = 0.25 - 0.2231436 = 0.0268564
    logp, old, mask = planted([[1.25]], 1)
    out = dapo_loss(logp, old, torch.tensor([0.0], dtype=D), mask)
    assert out.approx_kl.item() == pytest.approx(0.0268564, abs=1e-7)
    assert out.ref_kl is None


def test_a_mini_batch_split_in_pieces_adds_up_with_the_global_normaliser():
    logp, old, mask = planted([[1.1], [1.0, 0.9, 1.1], [1.3, 0.7]], 3)
    adv = torch.tensor([2.0, -1.0, 0.5], dtype=D)
    for fn, key, total in ((dapo_loss, "num_tokens", 6), (grpo_loss, "num_sequences", 3),
                           (gspo_loss, "num_sequences", 3)):
        whole = fn(logp, old, adv, mask).loss
        parts = sum(fn(logp[s], old[s], adv[s], mask[s], **{key: total}).loss
                    for s in (slice(0, 1), slice(1, 3)))
        assert parts.item() == pytest.approx(whole.item()), fn.__name__


def test_policy_loss_dispatches_and_rejects_bad_input():
    logp, old, mask = planted([[1.25]], 1)
    adv = torch.tensor([1.0], dtype=D)
    assert policy_loss("grpo", logp, old, adv, mask, eps_low=0.2, eps_high=0.2).loss.item() == \
        pytest.approx(-1.2)
    with pytest.raises(ValueError, match="unknown RL algorithm"):
        policy_loss("ppo", logp, old, adv, mask, eps_low=0.2, eps_high=0.2)
    with pytest.raises(ValueError, match="advantages"):
        dapo_loss(logp, old, torch.ones(2, dtype=D), mask)
    with pytest.raises(ValueError, match="no response tokens"):
        dapo_loss(logp, old, adv, torch.zeros_like(mask))


def test_gspo_kl_is_the_mean_of_the_sequence_tokens_k3():
    # ratios 1 and advantage 0: the objective is 0, the loss is the KL term alone.
    # token 1: logp ln 0.5, ref ln 0.25 -> k3 0.1931472; token 2: logp = ref -> 0
    # sequence KL = (0.1931472 + 0) / 2 = 0.0965736; kl_coeff 1
    logp = torch.tensor([[math.log(0.5), math.log(0.5)]], dtype=D)
    ref = torch.tensor([[math.log(0.25), math.log(0.5)]], dtype=D)
    out = gspo_loss(logp, logp.clone(), torch.tensor([0.0], dtype=D), torch.ones_like(logp),
                    ref_logp=ref, kl_coeff=1.0)
    assert out.loss.item() == pytest.approx(0.0965736, abs=1e-7)
    assert out.ref_kl.item() == pytest.approx(0.0965736, abs=1e-7)


def test_a_sequence_without_response_tokens_is_not_counted():
    # row 2 is all padding: GRPO averages over the one real sequence (ratio 1.1, A 2 -> 2.2)
    logp, old, mask = planted([[1.1], []], 1)
    adv = torch.tensor([2.0, 5.0], dtype=D)
    assert grpo_loss(logp, old, adv, mask).loss.item() == pytest.approx(-2.2)
    assert gspo_loss(logp, old, adv, mask, eps_high=0.28).loss.item() == pytest.approx(-2.2)
    assert dapo_loss(logp, old, adv, mask).loss.item() == pytest.approx(-2.2)
