"""Notebook 12 (12_beyond_dpo.ipynb), the implement-it exercise solved: `my_ipo_loss`.

Run this file to see the solution pass its check: `python solutions/12_beyond_dpo.py`. The worked answers to the
notebook's open exercises are in `12_beyond_dpo.md`, next to this file.
"""



def my_ipo_loss(chosen_logratios, rejected_logratios, beta):
    """IPO's loss per pair (Azar et al. 2023, Eq. 17; β is their τ), shape (P,):

        h = chosen_logratios − rejected_logratios,    loss = (h − 1/(2β))²

    chosen_logratios, rejected_logratios: (P,) log π(y|x) − log π_ref(y|x) of each pair's two answers.
    """
    return (chosen_logratios - rejected_logratios - 1 / (2 * beta)) ** 2


if __name__ == "__main__":
    from pref_lab.exercises import check_ipo_loss

    check_ipo_loss(my_ipo_loss)
