"""A run's own Slurm settings (the Train form's, ``project launch --slurm-*``): parsed in one place, kept in
the run's row, and laid over the workspace's ``slurm.json`` in the job's ``sbatch`` line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_jobs import config, store  # noqa: F401 - store is a fixture

from stpp.backends import SlurmBackend, make_backend
from stpp.core.cluster import SLURM_SETTINGS_NAME, SlurmOptions, parse_run_settings
from stpp.core.config import ConfigError
from stpp.core.devices import DeviceSpec
from stpp.jobs import JobRunner
from stpp.store.runs import get_run, list_runs


def test_a_runs_settings_leave_out_blanks_and_refuse_what_a_run_cannot_set():
    assert parse_run_settings({"partition": " gpu ", "account": "", "time_limit": None, "nodes": 2.0}) == {
        "partition": "gpu", "nodes": 2}
    with pytest.raises(ConfigError, match="a run cannot set slurm setup"):
        parse_run_settings({"setup": ["module load cuda"]})
    with pytest.raises(ConfigError, match="nodes must be a whole number of at least 1"):
        parse_run_settings({"nodes": 0})


def test_a_runs_settings_go_over_the_workspaces_in_the_sbatch_line(tmp_path: Path):
    (tmp_path / SLURM_SETTINGS_NAME).write_text(json.dumps({"partition": "cpu", "account": "lab",
                                                            "time_limit": "1:00:00", "sbatch_args": ["--qos=low"]}))
    backend = make_backend("slurm", tmp_path)
    assert backend.run_settings() == {"partition": "cpu", "account": "lab", "time_limit": "1:00:00", "nodes": 1}
    own = backend.with_settings({"partition": "gpu", "time_limit": "8:00:00"})
    line = own.sbatch_command(7, DeviceSpec("cuda", (0, 1), 2), tmp_path / "7.sbatch", tmp_path / "7.log")
    assert {"--partition=gpu", "--account=lab", "--time=8:00:00", "--gpus-per-node=2", "--qos=low"} <= set(line)
    assert "--partition=cpu" not in line and line[-1] == str(tmp_path / "7.sbatch")
    assert backend.options.partition == "cpu"  # the workspace's settings stay for the next run


def test_slurm_settings_are_refused_where_runs_train_locally_and_kept_in_the_row_on_slurm(store):  # noqa: F811
    with pytest.raises(ConfigError, match="start the app with --backend slurm"):
        JobRunner(store).launch("synth", "supervised", "test", device="cpu", backend_options={"partition": "gpu"})
    assert list_runs(store) == []

    # Recorded without a submission: sbatch is not on this PATH, so the submission fails with its reason.
    runner = JobRunner(store, backend=SlurmBackend(SlurmOptions(), env={"PATH": "/nonexistent"}))
    run = runner.submit("synth", config(store), backend_options={"partition": "gpu", "time_limit": "0:30:00"})
    assert get_run(store, run.id).backend_options == {"partition": "gpu", "time_limit": "0:30:00"}
    assert (run.status, run.resumable) == ("failed", True)
    assert "cannot submit the run: sbatch is not installed here" in run.error
