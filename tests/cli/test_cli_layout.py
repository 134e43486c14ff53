"""Where the commands live: a reader finds ``VERB DATASET`` in the module named for the data set or the verb."""

from __future__ import annotations

import argparse
import importlib

from scibench_data.cli import MODULES, Commands


def _registered(module: str) -> list[tuple[str, str]]:
    """The ``(verb, dataset)`` pairs that ``module.register`` adds on its own."""
    parser = argparse.ArgumentParser()
    cli = Commands(parser)
    importlib.import_module(module).register(cli)
    return [(verb, dataset) for verb, sub in cli._verbs.items() for dataset in sub._action.choices]


def test_each_data_set_command_is_registered_by_the_module_named_for_its_data_set_or_verb():
    misplaced = [(module, verb, dataset) for module in MODULES for verb, dataset in _registered(module)
                 if module.rsplit(".", 1)[-1] not in (dataset, verb)]
    assert misplaced == []


def test_append_and_subset_live_in_the_modules_a_reader_opens():
    assert ("append", "cloudmask") in _registered("scibench_data.cli.cloudmask")
    assert set(_registered("scibench_data.cli.subset")) == {("subset", "cloudmask_ds1"), ("subset", "cloudmask_ds2")}
