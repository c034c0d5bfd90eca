"""Notebook 09 (09_implicit_reward.ipynb), the implement-it exercise solved: `my_implicit_reward_accuracy`.

Run this file to see the solution pass its check: `python solutions/09_implicit_reward.py`. The worked answers to the
notebook's open exercises are in `09_implicit_reward.md`, next to this file.
"""



def my_implicit_reward_accuracy(pi_chosen, ref_chosen, pi_rejected, ref_rejected, beta):
    """RewardBench accuracy (a float) of DPO's implicit reward r̂(x, y) = β(log π(y|x) − log π_ref(y|x)).

    pi_chosen, ref_chosen: (P,) log-probs of each pair's chosen answer under the policy and the reference;
    pi_rejected, ref_rejected: (P,) the same for the rejected answer. A pair is right iff r̂(chosen) > r̂(rejected),
    strictly: a tie is wrong.
    """
    r_chosen = beta * (pi_chosen - ref_chosen)
    r_rejected = beta * (pi_rejected - ref_rejected)
    return (r_chosen > r_rejected).float().mean().item()


if __name__ == "__main__":
    from pref_lab.exercises import check_implicit_reward_accuracy

    check_implicit_reward_accuracy(my_implicit_reward_accuracy)
