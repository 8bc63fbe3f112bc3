"""RunOptions (device_agent/options.py): the one place run options and their defaults live, on every side."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from edgeship.device_agent.options import DelegateSpec, OptionError, RunOptions
from edgeship.sdk.cli import main
from edgeship.sdk.device import parse_delegates
from edgeship.sdk.errors import AgentError, UsageError
from tests.test_agent import open_agent


@pytest.fixture(scope="module")
def model(convert_digits: Any) -> bytes:
    return convert_digits("int8").model_path.read_bytes()


def test_the_agent_and_the_worker_run_with_the_defaults_of_run_options(tmp_path: Path, model: bytes) -> None:
    """A run that sets nothing gets RunOptions' warm-up, runs and state, taken by the real agent and worker."""
    defaults = RunOptions()
    agent = open_agent(tmp_path / "store")
    try:
        up = agent.upload(model)
        result = agent.run("bench", up.sha256, None, {})
        assert result["status"] == "ok", result
        assert result["warmup"]["count"] == defaults.warmup
        assert result["latency_ms"]["count"] >= defaults.runs
        assert result["threads"] is defaults.threads and result["delegate"]["applied"] == ["xnnpack"]  # xnnpack on
        custom = agent.run("bench", up.sha256, None, RunOptions(runs=3, warmup=2, min_seconds=0).to_json())
        assert custom["warmup"]["count"] == 2 and 3 <= custom["latency_ms"]["count"] < defaults.runs
    finally:
        agent.close()


def test_what_the_agent_resolves_is_what_the_worker_reads() -> None:
    asked = RunOptions.from_json({"runs": 7, "state": "keep", "timeout": 900}, run_timeout=300)
    assert asked == RunOptions(runs=7, state="keep", timeout=900.0)
    resolved = asked.resolved(runtime="tflite_runtime", arena_size=4096, run_timeout=300)
    assert (resolved.runtime, resolved.arena_size, resolved.timeout) == ("tflite_runtime", 4096, 300)
    assert RunOptions.from_json(resolved.to_json()) == resolved  # the worker's reading of the agent's request
    assert RunOptions.from_json({}) == RunOptions() and RunOptions().to_json() == {}  # defaults are never sent
    with pytest.raises(OptionError, match="min_seconds must be a finite number of seconds from 0 up to 2"):
        RunOptions.from_json({"timeout": 2, "min_seconds": 3})


def test_unknown_option_keys_are_refused_by_the_real_agent_naming_the_key(tmp_path: Path, model: bytes) -> None:
    agent = open_agent(tmp_path / "store")
    try:
        up = agent.upload(model)
        for options in ({"runz": 5}, {"runs": 5, "warm_up": 1}):
            with pytest.raises(AgentError) as err:
                agent.run("bench", up.sha256, None, options)
            key = sorted(set(options) - set(RunOptions.keys()))[0]
            assert err.value.code == "bad_request" and f"unknown run option {key!r}" in str(err.value)
            assert ", ".join(RunOptions.keys()) in str(err.value)  # and it lists the known ones
        assert agent.run("bench", up.sha256, None, {"runs": 1, "min_seconds": 0})["status"] == "ok"  # still serving
    finally:
        agent.close()


def test_the_cli_help_shows_the_defaults_of_run_options() -> None:
    text = CliRunner().invoke(main, ["bench", "--help"], terminal_width=200).output
    d = RunOptions()
    for shown in (f"at least [{d.runs}]", f"Warm-up runs [{d.warmup}]", f"this long [{d.min_seconds}]"):
        assert shown in " ".join(text.split()), shown
    changed = dataclasses.replace(d, runs=d.runs + 1)
    assert changed.to_json() == {"runs": d.runs + 1}


def test_delegate_specs_are_parsed_by_the_library() -> None:
    assert parse_delegates(["edgetpu:device=usb,x=1", "gpu"], required=True) == (
        DelegateSpec("edgetpu", {"device": "usb", "x": "1"}, True), DelegateSpec("gpu", {}, True))
    for bad, words in (("/usr/lib/libedgetpu.so", "not a library path"), ("edgetpu:device", "key=value pairs")):
        with pytest.raises(UsageError, match=words) as err:
            parse_delegates([bad])
        assert err.value.option == "delegate" and "--" not in err.value.detail
    proc = CliRunner().invoke(main, ["bench", "nowhere", "--delegate", "/usr/lib/x.so"])
    assert proc.exit_code == 2 and "--delegate: '/usr/lib/x.so': give the name of a delegate" in proc.output
