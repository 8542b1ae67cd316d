"""Checks shared by the tests of the two shipped foundation ViTs (tests/test_foundation_vit.py,
tests/test_foundation_dinov3.py): the record of how the file was made, and the linear probes that
must find the pretrained model's frozen features far better than a random ViT's."""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

import torch

from soma_d2.pretrain.probe import probe_vit, render_probe_data

PER_CONDITION = 24  # scenes per condition for the probes (fresh seeds: none seen in pretraining)


def check_record(record: dict, weights: str, command_prefix: str) -> None:
    """The shipped file has the recorded hash, is under 25 MiB and names its own command."""
    digest = hashlib.sha256(open(weights, "rb").read()).hexdigest()
    assert digest == record["sha256"]
    assert os.path.getsize(weights) < 25 * 2**20
    assert record["command"].startswith(command_prefix)
    assert f"--output {record['file']}" in record["command"]


def check_probes(pretrained: torch.nn.Module, make_vit: Callable[[], torch.nn.Module]) -> None:
    """Probe ``pretrained`` and a seeded random ``make_vit()`` on fresh probe scenes.

    Classes are linearly separable in every condition and conditions are told apart, far above
    chance and (conditions) better than the random ViT; a probe fitted on clear-day objects alone
    reads every other condition far above chance, night included, where the random ViT is at
    chance (light/weather invariance; measured figures in pretrained/README.md).
    """
    data = render_probe_data(per_condition=PER_CONDITION)
    scores = probe_vit(pretrained, data)
    torch.manual_seed(0)
    random = probe_vit(make_vit(), data)
    chance_objects, chance_conditions = 1 / 7, 1 / 5
    assert scores.object_source > 4 * chance_objects
    assert min(scores.object_within.values()) > 3 * chance_objects
    assert scores.condition > 3.5 * chance_conditions
    assert scores.condition > random.condition + 0.05
    assert min(scores.object_transfer.values()) > 3 * chance_objects
    for night in ("night_sunny", "night_rainy"):
        assert random.object_transfer[night] < 2 * chance_objects
        assert scores.object_transfer[night] > random.object_transfer[night] + 0.3
    assert scores.mean_transfer > random.mean_transfer + 0.3
