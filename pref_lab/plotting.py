"""Plot style for the course: big, readable figures that survive a lecture-hall projector."""

from __future__ import annotations

import matplotlib.pyplot as plt

COURSE_STYLE = {
    "figure.figsize": (8, 4.5),
    "figure.dpi": 90,
    "font.size": 12,
    "axes.titlesize": 13,
    "axes.labelsize": 12,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
}

# One colour per method, used by every notebook so a method looks the same everywhere.
METHOD_COLORS = {
    "base": "#7f7f7f",
    "sft": "#1f77b4",
    "best-of-n": "#9467bd",
    "ppo": "#d62728",
    "dpo": "#2ca02c",
    "online dpo": "#ff7f0e",
    "gold": "#000000",
    "rm": "#8c564b",
}


def use_course_style() -> None:
    """Apply the course's matplotlib style (call once at the top of a notebook)."""
    plt.rcParams.update(COURSE_STYLE)


def draw_course_map(ax=None):
    """The course's pipeline as boxes and arrows: pretrain -> SFT -> RM -> PPO, and SFT -> DPO."""
    if ax is None:
        _, ax = plt.subplots(figsize=(12, 3.4))
    boxes = {  # name: (x, y, label, notebooks)
        "pre": (0.06, 0.5, "pretrained\nbase model", "00"),
        "sft": (0.25, 0.5, "SFT\n(instruction tuning)", "01–02"),
        "pref": (0.47, 0.85, "preference pairs\n(Bradley–Terry)", "03"),
        "rm": (0.68, 0.85, "reward model", "04"),
        "ppo": (0.90, 0.85, "RLHF with PPO", "05–06"),
        "dpo": (0.68, 0.15, "DPO, implicit reward,\nonline DPO, beyond", "07–12"),
    }
    artists = {}
    for name, (x, y, label, nbs) in boxes.items():
        artists[name] = ax.text(x, y, f"{label}\n[nb {nbs}]", ha="center", va="center", fontsize=11,
                                bbox=dict(boxstyle="round,pad=0.5", fc="#eef3fb", ec="#1f77b4"))
    arrows = [("pre", "sft"), ("sft", "pref"), ("pref", "rm"), ("rm", "ppo"), ("pref", "dpo"), ("sft", "dpo")]
    for a, b in arrows:  # arrows run between the boxes' edges (coordinates relative to each text box)
        ax.annotate("", xy=(0.5, 0.5), xycoords=artists[b], xytext=(0.5, 0.5), textcoords=artists[a],
                    arrowprops=dict(arrowstyle="-|>", lw=1.8, color="#555", shrinkA=0, shrinkB=0,
                                    patchA=artists[a].get_bbox_patch(), patchB=artists[b].get_bbox_patch()))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    ax.set_title("The course: from a pretrained model to an aligned one")
    return ax


def plot_top_words(judge, k: int = 15, ax=None):
    """Horizontal bar chart of a bag-of-words judge's k most positive and k most negative features."""
    pos, neg = judge.top_features(k)
    items = neg[::-1] + pos[::-1]
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 0.28 * len(items) + 1))
    ax.barh([w for w, _ in items], [v for _, v in items],
            color=["#d62728" if v < 0 else "#2ca02c" for _, v in items])
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("weight (added to the gold reward when the word is present)")
    return ax
