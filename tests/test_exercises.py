"""The exercises' autograder, tested: for every check, the course's solution passes, the notebook's untouched
skeleton reports "not implemented" (and raises nothing), and deliberately wrong versions, each a named common
mistake written as a student would write it, fail with that mistake named in the message."""

from __future__ import annotations

import importlib.util
import inspect
import json
import math
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pref_lab import exercises as E
from pref_lab.exercises.checker import FAILED, NOT_IMPLEMENTED, PASSED

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
ALL = [(nb, ex) for nb, exs in E.EXERCISES.items() for ex in exs]


def _solution_module(nb: str):
    (path,) = (ROOT / "solutions").glob(f"{nb}_*.py")
    spec = importlib.util.spec_from_file_location(f"solution_{nb}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _skeleton(nb: str, name: str):
    """The student's starting point: the notebook cell that starts with ``# EXERCISE: <name>``, executed."""
    (path,) = (ROOT / "notebooks").glob(f"{nb}_*.ipynb")
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    (source,) = ["".join(c["source"]) for c in cells if "".join(c["source"]).startswith(f"# EXERCISE: my_{name}.")]
    namespace: dict = {}
    exec(source, namespace)  # noqa: S102 - the course's own notebook cell
    return namespace[f"my_{name}"]


# ----------------------------------------------------------------------------- wrong versions, as students write them
def _logp(logits, ids):
    return torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)


def _dpo_seed(pi_logps, ref_logps, yw_ids, yl_ids, beta):
    h = (pi_logps[yw_ids] - pi_logps[yl_ids]) - (ref_logps[yw_ids] - ref_logps[yl_ids])
    return -F.logsigmoid(beta * h), (beta * (pi_logps - ref_logps)).detach()


def _no_grad_dpo(pi_logps, ref_logps, yw_ids, yl_ids, beta):
    with torch.no_grad():
        return _dpo_seed(pi_logps, ref_logps, yw_ids, yl_ids, beta)


def sft_prompt_in(logits, input_ids, attention_mask, completion_mask):
    m = attention_mask[:, 1:]
    return -(_logp(logits, input_ids) * m).sum() / m.sum()


def sft_no_shift(logits, input_ids, attention_mask, completion_mask):
    logp = torch.log_softmax(logits, -1).gather(-1, input_ids[..., None]).squeeze(-1)
    return -(logp * completion_mask).sum() / completion_mask.sum()


def sft_per_row(logits, input_ids, attention_mask, completion_mask):
    m = completion_mask[:, 1:]
    return (-(_logp(logits, input_ids) * m).sum(1) / m.sum(1)).mean()


