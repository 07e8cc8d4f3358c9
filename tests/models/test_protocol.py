"""The one grammar of transfer protocols (rsmae.models.trainable.parse_protocol) and its old aliases."""

from __future__ import annotations

import pytest

from rsmae.models.trainable import Protocol, parse_protocol, parse_tune, tuned_blocks


def test_one_grammar_names_every_protocol() -> None:
    assert parse_protocol("linear") == Protocol("linear", "frozen") and parse_protocol("knn").frozen_features
    assert parse_protocol("head") == Protocol("head", "frozen")
    assert parse_protocol("last2") == parse_protocol("2") == parse_protocol(2) == parse_protocol(" Last2 ")
    assert parse_protocol("last2") == Protocol("tune", 2) and not parse_protocol("last2").frozen_features
    tunes = [parse_protocol(p).tune for p in ("frozen", "mlp", "full", "last0")]
    assert tunes == ["frozen", "mlp", "full", 0]
    for bad in ("last", "lastx", "-1", "fine", ""):
        with pytest.raises(ValueError, match="unknown protocol"):
            parse_protocol(bad)
    with pytest.raises(ValueError, match="must be >= 0"):
        parse_protocol(-1)


def test_tuned_blocks_place_protocols_on_one_axis() -> None:
    names = ("knn", "linear", "head", "frozen", "mlp", "last1", "last4", "full", "scratch")
    assert [tuned_blocks(p, 12) for p in names] == [None, None, 0.0, 0.0, 0.5, 1.0, 4.0, 12.0, None]


def test_parse_tune_keeps_its_depth_rules() -> None:
    assert [parse_tune(t, 4) for t in ("frozen", 0, "2", 2, "last2", 4, 9, "mlp", "full")] == \
        ["frozen", "frozen", 2, 2, 2, "full", "full", "mlp", "full"]
    with pytest.raises(ValueError, match="must be >= 0"):
        parse_tune(-1, 4)
    for bad in ("linear", "x", True):
        with pytest.raises(ValueError, match="choose 'frozen', 'mlp', 'full'"):
            parse_tune(bad, 4)


def test_classification_protocols() -> None:
    from rsmae.evaluation.classification import _protocol
    from rsmae.evaluation.classification import parse_protocol as old

    with pytest.deprecated_call():
        assert old("last2") == ("finetune", 2) and old("linear") == ("linear", "frozen")
    for frozen_encoder in ("last0", "frozen"):  # in classification a frozen encoder is `head`
        with pytest.raises(ValueError, match="unknown protocol"):
            _protocol(frozen_encoder)


def test_change_protocols() -> None:
    from rsmae.evaluation.change import _tune
    from rsmae.evaluation.change import parse_protocol as old

    with pytest.deprecated_call():
        assert old("last2") == 2 and old("frozen") == "frozen"
    assert _tune(3) == 3 and _tune("full") == "full"
    with pytest.raises(ValueError, match="choose frozen, lastK"):
        _tune("linear")
