"""Where Tune keeps its state: the storage block, and a sweep writing to an S3-compatible store
(moto's server on 127.0.0.1 stands in for MinIO)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from sweeps.spec import StorageSpec
from sweeps.validate import SpecError, load_spec_text

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_to_a_local_folder() -> None:
    assert StorageSpec().path == "sweep_results" and StorageSpec().endpoint_url is None


def test_endpoint_needs_an_s3_path() -> None:
    with pytest.raises(ValidationError, match="path='/mnt/x' must start with s3://"):
        StorageSpec(path="/mnt/x", endpoint_url="http://minio:9000")


def test_endpoint_must_be_a_url() -> None:
    with pytest.raises(ValidationError, match=r"must be http\(s\)://host\[:port\]"):
        StorageSpec(path="s3://b/p", endpoint_url="minio:9000")


def test_file_errors_name_the_key() -> None:
    with pytest.raises(SpecError, match="storage.endpoint_url"):
        load_spec_text("name: s\nstorage: {path: s3://b/p, endpoint_url: ftp://x}\n", "s.yaml")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SWEEP = """
name: s3-storage
data: {{dataset: digits}}
parameters:
  epochs: 3
  hidden_size: 16
  lr: {{values: [0.01, 0.05]}}
search: {{algorithm: grid}}
resources: {{cpus_per_trial: 1, max_concurrent_trials: 2}}
storage: {{path: "s3://sweeps/results", endpoint_url: "http://127.0.0.1:{port}"}}
"""


@pytest.mark.slow
def test_sweep_state_and_checkpoints_go_to_s3(tmp_path: Path) -> None:
    pytest.importorskip("moto", reason="moto[server] is in the test extra")
    from pyarrow import fs

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
    try:
        s3 = fs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", region="us-east-1",
                             access_key="testing", secret_key="testing", allow_bucket_creation=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                s3.create_dir("sweeps")
                break
            except OSError:
                assert time.monotonic() < deadline, "moto's S3 server did not start"
                time.sleep(0.3)
        (tmp_path / "s3.yaml").write_text(SWEEP.format(port=port))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
        env.update(creds, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}", RAY_USAGE_STATS_ENABLED="0",
                   PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p))
        done = subprocess.run([sys.executable, "-m", "sweeps.cli", "run", "s3.yaml"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=400)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        files = [i.path for i in s3.get_file_info(fs.FileSelector("sweeps/results", recursive=True))
                 if i.type == fs.FileType.File]
        experiments = {p.split("/")[2] for p in files}
        assert len(experiments) == 1 and experiments.pop().startswith("s3-storage-")
        assert any(Path(p).name.startswith("experiment_state") for p in files), files
        checkpoints = {p.split("/")[3] for p in files if "/checkpoint_" in p and p.endswith("train_state.pt")}
        assert len(checkpoints) == 2, "each trial's latest checkpoint is in the bucket"
        assert not (tmp_path / "sweep_results").exists(), "nothing went to the local default folder"

        # a checkpoint that Tune's saved state names but that is gone is replaced by the trial's later one,
        # on S3 too (it moves no folders: copy, then delete)
        from sweeps.tune import replace_missing_checkpoint

        named = next(p for p in files if "/checkpoint_" in p and p.endswith("train_state.pt")).rsplit("/", 1)[0]
        index = int(named.rsplit("_", 1)[1])
        later = f"{named.rsplit('_', 1)[0]}_{index + 1:06d}"
        fs.copy_files(named, later, source_filesystem=s3, destination_filesystem=s3)
        s3.delete_dir(named)
        assert replace_missing_checkpoint(s3, named) == later
        assert s3.get_file_info(f"{named}/train_state.pt").type == fs.FileType.File
        assert s3.get_file_info(later).type == fs.FileType.NotFound
    finally:
        server.terminate()
        server.wait(timeout=30)