WRONG = {
    "gold_from_terms": [
        ("the sentiment is not bounded", lambda sentiment, fluency, repetition, finished, rules: sentiment
         - torch.clamp(rules.fluency_weight * torch.relu(rules.fluency_floor - fluency), max=rules.max_fluency_penalty)
         - rules.repetition_weight * repetition - rules.unfinished_penalty * (1 - finished)),
        ("the fluency penalty is not capped", lambda sentiment, fluency, repetition, finished, rules:
         rules.bound * torch.tanh(sentiment / rules.bound) - rules.fluency_weight * torch.relu(rules.fluency_floor - fluency)
         - rules.repetition_weight * repetition - rules.unfinished_penalty * (1 - finished)),
        ("a cut-off text is not charged", lambda sentiment, fluency, repetition, finished, rules:
         rules.bound * torch.tanh(sentiment / rules.bound)
         - torch.clamp(rules.fluency_weight * torch.relu(rules.fluency_floor - fluency), max=rules.max_fluency_penalty)
         - rules.repetition_weight * repetition),
    ],
    "plackett_luce": [
        ("this is the sum of pairwise Bradley–Terry losses", lambda scores, ranking: sum(
            -F.logsigmoid(scores[ranking[i]] - scores[ranking[j]]) for i in range(len(scores))
            for j in range(i + 1, len(scores)))),
        ("every step normalises over all items", lambda scores, ranking: -(scores[ranking] - scores.logsumexp(0)).sum()),
        ("exp overflows", lambda scores, ranking: -sum(torch.log(scores[ranking][k].exp() / scores[ranking][k:].exp().sum())
                                                       for k in range(len(scores)))),
    ],
    "masked_sft_loss": [("the prompt is left in the loss", sft_prompt_in), ("the targets are not shifted", sft_no_shift),
                        ("each row is averaged, then the rows", sft_per_row)],
    "bt_loss": [
        ("the log-sigmoid is not computed stably",
         lambda r_chosen, r_rejected: torch.mean(-torch.log(1 / (1 + torch.exp(r_rejected - r_chosen))))),
        ("the loss carries no gradient", lambda r_chosen, r_rejected: -F.logsigmoid(r_chosen - r_rejected).mean().item()),
        ("the sign is flipped (the loser's likelihood)",
         lambda r_chosen, r_rejected: -F.logsigmoid(r_rejected - r_chosen).mean()),
        ("the losses are summed, not averaged", lambda r_chosen, r_rejected: -F.logsigmoid(r_chosen - r_rejected).sum()),
    ],
    "last_token_reward": [
        ("this is the last position, padding or not", lambda values, attention_mask: values[:, -1]),
        ("the index is the number of real tokens minus one",
         lambda values, attention_mask: values.gather(1, (attention_mask.sum(1, keepdim=True) - 1)).squeeze(1)),
    ],
    "kl_estimators": [
        ("the KL sign is flipped", lambda logprobs, ref_logprobs: {
            "k1": ref_logprobs - logprobs, "k2": 0.5 * (logprobs - ref_logprobs) ** 2,
            "k3": torch.exp(logprobs - ref_logprobs) - 1 - (logprobs - ref_logprobs)}),
        ("the KL sign is flipped", lambda logprobs, ref_logprobs: {  # k1 alone
            "k1": ref_logprobs - logprobs, "k2": 0.5 * (ref_logprobs - logprobs) ** 2,
            "k3": torch.exp(ref_logprobs - logprobs) - 1 - (ref_logprobs - logprobs)}),
        ("k3 lacks its −1", lambda logprobs, ref_logprobs: {
            "k1": logprobs - ref_logprobs, "k2": 0.5 * (ref_logprobs - logprobs) ** 2,
            "k3": torch.exp(ref_logprobs - logprobs) - (ref_logprobs - logprobs)}),
    ],
    "optimal_policy": [
        ("the reward is multiplied by beta",
         lambda ref_logprobs, rewards, beta: torch.log_softmax(ref_logprobs + beta * rewards, 0)),
        ("log Z is missing", lambda ref_logprobs, rewards, beta: ref_logprobs + rewards / beta),
        ("it leaves log space", lambda ref_logprobs, rewards, beta: torch.log(
            ref_logprobs.exp() * torch.exp(rewards / beta) / (ref_logprobs.exp() * torch.exp(rewards / beta)).sum())),
    ],
    "sequence_logprob": [
        ("your log-probs look averaged over tokens",
         lambda token_logps, completion_mask: (token_logps * completion_mask[:, 1:]).sum(1) / completion_mask[:, 1:].sum(1)),
        ("the mask is not shifted", lambda token_logps, completion_mask: (token_logps * completion_mask[:, :-1]).sum(1)),
    ],
    "dpo_loss": [
        ("the rewards are not detached", lambda pi_logps, ref_logps, yw_ids, yl_ids, beta: (
            -F.logsigmoid(beta * ((pi_logps[yw_ids] - pi_logps[yl_ids]) - (ref_logps[yw_ids] - ref_logps[yl_ids]))),
            beta * (pi_logps - ref_logps))),
        ("this returns the log-likelihood, not the loss", lambda pi_logps, ref_logps, yw_ids, yl_ids, beta: (
            F.logsigmoid(beta * ((pi_logps[yw_ids] - pi_logps[yl_ids]) - (ref_logps[yw_ids] - ref_logps[yl_ids]))),
            (beta * (pi_logps - ref_logps)).detach())),
        ("the reference model is left out", lambda pi_logps, ref_logps, yw_ids, yl_ids, beta: (
            -F.logsigmoid(beta * (pi_logps[yw_ids] - pi_logps[yl_ids])), (beta * (pi_logps - ref_logps)).detach())),
        ("the policy is its own reference", lambda pi_logps, ref_logps, yw_ids, yl_ids, beta: _dpo_seed(
            pi_logps, pi_logps.detach(), yw_ids, yl_ids, beta)),
        ("the rewards leave out the reference", lambda pi_logps, ref_logps, yw_ids, yl_ids, beta: (
            _dpo_seed(pi_logps, ref_logps, yw_ids, yl_ids, beta)[0], (beta * pi_logps).detach())),
        ("the loss carries no gradient", lambda pi_logps, ref_logps, yw_ids, yl_ids, beta: _no_grad_dpo(
            pi_logps, ref_logps, yw_ids, yl_ids, beta)),
    ],
    "implicit_reward_accuracy": [
        ("ties are counted as wins", lambda pi_chosen, ref_chosen, pi_rejected, ref_rejected, beta: (
            beta * (pi_chosen - ref_chosen) >= beta * (pi_rejected - ref_rejected)).float().mean().item()),
        ("the reference is left out", lambda pi_chosen, ref_chosen, pi_rejected, ref_rejected, beta: (
            pi_chosen > pi_rejected).float().mean().item()),
    ],
    "online_pair": [
        ("a prompt whose samples all tie is kept",
         lambda scores: (torch.max(scores, dim=1).indices, torch.min(scores, dim=1).indices, scores[:, 0] == scores[:, 0])),
        ("the pair is the first two samples", lambda scores: (
            torch.where(scores[:, 0] > scores[:, 1], 0, 1), torch.where(scores[:, 0] > scores[:, 1], 1, 0),
            scores[:, 0] != scores[:, 1])),
    ],
    "paired_se": [
        ("this is the unpaired standard error", lambda a, b: (
            (a.mean() - b.mean()).item(), math.sqrt(a.var() / len(a) + b.var() / len(b)))),
        ("the standard deviation uses n, not n − 1", lambda a, b: (
            (a - b).mean().item(), (a - b).std(unbiased=False).item() / math.sqrt(len(a)))),
    ],
    "ipo_loss": [
        ("the margin is scaled by beta, as in DPO", lambda chosen_logratios, rejected_logratios, beta: (
            beta * (chosen_logratios - rejected_logratios) - 1 / (2 * beta)) ** 2),
        ("the target is 1/beta", lambda chosen_logratios, rejected_logratios, beta: (
            chosen_logratios - rejected_logratios - 1 / beta) ** 2),
    ],
}


