import json

from conftest import run_cli

from cifarlab.models import MODELS


def test_models_json_lists_names_and_exact_counts():
    result = run_cli("models", "--dataset", "cifar100", "--json")
    assert result.returncode == 0
    rows = {r["name"]: r["params"] for r in json.loads(result.stdout)}
    assert list(rows) == list(MODELS)
    assert {k: rows[k] for k in ("basic-cnn", "deeper-cnn", "resnet18")} == {
        "basic-cnn": 556_708, "deeper-cnn": 7_366_564, "resnet18": 11_220_132}
    assert rows["wrn-28-10"] == 36_536_884 and rows["vit-tiny"] == 4_045_540


def test_models_text_lists_the_zoo_and_na_where_the_input_is_too_small():
    result = run_cli("models", "--dataset", "mnist")
    assert result.returncode == 0
    lines = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()[1:]}
    assert lines["vgg16-bn"] == "n/a" and lines["preact-resnet18"] == "11,171,018"
    assert set(lines) == set(MODELS)


def test_recipes_lists_the_article_and_tuned_recipes():
    result = run_cli("recipes", "--json")
    recipes = json.loads(result.stdout)
    assert {"article-basic-cnn", "article-deeper-cnn", "article-resnet18", "tuned-basic-cnn"} <= set(recipes)
    assert recipes["article-basic-cnn"]["epochs"] == 10 and recipes["article-basic-cnn"]["augment"] == []
    assert recipes["article-deeper-cnn"]["epochs"] == 15 and recipes["article-deeper-cnn"]["step_size"] == 5
    assert recipes["article-resnet18"]["optimizer"] == "sgd"
    assert recipes["tuned-basic-cnn"]["epochs"] == 10


def test_help_explains_train_flags():
    result = run_cli("train", "--help")
    assert result.returncode == 0
    for flag in ("--recipe", "--val-size", "--precision", "--no-download", "--augment"):
        assert flag in result.stdout


def test_no_command_prints_help_and_exits_2():
    result = run_cli()
    assert result.returncode == 2 and "train" in result.stdout
