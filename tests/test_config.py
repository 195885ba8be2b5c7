import itertools
import math

import pytest

from advcl_plugin.app.recipe import load_recipe
from advcl_plugin.app.recipe_files import available_recipes
from advcl_plugin.app.schedule import lr_at, scaled_lr_factor


def test_shipped_recipes_load_with_paper_settings():
    names = available_recipes()
    assert {"demo", "cifar10", "cifar100", "transfer_cifar10_stl10"} <= set(names)
    for name in names:
        load_recipe(name)
    paper = load_recipe("cifar10")
    assert paper.method == "advcl" and paper.model.width == 64
    assert (paper.optim.batch_size, paper.optim.epochs, paper.optim.lr) == (512, 1000, 0.5)
    assert paper.optim.weight_decay == 1e-4 and paper.optim.warmup_epochs == 10
    assert paper.objective_config().ks == (2, 10, 50, 100, 500)
    assert paper.evaluate.eps == pytest.approx(8 / 255) and paper.evaluate.pgd_steps == 20
    assert paper.finetune.slf.milestones == [15, 20] and paper.finetune.slf.weight_decay == 2e-4
    transfer = load_recipe("transfer_cifar10_stl10")
    assert transfer.finetune_data().dataset == "stl10" and transfer.finetune_data().image_size == 32


def test_overrides_and_fractions():
    recipe = load_recipe("demo", ["optim.epochs=7", "evaluate.eps=4/255", "method_kwargs.steps=3", "data.limit=null"])
    assert recipe.optim.epochs == 7 and recipe.evaluate.eps == pytest.approx(4 / 255)
    assert recipe.method_kwargs == {"steps": 3} and recipe.data.limit is None
    assert recipe.objective_config().steps == 3
    assert load_recipe({"name": "x", "evaluate": {"eps_sweep": ["2/255", 0.5]}}).evaluate.eps_sweep[0] == pytest.approx(
        2 / 255
    )


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["optim.epoch=3"], r"unknown key\(s\) \['epoch'\] in recipe.optim"),
        (["optim.epochs=many"], "recipe.optim.epochs must be an integer"),
        (["method=byol"], "unknown method 'byol'"),
        (["finetune.modes=[slf,xyz]"], "finetune.modes"),
        (["optim.batch_size=1"], "batch_size must be >= 2"),
        (["data"], "key.sub=value"),
        (["method_kwargs.epsilon=0.1"], r"unknown key\(s\) \['epsilon'\] in method_kwargs"),
        (["method_kwargs.eps=abc"], "eps must be a number, got 'abc'"),
        (["method_kwargs.eps=-0.1"], r"eps must lie in \[0, 1\]"),
        (["method_kwargs.radius=0"], "radius must be > 0"),
        (["optim.lr=-0.5"], r"optim.lr must be > 0"),
        (["method=simclr", "method_kwargs.attack=advcl"], "fixes"),
    ],
)
def test_bad_recipes_get_one_clear_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_recipe("demo", overrides)


def test_any_float_form_is_accepted():
    recipe = load_recipe("demo", ["optim.weight_decay=5e-4", "optim.lr=1.0e-1", "method_kwargs.eps=4/255"])
    assert recipe.optim.weight_decay == 5e-4 and recipe.optim.lr == 0.1
    assert recipe.objective_config().eps == pytest.approx(4 / 255)


def test_missing_recipe():
    with pytest.raises(FileNotFoundError, match="shipped recipes"):
        load_recipe("no-such-recipe")


def test_schedule_follows_the_authors_code():
    kwargs = {"lr": 0.5, "epochs": 1000, "warmup_epochs": 10, "warmup_from": 0.01, "min_lr_ratio": 0.001}
    eta_min = 0.5 * 0.001

    def cosine(epoch):  # the authors' adjust_learning_rate
        return eta_min + (0.5 - eta_min) * (1 + math.cos(math.pi * epoch / 1000)) / 2

    assert lr_at(0, **kwargs) == pytest.approx(0.01)
    assert lr_at(5, **kwargs) == pytest.approx(0.01 + 0.5 * (cosine(10) - 0.01))
    assert lr_at(10, **kwargs) == pytest.approx(cosine(10))
    assert lr_at(600, **kwargs) == pytest.approx(cosine(600))
    assert lr_at(1000, **kwargs) == pytest.approx(eta_min)
    values = [lr_at(e, **kwargs) for e in range(10, 1001, 10)]
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert scaled_lr_factor(128, 512) == 0.25
