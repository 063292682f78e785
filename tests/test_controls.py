"""The mechanism controls (shared-mask, task-film), how far masks move, and the random
streams a run records for pairing by seed."""

import itertools

import numpy as np
import pytest
import torch

from mtrl_bench.data.generation import ensure_suite_dataset
from mtrl_bench.method import build_method
from mtrl_bench.training.model import DecisionTransformer, PromptDTConfig
from mtrl_bench.training.trainer import Trainer

TASKS = ["reach-v3", "drawer-close-v3", "button-press-v3"]
CONFIG = PromptDTConfig(n_layer=2, n_embd=16, n_head=2, n_inner=32, context_len=4, prompt_len=2)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    return ensure_suite_dataset(TASKS, "near-optimal", data_dir=tmp_path_factory.mktemp("d"),
                                episodes=3, episode_length=30, workers=1, progress=False)


def _trainer(datasets, method, seed=0, **kwargs):
    return Trainer(datasets, build_method(method, **kwargs), total_steps=6, warmup_steps=1,
                   device="cpu", seed=seed, model_config=CONFIG)


def test_shared_mask_gives_every_task_one_random_mask_and_keeps_it(datasets):
    shared = _trainer(datasets, "shared-mask", update_interval=2)
    per_task = _trainer(datasets, "random-masks", update_interval=2)
    masks = shared.masks.values.clone()
    assert all(torch.equal(masks[0], row) for row in masks)
    assert set(masks.unique().tolist()) == {0.0, 1.0}
    # the same ERK densities as random-masks: the same number of entries off per task
    assert torch.equal((masks == 0).sum(1), (per_task.masks.values == 0).sum(1))
    assert not all(torch.equal(per_task.masks.values[0], row) for row in per_task.masks.values)
    records = []
    shared.train(callback=records.append)
    assert torch.equal(shared.masks.values, masks)
    mask_records = [r for r in records if r["kind"] == "mask"]
    assert mask_records and all(r["moved"] == [0.0] * 3 and r["overlap"] == 1.0
                                for r in mask_records)


def test_task_film_is_prompt_dt_at_start_and_each_task_trains_only_its_own_row(datasets):
    config = PromptDTConfig(**{**CONFIG.__dict__, "conditioning": "prompt-film",
                               "num_tasks": 3})
    torch.manual_seed(0)
    film = DecisionTransformer(config)
    assert film.task_film.shape == (3, 2, 2, 2, 16)  # tasks x layers x 2 LNs x 2 x width
    torch.manual_seed(0)
    plain = DecisionTransformer(PromptDTConfig(**{**CONFIG.__dict__, "num_tasks": 3}))
    missing = plain.load_state_dict(film.state_dict(), strict=False)
    assert missing.unexpected_keys == ["task_film"] and not missing.missing_keys
    trainer = _trainer(datasets, "task-film")
    batch = trainer.sampler.sample()
    trainer.model.eval()
    args = (batch["states"], batch["actions"], batch["returns_to_go"], batch["timesteps"],
            batch["attention_mask"])
    plain.load_state_dict({k: v for k, v in trainer.model.state_dict().items()
                           if k != "task_film"})
    plain.eval()
    torch.testing.assert_close(  # identity FiLM: exactly Prompt-DT's function
        trainer.model(*args, prompt=batch["prompt"], task_ids=batch["task_ids"]),
        plain(*args, prompt=batch["prompt"], task_ids=batch["task_ids"]))
    for task in range(3):  # a task's loss reaches only its own FiLM row
        trainer.model.zero_grad()
        trainer._task_losses(batch)[task].backward()
        grad = trainer.model.task_film.grad
        assert grad[task].abs().sum() > 0
        assert all(grad[other].abs().sum() == 0 for other in range(3) if other != task)
    with torch.no_grad():  # and a FiLM row changes its task's actions
        trainer.model.task_film[1, 0, 0, 0] += 0.5
    moved = trainer.model(*args, prompt=batch["prompt"], task_ids=batch["task_ids"])
    reference = plain(*args, prompt=batch["prompt"], task_ids=batch["task_ids"])
    assert torch.equal(moved[0], reference[0]) and not torch.equal(moved[1], reference[1])


def test_mask_movement_and_overlap_match_a_direct_count(datasets):
    trainer = _trainer(datasets, "socodt", update_interval=2)
    records = []
    trainer.train(callback=records.append)
    start = trainer.initial_active.numpy()
    now = (trainer.masks.values == 1).numpy()
    movement = trainer.mask_movement()
    np.testing.assert_allclose(movement["moved"], (start != now).mean(axis=1), rtol=1e-6)
    jaccard = [(now[i] & now[j]).sum() / (now[i] | now[j]).sum()
               for i, j in itertools.combinations(range(3), 2)]
    assert movement["overlap"] == pytest.approx(np.mean(jaccard), rel=1e-6)
    last = [r for r in records if r["kind"] == "mask"][-1]
    assert last["moved"] == movement["moved"] and last["overlap"] == movement["overlap"]
    fresh = _trainer(datasets, "random-masks")
    assert fresh.mask_movement()["moved"] == [0.0] * 3 and 0 < fresh.mask_movement()[
        "overlap"] < 1