def _gae_bootstraps(rewards, values, mask, gamma, lam):
    T = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    last = torch.zeros(len(rewards))
    for t in reversed(range(T)):
        v_next = values[:, t + 1] if t < T - 1 else torch.zeros(len(rewards))  # reads the padding's values
        delta = rewards[:, t] * mask[:, t] + gamma * v_next - values[:, t]
        last = delta + gamma * lam * last
        adv[:, t] = last
    return adv * mask, (adv + values) * mask


def _gae_no_lambda(rewards, values, mask, gamma, lam):
    values = values * mask
    adv, last, v_next = torch.zeros_like(rewards), torch.zeros(len(rewards)), torch.zeros(len(rewards))
    for t in reversed(range(rewards.shape[1])):
        last = rewards[:, t] * mask[:, t] + gamma * v_next - values[:, t] + gamma * last
        adv[:, t], v_next = last, values[:, t]
    return adv * mask, (adv + values) * mask


def _clip_min(logprobs, old_logprobs, advantages, mask, clip_range):
    ratio = torch.exp((logprobs - old_logprobs) * mask)
    loss = torch.min(-advantages * ratio, -advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range))
    return (loss * mask).sum() / mask.sum()


def _clip_nan(logprobs, old_logprobs, advantages, mask, clip_range):
    ratio = (logprobs - old_logprobs).exp()
    per_token = torch.maximum(-advantages * ratio, -advantages * ratio.clamp(1 - clip_range, 1 + clip_range))
    return (per_token * mask).sum() / mask.sum()


