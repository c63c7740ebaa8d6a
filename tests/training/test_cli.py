"""The `twotower` command as a person uses it: train, evaluate, index, recommend, data stats, errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from twotower import __version__
from twotower.cli import main
from twotower.settings.train import setting_names

TINY = [
    "--quiet", "--data.synthetic_users", "300", "--data.synthetic_items", "200",
    "--data.synthetic_interactions_per_user", "20", "--model.embedding_dim", "16",
    "--batches.batch_size", "256", "--batches.num_shared_negatives", "128",
    "--train.epochs", "5", "--train.num_threads", "1",
]


def model_row(out: str, split: str) -> str:
    """The figures of `evaluate`'s model row for `split` ("model, test" or, with a graph filter
    blended in, "model + graph filter, test")."""
    for line in out.splitlines():
        for label in (f"model, {split}", f"model + graph filter, {split}"):
            if line.startswith(label):
                return line[len(label):]
    raise AssertionError(f"no model row for {split} in:\n{out}")

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    import os

    saved = os.environ.pop("TRITON_INTERPRET", None)
    try:
        assert main(["train", "--out", str(out), *TINY]) == 0
    finally:
        if saved is not None:
            os.environ["TRITON_INTERPRET"] = saved
    return out


def test_train_help_lists_every_setting_with_its_default(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for name in setting_names():
        assert f"--{name}" in text, name
    assert text.count("(default:") >= len(setting_names())


@pytest.mark.slow  # the module's trained-model fixture
def test_train_prints_metrics_next_to_popularity(trained):
    results = json.loads((trained / "results.json").read_text())
    assert results["valid"]["metrics"]["ndcg@10"] > results["popularity"]["valid"]["metrics"]["ndcg@10"]
    assert (trained / "model" / "seen.safetensors").is_file()


@pytest.mark.slow  # the module's trained-model fixture
def test_evaluate_reproduces_the_training_metrics(trained, capsys):
    assert main(["evaluate", str(trained / "model"), "--quiet"]) == 0
    out = capsys.readouterr().out
    results = json.loads((trained / "results.json").read_text())
    test_line = model_row(out, "test")
    assert f"{results['test']['metrics']['recall@10']:.4f}" in test_line


@pytest.mark.slow  # the module's trained-model fixture
def test_recommend_gives_external_ids_and_filters_seen_items(trained, capsys):
    from twotower.model.model_dir import load_model_dir

    model = load_model_dir(trained / "model")
    user = model.user_vocab.ids[5]
    assert main(["recommend", str(trained / "model"), "--user", str(user), "-k", "7", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["user"] == str(user) and len(answer["items"]) == 7
    codes = model.item_vocab.encode(np.array(answer["items"]))
    assert np.all(codes >= 0)
    assert not set(codes.tolist()) & set(model.seen.row(5).tolist())
    assert answer["scores"] == sorted(answer["scores"], reverse=True)


@pytest.mark.slow  # the module's trained-model fixture
def test_index_build_and_query_agree_with_exact(trained, capsys):
    model_dir = str(trained / "model")
    assert main(["index", "build", model_dir]) == 0
    capsys.readouterr()
    assert main(["index", "query", model_dir, "--user", "1", "2", "-k", "5", "--json"]) == 0
    ann = json.loads(capsys.readouterr().out)
    assert main(["recommend", model_dir, "--user", "1", "2", "-k", "5", "--json"]) == 0
    exact = json.loads(capsys.readouterr().out)
    overlap = [len(set(a["items"]) & set(e["items"])) for a, e in zip(ann, exact, strict=True)]
    assert sum(overlap) >= 8  # HNSW on 200 items is near exact
    assert main(["evaluate", model_dir, "--ann", "--quiet"]) == 0
    assert "recall of ANN top-50 vs exact top-50" in capsys.readouterr().out


def test_config_file_and_flags_compose(tmp_path, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    config = tmp_path / "run.toml"
    config.write_text('[model]\nembedding_dim = 8\n[train]\nepochs = 1\nks = [5, 10]\n[loss]\nkind = "infonce"\n')
    out = tmp_path / "out"
    assert main(["train", "--config", str(config), "--out", str(out), *TINY[:-6], "--train.num_threads", "1"]) == 0
    saved = json.loads((out / "model" / "config.json").read_text())["train_config"]
    assert saved["model"]["embedding_dim"] == 16  # the flag in TINY overrides the file's 8
    assert saved["train"]["ks"] == [5, 10] and saved["loss"]["kind"] == "infonce"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--data.path", "no/such/file.csv"], "no/such/file.csv does not exist"),  # named absolute
        (["train", "--loss.kind", "softmaxx"], "loss kind must be one of"),
        (["train", "--optim.lr", "-1"], "optim.lr must be a finite number > 0"),
        (["train", "--model.scoring", "manhattan"], "scoring must be one of"),
        (["train", "--train.epochs", "abc"], "train.epochs must be an integer; got 'abc'"),
        (["train", "--batches.batch_size", "12.5"], "batches.batch_size must be an integer; got 12.5"),
        (["train", "--optim.lr", "fast"], "optim.lr must be a number; got 'fast'"),
        (
            ["train", "--eval.unknown_targets", "maybe"],
            "eval.unknown_targets must be one of 'drop', 'keep'; got 'maybe'"
        ),
        (["train", "--eval.exclude", "valid"], "eval.exclude must be one of 'train+valid', 'train'; got 'valid'"),
        (["train", "--train.checkpoint_every", "0"], "train.checkpoint_every must be >= 1"),
        (["evaluate", "no/such/dir"], "model directory no/such/dir does not exist"),
        (["data", "stats", "missing.tsv"], "missing.tsv does not exist"),
    ],
)
def test_errors_are_one_clear_line_and_exit_2(argv, message, capsys, tmp_path):
    assert main([*argv, *(["--out", str(tmp_path)] if argv[0] == "train" else [])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("twotower: error:") and message in err


def test_wrong_column_name_lists_the_columns(tmp_path, capsys):
    data = tmp_path / "events.csv"
    data.write_text("uid,iid,ts\n1,2,3\n2,3,4\n")
    code = main(["train", "--out", str(tmp_path / "o"), "--data.path", str(data),
                 "--data.options.columns", "user=user_id", "item=iid"])
    assert code == 2
    err = capsys.readouterr().err
    assert "user_id" in err and "uid" in err and "iid" in err


@pytest.mark.slow  # the module's trained-model fixture
def test_an_index_built_for_other_scores_is_refused(trained, tmp_path, capsys):
    """An index saved next to the model with another scoring (here neg_l2 over the model's own item
    vectors, as if built before the model was retrained) is refused with a message, not searched."""
    import shutil

    from twotower.model.model_dir import load_model_dir
    from twotower.retrieval.hnsw import HNSWIndex

    model_dir = tmp_path / "model"
    shutil.copytree(trained / "model", model_dir)
    loaded = load_model_dir(model_dir)
    items = loaded.model.item_search_vectors()
    form = np.concatenate([2 * items, -(items * items).sum(axis=1, keepdims=True)], axis=1).astype(np.float32)
    HNSWIndex.build(form, scoring="neg_l2").save(model_dir / "index", num_items=loaded.model.num_items,
                                                 item_ids=loaded.item_vocab.ids)
    assert main(["recommend", str(model_dir), "--user", "1", "--ann"]) == 2
    assert "built for 'neg_l2' scores" in capsys.readouterr().err


@pytest.mark.slow  # the module's trained-model fixture
def test_unknown_user_and_incompatible_model_dir(trained, tmp_path, capsys):
    assert main(["recommend", str(trained / "model"), "--user", "no-such-user"]) == 2
    assert "user" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    assert main(["recommend", str(broken), "--user", "1"]) == 2
    assert "not a complete twotower model directory" in capsys.readouterr().err


def test_data_stats(tmp_path, capsys):
    data = tmp_path / "u.data"
    rows = [(u, i, 5, 1000 + u * 10 + i) for u in range(1, 6) for i in range(1, 1 + u)]
    data.write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    assert main(["data", "stats", str(data), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert json.dumps(stats).count("15") >= 1  # 15 interactions
    text = json.dumps(stats)
    assert "gini" in text


def test_data_stats_reads_what_train_reads(tmp_path, capsys):
    """The reading options of train exist for data stats too: delimiter, header, positions, threshold."""
    semi = tmp_path / "ratings.txt"
    rows = [(u, i, 1 + (u + i) % 5) for u in range(1, 7) for i in range(1, 1 + u)]
    semi.write_text("".join(f"{u};{i};{r}\n" for u, i, r in rows))  # 21 rows, no header
    assert main(["data", "stats", str(semi), "--delimiter", ";", "--no-header", "--columns", "user=0", "item=1",
                 "rating=2", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["interactions"], stats["users"]) == (21, 6)
    assert main(["data", "stats", str(semi), "--delimiter", ";", "--columns", "user=0", "item=1", "rating=2",
                 "--threshold", "4", "--json"]) == 0  # the threshold implies rating feedback
    assert json.loads(capsys.readouterr().out)["interactions"] == sum(r >= 4 for _, _, r in rows)
    assert main(["data", "stats", str(semi), "--delimiter", ";", "--feedback", "all", "--threshold", "4"]) == 2
    assert "--threshold applies to --feedback rating" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["truncate weights", "corrupt seen", "no train_config", "seen changed",
                                    "vocabulary changed"])
@pytest.mark.slow  # the module's trained-model fixture
def test_a_damaged_model_directory_is_one_clear_line(trained, tmp_path, capsys, damage):
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(trained / "model", model_dir)
    if damage == "truncate weights":
        data = (model_dir / "model.safetensors").read_bytes()
        (model_dir / "model.safetensors").write_bytes(data[: len(data) // 3])
        argv, wanted = ["recommend", str(model_dir), "--user", "1"], "model.safetensors is not a readable safetensors"
    elif damage == "corrupt seen":  # in a directory from before manifests: the reader finds it
        (model_dir / "manifest.json").unlink()
        (model_dir / "seen.safetensors").write_bytes(b"\x01\x00")
        argv, wanted = ["recommend", str(model_dir), "--user", "1"], "seen.safetensors is not a readable safetensors"
    elif damage == "no train_config":
        (model_dir / "manifest.json").unlink()
        config = json.loads((model_dir / "config.json").read_text())
        del config["train_config"]
        (model_dir / "config.json").write_text(json.dumps(config))
        argv, wanted = ["evaluate", str(model_dir)], "lacks the entry 'train_config'"
    elif damage == "seen changed":  # a well-formed file with other bytes: only the checksum can tell
        seen = model_dir / "seen.safetensors"
        data = bytearray(seen.read_bytes())
        data[-1] ^= 0x01
        seen.write_bytes(bytes(data))
        argv = ["recommend", str(model_dir), "--user", "1"]
        wanted = "seen.safetensors does not match its SHA-256 in manifest.json"
    else:
        shutil.copy(model_dir / "user_vocab.parquet", model_dir / "item_vocab.parquet")
        argv, wanted = ["evaluate", str(model_dir)], "item_vocab.parquet does not match its SHA-256 in manifest.json"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert wanted in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_corrupt_compressed_file_is_one_clear_line(tmp_path, capsys):
    fake = tmp_path / "ratings.csv.gz"
    fake.write_bytes(b"user,item\n1,2\n")  # not gzip at all
    assert main(["data", "stats", str(fake)]) == 2
    assert "twotower: error:" in capsys.readouterr().err


@pytest.mark.slow  # the module's trained-model fixture
def test_more_inputs_a_person_gets_wrong_are_one_clear_line(trained, tmp_path, capsys):
    config_dir = tmp_path / "conf"
    config_dir.mkdir()
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe[data]\n")
    cases = [
        (["train", "--config", str(config_dir)], "is a directory"),
        (["train", "--config", str(binary)], "not UTF-8 text"),
        (["recommend", str(trained / "model"), "--user", "19000000000000000003"], "unknown user id"),
    ]
    empty = tmp_path / "items.csv"
    empty.write_text("")
    cases.append((["train", "--quiet", "--data.item_features", str(empty), "--train.epochs", "1",
                   "--out", str(tmp_path / "run")], f"feature file {empty}"))
    for argv, wanted in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert wanted in err and "Traceback" not in err, (argv, err)


@pytest.mark.slow  # a training through the CLI: CI only
def test_recommend_reports_neg_l2_scores_as_minus_squared_distances(tmp_path, capsys):
    import torch

    from twotower.model.model_dir import load_model_dir

    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *TINY, "--train.epochs", "1", "--model.scoring", "neg_l2"]) == 0
    capsys.readouterr()
    assert main(["recommend", str(out / "model"), "--user", "3", "-k", "4", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    trained = load_model_dir(out / "model")
    codes = trained.item_vocab.encode(shown["items"])
    with torch.no_grad():
        q = trained.model.encode_users(torch.from_numpy(trained.user_vocab.encode([3]).astype(np.int64)))
        v = trained.model.encode_items(torch.from_numpy(codes.astype(np.int64)))
    want = (-torch.cdist(q.double(), v.double()).square()).numpy().ravel()
    np.testing.assert_allclose(shown["scores"], want, rtol=1e-4, atol=1e-5)
    assert all(s <= 0 for s in shown["scores"])


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--loss.kind", "mixed", "--batches.num_shared_negatives", "0"], "batches.num_shared_negatives > 0"),
        (["--loss.kind", "hinge", "--batches.num_shared_negatives", "0"], "batches.num_negatives > 0"),
        (["--batches.batch_size", "100000", "--batches.drop_last"], "leaves no batch"),
        (["--model.user.id_dim", "0"], "user tower: tower has no inputs"),
        (["--train.keep_checkpoints", "0"], "keep_checkpoints must be >= 1"),
        (["--batches.mask_known_positives", "--loss.symmetric"], "loss.symmetric adds the item-to-user direction"),
        (["--batches.mask_known_positives", "--loss.kind", "directau", "--batches.num_shared_negatives", "0",
          "--batches.log_q", "none"], "loss.kind 'directau' has none"),
    ],
)
def test_combinations_that_cannot_train_are_refused_in_settings_terms(tmp_path, capsys, flags, message):
    assert main(["train", "--out", str(tmp_path / "run"), *TINY, *flags]) == 2
    assert message in capsys.readouterr().err


def test_a_fixed_temperature_below_the_learned_clamp_is_used_as_given(tmp_path):
    from twotower.model.model_dir import load_model_dir

    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *TINY, "--train.epochs", "1", "--loss.temperature", "0.005"]) == 0
    assert float(load_model_dir(out / "model").model.temperature) == pytest.approx(0.005, rel=1e-5)


@pytest.mark.slow  # trainings through the CLI: CI only
def test_quiet_prints_the_opening_and_one_line_per_epoch_and_silent_nothing(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "quiet"), *TINY[:-4], "--train.epochs", "2",
                 "--train.num_threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"twotower {__version__}: training -> {tmp_path / 'quiet'}"
    assert lines[1] == "  inputs: built-in synthetic dataset (300 users, 200 items)"
    assert re.fullmatch(r"  data: 300 users, 200 items; rows: train [\d,]+, valid \d+, test \d+", lines[2])
    assert lines[3] == "  left out: nothing"
    assert re.fullmatch(r"epoch 1/2: loss \d+\.\d{4}, valid ndcg@10 \d\.\d{4}, \d+\.\d s, ~\d+ s left", lines[4])
    assert re.fullmatch(r"epoch 2/2: loss \d+\.\d{4}, valid ndcg@10 \d\.\d{4}, \d+\.\d s", lines[5])
    assert re.fullmatch(r"run directory: \d+\.\d MB on disk .*", lines[-1])
    assert main(["train", "--silent", "--out", str(tmp_path / "silent"), *TINY[:-4], "--train.epochs", "2",
                 "--train.num_threads", "1"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    assert (tmp_path / "silent" / "results.json").is_file()


def _given_split(tmp_path):
    """Train / valid / test files of the synthetic data; test also holds a row of an item no train
    row has (item 99999) and two rows of a user without train rows (user 88888)."""
    from twotower.data import generate

    table = generate(200, 120, interactions_per_user=12, seed=1)
    users, items = table.column("user").to_numpy(), table.column("item").to_numpy()
    part = np.arange(len(users)) % 10
    paths = {}
    unknown = f"{users[0]},99999\n88888,{items[0]}\n88888,{items[1]}\n"
    for name, rows, extra in (("train", part < 8, ""), ("valid", part == 8, ""), ("test", part == 9, unknown)):
        paths[name] = tmp_path / f"{name}.csv"
        paths[name].write_text(
            "user,item\n" + "".join(f"{u},{i}\n" for u, i in zip(users[rows], items[rows], strict=True)) + extra
        )
    return paths


@pytest.mark.slow  # trainings through the CLI: CI only
def test_the_opening_names_every_input_and_the_rows_left_out_and_results_count_them(tmp_path, capsys):
    paths = _given_split(tmp_path)
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--data.path", str(paths["train"]), "--data.valid", str(paths["valid"]),
                 "--data.test", str(paths["test"]), "--quiet", "--model.embedding_dim", "16", *TINY[9:13],
                 "--train.epochs", "2", "--train.num_threads", "1"]) == 0
    text = capsys.readouterr().out
    assert f"  inputs: train {paths['train']}, valid {paths['valid']}, test {paths['test']}" in text
    assert ("left out: 2 test rows of 1 user without train rows; 1 test rows whose item has no train row "
            "(eval.unknown_targets drop: not in the metrics)") in text
    assert "test: " in text
    assert "1 with an item and 2 with a user unknown to training (eval.unknown_targets drop)" in text
    targets = json.loads((out / "results.json").read_text())["test"]["targets"]
    assert (targets["unknown_item_rows"], targets["unknown_user_rows"], targets["unknown_targets"]) == (1, 2, "drop")
    # Kept, the three rows count: one more user (88888, with zeros) and one more target of user 0.
    def test_recall(*flags):
        assert main(["evaluate", str(out / "model"), "--quiet", *flags]) == 0
        printed = capsys.readouterr().out
        return float(model_row(printed, "test").split()[0]), printed

    dropped, _ = test_recall()
    kept, printed = test_recall("--eval.unknown_targets", "keep")
    assert "(eval.unknown_targets keep)" in printed and 0 < kept < dropped


@pytest.mark.slow  # the module's trained-model fixture
def test_evaluate_takes_a_protocol_preset_and_single_rules_over_it(trained, capsys):
    def test_row(*flags):
        assert main(["evaluate", str(trained / "model"), "--quiet", *flags]) == 0
        out = capsys.readouterr().out
        return model_row(out, "test"), out

    default, _ = test_row()
    train_only, out = test_row("--protocol", "lightgcn++")
    assert "test: " in out and "ranked without each user's train items" in out
    assert train_only != default  # valid items stay rankable: another ranking
    # The synthetic split has no unknown or repeat targets: lightgcn++ differs from the default in exclude only.
    assert test_row("--protocol", "lightgcn++", "--eval.exclude", "train+valid")[0] == default
    assert test_row("--eval.exclude", "train")[0] == train_only
    assert main(["evaluate", str(trained / "model"), "--eval.repeat_targets", "twice"]) == 2
    assert "eval.repeat_targets must be one of 'exclude', 'rank'; got 'twice'" in capsys.readouterr().err


def test_train_and_evaluate_with_the_graph_filter(tmp_path, capsys):
    """`--model.graph_filter`: training says what it chose, `evaluate` reproduces the blended metrics."""
    out = tmp_path / "run"
    tiny = [arg if arg != "5" else "2" for arg in TINY]
    assert main(["train", "--out", str(out), *tiny, "--model.graph_filter", "--model.graph_filter_weights", "2.0",
                 "--model.graph_filter_sharpening", "1.0"]) == 0
    printed = capsys.readouterr().out
    assert "graph filter: weight 2.0, sharpening 1.0 as set; the rows above marked + graph filter are the blend" \
        in printed
    results = json.loads((out / "results.json").read_text())
    train_line = next(line for line in printed.splitlines() if line.startswith("model + graph filter, test"))
    assert f"{results['test']['metrics']['recall@10']:.4f}" in train_line  # labelled as evaluate labels it
    assert results["graph_filter"]["towers"]["test"]["metrics"] != results["test"]["metrics"]
    assert main(["evaluate", str(out / "model"), "--quiet"]) == 0
    table = capsys.readouterr().out
    test_line = next(line for line in table.splitlines() if line.startswith("model + graph filter, test"))
    assert f"{results['test']['metrics']['recall@10']:.4f}" in test_line