def test_runs_record_the_random_streams_their_seed_fixed(datasets):
    """Read off what each trainer built: prompt-conditioned methods of one seed share
    weights and batches, masked ones also their initial masks; MTDT (another model) and
    another seed share nothing."""
    streams = {(m, s): _trainer(datasets, m, seed=s).streams
               for m, s in [("promptdt", 0), ("random-masks", 0), ("socodt", 0),
                            ("harmodt-f", 0), ("mtdt", 0), ("promptdt", 1), ("socodt", 1)]}
    base = streams[("promptdt", 0)]
    for method in ("random-masks", "socodt", "harmodt-f"):
        mine = streams[(method, 0)]
        assert (mine["initial_weights"], mine["batch_stream"]) == (
            base["initial_weights"], base["batch_stream"]), method
    assert base["initial_masks"] is None
    assert streams[("socodt", 0)]["initial_masks"] == streams[("random-masks", 0)][
        "initial_masks"] == streams[("harmodt-f", 0)]["initial_masks"]
    assert streams[("mtdt", 0)]["initial_weights"] != base["initial_weights"]
    assert streams[("mtdt", 0)]["batch_stream"] == base["batch_stream"]
    other = streams[("promptdt", 1)]
    assert other["initial_weights"] != base["initial_weights"]
    assert other["batch_stream"] != base["batch_stream"]
    assert streams[("socodt", 1)]["initial_masks"] != streams[("socodt", 0)]["initial_masks"]


def test_random_churn_flips_exactly_its_counts_among_eligible_entries(datasets):
    trainer = _trainer(datasets, "random-churn", update_interval=2, conflicted_per_update=7,
                       recovered_per_update=3)
    start = trainer.masks.values.clone()
    assert torch.equal(start, _trainer(datasets, "random-masks").masks.values)  # same start
    before = start.clone()
    records = []
    trainer.train(callback=records.append)
    updates = [r for r in records if r["kind"] == "mask"]
    assert len(updates) == 2  # steps 2 and 4 (not after the last step)
    assert all(r["conflicted"] == [7] * 3 and r["recovered"] == [3] * 3 for r in updates)
    after = trainer.masks.values
    assert set(after.unique().tolist()) <= {0.0, 1.0}
    # each update: 7 active entries off, 3 suppressed entries on, so 4 more off per update
    assert torch.equal((after == 0).sum(1) - (before == 0).sum(1), torch.full((3,), 2 * 4))
    assert all(0 < m < 1 for m in trainer.mask_movement()["moved"])
    again = _trainer(datasets, "random-churn", update_interval=2, conflicted_per_update=7,
                     recovered_per_update=3)
    again.train()
    assert torch.equal(again.masks.values, after)  # the method's own seeded stream


def test_random_churn_with_no_counts_is_random_masks(datasets):
    churn = _trainer(datasets, "random-churn", update_interval=2)
    churn.train()  # each trainer seeds torch's global stream (dropout) when built
    fixed = _trainer(datasets, "random-masks", update_interval=2)
    fixed.train()
    assert torch.equal(churn.masks.values, fixed.masks.values)
    for a, b in zip(churn.model.parameters(), fixed.model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("method, repeats", [("promptdt", True), ("random-masks", True),
                                             ("socodt", False)])
def test_a_longer_budget_repeats_the_shorter_runs_first_steps(datasets, method, repeats):
    """E1's check (results/README): nothing in promptdt or random-masks depends on the
    budget (warm-up is in steps, the learning rate constant after it), so 4x the budget
    repeats the shorter run's first steps bit for bit; socodt's beta_t is stretched over
    the longer horizon, so its masks, and then its weights, part ways."""
    def losses(total_steps):
        trainer = Trainer(datasets, build_method(method, update_interval=2),
                          total_steps=total_steps, warmup_steps=1, device="cpu", seed=0,
                          model_config=CONFIG, log_every=1)
        seen = []
        trainer.train(6, lambda entry: seen.append(entry.get("loss")))
        return trainer, [x for x in seen if x is not None]

    short, short_losses = losses(6)
    long, long_losses = losses(24)
    same = all(torch.equal(a, b) for a, b in zip(short.model.state_dict().values(),
                                                 long.model.state_dict().values()))
    assert same == repeats
    assert len(short_losses) == 6
    assert (short_losses == long_losses) == repeats