def _clip_none(logprobs, old_logprobs, advantages, mask, clip_range):
    ratio = torch.exp((logprobs - old_logprobs) * mask)
    return (-advantages * ratio * mask).sum() / mask.sum()


WRONG["gae"] = [("it bootstraps past the last token", _gae_bootstraps), ("lam is ignored", _gae_no_lambda)]
def _clip_where_after_exp(logprobs, old_logprobs, advantages, mask, clip_range):
    ratio = torch.exp(logprobs - old_logprobs)
    per_token = torch.max(-advantages * ratio, -advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range))
    return torch.where(mask == 1, per_token, torch.zeros_like(per_token)).sum() / mask.sum()  # finite, but nan grad


WRONG["clipped_policy_loss"] = [("min where PPO takes max", _clip_min), ("the ratio is never clipped", _clip_none),
                                ("exp of the padding overflows", _clip_nan),
                                ("exp of the padding overflows", _clip_where_after_exp)]


# ----------------------------------------------------------------------------- the table
@pytest.mark.parametrize("nb,ex", ALL, ids=[ex.name for _, ex in ALL])
def test_solution_passes_quickly(nb, ex):
    solution = getattr(_solution_module(nb), f"my_{ex.name}")
    start = time.perf_counter()
    result = E.run_check(ex, solution, verbose=False)
    assert result.status == PASSED, result.message
    assert time.perf_counter() - start < 5.0  # the budget for one check on 2 CPU cores


@pytest.mark.parametrize("nb,ex", ALL, ids=[ex.name for _, ex in ALL])
def test_skeleton_is_not_implemented(nb, ex, capsys):
    result = E.run_check(ex, _skeleton(nb, ex.name))
    assert result.status == NOT_IMPLEMENTED and not result
    assert "not implemented yet" in capsys.readouterr().out


WRONG_CASES = [(nb, ex, name, fn) for nb, ex in ALL for name, fn in WRONG[ex.name]]


@pytest.mark.parametrize("nb,ex,mistake,fn", WRONG_CASES, ids=[f"{ex.name}: {m}" for _, ex, m, _ in WRONG_CASES])
def test_named_mistake_fails_with_its_name(nb, ex, mistake, fn):
    assert mistake in {m.name for m in ex.mistakes}  # the table names only mistakes the check knows
    result = E.run_check(ex, fn, verbose=False)
    assert result.status == FAILED
    assert result.mistake == mistake and mistake in result.message, result.message
    # it tells the student where it went wrong, never the solution's code
    assert "inputs:" in result.message and "expected" in result.message
    _assert_no_solution_in(result.message, nb, ex.name)


def _solution_lines(nb: str, name: str) -> list[str]:
    source = inspect.getsource(getattr(_solution_module(nb), f"my_{name}"))
    body = source.split('"""')[-1].splitlines()  # the body, after the docstring
    return [line.split("#")[0].strip() for line in body if len(line.split("#")[0].strip()) > 12]


def _assert_no_solution_in(message: str, nb: str, name: str) -> None:
    squeezed = message.replace(" ", "")
    for line in _solution_lines(nb, name):
        assert line.replace(" ", "") not in squeezed, line


@pytest.mark.parametrize("nb,ex", ALL, ids=[ex.name for _, ex in ALL])
def test_every_known_mistake_is_recognised(nb, ex):
    """Each Mistake's own wrong versions are named as that mistake: no mistake is shadowed by an earlier one, and the
    cases tell them all apart (the table above tests independent, student-written versions)."""
    for m in ex.mistakes:
        variants = m.wrong if isinstance(m.wrong, (list, tuple)) else [m.wrong] if m.wrong else []
        for variant in variants:
            result = E.run_check(ex, variant, verbose=False)
            assert result.mistake == m.name, (m.name, result.message)
            _assert_no_solution_in(result.message, nb, ex.name)


