import json

from conftest import run_cli


def test_models_json_lists_names_and_exact_counts():
    result = run_cli("models", "--dataset", "cifar100", "--json")
    assert result.returncode == 0
    rows = {r["name"]: r["params"] for r in json.loads(result.stdout)}
    assert rows == {"basic-cnn": 556_708, "deeper-cnn": 7_366_564, "resnet18": 11_220_132}


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
