"""posttrain.losses: pure tensor functions for every training objective.

No nn.Module, no config objects: each loss, advantage estimator and KL
estimator is a small function whose docstring gives shapes, the paper
equation and how it reduces. Recipes pick variants by name from the dicts:

- ``REDUCTIONS``         reduce.py      token_mean, sequence_mean, sequence_sum, sum_over_constant
- ``PREFERENCE_LOSSES``  preference.py  sigmoid, cdpo, robust, ipo, ipo_sum, hinge, rpo, simpo, orpo
- ``RANKING_LOSSES``     reward.py      pairwise (InstructGPT K-way), plackett_luce
- ``GROUP_ADVANTAGES``   advantages.py  grpo, dr_grpo, rloo
- ``KL_ESTIMATORS``      kl.py          k1, k2, k3
- ``KL_CONTROLLERS``     kl.py          fixed, adaptive

See docs/losses.md for every equation and when to use it.
"""
from .advantages import (
                         GROUP_ADVANTAGES,
                         dr_grpo_advantages,
                         gae,
                         grpo_advantages,
                         masked_moments,
                         rloo_advantages,
                         whiten,
)
from .kl import (
                         KL_CONTROLLERS,
                         KL_ESTIMATORS,
                         AdaptiveKLController,
                         FixedKLController,
                         kl_k1,
                         kl_k2,
                         kl_k3,
                         kl_penalized_rewards,
)
from .kto import KTOLossOutput, kto_loss, kto_reference_point
from .policy import (
                         approx_kl,
                         clip_fraction,
                         clipped_value_losses,
                         entropy_from_logits,
                         explained_variance,
                         ppo_clip_losses,
                         ppo_policy_loss,
                         value_loss,
)
from .preference import (
                         LOSS_INPUTS,
                         PREFERENCE_LOSSES,
                         PairLogps,
                         PreferenceLossOutput,
                         cdpo_loss,
                         chosen_nll,
                         dpo_loss,
                         hinge_loss,
                         ipo_loss,
                         ipo_sum_loss,
                         log1mexp,
                         mixed_preference_loss,
                         needs_reference,
                         orpo_loss,
                         preference_loss,
                         robust_dpo_loss,
                         rpo_loss,
                         simpo_loss,
)
from .reduce import REDUCTIONS, aggregate, aggregate_parts, masked_mean, masked_sum, safe_divide
from .reward import (
                         RANKING_LOSSES,
                         bradley_terry_loss,
                         pairwise_accuracy,
                         pairwise_ranking_loss,
                         plackett_luce_loss,
                         ranking_accuracy_parts,
                         ranking_pairs,
                         reward_margin,
)
from .sft import IGNORE_INDEX, sft_loss, sft_loss_from_logps, sft_loss_parts, sft_loss_parts_from_logps, token_nll