@pytest.mark.parametrize("nb,ex", ALL, ids=[ex.name for _, ex in ALL])
def test_skeleton_and_solution_share_signature_and_docstring(nb, ex):
    skeleton, solution = _skeleton(nb, ex.name), getattr(_solution_module(nb), f"my_{ex.name}")
    assert inspect.signature(skeleton) == inspect.signature(solution)
    assert inspect.getdoc(skeleton) == inspect.getdoc(solution) and "(" in inspect.getdoc(skeleton)  # shapes given
    # the skeleton's parameters are the order the check's cases give their arguments in
    assert list(inspect.signature(skeleton).parameters) == list(ex.cases[0].args)


def test_every_check_has_at_least_two_wrong_versions():
    for _, ex in ALL:
        assert len(WRONG[ex.name]) >= 2, ex.name
        assert len(ex.mistakes) >= 2, ex.name


def test_every_notebook_calls_a_check_that_exists():
    assert len(NOTEBOOKS) == len(E.EXERCISES)
    for path in NOTEBOOKS:
        code = ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
        names = [ex.name for ex in E.EXERCISES[path.name[:2]]]
        for name in names:
            assert any(f"check_{name}(my_{name})" in c for c in code), (path.name, name)
            assert hasattr(E, f"check_{name}")


# ----------------------------------------------------------------------------- the checker's own behaviour
def test_other_failures_say_what_went_wrong():
    ex = E.EXERCISES["03"][0]
    assert "pass your function itself" in E.run_check(ex, 3.0, verbose=False).message
    assert "forget the `return`" in E.run_check(ex, lambda r_chosen, r_rejected: None, verbose=False).message
    raised = E.run_check(ex, lambda r_chosen, r_rejected: r_chosen @ torch.ones(3), verbose=False)
    assert raised.status == FAILED and "RuntimeError" in raised.message and raised.case == ex.cases[0].label
    unknown = E.run_check(ex, lambda r_chosen, r_rejected: (r_chosen - r_rejected).mean(), verbose=False)
    assert unknown.status == FAILED and unknown.mistake is None and "hint:" in unknown.message
    shape = E.run_check(ex, lambda r_chosen, r_rejected: -F.logsigmoid(r_chosen - r_rejected), verbose=False)
    assert shape.status == FAILED and "shape" in shape.message


def test_an_in_place_edit_cannot_change_the_expected_answer():
    ex = E.EXERCISES["11"][0]

    def sloppy(a, b):  # right answer, but it scribbles on its inputs
        a.sub_(b)
        return a.mean().item(), a.std().item() / math.sqrt(len(a))

    assert E.run_check(ex, sloppy, verbose=False)
    assert E.run_check(ex, ex.reference, verbose=False)


def test_other_parameter_names_are_called_in_the_skeletons_order():
    ex = E.EXERCISES["03"][0]
    assert E.run_check(ex, lambda chosen, rejected: -F.logsigmoid(chosen - rejected).mean(), verbose=False)
    assert E.run_check(ex, lambda *scores: -F.logsigmoid(scores[0] - scores[1]).mean(), verbose=False)


def test_a_generic_failure_says_which_rows_are_wrong():
    ex = E.EXERCISES["04"][0]

    def off_by_one_on_row_1(values, attention_mask):
        out = ex.reference(values, attention_mask).clone()
        out[1] += 1
        return out

    result = E.run_check(ex, off_by_one_on_row_1, verbose=False)
    assert result.status == FAILED and "row 1 (of 3; the others match)" in result.message
    _assert_no_solution_in(result.message, "04", ex.name)


def test_not_implemented_names_the_students_function(capsys):
    def my_bt_loss(r_chosen, r_rejected):
        raise NotImplementedError

    E.run_check(E.EXERCISES["03"][0], my_bt_loss)
    assert "Fill in `my_bt_loss`" in capsys.readouterr().out


def test_ties_in_the_pairing_rule_accept_any_tied_best():
    ex = E.EXERCISES["10"][0]

    def last_of_ties(scores):  # picks the last of several tied best columns: as right as the first
        flipped = scores.flip(1)
        k = scores.shape[1]
        return k - 1 - flipped.argmax(1), k - 1 - flipped.argmin(1), scores.max(1).values > scores.min(1).values

    assert E.run_check(ex, last_of_ties, verbose=False)
