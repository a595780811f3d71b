"""ReFL (methods/refl.py): its loss on hand-computed values and against ImageReward's formula, the step range (never
the last step alone: that is DRaFT-1 with a hinge), the cost of a step, the hinge in the reward's standard units
(the base model's first-batch statistics: a reward in other units trains alike), one-line config errors."""

import pytest
import torch
import torch.nn.functional as F

from bench.core.errors import BenchError
from bench.core.sampler import SamplerConfig
from methods.losses import refl_loss
from methods.refl import ReFL, ReFLConfig
from rewards.toy import Brightness
from tests.test_draft_refl import STEPS, build, lora, perturb


# ---- ReFL -------------------------------------------------------------------------------------------------------
def test_refl_loss_known_values():
    reward = torch.tensor([1.0, 3.0, -1.0, 2.0], requires_grad=True)
    loss, info = refl_loss(reward, shift=2.0, scale=1e-3)
    # relu(2 - r) = [1, 0, 3, 0]: mean 1, times 1e-3
    torch.testing.assert_close(loss, torch.tensor(1e-3))
    assert info == {"active": 0.5, "hinge": 1.0}
    loss.backward()  # d/dr = -scale / B below the shift, 0 above (and at it: relu'(0) = 0)
    torch.testing.assert_close(reward.grad, torch.tensor([-2.5e-4, 0.0, -2.5e-4, 0.0]))
    with pytest.raises(ValueError):
        refl_loss(reward, 2.0, 0.0)


def test_refl_loss_matches_imagereward_formula():
    rewards = torch.randn(16, generator=torch.Generator().manual_seed(0)) * 2
    grad_scale = 1e-3
    # THUDM/ImageReward ImageReward/ReFL.py lines 755-756, transcribed as an independent check
    theirs = F.relu(-rewards + 2)
    theirs = theirs.mean() * grad_scale
    torch.testing.assert_close(refl_loss(rewards, 2.0, grad_scale)[0], theirs, rtol=0, atol=0)


def test_refl_step_range_and_pretrain_term(tiny_policy, train_prompts):
    algo = build(tiny_policy, train_prompts, ReFL, ReFLConfig(batch_size=4, pretrain_weight=1.0, shift=2.0))
    assert (algo.j_min, algo.j_max) == (1, STEPS - 1)
    first = algo.step()
    assert first["pretrain"] < 1e-12  # the policy starts as the reference
    js = {algo.step()["step_j"] for _ in range(12)}
    assert js <= {1.0, 2.0, 3.0} and len(js) > 1
    perturb(tiny_policy)
    assert algo.step()["pretrain"] > 0


def test_refl_step_costs_j_forwards_and_one_backward(tiny_policy, train_prompts):
    algo = build(tiny_policy, train_prompts, ReFL, ReFLConfig(batch_size=4, step_min=2, step_max=2))
    logs = algo.step()
    c, b = tiny_policy.meter.counters(), 4
    assert logs["step_j"] == 2 and c["nfe_forward"] == 3 * b and c["nfe_backward"] == b  # the steps after j never run


@pytest.mark.parametrize("fields, match", [
    ({"step_min": 4}, "not a range"), ({"step_max": -5}, "not a range"), ({"step_min": 3, "step_max": 2}, "below"),
    ({"scale": 0.0}, "scale"), ({"pretrain_weight": -1.0}, "pretrain_weight"), ({"step_min": -1}, "step_min"),
    ({"step_min": 3}, "the last step alone .* that is DRaFT-1"), ({"batch_size": 1}, "batch_size")])
def test_refl_bad_config_is_one_line(tiny_policy, train_prompts, fields, match):
    with pytest.raises(BenchError, match=match) as e:
        build(tiny_policy, train_prompts, ReFL, ReFLConfig(**fields))
    assert "\n" not in str(e.value)


# ---- ReFL's hinge in the reward's standard units ----------------------------------------------------------------
class Affine(Brightness):
    """Brightness on another scale and offset: a reward in other units."""

    name = "brightness-affine"

    def score(self, images, prompts):
        return 100.0 * super().score(images, prompts) + 7.0


def test_refl_hinge_is_in_the_base_models_standard_units(train_prompts):
    """The first batch's mean and sd set the hinge's units: a reward in other units (100 r + 7) gives the same
    standardised loss and the same update, and the hinge sits `shift` sds above the base mean, in reward units.
    Tolerance: the two losses differ by float32 rounding of (100 r + 7 - m') / s' against (r - m) / s (~1e-6)."""
    from bench.core.policy import ModelConfig
    from bench.core.tiny import tiny

    out = []
    for reward in (Brightness(), Affine()):
        torch.manual_seed(0)
        policy = tiny(ModelConfig())
        algo = ReFL("refl", ReFLConfig(batch_size=4), policy, SamplerConfig(steps=STEPS), reward, train_prompts,
                    torch.Generator().manual_seed(0))
        logs = algo.step()
        out.append((algo, logs, lora(policy)))
    (a, la, wa), (b, lb, wb) = out
    assert b.base_mean == pytest.approx(100 * a.base_mean + 7, rel=1e-6)
    assert b.base_sd == pytest.approx(100 * a.base_sd, rel=1e-4)
    assert la["hinge_at"] == pytest.approx(a.base_mean + 2.0 * a.base_sd) and lb["loss"] == pytest.approx(la["loss"],
                                                                                                         rel=1e-4)
    assert la["active"] == lb["active"] > 0
    # One AdamW step moves an element by lr·g/(|g| + ε): a relative change δ of its gradient (float32 rounding of the
    # two standardisations, δ up to ~1e-3 for an element whose gradient nearly cancels) moves it by at most lr·δ.
    lr = ReFLConfig().lr
    for x, y in zip(wa, wb):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-3 * lr)
    assert a.extra_state() == {"base_mean": a.base_mean, "base_sd": a.base_sd}  # kept in checkpoints


def test_refl_refuses_a_reward_without_spread(train_prompts, tiny_policy):
    class Constant(Brightness):
        name = "constant"

        def score(self, images, prompts):
            return images.mean(dim=(1, 2, 3)) * 0 + 1.0

    algo = ReFL("refl", ReFLConfig(batch_size=4), tiny_policy, SamplerConfig(steps=STEPS), Constant(), train_prompts,
                torch.Generator().manual_seed(0))
    with pytest.raises(BenchError, match="no spread over the first batch"):
        algo.step()
