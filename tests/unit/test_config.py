"""Config (issue 22 item 11): every key is checked when the environment is built, before any process or
segment exists; an error names the key, the value given and what is valid."""

from __future__ import annotations

import dataclasses

import pytest

from procflow import LocalEnvironment, RayEnvironment
from procflow.core.config import Config
from procflow.runtime.context.task_context import TaskContext


def test_defaults_are_stated_once_and_reach_the_environment(env_dir):
    env = LocalEnvironment("cfg", env_dir=env_dir)
    assert env.config == Config().as_dict()
    assert env.config["stall_timeout"] is None and env.config["keep_logs"] == 20
    ctx = TaskContext(name="t_0", operator_name="t", kind="map", parallel_index=0, parallelism=1, job_id="j",
                      env_dir=env_dir, task_slot=0, job_segment="", n_tasks=1)
    assert ctx.config == Config().as_dict()   # a context built without one reads the same defaults


def test_every_key_has_a_meaning():
    docs = Config.describe()
    assert set(docs) == {f.name for f in dataclasses.fields(Config)}
    assert all(docs.values())


@pytest.mark.parametrize("key, value, expected", [
    ("ring_bytes", 0, "config['ring_bytes'] must be >= 1024; got 0"),
    ("ring_bytes", -5, "config['ring_bytes'] must be >= 1024; got -5"),
    ("ring_bytes", 4.5, "config['ring_bytes'] must be an int; got 4.5 (float)"),
    ("ring_bytes", True, "config['ring_bytes'] must be an int; got True (bool)"),
    ("ring_bytes", "4M", "config['ring_bytes'] must be an int; got '4M' (str)"),
    ("batch_bytes", 0, "config['batch_bytes'] must be >= 1; got 0"),
    ("flush_interval", 0, "config['flush_interval'] must be > 0.0 and <= 60.0; got 0"),
    ("flush_interval", float("nan"), "config['flush_interval'] must be a finite number; got nan"),
    ("flush_interval", 3600, "config['flush_interval'] must be > 0.0 and <= 60.0; got 3600"),
    ("stop_timeout", -1, "config['stop_timeout'] must be >= 0.0; got -1"),
    ("stall_timeout", -1, "config['stall_timeout'] must be > 0.0; got -1"),
    ("stall_timeout", "1s", "config['stall_timeout'] must be a number or None; got '1s' (str)"),
    ("keep_logs", -1, "config['keep_logs'] must be >= 0; got -1"),
    ("queue", "tcp", "config['queue'] must be one of 'shm', 'mp', 'ray'; got 'tcp'"),
    ("log_level", "LOUD", "config['log_level'] must be one of 'DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL'"),
    ("progress", "yes", "config['progress'] must be True, False or None; got 'yes'"),
])
def test_a_bad_value_names_the_key_the_value_and_the_valid_range(env_dir, key, value, expected):
    with pytest.raises(ValueError) as info:
        LocalEnvironment("cfg", {key: value}, env_dir=env_dir)
    assert expected in str(info.value)


def test_an_unknown_key_suggests_the_closest_and_lists_the_valid_ones(env_dir):
    with pytest.raises(ValueError) as info:
        LocalEnvironment("cfg", {"ring_size": 1 << 20}, env_dir=env_dir)
    message = str(info.value)
    assert "unknown config key 'ring_size' (did you mean 'ring_bytes'?)" in message
    assert all(f.name in message for f in dataclasses.fields(Config))


def test_values_are_normalised():
    cfg = Config.from_mapping({"stall_timeout": 0, "log_level": "debug", "flush_interval": 1,
                               "stop_timeout": 2, "ring_bytes": 1 << 16})
    assert cfg.stall_timeout is None                # 0 means off, like None
    assert cfg.log_level == "DEBUG"
    assert type(cfg.flush_interval) is float and type(cfg.stop_timeout) is float
    assert Config.from_mapping({"stall_timeout": 2}).stall_timeout == 2.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.ring_bytes = 1   # type: ignore[misc]


def test_ray_backend_defaults_still_apply_and_are_checked():
    env = RayEnvironment("cfg")          # starts nothing until submit()
    assert env.config["queue"] == "ray" and env.config["batch_bytes"] == 256 << 10
    with pytest.raises(ValueError, match="batch_bytes"):
        RayEnvironment("cfg", {"batch_bytes": 0})
