"""Exercises: write the function, then check it with ``check_<name>(your_function)``.

Each notebook ends with an "implement it" exercise: a skeleton ``my_<name>`` with its docstring (shapes, equation)
and a check from here. A check runs your function next to the course's tested helper on random inputs and edge cases,
names the common mistake when it recognises one, and otherwise shows the input, the expected and the observed
values, and a hint. It never shows the solution: those are in ``solutions/`` (``NN_name.py``, and worked answers to
the open exercises in ``NN_name.md``).

How checks work: :mod:`pref_lab.exercises.checker`. The exercises, by notebook:

00 gold_from_terms · 01 plackett_luce · 02 masked_sft_loss · 03 bt_loss · 04 last_token_reward · 05 kl_estimators ·
06 gae, clipped_policy_loss · 07 optimal_policy · 08 sequence_logprob, dpo_loss · 09 implicit_reward_accuracy ·
10 online_pair · 11 paired_se · 12 ipo_loss
"""

from . import dpo, judge, online, ppo, ranking, reward, rlhf, sft, stats
from .checker import CheckResult, run_check
from .dpo import check_dpo_loss, check_implicit_reward_accuracy, check_ipo_loss, check_sequence_logprob
from .judge import check_gold_from_terms
from .online import check_online_pair
from .ppo import check_clipped_policy_loss, check_gae
from .ranking import check_bt_loss, check_plackett_luce
from .reward import check_last_token_reward
from .rlhf import check_kl_estimators, check_optimal_policy
from .sft import check_masked_sft_loss
from .stats import check_paired_se

# Every exercise, by the notebook that sets it (tests/test_exercises.py checks each against its solution).
EXERCISES = {
    "00": [judge.EXERCISE], "01": [ranking.PL_EXERCISE], "02": [sft.EXERCISE], "03": [ranking.BT_EXERCISE],
    "04": [reward.EXERCISE], "05": [rlhf.KL_EXERCISE], "06": [ppo.GAE_EXERCISE, ppo.CLIP_EXERCISE],
    "07": [rlhf.OPT_EXERCISE], "08": [dpo.SEQ_EXERCISE, dpo.DPO_EXERCISE], "09": [dpo.ACC_EXERCISE],
    "10": [online.EXERCISE], "11": [stats.EXERCISE], "12": [dpo.IPO_EXERCISE],
}

__all__ = ["EXERCISES", "CheckResult", "run_check", "check_bt_loss", "check_clipped_policy_loss", "check_dpo_loss",
           "check_gae", "check_gold_from_terms", "check_implicit_reward_accuracy", "check_ipo_loss",
           "check_kl_estimators", "check_last_token_reward", "check_masked_sft_loss", "check_online_pair",
           "check_optimal_policy", "check_paired_se", "check_plackett_luce", "check_sequence_logprob"]
