"""Several GPUs of one host, tested on CPU: what we hand NNI, and where NNI's own scheduler puts the trials.

No GPU is needed: NNI 3.0's trial keeper schedules GPUs in node.js
(``nni_node/common/trial_keeper/task_scheduler/scheduler.js``), which exports a hook to fake the GPU
information. We run that very scheduler with 1 or 2 fake GPUs and the fields
:func:`search_spaces.training_services.gpu_fields` produces, and check the placement.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from search_spaces.training_services import configure_training_service, gpu_fields, resolve_concurrency

# Schedules `trials` trials of `gpuNumber` GPUs each on `n_gpus` fake idle GPUs, then releases trial
# `release` (if any) and schedules one more; prints the CUDA_VISIBLE_DEVICES each got (null = refused).
SCHEDULER_JS = r"""
require('common/globals/unittest').resetGlobals();
const { TaskScheduler, UnitTestHelpers } = require('common/trial_keeper/task_scheduler/scheduler');
const a = JSON.parse(process.argv[2]);
(async () => {
  const gpus = [...Array(a.n_gpus).keys()].map(i => ({index: i, gpuCoreUtilization: 0, gpuMemoryUtilization: 0}));
  UnitTestHelpers.mockGpuInfo({success: true, gpuNumber: a.n_gpus, gpus, processes: []});
  const s = new TaskScheduler();
  await s.init();
  const out = [];
  for (let t = 0; t < a.trials; t++) {
    const r = await s.schedule('exp', 't' + t, a.gpu_number, a.restrictions);
    out.push(r === null ? null : r.CUDA_VISIBLE_DEVICES);
  }
  let after = undefined;
  if (a.release !== null) {
    await s.release('exp', 't' + a.release);
    const r = await s.schedule('exp', 'again', a.gpu_number, a.restrictions);
    after = r === null ? null : r.CUDA_VISIBLE_DEVICES;
  }
  console.log(JSON.stringify({placed: out, after}));
})().catch(e => { console.error(e); process.exit(1); });
"""


def _nni_node() -> Path:
    import nni_node

    return Path(nni_node.__path__[0])


def nni_schedule(tmp_path: Path, n_gpus: int, fields: dict, trials: int, release: int | None = None) -> dict:
    """Run NNI's GPU scheduler as NNI's local/remote training service would call it with ``fields``."""
    node_dir = _nni_node()
    script = tmp_path / "schedule.js"
    script.write_text(SCHEDULER_JS)
    # local_v3/local.js and remote_v3/remote.js: gpuNumber = trialGpuNumber / maxTrialNumberPerGpu
    args = {"n_gpus": n_gpus, "trials": trials, "release": release,
            "gpu_number": fields["trial_gpu_number"] / fields["max_trial_number_per_gpu"],
            "restrictions": {"onlyUseIndices": fields["gpu_indices"], "rejectActive": not fields["use_active_gpu"]}}
    res = subprocess.run([str(node_dir / "node"), str(script), json.dumps(args)], capture_output=True, text=True,
                         timeout=60, env={"NODE_PATH": str(node_dir), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_nni_30_never_schedules_a_whole_gpu_trial_on_a_one_gpu_machine(tmp_path):
    """Why gpu_fields never asks for a whole GPU: NNI 3.0 refuses gpuNumber >= the machine's GPU count."""
    whole = {"trial_gpu_number": 1, "max_trial_number_per_gpu": 1, "gpu_indices": [0], "use_active_gpu": True}
    assert nni_schedule(tmp_path, 1, whole, trials=1)["placed"] == [None]
    ours = gpu_fields([0], 1)
    assert nni_schedule(tmp_path, 1, ours, trials=1)["placed"] == ["0"]


@pytest.mark.parametrize("gpus,tpg", [([0, 1], 1), ([0, 1], 2), ([0, 1], 4), ([0], 4)])
def test_trials_spread_evenly_over_the_gpus(tmp_path, gpus, tpg):
    fields = gpu_fields(gpus, tpg)
    n = resolve_concurrency(None, gpus, tpg)
    assert n == len(gpus) * tpg  # default concurrency: every slot
    res = nni_schedule(tmp_path, len(gpus), fields, trials=n, release=0)
    placed = res["placed"]
    assert None not in placed, placed
    assert sorted(placed) == sorted(str(g) for g in gpus for _ in range(tpg))  # tpg trials on every GPU
    # a finished trial's slot goes to the next trial, on the GPU it freed
    assert res["after"] == placed[0]


def test_only_the_listed_gpus_are_used(tmp_path):
    fields = gpu_fields([1], 2)  # a 2-GPU machine, the search may use GPU 1 only
    res = nni_schedule(tmp_path, 2, fields, trials=2)
    assert res["placed"] == ["1", "1"]


def test_concurrency_is_bounded_by_the_slots():
    assert resolve_concurrency(None, None, 1) == 1          # CPU
    assert resolve_concurrency(None, [0, 1], 4) == 8
    assert resolve_concurrency(3, [0, 1], 2) == 3
    with pytest.raises(ValueError, match=r"trial concurrency 3 exceeds 2 GPU\(s\) x 1 trial\(s\) per GPU = 2 slot"):
        resolve_concurrency(3, [0, 1], 1)
    with pytest.raises(ValueError, match="must be >= 1"):
        resolve_concurrency(0, None, 1)
    with pytest.raises(ValueError):
        gpu_fields([], 1)


def test_local_gpu_config_is_what_nni_validates(tmp_path):
    """What build_experiment hands NNI for --gpus 0,1 --trials-per-gpu 3, checked by NNI's own validation."""
    from nni.experiment.config import AlgorithmConfig, ExperimentConfig

    config = ExperimentConfig("local")
    config.trial_command = "python -m search_spaces.trial"
    config.trial_code_directory = str(tmp_path)
    config.search_space = {}
    config.tuner = AlgorithmConfig(name="Random")
    config.trial_concurrency = resolve_concurrency(None, [0, 1], 3)
    configure_training_service(config, platform="local", gpus=[0, 1], trials_per_gpu=3)
    config.validate()
    c = config.canonical_copy()
    assert c.trial_gpu_number == 1 and c.trial_concurrency == 6
    assert c.training_service.gpu_indices == [0, 1]
    assert c.training_service.max_trial_number_per_gpu == 3
    assert c.training_service.use_active_gpu is True

    cpu = ExperimentConfig("local", trial_command="true", trial_code_directory=str(tmp_path), search_space={},
                           trial_concurrency=1, tuner=AlgorithmConfig(name="Random"))
    configure_training_service(cpu, platform="local")
    cpu.validate()
    assert cpu.canonical_copy().trial_gpu_number == 0


def test_cli_gpus_flow_into_the_nas_experiment_config(tmp_path, tiny_dataset_dir, monkeypatch):
    """`--gpus 0,1 --trials-per-gpu 2` through SearchConfig into the NasExperimentConfig NNI receives."""
    from search_spaces.experiment import SearchConfig, build_experiment

    monkeypatch.chdir(tmp_path)
    cfg = SearchConfig.from_dict({"experiment": {"gpus": [0, 1], "trials_per_gpu": 2, "max_trials": 4},
                                  "strategy": {"name": "random"}, "trial": {"device": "cpu"}})
    exp, _, _ = build_experiment(cfg, tiny_dataset_dir, tmp_path / "run")
    c = exp.config.canonical_copy()
    assert c.trial_concurrency == 4 and c.trial_gpu_number == 1
    assert c.training_service.platform == "local"
    assert c.training_service.gpu_indices == [0, 1] and c.training_service.max_trial_number_per_gpu == 2
