"""One place per default: the Python API, the experiment config and the CLI all take theirs from
kallm.retrofitting.defaults."""

from __future__ import annotations

import argparse
import inspect

from kallm.retrofitting import defaults


def test_every_entry_point_has_the_same_defaults():
    from kallm.cli.train_cmd import _RUN_KEYS
    from kallm.experiment.schema import ExperimentConfig
    from kallm.retrofitting.surgery import retrofit
    from kallm.training.api import train

    expected = {"layers": "last:5", "variant": "kan:chebyshev2:2", "freeze": "ffn"}
    assert {k: getattr(defaults, k.upper()) for k in expected} == expected
    for function in (retrofit, train):
        params = inspect.signature(function).parameters
        assert {k: params[k].default for k in expected} == expected, function.__name__
    assert inspect.signature(train).parameters["model"].default == defaults.MODEL == _RUN_KEYS["model"]
    fields = ExperimentConfig.__dataclass_fields__
    assert (fields["layers"].default, fields["freeze"].default) == (defaults.LAYERS, defaults.FREEZE)
    assert {k: _RUN_KEYS[k] for k in expected} == expected


def test_inspect_takes_the_same_defaults():
    from kallm.cli import inspect_cmd

    parser = argparse.ArgumentParser()
    inspect_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["inspect", "some-model"])
    assert (args.layers, args.freeze) == (None, None)  # unset: a retrofit folder shows its own settings
    assert inspect_cmd._DEFAULTS == {"layers": defaults.LAYERS, "variant": "baseline", "freeze": defaults.FREEZE}
